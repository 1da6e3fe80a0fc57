//! The pairing switch: moves packets from one side's TX queue to the other
//! side's RX queue, zero-copy for Shared Buffers slots and with one copy for
//! everything else (`docs/abi.md` §5-§6).
//!
//! The switch knows nothing of vfio-user nor of the function's registers.
//! It works on a narrow [`SideView`] of each side (queues, guest memory,
//! counters, window, flags, an interrupt hook), built once per polling
//! round, and the host mapping of the region, and keeps the host's
//! ownership ledger.
//!
//! Per burst and direction: harvest the receiver's new RX posts into
//! per-slot and classic tables, then walk the sender's TX queue. The zero-copy
//! path reads one descriptor and one header byte per packet, touches two
//! table entries and writes two used elements; nothing allocates, locks or
//! makes a syscall (an interrupt is one eventfd write per burst, and only for
//! a driver that asked for interrupts).

use crate::chain::{Chain, Seg};
use crate::counters::SideCounters;
use crate::mem::{GuestMemory, ShmRegion};
use crate::queue::{Queue, QueueError};
use crate::view::SideView;
use sbnet_abi::net::{NetHdr, NET_HDR_LEN, RX_QUEUE, TX_QUEUE, VIRTIO_NET_HDR_F_GIFT_BUFFER};
use sbnet_abi::ring::{DESC_F_NEXT, DESC_F_WRITE};
use sbnet_abi::shm::{initial_owner, SlotGeometry};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const NONE: u16 = u16::MAX;
const NO_PENDING: u32 = u32::MAX;
const PENDING_GIFT: u32 = 1 << 31;
/// Owner value for "no side" (copy mode without a shared-buffers side).
pub const NOBODY: u8 = 2;

/// How the current epoch moves slots (`docs/abi.md` §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Both sides negotiated shared buffers and are up: slots change hands.
    ZeroCopy,
    /// Otherwise: everything is copied; slots stay with their owner.
    Copy,
}

/// Tunables of the switch.
#[derive(Debug, Clone, Copy)]
pub struct SwitchConfig {
    /// Most TX chains handled per side and poll.
    pub burst: usize,
    /// How long a TX may wait for the peer's RX buffer (rule 5).
    pub tx_wait: Duration,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            burst: 64,
            tx_wait: Duration::from_millis(20),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Held {
    head: u16,
    since: Instant,
}

/// Per-side switching state.
#[derive(Debug)]
struct SideState {
    /// Per slot: the RX head that posts it, or `NONE`.
    posted: Vec<u16>,
    /// Per slot: a deferred delivery's length (| `PENDING_GIFT`), or `NO_PENDING`.
    pending: Vec<u32>,
    /// Classic RX heads, in the order they were posted.
    classic: VecDeque<u16>,
    /// A TX head waiting for the peer.
    held: Option<Held>,
    /// Flushing until the driver acknowledges the epoch.
    resyncing: bool,
}

impl SideState {
    fn new(slots: usize, max_queue: u16) -> Self {
        Self {
            posted: vec![NONE; slots],
            pending: vec![NO_PENDING; slots],
            classic: VecDeque::with_capacity(max_queue as usize),
            held: None,
            resyncing: false,
        }
    }
}

/// The host's view of one epoch: who owns each slot and what is posted.
#[derive(Debug)]
pub struct Switch {
    cfg: SwitchConfig,
    geometry: SlotGeometry,
    mode: Mode,
    owner: Vec<u8>,
    sides: [SideState; 2],
}

/// What a descriptor address refers to.
enum Target {
    Classic,
    Slot(u32),
    BadSlot,
}

#[inline]
fn classify(addr: u64, len: u32, window: u64, g: &SlotGeometry) -> Target {
    let size = g.region_size();
    // Overlap test with checked arithmetic: the window is [window, window+size).
    let end = addr.saturating_add(len as u64);
    let wend = window.saturating_add(size);
    if window == 0 || end <= window || addr >= wend {
        return Target::Classic;
    }
    match addr.checked_sub(window).and_then(|off| g.slot_at(off)) {
        Some(s) => Target::Slot(s),
        None => Target::BadSlot,
    }
}

impl Switch {
    /// A switch for this geometry; starts in copy mode with no owner.
    pub fn new(cfg: SwitchConfig, geometry: SlotGeometry, max_queue: u16) -> Self {
        let n = geometry.slot_count() as usize;
        Self {
            cfg,
            geometry,
            mode: Mode::Copy,
            owner: vec![NOBODY; n],
            sides: [SideState::new(n, max_queue), SideState::new(n, max_queue)],
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The host ledger: owner of each slot (0, 1 or [`NOBODY`]).
    pub fn owners(&self) -> &[u8] {
        &self.owner
    }

    /// Slots side `k` has posted on its RX queue.
    pub fn posted(&self, k: usize) -> impl Iterator<Item = u32> + '_ {
        self.sides[k]
            .posted
            .iter()
            .enumerate()
            .filter(|(_, h)| **h != NONE)
            .map(|(s, _)| s as u32)
    }

    /// Slots whose delivery to side `k` is deferred until it posts them.
    pub fn deferred(&self, k: usize) -> impl Iterator<Item = u32> + '_ {
        self.sides[k]
            .pending
            .iter()
            .enumerate()
            .filter(|(_, p)| **p != NO_PENDING)
            .map(|(s, _)| s as u32)
    }

