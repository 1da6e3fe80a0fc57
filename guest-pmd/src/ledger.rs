//! The slot ledger: this side's record of who holds each slot of the
//! Shared Buffers region (`docs/abi.md` §6: ownership, zero-copy mode, epochs).
//!
//! Every slot is in exactly one [`SlotState`]. The free pool is a stack
//! (the most recently freed slot is reused first: its cache lines are warm)
//! and the slots waiting to be posted form a FIFO; each holds exactly the
//! slots in its state, so no transition ever scans the region. A transition
//! from the wrong state changes nothing and returns false: the port treats
//! that as its own bug (it asserts in debug builds).
//!
//! | transition | from | to | when |
//! |---|---|---|---|
//! | `alloc` | `Free` | `Held` | the application asks for a buffer |
//! | `free` | `Held` | `Free` | the application gives it back |
//! | `send` | `Held` | `InFlightTx` | it goes on the transmit queue (packet or gift) |
//! | `gift` | `Free` | `InFlightTx` | `alloc` + `send` of a gift, in one step |
//! | `send_early` | `Held` | `PeerPosted` | sent and posted in one burst (`SB_F_EARLY_POST`) |
//! | `gift_early` | `Free` | `PeerPosted` | gifted and posted in one burst |
//! | `tx_done(passed)` | `InFlightTx` | `PeerUnposted` | zero-copy: the send gave it away |
//! | `tx_done(!passed)` | `InFlightTx` | `Free` | copy mode: it stays mine |
//! | `next_to_post` | `PeerUnposted` | `PeerPosted` | posted on the receive queue |
//! | `rx_done(packet)` | `PeerPosted` | `Held` | the peer sent a packet in it |
//! | `rx_done(gift)` | `PeerPosted` | `Free` | the peer gifted it |
//! | `rx_void` | `PeerPosted` | `PeerUnposted` | it came back with length 0 |
//! | `reset` | any | `Free` or `PeerUnposted` | a new epoch's initial split |

use crate::stats::SlotCounts;

/// Where one slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    /// Mine, in the free pool.
    Free,
    /// Mine, held by the application.
    Held,
    /// On my transmit queue. In zero-copy mode it already belongs to the
    /// peer (rule 4) and becomes `PeerUnposted` on completion; in copy mode
    /// it stays mine and returns to `Free`.
    InFlightTx,
    /// The peer's, posted on my receive queue (rule 3).
    PeerPosted,
    /// The peer's, not posted yet.
    PeerUnposted,
}

const STATES: usize = 5;

/// States whose count is not an entry of `Ledger::counts`: a length (the
/// free stack's, the post queue's) or, for `Held`, what the others leave.
#[inline(always)]
const fn untracked(st: SlotState) -> bool {
    matches!(
        st,
        SlotState::Free | SlotState::Held | SlotState::PeerUnposted
    )
}

/// The ledger of a region of `len()` slots.
pub struct Ledger {
    state: Box<[SlotState]>,
    free: Box<[u32]>,
    nfree: u32,
    unposted: Box<[u32]>,
    un_head: u32,
    un_len: u32,
    /// Slots per state, for the states `untracked` does not name (the
    /// other entries stay 0; `count` derives them).
    counts: [u32; STATES],
}

impl Ledger {
    /// A ledger of `n` slots where `mine(s)` says which start as mine
    /// (`Free`); the others start `PeerUnposted`.
    pub fn new(n: u32, mine: impl Fn(u32) -> bool) -> Self {
        let mut l = Self {
            state: vec![SlotState::PeerUnposted; n as usize].into_boxed_slice(),
            free: vec![0; n as usize].into_boxed_slice(),
            nfree: 0,
            unposted: vec![0; n as usize].into_boxed_slice(),
            un_head: 0,
            un_len: 0,
            counts: [0; STATES],
        };
        l.reset(mine);
        l
    }

