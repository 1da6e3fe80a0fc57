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
//!
//! On a link with `Q` queue pairs (`docs/abi.md` §8) the switch is `Q`
//! independent sub-pairs: sub-pair `q` owns the slots `s % Q == q`, their
//! share of the ledger and both sides' tables for them, and switches
//! transmitq(q) of one side to receiveq(q) of the other. Nothing of one
//! sub-pair's state is touched by another's zero-copy path. Classic frames
//! from transmitq(i) go to the peer's receiveq(`i % E_peer`).

mod copy;
mod path;

use crate::mem::ShmRegion;
use crate::queue::{Queue, QueueError};
use crate::view::SideView;
use path::Ctx;
use sbnet_abi::net::{RX_QUEUE, TX_QUEUE};
use sbnet_abi::shm::{initial_owner_mq, SlotGeometry};
use std::borrow::Cow;
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

/// Per-side switching state of one sub-pair.
#[derive(Debug)]
struct SideState {
    /// Per slot (local index): the RX head that posts it, or `NONE`.
    posted: Vec<u16>,
    /// Per slot (local index): a deferred delivery's length (|
    /// `PENDING_GIFT`), or `NO_PENDING`.
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

/// One queue pair's switching state (a sub-pair): its share of the ledger
/// and both sides' tables, indexed by the local slot number `s / Q`.
#[derive(Debug)]
struct Sub {
    owner: Vec<u8>,
    sides: [SideState; 2],
}

/// The host's view of one epoch: who owns each slot and what is posted,
/// per sub-pair.
#[derive(Debug)]
pub struct Switch {
    cfg: SwitchConfig,
    geometry: SlotGeometry,
    mode: Mode,
    q_pairs: u16,
    shift: u32,
    subs: Vec<Sub>,
}

/// What a descriptor address refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Classic,
    Slot(u32),
    BadSlot,
}

/// A side's Shared Buffers window as the packet path tests addresses
/// against it, worked out once per burst: `[base, base + size)` with `size`
/// 0 when there is no window (base 0) and clipped so the end does not pass
/// `u64::MAX`, the slot size as a mask and a shift.
#[derive(Clone, Copy)]
struct Window {
    base: u64,
    size: u64,
    mask: u64,
    shift: u32,
}

impl Window {
    #[inline(always)]
    fn new(base: u64, g: &SlotGeometry) -> Self {
        Self {
            base,
            size: if base == 0 {
                0
            } else {
                g.region_size().min(u64::MAX - base)
            },
            mask: u64::from(g.slot_size()) - 1,
            shift: g.slot_size().trailing_zeros(),
        }
    }

    /// What `[addr, addr + len)` refers to: a slot when it starts exactly
    /// at a slot inside the window, a bad slot reference when it otherwise
    /// overlaps the window, classic memory when it does not. One
    /// subtraction and one comparison on the zero-copy path: `off` wraps
    /// past `size` for an address below the window.
    #[inline(always)]
    fn classify(&self, addr: u64, len: u32) -> Target {
        let off = addr.wrapping_sub(self.base);
        if off < self.size {
            if off & self.mask == 0 {
                Target::Slot((off >> self.shift) as u32)
            } else {
                Target::BadSlot
            }
        } else if addr < self.base && addr.saturating_add(u64::from(len)) > self.base {
            Target::BadSlot
        } else {
            Target::Classic
        }
    }
}

#[cfg(test)]
/// The definition [`Window::classify`] computes, for its tests: a buffer
/// that starts inside the window (whatever its length, 0 included) or
/// reaches into it from below refers to the region.
fn classify_reference(addr: u64, len: u32, window: u64, g: &SlotGeometry) -> Target {
    let end = addr.saturating_add(len as u64);
    let wend = window.saturating_add(g.region_size());
    if window == 0 || (addr < window && end <= window) || addr >= wend {
        return Target::Classic;
    }
    match addr.checked_sub(window).and_then(|off| g.slot_at(off)) {
        Some(s) => Target::Slot(s),
        None => Target::BadSlot,
    }
}

impl Switch {
    /// A switch for this geometry and one queue pair; starts in copy mode
    /// with no owner.
    pub fn new(cfg: SwitchConfig, geometry: SlotGeometry, max_queue: u16) -> Self {
        Self::with_queue_pairs(cfg, geometry, max_queue, 1)
    }

