//! Epochs (`docs/abi.md` §6 "Ownership": epochs and resync), all cold paths.
//!
//! When the pairing epoch changes, the host completes every descriptor of
//! this side with length 0 until the driver acknowledges the new epoch. The
//! port then:
//!
//! 1. notices: a receive completion of length 0 whose epoch check finds a
//!    new epoch, or an idle poll of `pairing_epoch`;
//! 2. stops posting and sending, and reaps completions until none of its
//!    descriptors is outstanding (bounded by `drain_timeout`; on timeout the
//!    next burst carries on);
//! 3. reads `pairing_epoch` and `peer_status`, writes `epoch_ack`, reads
//!    `pairing_epoch` again, and goes back to 2 if it moved;
//! 4. resets the ledger to the new mode's initial split, bumps its
//!    generation (every slot handle of the old epoch is stale from now on),
//!    picks the burst functions of the mode and posts receive buffers.
//!
//! Classic buffers are this side's in every epoch: the ones the
//! application holds stay valid, the ones that were posted or in flight
//! simply return to the pool.

use std::time::Instant;

use sbnet_abi::common_cfg::STATUS_DEVICE_NEEDS_RESET;
use sbnet_abi::net::PEER_SYNCED;

use super::{PortQueue, RxFn, TxFn, HDR};
use crate::bus::Bus;
use crate::error::{Failure, PmdError};
use crate::mode::Mode;
use crate::pkt::Buf;

