//! What the queue pairs of one port share: the device's registers, behind a
//! lock that only cold paths take (queue notifications a sleeping host asks
//! for, epoch polls, resyncs, `link_up`, reset).
//!
//! The pairing epoch is link-wide while each queue pair drains and resyncs
//! on its own. This side may acknowledge a new epoch only when none of its
//! queues still has a descriptor from the old one outstanding, so the
//! acknowledgement waits until every queue pair of the port has drained
//! ([`Link::acknowledge`]); the first pair to find them all drained writes
//! `epoch_ack`, the others adopt the acknowledged epoch.

use std::sync::{Mutex, MutexGuard};

use crate::bus::Bus;
use crate::device::Device;
use crate::error::PmdError;

/// Acknowledgements tried before the epoch is declared unstable.
const ACK_TRIES: u32 = 8;

/// The shared state under the lock.
pub(crate) struct LinkCtl<B: Bus> {
    /// The device.
    pub dev: Device<B>,
    /// Queue pairs (bit `q`) that have nothing outstanding and post
    /// nothing until their resync finishes.
    drained: u32,
    /// The last epoch this side acknowledged.
    acked: Option<u32>,
}

/// The device and the epoch bookkeeping of one port's queue pairs.
pub(crate) struct Link<B: Bus> {
    ctl: Mutex<LinkCtl<B>>,
    /// Bits of every queue pair of the port.
    all: u32,
}

impl<B: Bus> Link<B> {
    /// The shared part of a port of `pairs` (1..=32) queue pairs, all
    /// drained (nothing is posted yet).
    pub fn new(dev: Device<B>, pairs: u16) -> Self {
        let all = if pairs >= 32 {
            u32::MAX
        } else {
            (1u32 << pairs) - 1
        };
        Self {
            ctl: Mutex::new(LinkCtl {
                dev,
                drained: all,
                acked: None,
            }),
            all,
        }
    }

    /// Takes the lock (a poisoned lock is taken anyway: the state under it
    /// is registers and two words, consistent after any panic).
    pub fn lock(&self) -> MutexGuard<'_, LinkCtl<B>> {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue pair `pair` starts posting again (its resync finished).
    pub fn undrained(&self, pair: u16) {
        self.lock().drained &= !bit(pair);
    }

    /// Queue pair `pair` has drained. Returns the current epoch and
    /// `peer_status` once this side has acknowledged it: at once if another
    /// pair already did, else by writing `epoch_ack` if every pair has
    /// drained (and the epoch holds still). Otherwise `ResyncTimeout` (with
    /// nothing outstanding): the caller's resync stays pending and is
    /// retried by its next burst.
    pub fn acknowledge(&self, pair: u16) -> Result<(u32, u32), PmdError> {
        let mut l = self.lock();
        l.drained |= bit(pair);
        for _ in 0..ACK_TRIES {
            let (epoch, peer) = l.dev.epoch_and_peer()?;
            if l.acked == Some(epoch) {
                return Ok((epoch, peer));
            }
            if l.drained != self.all {
                return Err(PmdError::ResyncTimeout { outstanding: 0 });
            }
            l.dev.ack_epoch(epoch)?;
            if l.dev.epoch()? == epoch {
                l.acked = Some(epoch);
                return Ok((epoch, peer));
            }
            // It moved: every pair is drained and posts nothing, so
            // nothing can be outstanding; just try again.
        }
        Err(PmdError::EpochUnstable { tries: ACK_TRIES })
    }
}

fn bit(pair: u16) -> u32 {
    1u32.checked_shl(u32::from(pair)).unwrap_or(0)
}