    /// A switch of `q_pairs` sub-pairs. `q_pairs` must be a power of two
    /// no larger than the slot count ([`crate::pair::PairConfig::validate`]);
    /// anything else is taken as 1.
    pub fn with_queue_pairs(
        cfg: SwitchConfig,
        geometry: SlotGeometry,
        max_queue: u16,
        q_pairs: u16,
    ) -> Self {
        let n = geometry.slot_count();
        let q_pairs = if q_pairs.is_power_of_two() && u32::from(q_pairs) <= n {
            q_pairs
        } else {
            1
        };
        let per = (n / u32::from(q_pairs)) as usize;
        Self {
            cfg,
            geometry,
            mode: Mode::Copy,
            q_pairs,
            shift: q_pairs.trailing_zeros(),
            subs: (0..q_pairs)
                .map(|_| Sub {
                    owner: vec![NOBODY; per],
                    sides: [0, 1].map(|_| SideState::new(per, max_queue)),
                })
                .collect(),
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Number of sub-pairs (the link's queue pairs).
    pub fn queue_pairs(&self) -> u16 {
        self.q_pairs
    }

    /// Global slot number of local index `l` of sub-pair `q`.
    #[inline]
    fn global(&self, q: usize, l: usize) -> u32 {
        ((l as u32) << self.shift) | q as u32
    }

    /// The host ledger: owner of each slot (0, 1 or [`NOBODY`]), by slot
    /// number (borrowed for one queue pair, gathered from the sub-pairs'
    /// shares otherwise).
    pub fn owners(&self) -> Cow<'_, [u8]> {
        if let [sub] = &self.subs[..] {
            return Cow::Borrowed(&sub.owner);
        }
        let mut v = vec![NOBODY; self.geometry.slot_count() as usize];
        for (q, sub) in self.subs.iter().enumerate() {
            for (l, o) in sub.owner.iter().enumerate() {
                v[self.global(q, l) as usize] = *o;
            }
        }
        Cow::Owned(v)
    }

    /// Slots side `k` has posted on its RX queues.
    pub fn posted(&self, k: usize) -> impl Iterator<Item = u32> + '_ {
        self.slots_where(k, |st, l| st.posted[l] != NONE)
    }

    /// Slots whose delivery to side `k` is deferred until it posts them.
    pub fn deferred(&self, k: usize) -> impl Iterator<Item = u32> + '_ {
        self.slots_where(k, |st, l| st.pending[l] != NO_PENDING)
    }