    /// True while side `k` must acknowledge the epoch.
    pub fn resyncing(&self, k: usize) -> bool {
        self.sides[k].resyncing
    }

    /// Side `k` acknowledged the current epoch.
    pub fn acked(&mut self, k: usize) {
        self.sides[k].resyncing = false;
    }

    /// Starts a new epoch: resets the ledger (rule 2 or copy mode), flushes
    /// what shared-buffers sides hold and makes them resync (rule 9).
    pub fn new_epoch(&mut self, sides: &mut [SideView<'_>; 2]) {
        let sb = [sides[0].shared_buffers, sides[1].shared_buffers];
        self.mode = if sb[0] && sb[1] {
            Mode::ZeroCopy
        } else {
            Mode::Copy
        };
        for (s, o) in self.owner.iter_mut().enumerate() {
            *o = match (self.mode, sb) {
                (Mode::ZeroCopy, _) => initial_owner(s as u32),
                (Mode::Copy, [true, _]) => 0,
                (Mode::Copy, [_, true]) => 1,
                _ => NOBODY,
            };
        }
        for (k, f) in sides.iter_mut().enumerate() {
            let st = &mut self.sides[k];
            st.pending.fill(NO_PENDING);
            if !f.active {
                // Its queues are gone (reset) or will be re-harvested at DRIVER_OK.
                st.posted.fill(NONE);
                st.classic.clear();
                st.held = None;
                st.resyncing = false;
                continue;
            }
            if !sb[k] {
                // A plain virtio-net driver cannot resync; it keeps its classic buffers.
                st.posted.fill(NONE);
                continue;
            }
            st.resyncing = true;
            let (rx, tx) = (f.rx.as_deref_mut(), f.tx.as_deref_mut());
            let mut flushed = 0;
            if let Some(rx) = rx {
                for h in st.posted.iter_mut().filter(|h| **h != NONE) {
                    rx.push_used(std::mem::replace(h, NONE), 0);
                    flushed += 1;
                }
                for h in st.classic.drain(..) {
                    rx.push_used(h, 0);
                    flushed += 1;
                }
            }
            if let (Some(tx), Some(h)) = (tx, st.held.take()) {
                tx.push_used(h.head, 0);
                flushed += 1;
            }
            f.counters.flushed += flushed;
            f.publish(RX_QUEUE);
            f.publish(TX_QUEUE);
        }
    }

    /// One polling round over both directions. Returns the number of
    /// descriptors handled (0 = idle). A side whose ring broke is left
    /// marked in its view ([`SideView::broken`]).
    pub fn poll(&mut self, sides: &mut [SideView<'_>; 2], shm: &ShmRegion) -> usize {
        let mut work = 0;
        for from in 0..2 {
            work += self.direction(sides, shm, from);
        }
        work
    }

    /// True when a TX is waiting for a timer (the caller must not sleep long).
    pub fn has_waiting(&self) -> bool {
        self.sides.iter().any(|s| s.held.is_some())
    }

    fn direction(&mut self, sides: &mut [SideView<'_>; 2], shm: &ShmRegion, from: usize) -> usize {
        let [f0, f1] = sides;
        let (fy, fx) = if from == 0 { (f0, f1) } else { (f1, f0) };
        if !fy.active {
            return 0;
        }
        let [s0, s1] = &mut self.sides;
        let (sy, sx) = if from == 0 { (s0, s1) } else { (s1, s0) };
        if sy.resyncing {
            return flush_side(fy);
        }
        let mut ctx = Ctx {
            cfg: &self.cfg,
            g: &self.geometry,
            mode: self.mode,
            owner: &mut self.owner,
            y: from as u8,
            x: (1 - from) as u8,
        };
        let mut work = 0;
        let rx_ready = fx.active && !sx.resyncing;
        if rx_ready {
            match ctx.harvest_rx(fx, sx) {
                Ok(n) => work += n,
                Err(e) => fx.needs_reset(e),
            }
        }
        match ctx.forward_tx(fy, sy, fx, sx, shm, rx_ready) {
            Ok(n) => work += n,
            Err(e) => fy.needs_reset(e),
        }
        fy.publish(TX_QUEUE);
        fx.publish(RX_QUEUE);
        work
    }

    /// True while a TX of side `k` waits for the peer's RX buffer (rule 5):
    /// the one descriptor the host holds for that side, for ledger reports.
    pub fn waiting(&self, k: usize) -> bool {
        self.sides[k].held.is_some()
    }
}

/// Completes everything a resyncing side makes available with length 0.
#[cold]
fn flush_side(f: &mut SideView<'_>) -> usize {
    let mut n = 0;
    let mut err = None;
    for q in [RX_QUEUE, TX_QUEUE] {
        let Some(queue) = f.queue(q) else {
            continue;
        };
        if let Err(e) = drain_zero(queue, &mut n) {
            err = Some(e);
        }
    }
    f.counters.flushed += n as u64;
    if let Some(e) = err {
        f.needs_reset(e);
        return n;
    }
    f.publish(RX_QUEUE);
    f.publish(TX_QUEUE);
    n
}

fn drain_zero(q: &mut Queue, n: &mut usize) -> Result<(), QueueError> {
    for _ in 0..q.avail_pending()? {
        let h = q.pop_head()?;
        q.push_used(h, 0);
        *n += 1;
    }
    Ok(())
}

/// Split borrows for one direction: sender `y`, receiver `x`.
struct Ctx<'a> {
    cfg: &'a SwitchConfig,
    g: &'a SlotGeometry,
    mode: Mode,
    owner: &'a mut [u8],
    y: u8,
    x: u8,
}

/// Where a TX frame's bytes are.
enum Source<'a> {
    Slot(*const u8, usize),
    Chain(&'a Chain, &'a GuestMemory),
}

impl Ctx<'_> {
    /// Takes the receiver's new RX posts into the slot and classic tables.
    fn harvest_rx(
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
                    let si = s as usize;
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
    fn forward_tx(
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
                Target::Slot(s)
                    if d.flags & (DESC_F_NEXT | DESC_F_WRITE) == 0
                        && y_sb
                        && sy.pending[s as usize] != NO_PENDING =>
                {
                    // A delivery of `s` to the sender is still deferred: the
                    // sender has not taken it (its RX post of `s` does), so
                    // it does not own `s` yet. Forwarding it would leave the
                    // deferred delivery naming a slot the peer then owns.
                    cy.tx_not_owner += 1;
                    Outcome::Done
                }
                Target::Slot(s) if d.flags & (DESC_F_NEXT | DESC_F_WRITE) == 0 && y_sb => {
                    let rx_out = RxSide {
                        q: rx.as_deref_mut(),
                        mem: xmem,
                        c: cx,
                        st: sx,
                        active: x_active,
                    };
                    self.tx_slot(s, d.len, shm, cy, rx_out, expired)
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
                            let rx_out = RxSide {
                                q: rx.as_deref_mut(),
                                mem: xmem,
                                c: cx,
                                st: sx,
                                active: x_active,
                            };
                            self.tx_copy(Source::Chain(&chain, ymem), cy, rx_out, expired)
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
                Outcome::Done => {
                    tx.push_used(head, 0);
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

    /// A TX of slot `s` (rules 4-7).
    #[inline]
    fn tx_slot(
        &mut self,
        s: u32,
        len: u32,
        shm: &ShmRegion,
        cy: &mut SideCounters,
        rx: RxSide<'_>,
        expired: bool,
    ) -> Outcome {
        let si = s as usize;
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
                    return Outcome::Done;
                }
                // SAFETY: NET_HDR_LEN <= len, and [p, p + len) is mapped.
                let data = unsafe { p.add(NET_HDR_LEN) };
                self.tx_copy(Source::Slot(data, frame as usize), cy, rx, expired)
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
    Done,
    Wait,
}

/// Host pieces a chain's buffers may come in: one per buffer, more for a
/// buffer across DMA maps that are not contiguous in the host (a vIOMMU
/// guest's 4 KiB maps); a chain needing more is refused. Stack arrays, no
/// allocation per packet; no larger than one per descriptor, so the
/// single-map path pays nothing more than before.
const MAX_PIECES: usize = crate::chain::MAX_SEGS;

/// Translates every buffer of a chain into host pieces (one per buffer,
/// more for a buffer across maps); None when one is outside guest memory,
/// or, for the buffers the device writes (`write`), outside maps the
/// client made writable, or when the pieces do not fit in `out`. The
/// pointers are valid only until the DMA maps change: they are taken anew
/// for every packet and never kept across polls.
#[inline(always)]
fn gather(
    segs: &[Seg],
    mem: &GuestMemory,
    write: bool,
    out: &mut [(*mut u8, usize)],
) -> Option<usize> {
    // One piece per buffer: the usual case, as cheap as ever.
    for (i, (o, s)) in out.iter_mut().zip(segs).enumerate() {
        let p = if write {
            mem.translate_writable(s.addr, s.len as u64)
        } else {
            mem.translate(s.addr, s.len as u64)
        };
        match p {
            Some(p) => *o = (p, s.len as usize),
            None => return gather_pieces(segs, mem, write, out, i),
        }
    }
    Some(segs.len())
}

/// [`gather`] from buffer `from` on, when that one is not one host range.
#[cold]
fn gather_pieces(
    segs: &[Seg],
    mem: &GuestMemory,
    write: bool,
    out: &mut [(*mut u8, usize)],
    from: usize,
) -> Option<usize> {
    let mut n = from;
    for s in &segs[from..] {
        n += mem.pieces(s.addr, s.len as u64, write, out.get_mut(n..)?)?;
    }
    Some(n)
}

/// Writes `hdr` then the source bytes (after skipping `skip`) across `dst`.
/// The caller checked that `dst` holds `hdr.len() + source bytes - skip`.
fn scatter(dst: &[(*mut u8, usize)], hdr: &[u8], src: &[(*mut u8, usize)], mut skip: usize) {
    let mut di = 0;
    let mut doff = 0;
    let mut put = |mut p: *const u8, mut n: usize| {
        while n > 0 {
            let Some(&(d, dl)) = dst.get(di) else { return };
            let k = n.min(dl - doff);
            // SAFETY: d..d+dl is a translated RX buffer inside a live DMA map
            // (gather); p..p+n lies in a translated TX buffer, the host's own
            // header or the region; doff + k <= dl. Guest memory may change
            // concurrently: this is a byte copy of shared memory, never a
            // reference to it.
            unsafe { std::ptr::copy_nonoverlapping(p, d.add(doff), k) };
            // SAFETY: k <= n, so p stays within its buffer.
            p = unsafe { p.add(k) };
            n -= k;
            doff += k;
            if doff == dl {
                di += 1;
                doff = 0;
            }
        }
    };
    put(hdr.as_ptr(), hdr.len());
    for &(p, l) in src {
        if skip >= l {
            skip -= l;
            continue;
        }
        // SAFETY: skip < l: the pointer stays inside the buffer.
        put(unsafe { p.add(skip) }, l - skip);
        skip = 0;
    }
}

#[inline]
fn count_tx(c: &mut SideCounters, frame: u64, gift: bool, zero_copy: bool) {
    if gift {
        c.gifts_sent += 1;
    } else {
        c.tx_packets += 1;
        c.tx_bytes += frame;
        if zero_copy {
            c.tx_zero_copy += 1;
        } else {
            c.tx_copied += 1;
        }
    }
}

#[inline]
fn count_rx(c: &mut SideCounters, len: u32, gift: bool) {
    if gift {
        c.gifts_received += 1;
    } else {
        c.rx_packets += 1;
        c.rx_bytes += (len as u64).saturating_sub(NET_HDR_LEN as u64);
    }
}