    /// Restarts from an initial split (a new epoch, rule 9): `mine(s)`
    /// slots are `Free`, the rest `PeerUnposted`. Whatever the application
    /// still holds is forgotten (its handles are stale by then).
    pub fn reset(&mut self, mine: impl Fn(u32) -> bool) {
        self.nfree = 0;
        self.un_head = 0;
        self.un_len = 0;
        self.counts = [0; STATES];
        let n = self.len();
        // Push in reverse so that the lowest slots are allocated first.
        for s in (0..n).rev() {
            if mine(s) {
                self.state[s as usize] = SlotState::Free;
                self.free[self.nfree as usize] = s;
                self.nfree += 1;
            }
        }
        for s in 0..n {
            if !mine(s) {
                self.state[s as usize] = SlotState::PeerUnposted;
                self.push_unposted(s);
            }
        }
    }

    /// Number of slots.
    pub fn len(&self) -> u32 {
        self.state.len() as u32
    }

    /// Where slot `s` is (None when out of range).
    pub fn state(&self, s: u32) -> Option<SlotState> {
        self.state.get(s as usize).copied()
    }

    /// Slots in `st`.
    pub fn count(&self, st: SlotState) -> u32 {
        match st {
            SlotState::Free => self.nfree,
            SlotState::PeerUnposted => self.un_len,
            // Every slot is in exactly one state.
            SlotState::Held => {
                self.len()
                    - self.nfree
                    - self.un_len
                    - self.counts[SlotState::InFlightTx as usize]
                    - self.counts[SlotState::PeerPosted as usize]
            }
            _ => self.counts[st as usize],
        }
    }

    /// A snapshot of all counts.
    pub fn counts(&self) -> SlotCounts {
        SlotCounts {
            free: self.count(SlotState::Free),
            held: self.count(SlotState::Held),
            in_flight_tx: self.count(SlotState::InFlightTx),
            peer_posted: self.count(SlotState::PeerPosted),
            peer_unposted: self.count(SlotState::PeerUnposted),
        }
    }

    #[inline]
    fn is(&self, s: u32, st: SlotState) -> bool {
        self.state.get(s as usize) == Some(&st)
    }

    /// Moves slot `s` from `from` to `to`. `s` must be below `len()`:
    /// callers pass a slot `is` just checked or one taken from the free
    /// stack or the post queue, which only hold such slots.
    #[inline(always)]
    fn set(&mut self, s: u32, from: SlotState, to: SlotState) {
        debug_assert!(s < self.len());
        // SAFETY: `s < len()` (the caller's precondition above) and
        // `state` has `len()` entries.
        unsafe { *self.state.get_unchecked_mut(s as usize) = to };
        // Only `InFlightTx` and `PeerPosted` are counted here (see
        // `untracked`); `from` and `to` are constants once inlined, so
        // these tests cost nothing.
        if !untracked(from) {
            self.counts[from as usize] -= 1;
        }
        if !untracked(to) {
            self.counts[to as usize] += 1;
        }
    }

    /// Pushes `s` (below `len()`, not on the stack) on the free stack.
    #[inline(always)]
    fn push_free(&mut self, s: u32) {
        debug_assert!(self.nfree < self.len());
        // SAFETY: each slot is on the free stack at most once (it is
        // pushed only when it becomes `Free`), so the stack holds fewer
        // than `len()` slots before this push: `nfree < len()`, the
        // array's length.
        unsafe { *self.free.get_unchecked_mut(self.nfree as usize) = s };
        self.nfree += 1;
    }

    /// Appends `s` (not queued yet) to the post queue.
    #[inline(always)]
    fn push_unposted(&mut self, s: u32) {
        let n = self.len();
        debug_assert!(self.un_len < n && self.un_head < n);
        // A wrap by subtraction: `un_head < n` and `un_len < n`.
        let mut tail = self.un_head + self.un_len;
        if tail >= n {
            tail -= n;
        }
        // SAFETY: `tail < n`, the array's length (both terms are below
        // `n`: the head is an index, and a slot is queued at most once, so
        // fewer than `n` are queued before this push).
        unsafe { *self.unposted.get_unchecked_mut(tail as usize) = s };
        self.un_len += 1;
    }

