//! The packet path of one direction of one sub-pair: harvesting the
//! receiver's RX posts, walking the sender's TX queue, the zero-copy hand
//! over and the one copy of the classic path.

use super::copy::{count_rx, count_tx, gather, scatter, MAX_PIECES};
use super::{
    classify, Held, Mode, SideState, SwitchConfig, Target, NONE, NO_PENDING, PENDING_GIFT,
};
use crate::chain::Chain;
use crate::counters::SideCounters;
use crate::mem::{GuestMemory, ShmRegion};
use crate::queue::{Queue, QueueError};
use crate::view::SideView;
use sbnet_abi::net::{NetHdr, NET_HDR_LEN, TX_USED_SLOT_KEPT, VIRTIO_NET_HDR_F_GIFT_BUFFER};
use sbnet_abi::ring::{DESC_F_NEXT, DESC_F_WRITE};
use sbnet_abi::shm::SlotGeometry;
use std::time::Instant;

/// Split borrows for one direction of one sub-pair: sender `y`, receiver
/// `x`, queue pair `pair` (slots `s` with `s & mask == pair`, at local
/// index `s >> shift` in the sub-pair's tables and ledger share). `MQ` is
/// false on a link with one queue pair: every slot is local, at its own
/// index, and the one-pair path costs what it did before sub-pairs.
pub(super) struct Ctx<'a, const MQ: bool> {
    pub(super) cfg: &'a SwitchConfig,
    pub(super) g: &'a SlotGeometry,
    /// The mode slots move in on this sub-pair: the link's, or copy when
    /// the sub-pair is not enabled on both sides.
    pub(super) mode: Mode,
    /// The sub-pair's share of the ledger.
    pub(super) owner: &'a mut [u8],
    pub(super) y: u8,
    pub(super) x: u8,
    pub(super) pair: u32,
    pub(super) mask: u32,
    pub(super) shift: u32,
}

/// Where a TX frame's bytes are.
enum Source<'a> {
    Slot(*const u8, usize),
    Chain(&'a Chain, &'a GuestMemory),
}