impl<B: Bus> PortQueue<B> {
    /// Reads the pairing epoch now (one bus read) and, if it moved, the
    /// device status, then resynchronises. Returns whether it did. The
    /// host moves the epoch when a side enters `DEVICE_NEEDS_RESET` too,
    /// so an unchanged epoch needs no status read. `rx_burst` calls this by
    /// itself while idle ([`crate::PortConfig::epoch_poll_interval`]).
    pub fn poll_epoch(&mut self) -> Result<bool, PmdError> {
        if !self.ready()? {
            return Ok(false);
        }
        self.st.epoch_polls += 1;
        let epoch = self.link.lock().dev.epoch()?;
        if epoch == self.epoch {
            return Ok(false);
        }
        if self.mode == Mode::Classic {
            // No resync on a classic port, but the device may have failed.
            self.epoch = epoch;
            self.check_status()?;
            return Ok(false);
        }
        match self.resync() {
            // Waiting for the device or the peer: the next burst goes on.
            Ok(()) | Err(PmdError::ResyncTimeout { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Fails the port if the device set `DEVICE_NEEDS_RESET`.
    #[cold]
    fn check_status(&mut self) -> Result<(), PmdError> {
        let status = self.link.lock().dev.status()?;
        if status & STATUS_DEVICE_NEEDS_RESET != 0 {
            return Err(self.needs_reset(status));
        }
        Ok(())
    }

    #[cold]
    fn needs_reset(&mut self, status: u8) -> PmdError {
        tracing::error!(status, "device set DEVICE_NEEDS_RESET");
        let f = *self.failed.get_or_insert(Failure::NeedsReset(status));
        f.into()
    }

    /// The first synchronisation, right after `DRIVER_OK` (nothing is
    /// outstanding yet).
    #[cold]
    pub(super) fn sync_epoch(&mut self) -> Result<(), PmdError> {
        if !self.shared {
            // No epochs to acknowledge; remember the current one so that an
            // idle poll sees the host move it (e.g. on DEVICE_NEEDS_RESET).
            let epoch = self.link.lock().dev.epoch()?;
            self.adopt(epoch, 0);
            return Ok(());
        }
        let (epoch, peer) = self.acknowledge()?;
        match self.await_peer_sync(epoch, peer) {
            Ok((epoch, peer)) => self.adopt(epoch, peer),
            // The peer is slow to synchronise: the port starts owning
            // nothing and the first burst finishes the resync.
            Err(PmdError::ResyncTimeout { .. }) => self.resync_pending = true,
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Steps 2-4 above. Leaves `resync_pending` set if it fails, so the
    /// next burst carries on.
    #[cold]
    pub(super) fn resync(&mut self) -> Result<(), PmdError> {
        if !self.resync_pending {
            tracing::info!(epoch = self.epoch, "pairing epoch changed: resynchronising");
        }
        self.resync_pending = true;
        // A device that needs a reset returns nothing: do not wait for it.
        self.check_status()?;
        self.drain()?;
        let (epoch, peer) = self.acknowledge()?;
        let (epoch, peer) = self.await_peer_sync(epoch, peer)?;
        self.adopt(epoch, peer);
        self.resync_pending = false;
        self.st.resyncs += 1;
        self.refill_rx();
        Ok(())
    }

    /// Step 2: reaps completions until nothing is outstanding.
    fn drain(&mut self) -> Result<(), PmdError> {
        if self.rxq.in_flight() + self.txq.in_flight() == 0 {
            return Ok(());
        }
        // The host may be asleep; it must look at the queues to return them.
        self.kick(self.rx_index);
        self.kick(self.tx_index);
        let deadline = Instant::now() + self.cfg.drain_timeout;
        let mut spins = 0u32;
        loop {
            self.drain_rx();
            if self.mode == Mode::ZeroCopy {
                self.reap_tx::<true>();
            } else {
                self.reap_tx::<false>();
            }
            if let Some(f) = self.failed {
                return Err(f.into());
            }
            let outstanding = u32::from(self.rxq.in_flight()) + u32::from(self.txq.in_flight());
            if outstanding == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(outstanding, "resync drain timed out");
                return Err(PmdError::ResyncTimeout { outstanding });
            }
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Receive completions during a drain: nothing is delivered; the
    /// buffers go back as if never posted.
    fn drain_rx(&mut self) {
        let pending = match self.rxq.poll() {
            Ok(p) => p,
            Err(e) => return self.misbehaved(self.rx_index, e),
        };
        for _ in 0..pending {
            let used = match self.rxq.pop() {
                Ok(Some(u)) => u,
                Ok(None) => break,
                Err(e) => return self.misbehaved(self.rx_index, e),
            };
            if used.len >= HDR {
                self.st.rx_dropped_resync += 1;
            }
            // The ledger is reset after the drain: only the queue's
            // bookkeeping matters here, and these transitions keep the
            // ledger consistent until then.
            let ok = match Buf::from_token(used.token) {
                Buf::Slot(s) => self.ledger.rx_void(s),
                Buf::Classic(i) => self.classic.rx_void(i),
            };
            debug_assert!(ok);
        }
    }

    /// Step 3: acknowledges an epoch that holds still, once every queue
    /// pair of the port has drained (the epoch is link-wide; see
    /// [`crate::link::Link::acknowledge`]). Until the others have, it
    /// reports `ResyncTimeout` and the resync stays pending.
    fn acknowledge(&mut self) -> Result<(u32, u32), PmdError> {
        self.link.acknowledge(self.pair)
    }

    /// Step 4: in zero-copy mode, no slot is taken before the peer has
    /// acknowledged the epoch too (`PEER_SYNCED`): until then its
    /// application may still write slots it owned in the previous epoch.
    /// Never blocks: without the bit it reports `ResyncTimeout` (nothing is
    /// outstanding), the resync stays pending and the bursts move nothing
    /// until a later one finds the peer synchronised.
    fn await_peer_sync(&mut self, epoch: u32, peer: u32) -> Result<(u32, u32), PmdError> {
        if Mode::of_epoch(self.shared, peer) != Mode::ZeroCopy || peer & PEER_SYNCED != 0 {
            return Ok((epoch, peer));
        }
        if !self.resync_pending {
            tracing::debug!(epoch, "waiting for the peer to synchronise to the epoch");
        }
        Err(PmdError::ResyncTimeout { outstanding: 0 })
    }

    /// Step 5: the new epoch's mode, split and burst functions.
    fn adopt(&mut self, epoch: u32, peer_status: u32) {
        let mode = Mode::of_epoch(self.shared, peer_status);
        let side = self.slots.side;
        // The ledger counts this queue pair's slots by local index `i`:
        // slot `i × Q + q` of the region.
        let (stride, pair) = (self.slots.stride, u32::from(self.pair));
        let q_pairs = stride as u16;
        self.ledger
            .reset(|i| mode.initially_mine(side, i * stride + pair, q_pairs));
        // Posting again from here on: the pair is no longer drained.
        self.link.undrained(self.pair);
        debug_assert_eq!(self.ledger.check(), Ok(()));
        self.generation = self.generation.wrapping_add(1);
        let rx_size = u32::from(self.rxq.size());
        self.classic_rx_target = match mode {
            Mode::ZeroCopy => u32::from(self.cfg.classic_rx_buffers).min(rx_size / 2),
            Mode::Copy | Mode::Classic => rx_size.min(self.classic.len()),
        };
        let (rx, tx): (RxFn<B>, TxFn<B>) = match mode {
            Mode::ZeroCopy => (Self::rx_impl::<true>, Self::tx_impl::<true>),
            Mode::Copy | Mode::Classic => (Self::rx_impl::<false>, Self::tx_impl::<false>),
        };
        (self.rx_fn, self.tx_fn) = (rx, tx);
        self.mode = mode;
        self.epoch = epoch;
        self.peer_status = peer_status;
        tracing::info!(
            epoch,
            peer_status,
            mode = mode.name(),
            side,
            "synchronised to pairing epoch"
        );
    }
}