    /// The slots whose entry in side `k`'s tables passes `f` (given the
    /// sub-pair's side state and the local index), by slot number.
    fn slots_where(
        &self,
        k: usize,
        f: impl Fn(&SideState, usize) -> bool + Copy + 'static,
    ) -> impl Iterator<Item = u32> + '_ {
        self.subs.iter().enumerate().flat_map(move |(q, sub)| {
            let st = &sub.sides[k];
            (0..st.posted.len())
                .filter(move |&l| f(st, l))
                .map(move |l| self.global(q, l))
        })
    }

    /// True while side `k` must acknowledge the epoch.
    pub fn resyncing(&self, k: usize) -> bool {
        self.subs.iter().any(|s| s.sides[k].resyncing)
    }

    /// Side `k` acknowledged the current epoch: every sub-pair of it ends
    /// its resync.
    pub fn acked(&mut self, k: usize) {
        for s in &mut self.subs {
            s.sides[k].resyncing = false;
        }
    }

    /// Starts a new epoch on a link with one queue pair: [`Self::begin_epoch`]
    /// then [`Self::flush_pair`] of pair 0.
    pub fn new_epoch(&mut self, sides: &mut [SideView<'_>; 2]) {
        self.begin_epoch([sides[0].shared_buffers, sides[1].shared_buffers]);
        self.flush_pair(0, sides);
    }

    /// Starts a new epoch: the mode, and every sub-pair's ledger share from
    /// rule 2 (zero-copy: [`initial_owner_mq`]) or copy mode. `sb` says
    /// which sides are active with shared buffers. Each queue pair's
    /// queues are then flushed with [`Self::flush_pair`].
    pub fn begin_epoch(&mut self, sb: [bool; 2]) {
        self.mode = if sb[0] && sb[1] {
            Mode::ZeroCopy
        } else {
            Mode::Copy
        };
        let (q_pairs, shift) = (self.q_pairs, self.shift);
        for (q, sub) in self.subs.iter_mut().enumerate() {
            for (l, o) in sub.owner.iter_mut().enumerate() {
                let s = ((l as u32) << shift) | q as u32;
                *o = match (self.mode, sb) {
                    (Mode::ZeroCopy, _) => initial_owner_mq(s, q_pairs),
                    (Mode::Copy, [true, _]) => 0,
                    (Mode::Copy, [_, true]) => 1,
                    _ => NOBODY,
                };
            }
        }
    }

    /// The epoch change of sub-pair `pair` (after [`Self::begin_epoch`]),
    /// with views of that queue pair: flushes what shared-buffers sides
    /// hold and makes them resync (rule 9).
    pub fn flush_pair(&mut self, pair: u16, sides: &mut [SideView<'_>; 2]) {
        let Some(sub) = self.subs.get_mut(pair as usize) else {
            return;
        };
        for (k, f) in sides.iter_mut().enumerate() {
            let st = &mut sub.sides[k];
            st.pending.fill(NO_PENDING);
            if !f.active {
                // Its queues are gone (reset) or will be re-harvested at DRIVER_OK.
                st.posted.fill(NONE);
                st.classic.clear();
                st.held = None;
                st.resyncing = false;
                continue;
            }
            if !f.shared_buffers {
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

    /// One polling round over both directions of a link with one queue
    /// pair. Returns the number of descriptors handled (0 = idle). A side
    /// whose ring broke is left marked in its view ([`SideView::broken`]).
    pub fn poll(&mut self, sides: &mut [SideView<'_>; 2], shm: &ShmRegion) -> usize {
        let zc = self.mode == Mode::ZeroCopy;
        let mut work = 0;
        for from in 0..2 {
            work += self.direction::<false>(sides, shm, from, 0, 0, zc);
        }
        work
    }

    /// One direction of one sub-pair on a multiqueue link: from side
    /// `from`'s transmitq(`pair`) (the view `sides[from]` is of queue pair
    /// `pair`) to the peer, whose view `sides[1 - from]` is of queue pair
    /// `rx_pair`: `pair % E_peer` ([`Self::rx_pair`]). Slots move only
    /// when `zero_copy` ([`Self::sub_pair_moves`]); otherwise a slot is
    /// copied and stays with its owner. Returns the descriptors handled.
    pub fn poll_direction(
        &mut self,
        sides: &mut [SideView<'_>; 2],
        shm: &ShmRegion,
        from: usize,
        pair: u16,
        rx_pair: u16,
        zero_copy: bool,
    ) -> usize {
        if pair >= self.q_pairs || rx_pair >= self.q_pairs {
            return 0;
        }
        let zc = zero_copy && self.mode == Mode::ZeroCopy && pair == rx_pair;
        self.direction::<true>(sides, shm, from, pair as usize, rx_pair as usize, zc)
    }

    /// The peer's receive queue pair for a classic frame sent on
    /// transmitq(`pair`), when the peer uses `peer_pairs` queue pairs.
    #[inline]
    pub fn rx_pair(pair: u16, peer_pairs: u16) -> u16 {
        pair % peer_pairs.max(1)
    }

    /// True when sub-pair `pair` moves slots: zero-copy mode and the pair
    /// in use on both sides (`active` = each side's queue pairs in use).
    #[inline]
    pub fn sub_pair_moves(&self, pair: u16, active: [u16; 2]) -> bool {
        self.mode == Mode::ZeroCopy && pair < active[0] && pair < active[1]
    }

    /// True when a TX is waiting for a timer (the caller must not sleep long).
    pub fn has_waiting(&self) -> bool {
        self.subs
            .iter()
            .any(|s| s.sides.iter().any(|st| st.held.is_some()))
    }

    /// One direction: sub-pair `q` sends, the receiver's queue pair `j`
    /// takes classic frames (`j == q` unless the receiver uses fewer
    /// pairs; then sub-pair `q` does not move slots).
    fn direction<const MQ: bool>(
        &mut self,
        sides: &mut [SideView<'_>; 2],
        shm: &ShmRegion,
        from: usize,
        q: usize,
        j: usize,
        zc: bool,
    ) -> usize {
        let [f0, f1] = sides;
        let (fy, fx) = if from == 0 { (f0, f1) } else { (f1, f0) };
        if !fy.active {
            return 0;
        }
        let (y, x) = (from, 1 - from);
        if self.subs[q].sides[y].resyncing {
            return flush_side(fy);
        }
        let mut work = 0;
        let rx_ready = fx.active && !self.subs[j].sides[x].resyncing;
        let mask = u32::from(self.q_pairs) - 1;
        if rx_ready {
            let Sub { owner, sides } = &mut self.subs[j];
            let mut ctx = Ctx::<MQ> {
                cfg: &self.cfg,
                g: &self.geometry,
                mode: self.mode,
                owner,
                y: y as u8,
                x: x as u8,
                pair: j as u32,
                mask,
                shift: self.shift,
            };
            match ctx.harvest_rx(fx, &mut sides[x]) {
                Ok(n) => work += n,
                Err(e) => fx.needs_reset(e),
            }
        }
        let (owner, sy, sx) = if q == j {
            let Sub { owner, sides } = &mut self.subs[q];
            let [s0, s1] = sides;
            let (sy, sx) = if from == 0 { (s0, s1) } else { (s1, s0) };
            (owner, sy, sx)
        } else {
            let Ok([a, b]) = self.subs.get_disjoint_mut([q, j]) else {
                return work;
            };
            (&mut a.owner, &mut a.sides[y], &mut b.sides[x])
        };
        let mut ctx = Ctx::<MQ> {
            cfg: &self.cfg,
            g: &self.geometry,
            mode: if zc { Mode::ZeroCopy } else { Mode::Copy },
            owner,
            y: y as u8,
            x: x as u8,
            pair: q as u32,
            mask,
            shift: self.shift,
        };
        match ctx.forward_tx(fy, sy, fx, sx, shm, rx_ready) {
            Ok(n) => work += n,
            Err(e) => fy.needs_reset(e),
        }
        SideView::publish_two(fy, TX_QUEUE, fx, RX_QUEUE);
        work
    }

    /// True while a TX of side `k` waits for the peer's RX buffer (rule 5):
    /// the descriptors the host holds for that side, for ledger reports.
    pub fn waiting(&self, k: usize) -> bool {
        self.subs.iter().any(|s| s.sides[k].held.is_some())
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

#[cfg(test)]
mod window_tests {
    use super::*;
    use proptest::prelude::*;

    fn g() -> SlotGeometry {
        SlotGeometry::new(2048, 512).unwrap()
    }

    /// Addresses near the edges that matter: the window's ends, slot
    /// starts, and the ends of the address space.
    fn edge_addr(base: u64) -> impl Strategy<Value = u64> {
        let size = g().region_size();
        prop_oneof![
            any::<u64>(),
            (0u64..4096).prop_map(move |d| base.wrapping_sub(d)),
            (0u64..4096).prop_map(move |d| base.wrapping_add(d)),
            (0u64..4096).prop_map(move |d| base.wrapping_add(size).wrapping_sub(d)),
            (0u64..4096).prop_map(move |d| base.wrapping_add(size).wrapping_add(d)),
            (0u64..512).prop_map(move |s| base.wrapping_add(s * 2048)),
            (0u64..4096).prop_map(|d| u64::MAX - d),
        ]
    }

    fn base() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            any::<u64>(),
            (0u64..1 << 20).prop_map(|b| b << 20),
            (0u64..8192).prop_map(|d| u64::MAX - d),
            (0u64..8192).prop_map(|d| (u64::MAX - g().region_size()).wrapping_add(d)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// The per-burst window classifies every address as the definition
        /// does, windows that would wrap past 2^64 included.
        #[test]
        fn window_classify_matches_the_definition(
            (b, addr) in base().prop_flat_map(|b| (Just(b), edge_addr(b))),
            len in prop_oneof![Just(0u32), 1u32..4096, any::<u32>()],
        ) {
            let w = Window::new(b, &g());
            prop_assert_eq!(w.classify(addr, len), classify_reference(addr, len, b, &g()));
        }
    }

    #[test]
    fn window_classify_examples() {
        let w = Window::new(0x1000_0000, &g());
        assert_eq!(w.classify(0x1000_0000, 2048), Target::Slot(0));
        assert_eq!(
            w.classify(0x1000_0000 + 511 * 2048, 2048),
            Target::Slot(511)
        );
        assert_eq!(w.classify(0x1000_0000 + 512 * 2048, 64), Target::Classic);
        assert_eq!(w.classify(0x1000_0010, 64), Target::BadSlot);
        assert_eq!(w.classify(0x0fff_fff0, 0x20), Target::BadSlot);
        assert_eq!(w.classify(0x0fff_fff0, 0x10), Target::Classic);
        // No window: everything is classic, address 0 included.
        assert_eq!(Window::new(0, &g()).classify(0, 2048), Target::Classic);
    }
}