    /// Takes a free slot for the application: `Free → Held`.
    #[inline]
    pub fn alloc(&mut self) -> Option<u32> {
        self.take_free(SlotState::Held)
    }

    /// Takes a free slot to gift: `Free → InFlightTx` in one step (`alloc`
    /// then `send`).
    #[inline]
    pub fn gift(&mut self) -> Option<u32> {
        self.take_free(SlotState::InFlightTx)
    }

    /// Takes a free slot to gift and post in the same burst (early post):
    /// `Free → PeerPosted`. Its send gives it to the peer (rule 4) and its
    /// post waits for it to come back, so the completion of the send moves
    /// nothing.
    #[inline]
    pub fn gift_early(&mut self) -> Option<u32> {
        self.take_free(SlotState::PeerPosted)
    }

    /// Pops the free stack: `Free → to`.
    #[inline(always)]
    fn take_free(&mut self, to: SlotState) -> Option<u32> {
        if self.nfree == 0 {
            return None;
        }
        self.nfree -= 1;
        // SAFETY: `nfree < len()` now, the array's length.
        let s = unsafe { *self.free.get_unchecked(self.nfree as usize) };
        self.set(s, SlotState::Free, to);
        Some(s)
    }

    /// The application gives a slot back: `Held → Free`.
    #[inline]
    pub fn free(&mut self, s: u32) -> bool {
        if !self.is(s, SlotState::Held) {
            return false;
        }
        self.set(s, SlotState::Held, SlotState::Free);
        self.push_free(s);
        true
    }

    /// A held slot goes on the transmit queue: `Held → InFlightTx`.
    #[inline]
    pub fn send(&mut self, s: u32) -> bool {
        self.take_held(s, SlotState::InFlightTx)
    }

    /// A held slot is sent and posted on the receive queue in the same
    /// burst (early post): `Held → PeerPosted`.
    #[inline]
    pub fn send_early(&mut self, s: u32) -> bool {
        self.take_held(s, SlotState::PeerPosted)
    }

    /// A held slot leaves the application: `Held → to`.
    #[inline(always)]
    fn take_held(&mut self, s: u32, to: SlotState) -> bool {
        if !self.is(s, SlotState::Held) {
            return false;
        }
        self.set(s, SlotState::Held, to);
        true
    }

    /// Its transmit completed: `InFlightTx → PeerUnposted` when the send
    /// passed ownership (zero-copy), else `→ Free` (copy mode).
    #[inline]
    pub fn tx_done(&mut self, s: u32, passed: bool) -> bool {
        if !self.is(s, SlotState::InFlightTx) {
            return false;
        }
        if passed {
            self.state[s as usize] = SlotState::PeerUnposted;
            self.counts[SlotState::InFlightTx as usize] -= 1;
            self.push_unposted(s);
        } else {
            self.set(s, SlotState::InFlightTx, SlotState::Free);
            self.push_free(s);
        }
        true
    }

    /// Number of peer slots waiting to be posted.
    #[inline]
    pub fn unposted(&self) -> u32 {
        self.un_len
    }

    /// The next peer slot to post on the receive queue:
    /// `PeerUnposted → PeerPosted` (oldest first).
    #[inline]
    pub fn next_to_post(&mut self) -> Option<u32> {
        if self.un_len == 0 {
            return None;
        }
        // SAFETY: `un_head < len()`, the array's length (it only ever
        // advances with the wrap below, and `reset` sets it to 0).
        let s = unsafe { *self.unposted.get_unchecked(self.un_head as usize) };
        self.un_head += 1;
        if self.un_head == self.len() {
            self.un_head = 0;
        }
        self.un_len -= 1;
        self.set(s, SlotState::PeerUnposted, SlotState::PeerPosted);
        Some(s)
    }

