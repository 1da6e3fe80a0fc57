//! Sending, transmit completions, gifts and posting receive buffers.

use sbnet_abi::net::{RX_QUEUE, TX_QUEUE, VIRTIO_NET_HDR_F_GIFT_BUFFER};
use sbnet_abi::ring::DESC_F_WRITE;

use super::{Port, HDR};
use crate::bus::Bus;
use crate::classic::ClassicState;
use crate::error::PmdError;
use crate::ledger::SlotState;
use crate::pkt::{Buf, Pkt};

impl<B: Bus> Port<B> {
    /// Sends the packets of `pkts` in order and returns how many were
    /// handed to the device.
    ///
    /// Each `Some` entry is taken (left `None`) when it is sent, or when
    /// it is a stale handle (refused and counted in
    /// [`crate::Stats::stale_handles`]). When the transmit queue fills up,
    /// the remaining entries stay `Some` for the caller to retry or free.
    /// `None` entries are skipped.
    ///
    /// A slot sent in zero-copy mode belongs to the peer from this call on
    /// (rule 4): the handle is consumed and the slot is posted back on the
    /// receive queue once the host completes the send. In copy mode and for
    /// classic buffers the buffer comes back to the pool on completion.
    /// To forward a received packet, modify it in place and send it.
    #[inline]
    pub fn tx_burst(&mut self, pkts: &mut [Option<Pkt>]) -> Result<usize, PmdError> {
        if !self.ready()? {
            return Ok(0);
        }
        let n = (self.tx_fn)(self, pkts);
        match self.failed {
            Some(f) if n == 0 => Err(f.into()),
            _ => Ok(n),
        }
    }

    /// The transmit path of one epoch's mode. `ZC`: zero-copy mode.
    pub(super) fn tx_impl<const ZC: bool>(&mut self, pkts: &mut [Option<Pkt>]) -> usize {
        self.reap_tx::<ZC>();
        if self.failed.is_some() {
            return 0;
        }
        // Checked once per burst: the queue's room (only this loop takes
        // descriptors until the publish below).
        let mut room = self.txq.room();
        let (mut slots, mut classic, mut bytes) = (0u32, 0u32, 0u64);
        for i in 0..pkts.len() {
            let Some(pkt) = pkts[i].take() else { continue };
            if room == 0 {
                if !self.owns(&pkt) {
                    self.stale();
                    continue;
                }
                pkts[i] = Some(pkt);
                self.tx_full(&pkts[i..]);
                break;
            }
            // The ownership check and the transition are one step: the
            // ledger (or pool) refuses a buffer the application does not
            // hold, and changes nothing then.
            let b = pkt.buf();
            let sent = pkt.port() == self.id
                && match b {
                    Buf::Slot(s) => pkt.generation() == self.generation && self.ledger.send(s),
                    Buf::Classic(i) => self.classic.send(i),
                };
            if !sent {
                self.stale();
                continue;
            }
            let len = pkt.len() as u32;
            if !pkt.hdr_clean() {
                // A received packet sent on: its header is the peer's.
                self.write_hdr(b, 0);
            }
            let pushed = self.txq.push(self.buf_addr(b), HDR + len, 0, b.token());
            debug_assert!(pushed);
            room -= 1;
            if pkt.is_slot() {
                slots += 1;
            } else {
                classic += 1;
            }
            bytes += u64::from(len);
        }
        let sent = slots + classic;
        if ZC {
            self.st.tx_zero_copy += u64::from(slots);
        } else {
            self.st.tx_copied += u64::from(slots);
        }
        self.st.tx_copied += u64::from(classic);
        self.st.tx_packets += u64::from(sent);
        self.st.tx_bytes += bytes;
        if ZC {
            self.push_gifts();
        }
        self.publish_tx();
        if ZC {
            // Slots whose sends completed above go back on the receive
            // queue, so the peer can send them back.
            self.refill_rx();
        }
        sent as usize
    }

