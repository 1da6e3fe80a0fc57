//! The packet path of one direction of one sub-pair: harvesting the
//! receiver's RX posts, walking the sender's TX queue, the zero-copy hand
//! over and the one copy of the classic path.

use super::copy::{count_rx, count_tx, gather, scatter, MAX_PIECES};
use super::{Held, Mode, SideState, SwitchConfig, Target, Window, NONE, NO_PENDING, PENDING_GIFT};
use crate::chain::Chain;
use crate::counters::SideCounters;
use crate::mem::{GuestMemory, ShmRegion};
use crate::queue::{Queue, QueueError};
use crate::view::SideView;
use sbnet_abi::net::{NetHdr, NET_HDR_LEN, TX_USED_SLOT_KEPT, VIRTIO_NET_HDR_F_GIFT_BUFFER};
use sbnet_abi::ring::{Desc, DESC_F_NEXT, DESC_F_WRITE};
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
    ///
    /// A post of a slot the poster owns is taken too (`SB_F_EARLY_POST`,
    /// `docs/abi.md` §6): a driver posts a slot in the same publish as its
    /// TX of it, and this round may see the post before the TX. A post
    /// changes no owner; the peer's TX of the slot, which needs the peer
    /// to own it, is what completes it.
    #[inline(always)]
    pub(super) fn harvest_rx(
        &mut self,
        fx: &mut SideView<'_>,
        sx: &mut SideState,
    ) -> Result<usize, QueueError> {
        let w = Window::new(fx.window, self.g);
        let sb = fx.shared_buffers;
        let moves = self.mode == Mode::ZeroCopy;
        let slot_size = self.g.slot_size();
        let c = &mut *fx.counters;
        let Some(rx) = fx.rx.as_deref_mut() else {
            return Ok(0);
        };
        let n = rx.avail_pending()?;
        let (posted, pending) = (&mut sx.posted[..], &mut sx.pending[..]);
        for _ in 0..n {
            let (head, d) = rx.pop()?;
            match w.classify(d.addr, d.len) {
                Target::Classic => sx.classic.push_back(head),
                Target::Slot(s) if sb && d.flags == DESC_F_WRITE && d.len == slot_size => {
                    let Some(si) = self.local(s) else {
                        c.rx_post_not_peer_owned += 1;
                        rx.push_used(head, 0);
                        continue;
                    };
                    let p = pending[si];
                    if p != NO_PENDING {
                        // A deferred delivery (rule 5) completes on the post.
                        pending[si] = NO_PENDING;
                        rx.push_used(head, p & !PENDING_GIFT);
                        count_rx(c, p & !PENDING_GIFT, p & PENDING_GIFT != 0);
                    } else if !moves {
                        c.rx_post_not_peer_owned += 1;
                        rx.push_used(head, 0);
                    } else if posted[si] != NONE {
                        c.rx_post_duplicate += 1;
                        rx.push_used(head, 0);
                    } else {
                        posted[si] = head;
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

    /// Walks the sender's TX queue: first a TX held for the peer (rule 5),
    /// then new ones, up to the burst. Zero-copy hand-overs are counted in
    /// a [`Tally`] added to both sides' counters once per burst.
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
        let Some(q) = fy.tx.as_deref_mut() else {
            return Ok(0);
        };
        let mut tx = TxSide {
            q,
            mem: fy.mem,
            c: &mut *fy.counters,
            st: sy,
            w: Window::new(fy.window, self.g),
            sb: fy.shared_buffers,
        };
        let mut rx = RxSide {
            q: if rx_ready { fx.rx.as_deref_mut() } else { None },
            mem: fx.mem,
            c: &mut *fx.counters,
            st: sx,
            active: fx.active,
        };
        let mut t = Tally::default();
        let r = self.tx_loop(&mut tx, &mut rx, shm, &mut t);
        t.add_to(tx.c, rx.c);
        r
    }

    #[inline(always)]
    fn tx_loop(
        &mut self,
        tx: &mut TxSide<'_>,
        rx: &mut RxSide<'_>,
        shm: &ShmRegion,
        t: &mut Tally,
    ) -> Result<usize, QueueError> {
        // One load of the avail index per burst (it sits on a cache line the
        // driver writes).
        let avail = tx.q.avail_pending()?;
        let mut done = 0;
        if let Some(h) = tx.st.held {
            let expired = h.since.elapsed() >= self.cfg.tx_wait;
            let Some(d) = tx.q.read_desc(h.head) else {
                return Ok(0);
            };
            match self.tx_one(h.head, d, tx, rx, shm, t, expired) {
                Outcome::Wait => return Ok(0),
                o => complete(tx.q, h.head, o),
            }
            tx.st.held = None;
            done = 1;
        }
        let n = usize::from(avail).min(self.cfg.burst.saturating_sub(done));
        for _ in 0..n {
            let (head, d) = tx.q.pop()?;
            match self.tx_one(head, d, tx, rx, shm, t, false) {
                Outcome::Wait => {
                    tx.st.held = Some(Held {
                        head,
                        since: Instant::now(),
                    });
                    tx.c.tx_waits += 1;
                    break;
                }
                o => complete(tx.q, head, o),
            }
            done += 1;
        }
        Ok(done)
    }

    /// One TX chain with head `head` and first descriptor `d`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn tx_one(
        &mut self,
        head: u16,
        d: Desc,
        tx: &mut TxSide<'_>,
        rx: &mut RxSide<'_>,
        shm: &ShmRegion,
        t: &mut Tally,
        expired: bool,
    ) -> Outcome {
        match tx.w.classify(d.addr, d.len) {
            Target::Slot(s) if d.flags & (DESC_F_NEXT | DESC_F_WRITE) == 0 && tx.sb => {
                // A foreign slot, or a delivery of `s` to the sender
                // still deferred: the sender has not taken it (its RX
                // post of `s` does), so it does not own `s` yet.
                // Forwarding it would leave the deferred delivery naming
                // a slot the peer then owns.
                match self.local(s).filter(|&si| tx.st.pending[si] == NO_PENDING) {
                    None => {
                        tx.c.tx_not_owner += 1;
                        Outcome::Done
                    }
                    Some(si) => self.tx_slot(s, si, d.len, shm, tx.c, rx, t, expired),
                }
            }
            Target::Classic => self.tx_chain(head, tx, rx, expired),
            _ => {
                tx.c.bad_slot_ref += 1;
                Outcome::Done
            }
        }
    }

    /// A TX chain in classic memory: parsed, checked and copied.
    #[inline(never)]
    fn tx_chain(
        &mut self,
        head: u16,
        tx: &mut TxSide<'_>,
        rx: &mut RxSide<'_>,
        expired: bool,
    ) -> Outcome {
        let w = tx.w;
        match Chain::parse(tx.q, head, false) {
            Ok(chain)
                if chain
                    .segs()
                    .iter()
                    .all(|g| matches!(w.classify(g.addr, g.len), Target::Classic)) =>
            {
                if chain.total < NET_HDR_LEN as u64 {
                    tx.c.bad_chain += 1;
                    Outcome::Done
                } else {
                    self.tx_copy(Source::Chain(&chain, tx.mem), tx.c, rx, expired)
                }
            }
            Ok(_) => {
                tx.c.bad_slot_ref += 1;
                Outcome::Done
            }
            Err(e) => {
                tracing::debug!(side = self.y, "TX chain {head} refused: {e}");
                tx.c.bad_chain += 1;
                Outcome::Done
            }
        }
    }

    /// A TX of slot `s`, local index `si` in the sub-pair (rules 4-7).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn tx_slot(
        &mut self,
        s: u32,
        si: usize,
        len: u32,
        shm: &ShmRegion,
        cy: &mut SideCounters,
        rx: &mut RxSide<'_>,
        t: &mut Tally,
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
                    if let Some(q) = rx.q.as_deref_mut() {
                        // Rule 5: complete the peer's RX for the same slot; no data moves.
                        q.push_used(h, len);
                        rx.st.posted[si] = NONE;
                        self.owner[si] = self.x;
                        t.hand_over(frame, gift);
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
            Mode::Copy => self.tx_slot_copy(s, len, shm, cy, rx, expired),
        }
    }

    /// A TX of slot `s` while slots do not move: the frame is copied and
    /// the slot stays with the sender (rule 7), out of the zero-copy path.
    #[inline(never)]
    fn tx_slot_copy(
        &mut self,
        s: u32,
        len: u32,
        shm: &ShmRegion,
        cy: &mut SideCounters,
        rx: &mut RxSide<'_>,
        expired: bool,
    ) -> Outcome {
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
        let frame = len as usize - NET_HDR_LEN;
        // Copied (or dropped): either way the slot stays with the
        // sender, and its completion says so.
        match self.tx_copy(Source::Slot(data, frame), cy, rx, expired) {
            Outcome::Done => Outcome::Kept,
            o => o,
        }
    }

    /// One copy into the receiver's next classic RX buffer (rule 7).
    fn tx_copy(
        &mut self,
        src: Source<'_>,
        cy: &mut SideCounters,
        rx: &mut RxSide<'_>,
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
        let Some(q) = rx.q.as_deref_mut() else {
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

/// Completes TX head `head` as `o` says (not [`Outcome::Wait`]).
#[inline(always)]
fn complete(q: &mut Queue, head: u16, o: Outcome) {
    let len = if matches!(o, Outcome::Kept) {
        TX_USED_SLOT_KEPT
    } else {
        0
    };
    q.push_used(head, len);
}

/// Zero-copy hand-overs of one burst, added to the counters of both sides
/// once ([`Tally::add_to`]) instead of per packet.
#[derive(Default)]
struct Tally {
    packets: u64,
    bytes: u64,
    gifts: u64,
}

impl Tally {
    /// A frame of `frame` bytes (a gift: header only) handed over.
    #[inline(always)]
    fn hand_over(&mut self, frame: u64, gift: bool) {
        self.packets += u64::from(!gift);
        self.gifts += u64::from(gift);
        self.bytes += frame;
    }

    /// Adds the burst's hand-overs to the sender's and the receiver's counters.
    #[inline(always)]
    fn add_to(&self, cy: &mut SideCounters, cx: &mut SideCounters) {
        if self.packets | self.gifts == 0 {
            return;
        }
        cy.tx_packets += self.packets;
        cy.tx_bytes += self.bytes;
        cy.tx_zero_copy += self.packets;
        cy.gifts_sent += self.gifts;
        cx.rx_packets += self.packets;
        cx.rx_bytes += self.bytes;
        cx.gifts_received += self.gifts;
    }
}

/// The sender's side of a direction, borrowed apart, with its window.
struct TxSide<'a> {
    q: &'a mut Queue,
    mem: &'a GuestMemory,
    c: &'a mut SideCounters,
    st: &'a mut SideState,
    w: Window,
    sb: bool,
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