    /// The peer sent into a posted slot, so it is mine now:
    /// `PeerPosted → Held` for a packet, `→ Free` for a gift.
    #[inline]
    pub fn rx_done(&mut self, s: u32, gift: bool) -> bool {
        if !self.is(s, SlotState::PeerPosted) {
            return false;
        }
        if gift {
            self.set(s, SlotState::PeerPosted, SlotState::Free);
            self.push_free(s);
        } else {
            self.set(s, SlotState::PeerPosted, SlotState::Held);
        }
        true
    }

    /// A posted slot came back empty (length 0: refused or resync), still
    /// the peer's: `PeerPosted → PeerUnposted`.
    #[inline]
    pub fn rx_void(&mut self, s: u32) -> bool {
        if !self.is(s, SlotState::PeerPosted) {
            return false;
        }
        self.state[s as usize] = SlotState::PeerUnposted;
        self.counts[SlotState::PeerPosted as usize] -= 1;
        self.push_unposted(s);
        true
    }

    /// Checks every invariant (O(slots)): the counts add up and match the
    /// states, the free stack holds exactly the `Free` slots and the FIFO
    /// exactly the `PeerUnposted` ones, each once.
    pub fn check(&self) -> Result<(), String> {
        let n = self.len();
        let mut counts = [0u32; STATES];
        for st in self.state.iter() {
            counts[*st as usize] += 1;
        }
        let recorded = [
            SlotState::Free,
            SlotState::Held,
            SlotState::InFlightTx,
            SlotState::PeerPosted,
            SlotState::PeerUnposted,
        ]
        .map(|st| self.count(st));
        if counts != recorded {
            return Err(format!("counts {recorded:?} but states say {counts:?}"));
        }
        if counts.iter().sum::<u32>() != n {
            return Err("counts do not add up to the slot count".into());
        }
        let mut seen = vec![false; n as usize];
        if self.nfree != counts[SlotState::Free as usize] {
            return Err(format!(
                "{} on the free stack, {} free",
                self.nfree, counts[0]
            ));
        }
        for &s in &self.free[..self.nfree as usize] {
            if !self.is(s, SlotState::Free) || std::mem::replace(&mut seen[s as usize], true) {
                return Err(format!("free stack holds slot {s} twice or not free"));
            }
        }
        if self.un_len != counts[SlotState::PeerUnposted as usize] {
            return Err(format!(
                "{} queued to post, {} unposted",
                self.un_len, counts[4]
            ));
        }
        for i in 0..self.un_len {
            let s = self.unposted[((self.un_head + i) % n) as usize];
            if !self.is(s, SlotState::PeerUnposted)
                || std::mem::replace(&mut seen[s as usize], true)
            {
                return Err(format!("post queue holds slot {s} twice or not unposted"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn initial_split_and_counts() {
        let l = Ledger::new(8, |s| s % 2 == 1);
        l.check().unwrap();
        assert_eq!(l.counts().free, 4);
        assert_eq!(l.counts().peer_unposted, 4);
        assert_eq!(l.state(1), Some(SlotState::Free));
        assert_eq!(l.state(8), None);
    }

    #[test]
    fn zero_copy_round_trip() {
        let mut l = Ledger::new(4, |s| s % 2 == 0);
        let s = l.alloc().unwrap();
        assert_eq!(s, 0, "lowest first");
        assert!(l.send(s));
        assert!(!l.free(s), "sent slot is not the application's");
        assert!(l.tx_done(s, true));
        assert_eq!(l.state(s), Some(SlotState::PeerUnposted));
        // The two peer slots were queued first.
        assert_eq!(l.next_to_post(), Some(1));
        assert_eq!(l.next_to_post(), Some(3));
        assert_eq!(l.next_to_post(), Some(0));
        assert_eq!(l.next_to_post(), None);
        assert!(l.rx_done(0, false));
        assert_eq!(l.state(0), Some(SlotState::Held));
        assert!(l.rx_done(1, true));
        assert_eq!(l.state(1), Some(SlotState::Free));
        assert!(l.rx_void(3));
        assert!(!l.rx_void(3));
        l.check().unwrap();
    }

    #[test]
    fn gift_takes_a_free_slot_straight_to_in_flight() {
        let mut l = Ledger::new(2, |s| s == 0);
        assert_eq!(l.gift(), Some(0));
        assert_eq!(l.state(0), Some(SlotState::InFlightTx));
        assert_eq!(l.gift(), None, "no free slot left");
        assert!(l.tx_done(0, true));
        assert_eq!(l.state(0), Some(SlotState::PeerUnposted));
        l.check().unwrap();
    }

    #[test]
    fn early_sends_and_gifts_go_straight_to_posted() {
        let mut l = Ledger::new(4, |s| s % 2 == 0);
        let s = l.alloc().unwrap();
        assert!(l.send_early(s));
        assert_eq!(l.state(s), Some(SlotState::PeerPosted));
        assert!(!l.send_early(s), "only a held slot");
        assert!(!l.tx_done(s, true), "its completion moves nothing");
        assert_eq!(l.gift_early(), Some(2));
        assert_eq!(l.state(2), Some(SlotState::PeerPosted));
        assert_eq!(l.gift_early(), None, "no free slot left");
        // Back from the peer like any posted slot.
        assert!(l.rx_done(s, false));
        assert!(l.rx_done(2, true));
        assert_eq!(l.counts().peer_posted, 0);
        l.check().unwrap();
    }

    #[test]
    fn copy_mode_send_returns() {
        let mut l = Ledger::new(2, |_| true);
        let s = l.alloc().unwrap();
        assert!(l.send(s));
        assert!(l.tx_done(s, false));
        assert_eq!(l.count(SlotState::Free), 2);
        l.check().unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc,
        Gift,
        GiftEarly,
        Free(u32),
        Send(u32),
        SendEarly(u32),
        TxDone(u32, bool),
        Post,
        RxDone(u32, bool),
        RxVoid(u32),
        Reset(u8),
    }

    fn op(n: u32) -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Alloc),
            Just(Op::Gift),
            Just(Op::GiftEarly),
            (0..n + 2).prop_map(Op::Free),
            (0..n + 2).prop_map(Op::Send),
            (0..n + 2).prop_map(Op::SendEarly),
            ((0..n + 2), any::<bool>()).prop_map(|(s, p)| Op::TxDone(s, p)),
            Just(Op::Post),
            ((0..n + 2), any::<bool>()).prop_map(|(s, g)| Op::RxDone(s, g)),
            (0..n + 2).prop_map(Op::RxVoid),
            (0u8..3).prop_map(Op::Reset),
        ]
    }

    proptest! {
        /// Any sequence of transitions, valid or not, keeps every invariant;
        /// an invalid one changes nothing.
        #[test]
        fn invariants_hold_under_random_sequences(
            ops in proptest::collection::vec(op(16), 1..400)
        ) {
            let mut l = Ledger::new(16, |s| s % 2 == 0);
            for op in ops {
                let before = l.state.clone();
                let applied = match op {
                    Op::Alloc => l.alloc().is_some(),
                    Op::Gift => l.gift().is_some(),
                    Op::GiftEarly => l.gift_early().is_some(),
                    Op::Free(s) => l.free(s),
                    Op::Send(s) => l.send(s),
                    Op::SendEarly(s) => l.send_early(s),
                    Op::TxDone(s, p) => l.tx_done(s, p),
                    Op::Post => l.next_to_post().is_some(),
                    Op::RxDone(s, g) => l.rx_done(s, g),
                    Op::RxVoid(s) => l.rx_void(s),
                    Op::Reset(k) => { l.reset(|s| s % 3 != u32::from(k)); true }
                };
                if !applied {
                    prop_assert_eq!(&before, &l.state);
                }
                prop_assert_eq!(l.check(), Ok(()));
            }
        }
    }
}