    #[cold]
    fn tx_full(&mut self, rest: &[Option<Pkt>]) {
        self.st.tx_ring_full += rest.iter().filter(|p| p.is_some()).count() as u64;
    }

    /// Receive-burst chores: transmit completions, gifts, receive
    /// buffers.
    #[inline]
    pub(super) fn housekeeping<const ZC: bool>(&mut self) {
        self.reap_tx::<ZC>();
        if ZC && self.push_gifts() > 0 {
            self.publish_tx();
        }
        self.refill_rx();
    }

    /// Takes every transmit completion (one `used.idx` load). A slot's
    /// completion in zero-copy mode means the host has given it to the
    /// peer: it waits to be posted on the receive queue. Otherwise the
    /// buffer returns to the pool.
    #[inline]
    pub(super) fn reap_tx<const ZC: bool>(&mut self) {
        let pending = match self.txq.poll() {
            Ok(p) => p,
            Err(e) => return self.misbehaved(TX_QUEUE, e),
        };
        for _ in 0..pending {
            let used = match self.txq.take() {
                Ok(u) => u,
                Err(e) => return self.misbehaved(TX_QUEUE, e),
            };
            let ok = match Buf::from_token(used.token) {
                Buf::Slot(s) => self.ledger.tx_done(s, ZC),
                Buf::Classic(i) => self.classic.tx_done(i),
            };
            debug_assert!(ok, "completed buffer was not in flight");
        }
    }

    /// Queues gifts when the free pool is over the policy's trigger
    /// (zero-copy mode). Returns how many; they are published with the
    /// next transmit publish.
    #[inline]
    fn push_gifts(&mut self) -> u32 {
        let due = self.gift.due(
            self.ledger.count(SlotState::Free),
            u32::from(self.txq.room()),
        );
        if due > 0 {
            self.gifts(due)
        } else {
            0
        }
    }

    fn gifts(&mut self, due: u32) -> u32 {
        let mut n = 0;
        while n < due {
            let Some(s) = self.ledger.alloc() else { break };
            let b = Buf::Slot(s);
            self.write_hdr(b, VIRTIO_NET_HDR_F_GIFT_BUFFER);
            let pushed = self.txq.push(self.buf_addr(b), HDR, 0, b.token());
            debug_assert!(pushed, "due never exceeds the queue's room");
            let ok = self.ledger.send(s);
            debug_assert!(ok);
            n += 1;
        }
        self.st.gifts_sent += u64::from(n);
        n
    }

    /// One `avail.idx` store for everything queued, then one notification
    /// decision.
    #[inline]
    fn publish_tx(&mut self) {
        if self.txq.publish() {
            self.kick_if_needed(TX_QUEUE);
        }
    }

    /// Posts receive buffers: classic ones up to the mode's target first
    /// (classic frames and resync completions need them), then every peer
    /// slot waiting to be posted (rule 3), as far as the queue has room.
    /// One publish, at most one notification.
    #[inline]
    pub(super) fn refill_rx(&mut self) {
        let mut posted = self.classic.count(ClassicState::PostedRx);
        while posted < self.classic_rx_target && self.rxq.room() > 0 {
            let Some(i) = self.classic.take_for_rx() else {
                break;
            };
            let b = Buf::Classic(i);
            let pushed = self
                .rxq
                .push(self.buf_addr(b), self.buf_size(b), DESC_F_WRITE, b.token());
            debug_assert!(pushed);
            posted += 1;
        }
        let post = self.ledger.unposted().min(u32::from(self.rxq.room()));
        for _ in 0..post {
            let Some(s) = self.ledger.next_to_post() else {
                break;
            };
            let b = Buf::Slot(s);
            let pushed = self
                .rxq
                .push(self.buf_addr(b), self.slots.size, DESC_F_WRITE, b.token());
            debug_assert!(pushed);
        }
        if self.rxq.publish() {
            self.kick_if_needed(RX_QUEUE);
        }
    }
}
