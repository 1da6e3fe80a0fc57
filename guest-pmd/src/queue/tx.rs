//! Sending, transmit completions, gifts and posting receive buffers.

use sbnet_abi::net::{TX_USED_SLOT_KEPT, VIRTIO_NET_HDR_F_GIFT_BUFFER};
use sbnet_abi::ring::{full_barrier, DESC_F_WRITE};

use super::{put_hdr, PortQueue, Slots, HDR};
use crate::bus::Bus;
use crate::classic::ClassicState;
use crate::error::PmdError;
use crate::ledger::SlotState;
use crate::pkt::{Buf, Pkt, EARLY};
use crate::vq::{SplitQueue, VqError};

impl<B: Bus> PortQueue<B> {
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
    /// receive queue, in this burst when the port posts early
    /// ([`crate::PortConfig::early_post`]) and the queue has room, otherwise
    /// once the host completes the send. In copy mode and for
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
        // The queue's room is checked once per burst (`push_each`); the
        // packets that do not fit are handled after it.
        let room = self.txq.room();
        let (mut slots, mut classic, mut bytes, mut stale) = (0u32, 0u32, 0u64, 0u32);
        let (id, generation, slot_mem) = (self.id, self.generation, self.slots);
        let mut early = if ZC { self.early_budget() } else { 0 };
        let (ledger, pool, rxq) = (&mut self.ledger, &mut self.classic, &mut self.rxq);
        let mut i = 0;
        self.txq.push_each(room, 0, || loop {
            let pkt = pkts.get_mut(i)?.take();
            i += 1;
            let Some(pkt) = pkt else { continue };
            // The ownership check and the transition are one step: the
            // ledger (or pool) refuses a buffer the application does not
            // hold, and changes nothing then.
            let b = pkt.buf();
            let mut token = b.token();
            let sent = pkt.port() == id
                && match b {
                    // Early post: the slot goes on the receive queue in
                    // this burst too, published together with the send.
                    Buf::Slot(s) if early > 0 => {
                        pkt.generation() == generation && ledger.send_early(s) && {
                            early -= 1;
                            token = post_early(rxq, slot_mem, s);
                            true
                        }
                    }
                    Buf::Slot(s) => pkt.generation() == generation && ledger.send(s),
                    Buf::Classic(c) => pool.send(c),
                };
            if !sent {
                stale += 1;
                continue;
            }
            let (p, addr) = match b {
                Buf::Slot(s) => {
                    slots += 1;
                    (slot_mem.ptr(s), slot_mem.addr(s))
                }
                Buf::Classic(c) => {
                    classic += 1;
                    (pool.ptr(c), pool.iova(c))
                }
            };
            if !pkt.hdr_clean() {
                // A received packet sent on: its header is the peer's.
                // SAFETY: `b` is this port's buffer (a checked handle's),
                // its header inside mapped memory; this side owns it until
                // the publish below.
                unsafe { put_hdr(p, 0) };
            }
            let len = pkt.len() as u32;
            bytes += u64::from(len);
            return Some((addr, HDR + len, token));
        });
        self.st.stale_handles += u64::from(stale);
        // The queue is full: the rest stays with the caller.
        for k in i..pkts.len() {
            let Some(pkt) = pkts[k].take() else { continue };
            if !self.owns(&pkt) {
                self.stale();
                continue;
            }
            pkts[k] = Some(pkt);
            self.tx_full(&pkts[k..]);
            break;
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
            // Slots whose sends completed above go back on the receive
            // queue, so the peer can send them back.
            self.fill_rx();
        }
        self.publish_both();
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
        if ZC {
            self.push_gifts();
        }
        self.fill_rx();
        self.publish_both();
    }

    /// Takes every transmit completion (one `used.idx` load). A slot's
    /// completion in zero-copy mode means the host has given it to the
    /// peer (it waits to be posted on the receive queue), unless its used
    /// length says the host copied it and kept it with this side
    /// (`TX_USED_SLOT_KEPT`). Otherwise the buffer returns to the pool.
    #[inline]
    pub(super) fn reap_tx<const ZC: bool>(&mut self) {
        let pending = match self.txq.poll() {
            Ok(p) => p,
            Err(e) => return self.misbehaved(self.tx_index, e),
        };
        let (ledger, classic) = (&mut self.ledger, &mut self.classic);
        let mut kept_early = None;
        let taken = self.txq.take_each(pending, |used| {
            if used.token & EARLY != 0 {
                // Sent and posted in one burst: the slot's state moved
                // then. A hand-over completes with length 0; keeping the
                // slot breaks the host's `SB_F_EARLY_POST` promise (the
                // slot is posted, so it cannot come back to the pool).
                if used.len == TX_USED_SLOT_KEPT {
                    kept_early = Some(used.token & !EARLY);
                    return false;
                }
                return true;
            }
            let ok = match Buf::from_token(used.token) {
                // A hand-over completes with length 0; a slot the host
                // copied instead comes back (TX_USED_SLOT_KEPT, abi.md §8).
                Buf::Slot(s) => ledger.tx_done(s, ZC && used.len != TX_USED_SLOT_KEPT),
                Buf::Classic(i) => classic.tx_done(i),
            };
            debug_assert!(ok, "completed buffer was not in flight");
            true
        });
        if let Err(e) = taken {
            self.misbehaved(self.tx_index, e);
        }
        if let Some(slot) = kept_early {
            self.misbehaved(self.tx_index, VqError::EarlyPostKept { slot });
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
        let mut early = self.early_budget();
        let (ledger, slots, rxq) = (&mut self.ledger, self.slots, &mut self.rxq);
        // `due` never exceeds the queue's room (a u16).
        let max = u16::try_from(due).unwrap_or(u16::MAX);
        let n = self.txq.push_each(max, 0, || {
            // Early post (see `tx_impl`): gifted and posted at once.
            let (s, token) = if early > 0 {
                let s = ledger.gift_early()?;
                early -= 1;
                (s, post_early(rxq, slots, s))
            } else {
                let s = ledger.gift()?;
                (s, Buf::Slot(s).token())
            };
            // SAFETY: as in `Port::write_hdr`: slot `s` is below the slot
            // count, so its header is inside the mapped region, and it is
            // this side's until the publish that follows.
            unsafe { put_hdr(slots.ptr(s), VIRTIO_NET_HDR_F_GIFT_BUFFER) };
            Some((slots.addr(s), HDR, token))
        });
        self.st.gifts_sent += u64::from(n);
        u32::from(n)
    }

    /// How many slots this burst may post early: none unless the port
    /// posts early; otherwise the receive queue's room beyond what every
    /// peer slot waiting to be posted needs. Those go first (oldest first,
    /// as `fill_rx` posts them): a delivery the host deferred to this side
    /// waits for such a post, and early posts that took the last room could
    /// leave both sides' queues full of posts that wait for each other.
    /// Nothing else changes either count during the burst.
    #[inline]
    fn early_budget(&self) -> u32 {
        if !self.early {
            return 0;
        }
        u32::from(self.rxq.room()).saturating_sub(self.ledger.unposted())
    }

    /// One `avail.idx` store per queue for everything queued on it, then
    /// one barrier for both, then a notification for each queue that was
    /// published and whose device side is not polling.
    #[inline]
    fn publish_both(&mut self) {
        let tx = self.txq.publish();
        let rx = self.rxq.publish();
        if !(tx || rx) {
            return;
        }
        full_barrier();
        if tx && self.txq.wants_notify() {
            self.kick(self.tx_index);
        }
        if rx && self.rxq.wants_notify() {
            self.kick(self.rx_index);
        }
    }

    /// [`Self::fill_rx`], then one publish of the receive queue and at most
    /// one notification.
    pub(super) fn refill_rx(&mut self) {
        self.fill_rx();
        self.publish_both();
    }

    /// Queues receive buffers: classic ones up to the mode's target first
    /// (classic frames and resync completions need them), then every peer
    /// slot waiting to be posted (rule 3), as far as the queue has room.
    /// Published by the caller.
    #[inline]
    fn fill_rx(&mut self) {
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
        let (ledger, slots) = (&mut self.ledger, self.slots);
        let post = u16::try_from(ledger.unposted()).unwrap_or(u16::MAX);
        self.rxq.push_each(post, DESC_F_WRITE, || {
            let s = ledger.next_to_post()?;
            Some((slots.addr(s), slots.size, Buf::Slot(s).token()))
        });
    }
}

/// Posts slot `s` on the receive queue (early post; the caller counted it
/// against [`PortQueue::early_budget`], so there is room) and returns the
/// transmit token of its send, marked [`EARLY`].
#[inline(always)]
fn post_early(rxq: &mut SplitQueue, slots: Slots, s: u32) -> u32 {
    let t = Buf::Slot(s).token();
    let posted = rxq.push(slots.addr(s), slots.size, DESC_F_WRITE, t);
    debug_assert!(posted, "the early budget counted the room");
    t | EARLY
}