impl<const MQ: bool> Ctx<'_, MQ> {
    /// The local index of slot `s`, or None for a slot of another sub-pair
    /// (a foreign slot: refused like a slot of the wrong owner).
    #[inline(always)]
    fn local(&self, s: u32) -> Option<usize> {
        if !MQ {
            return Some(s as usize);
        }
        (s & self.mask == self.pair).then_some((s >> self.shift) as usize)
    }

    /// Takes the receiver's new RX posts into the slot and classic tables.
    #[inline(always)]
    pub(super) fn harvest_rx(
        &mut self,
        fx: &mut SideView<'_>,
        sx: &mut SideState,
    ) -> Result<usize, QueueError> {
        let window = fx.window;
        let sb = fx.shared_buffers;
        let slot_size = self.g.slot_size();
        let c = &mut *fx.counters;
        let Some(rx) = fx.rx.as_deref_mut() else {
            return Ok(0);
        };
        let n = rx.avail_pending()?;
        for _ in 0..n {
            let head = rx.pop_head()?;
            let Some(d) = rx.read_desc(head) else {
                continue;
            };
            match classify(d.addr, d.len, window, self.g) {
                Target::Classic => sx.classic.push_back(head),
                Target::Slot(s) if sb && d.flags == DESC_F_WRITE && d.len == slot_size => {
                    let Some(si) = self.local(s) else {
                        c.rx_post_not_peer_owned += 1;
                        rx.push_used(head, 0);
                        continue;
                    };
                    let p = sx.pending[si];
                    if p != NO_PENDING {
                        // A deferred delivery (rule 5) completes on the post.
                        sx.pending[si] = NO_PENDING;
                        rx.push_used(head, p & !PENDING_GIFT);
                        count_rx(c, p & !PENDING_GIFT, p & PENDING_GIFT != 0);
                    } else if self.owner[si] == self.x || self.mode != Mode::ZeroCopy {
                        c.rx_post_not_peer_owned += 1;
                        rx.push_used(head, 0);
                    } else if sx.posted[si] != NONE {
                        c.rx_post_duplicate += 1;
                        rx.push_used(head, 0);
                    } else {
                        sx.posted[si] = head;
                    }
                }
                _ => {
                    c.bad_slot_ref += 1;
                    rx.push_used(head, 0);
                }
            }
        }
        Ok(n as usize)
    }

    /// Walks the sender's TX queue.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn forward_tx(
        &mut self,
        fy: &mut SideView<'_>,
        sy: &mut SideState,
        fx: &mut SideView<'_>,
        sx: &mut SideState,
        shm: &ShmRegion,
        rx_ready: bool,
    ) -> Result<usize, QueueError> {
        let window = fy.window;
        let y_sb = fy.shared_buffers;
        let x_active = fx.active;
        let (ymem, cy) = (fy.mem, &mut *fy.counters);
        let Some(tx) = fy.tx.as_deref_mut() else {
            return Ok(0);
        };
        let (xmem, cx) = (fx.mem, &mut *fx.counters);
        let mut rx = if rx_ready { fx.rx.as_deref_mut() } else { None };
        let mut done = 0;
        // One load of the avail index per burst (it sits on a cache line the
        // driver writes).
        let mut avail = tx.avail_pending()?;
        // The receiver's side, borrowed apart for one packet.
        macro_rules! rx_side {
            () => {
                RxSide {
                    q: rx.as_deref_mut(),
                    mem: xmem,
                    c: cx,
                    st: sx,
                    active: x_active,
                }
            };
        }
        while done < self.cfg.burst {
            let head = match sy.held {
                Some(h) => h.head,
                None => {
                    if avail == 0 {
                        break;
                    }
                    avail -= 1;
                    tx.pop_head()?
                }
            };
            let expired = sy
                .held
                .is_some_and(|h| h.since.elapsed() >= self.cfg.tx_wait);
            let Some(d) = tx.read_desc(head) else { break };
            let outcome = match classify(d.addr, d.len, window, self.g) {
                Target::Slot(s) if d.flags & (DESC_F_NEXT | DESC_F_WRITE) == 0 && y_sb => {
                    // A foreign slot, or a delivery of `s` to the sender
                    // still deferred: the sender has not taken it (its RX
                    // post of `s` does), so it does not own `s` yet.
                    // Forwarding it would leave the deferred delivery naming
                    // a slot the peer then owns.
                    match self.local(s).filter(|&si| sy.pending[si] == NO_PENDING) {
                        None => {
                            cy.tx_not_owner += 1;
                            Outcome::Done
                        }
                        Some(si) => self.tx_slot(s, si, d.len, shm, cy, rx_side!(), expired),
                    }
                }
                Target::Classic => match Chain::parse(tx, head, false) {
                    Ok(chain)
                        if chain.segs().iter().all(|g| {
                            matches!(classify(g.addr, g.len, window, self.g), Target::Classic)
                        }) =>
                    {
                        if chain.total < NET_HDR_LEN as u64 {
                            cy.bad_chain += 1;
                            Outcome::Done
                        } else {
                            self.tx_copy(Source::Chain(&chain, ymem), cy, rx_side!(), expired)
                        }
                    }
                    Ok(_) => {
                        cy.bad_slot_ref += 1;
                        Outcome::Done
                    }
                    Err(e) => {
                        tracing::debug!(side = self.y, "TX chain {head} refused: {e}");
                        cy.bad_chain += 1;
                        Outcome::Done
                    }
                },
                _ => {
                    cy.bad_slot_ref += 1;
                    Outcome::Done
                }
            };
            match outcome {
                Outcome::Done | Outcome::Kept => {
                    let len = if matches!(outcome, Outcome::Kept) {
                        TX_USED_SLOT_KEPT
                    } else {
                        0
                    };
                    tx.push_used(head, len);
                    sy.held = None;
                    done += 1;
                }
                Outcome::Wait => {
                    if sy.held.is_none() {
                        sy.held = Some(Held {
                            head,
                            since: Instant::now(),
                        });
                        cy.tx_waits += 1;
                    }
                    break;
                }
            }
        }
        Ok(done)
    }

    /// A TX of slot `s`, local index `si` in the sub-pair (rules 4-7).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn tx_slot(
        &mut self,
        s: u32,
        si: usize,
        len: u32,
        shm: &ShmRegion,
        cy: &mut SideCounters,
        rx: RxSide<'_>,
        expired: bool,
    ) -> Outcome {
        if (len as usize) < NET_HDR_LEN || len > self.g.slot_size() {
            cy.bad_slot_ref += 1;
            return Outcome::Done;
        }
        if self.owner[si] != self.y {
            cy.tx_not_owner += 1;
            return Outcome::Done;
        }
        let frame = (len as usize - NET_HDR_LEN) as u64;
        match self.mode {
            Mode::ZeroCopy => {
                // The host never reads slot memory on this path (the slot's
                // cache line stays with the guests): a gift is a header with
                // no frame, so it is told apart by its length for the
                // counters. Receivers go by the header's GIFT_BUFFER flag.
                let gift = frame == 0;
                let h = rx.st.posted[si];
                if h != NONE {
                    if let Some(q) = rx.q {
                        // Rule 5: complete the peer's RX for the same slot; no data moves.
                        q.push_used(h, len);
                        rx.st.posted[si] = NONE;
                        self.owner[si] = self.x;
                        count_tx(cy, frame, gift, true);
                        count_rx(rx.c, len, gift);
                        return Outcome::Done;
                    }
                }
                if expired {
                    // Ownership passes now; delivery completes when the peer posts s.
                    self.owner[si] = self.x;
                    rx.st.pending[si] = len | if gift { PENDING_GIFT } else { 0 };
                    cy.tx_deferred += 1;
                    count_tx(cy, frame, gift, true);
                    return Outcome::Done;
                }
                Outcome::Wait
            }
            Mode::Copy => {
                let Some(p) = shm.ptr(self.g.slot_offset(s), len as u64) else {
                    cy.bad_slot_ref += 1;
                    return Outcome::Done;
                };
                // SAFETY: p is inside the live region mapping (ShmRegion::ptr
                // checked the range); a volatile byte read is fine whatever
                // the guests write.
                let gift = unsafe { p.read_volatile() } & VIRTIO_NET_HDR_F_GIFT_BUFFER != 0;
                if gift {
                    cy.bad_gift += 1;
                    return Outcome::Kept;
                }
                // SAFETY: NET_HDR_LEN <= len, and [p, p + len) is mapped.
                let data = unsafe { p.add(NET_HDR_LEN) };
                // Copied (or dropped): either way the slot stays with the
                // sender, and its completion says so.
                match self.tx_copy(Source::Slot(data, frame as usize), cy, rx, expired) {
                    Outcome::Done => Outcome::Kept,
                    o => o,
                }
            }
        }
    }

    /// One copy into the receiver's next classic RX buffer (rule 7).
    fn tx_copy(
        &mut self,
        src: Source<'_>,
        cy: &mut SideCounters,
        rx: RxSide<'_>,
        expired: bool,
    ) -> Outcome {
        if !rx.active {
            cy.tx_no_peer += 1;
            return Outcome::Done;
        }
        let mut pieces = [(std::ptr::null_mut::<u8>(), 0usize); MAX_PIECES];
        let (n_src, skip, frame) = match src {
            Source::Slot(p, len) => {
                pieces[0] = (p as *mut u8, len);
                (1, 0, len)
            }
            Source::Chain(chain, mem) => match gather(chain.segs(), mem, false, &mut pieces) {
                Some(n) => (n, NET_HDR_LEN, chain.total as usize - NET_HDR_LEN),
                None => {
                    cy.bad_chain += 1;
                    return Outcome::Done;
                }
            },
        };
        let Some(q) = rx.q else {
            return if expired {
                cy.rx_no_buffer += 1;
                Outcome::Done
            } else {
                Outcome::Wait
            };
        };
        let mut out = [(std::ptr::null_mut::<u8>(), 0usize); MAX_PIECES];
        loop {
            let Some(&rh) = rx.st.classic.front() else {
                return if expired {
                    cy.rx_no_buffer += 1;
                    Outcome::Done
                } else {
                    Outcome::Wait
                };
            };
            let chain = match Chain::parse(q, rh, true) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(side = self.x, "RX chain {rh} refused: {e}");
                    rx.st.classic.pop_front();
                    q.push_used(rh, 0);
                    rx.c.bad_chain += 1;
                    continue;
                }
            };
            let Some(n_dst) = gather(chain.segs(), rx.mem, true, &mut out) else {
                rx.st.classic.pop_front();
                q.push_used(rh, 0);
                rx.c.bad_chain += 1;
                continue;
            };
            let need = NET_HDR_LEN + frame;
            if need as u64 > chain.total {
                cy.frame_too_big += 1;
                return Outcome::Done;
            }
            let hdr = NetHdr {
                num_buffers: 1,
                ..Default::default()
            }
            .to_bytes();
            scatter(&out[..n_dst], &hdr, &pieces[..n_src], skip);
            rx.st.classic.pop_front();
            q.push_used(rh, need as u32);
            count_tx(cy, frame as u64, false, false);
            cy.copied_bytes += need as u64;
            count_rx(rx.c, need as u32, false);
            return Outcome::Done;
        }
    }
}

/// The receiver's side of a direction, borrowed apart.
struct RxSide<'a> {
    q: Option<&'a mut Queue>,
    mem: &'a GuestMemory,
    c: &'a mut SideCounters,
    st: &'a mut SideState,
    active: bool,
}

enum Outcome {
    /// Complete the TX descriptor with length 0.
    Done,
    /// A slot copied in place of a hand-over: complete the TX descriptor
    /// with `TX_USED_SLOT_KEPT`, the slot stays with the sender.
    Kept,
    /// Hold the TX descriptor (rule 5).
    Wait,
}
