//! What the in-process PMD tests (`pmd_model`, `pmd_reset`) share: a pair
//! of [`Port`]s on one [`Pair`] through [`InProcessBus`], the host stepped
//! by the test, a snapshot of the host's ledger, the ledger-agreement
//! checks, and test frames that say who sent them.
//!
//! # Agreement between the host ledger and the two PMD ledgers
//!
//! The host's ledger (`Switch::owners`) and each port's (`slot_state`)
//! describe the same slots, but they move at different moments: a port
//! gives a slot away when it makes the TX available (rule 4), the host
//! when it matches that TX with the peer's RX post (rule 5) or defers it;
//! a port learns that it received a slot only when it reaps the RX
//! completion. So the two can only be compared at a point where the host
//! has nothing left to do on its own ([`InPair::quiesce`]: polls until two
//! polls in a row find no work). At such a point, for every slot `s`, with
//! `h` the host's owner, `st[k]` port `k`'s state and `own[k]` =
//! `port k.owns_slot(s)` (Free or Held in zero-copy mode), exactly one of:
//!
//! - **owned**: exactly one port `k` owns `s`; then `h == k`, and the
//!   peer has it `PeerPosted` or `PeerUnposted` (the host lists it as
//!   posted by the peer exactly when the peer says `PeerPosted`), or
//!   `InFlightTx` (the peer sent it, `k` has reaped the delivery, the peer
//!   has not reaped its TX completion yet);
//! - **sent, not matched**: port `y` has it `InFlightTx` and `h == y`:
//!   the host holds `y`'s TX (or a TX ahead of it) waiting for the peer's
//!   post; `Switch::has_waiting()` is true; the peer has `s` unposted,
//!   posted (behind a waiting head), or `InFlightTx` itself (it sent `s`
//!   to `y` earlier and has not reaped that completion);
//! - **sent, matched, completion not reaped**: port `x` has it
//!   `InFlightTx`, `h == y` (the peer); `y` either has the delivery in its
//!   used ring (`st[y] == PeerPosted`, no longer posted on the host) or
//!   the delivery is deferred (`s ∈ deferred(y)`, `st[y] == PeerUnposted`);
//! - **on its way**: no port owns it; `h == y`, and either `s ∈
//!   deferred(y)` (the host completes `y`'s next post of `s`; `y` may
//!   still have its own earlier send of `s` unreaped, `InFlightTx`) or
//!   `y`'s RX completion of `s` waits in its used ring (`st[y] ==
//!   PeerPosted`, not posted on the host); `x` has it `PeerUnposted` or
//!   `PeerPosted` (it may have posted it back already) or `InFlightTx`
//!   (completion not reaped).
//!
//! Both ports owning a slot, the host's owner disagreeing with the one
//! port that owns it, or a slot nobody holds, sends or receives (lost) is
//! a failure. The counts of unreaped completions are then checked against
//! the host's counters: what the host delivered to `k` minus what port `k`
//! received is exactly the number of slots in `k`'s used ring, and what
//! port `x` sent minus what the host forwarded is exactly the number of
//! its unmatched sends.
//!
//! At a **settled** point ([`InPair::settle`]: host and both ports serviced
//! until nothing moves) nothing is in flight or unreaped, and the relation
//! is the plain one: `h == k ⇔ port k owns s`, except a slot deferred to
//! `y`, which no port owns (`y` has not been able to post it).
#![allow(dead_code)]

pub mod model;
pub mod mq;
pub mod scenario;
pub mod sockets;

use sbnet_abi::net::MAX_QUEUE_PAIRS;
use sbnet_abi::shm::SlotGeometry;
use sbnet_device::counters::{QueueCounters, SideCounters};
use sbnet_device::pair::{Pair, PairConfig, Shared};
use sbnet_device::switch::{Mode as HostMode, SwitchConfig};
use sbnet_pmd::bus::Bus;
use sbnet_pmd::{Mode, Pkt, Port, PortConfig, PortQueue, SlotState, Stats};
use sbnet_tests::InProcessBus;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A port on the in-process pair.
pub type P = Port<InProcessBus>;

/// Most host polls [`InPair::quiesce`] allows before it calls the host stuck.
const QUIESCE_LIMIT: usize = 10_000;
/// Most rounds [`InPair::settle`] allows.
const SETTLE_LIMIT: usize = 500;

/// How long a TX waits for the peer's post. Both settings make the host
/// deterministic under a test that steps it: `Forever` never expires (the
/// TX waits for the post), `Zero` expires on the poll after the one that
/// found the TX waiting (the delivery is deferred).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxWait {
    /// An hour: never expires within a test.
    Forever,
    /// Zero: every wait becomes a deferred delivery on the next poll.
    Zero,
}

impl TxWait {
    fn duration(self) -> Duration {
        match self {
            Self::Forever => Duration::from_secs(3600),
            Self::Zero => Duration::ZERO,
        }
    }
}

/// A pair stepped by the test.
pub struct InPair {
    /// The pair's state.
    pub shared: Arc<Shared>,
    /// Slot count.
    pub slots: u32,
    /// Slot size.
    pub slot_size: u32,
}

impl InPair {
    /// A pair with `slots` slots of `slot_size` bytes and queues of at most
    /// `max_queue` entries.
    pub fn new(slot_size: u32, slots: u32, max_queue: u16, wait: TxWait) -> Self {
        Self::new_mq(slot_size, slots, max_queue, wait, 1)
    }

    /// [`InPair::new`] with `queue_pairs` queue pairs on the link.
    pub fn new_mq(
        slot_size: u32,
        slots: u32,
        max_queue: u16,
        wait: TxWait,
        queue_pairs: u16,
    ) -> Self {
        let cfg = PairConfig {
            geometry: SlotGeometry::new(slot_size, slots).expect("geometry"),
            max_queue_size: max_queue,
            switch: SwitchConfig {
                burst: 64,
                tx_wait: wait.duration(),
            },
            huge_pages: false,
            queue_pairs,
        };
        let shared = Shared::new(Pair::new(&cfg).expect("pair")).expect("shared");
        Self {
            shared,
            slots,
            slot_size,
        }
    }

    /// A bus on side `side`.
    pub fn bus(&self, side: usize) -> InProcessBus {
        InProcessBus::new(self.shared.clone(), side)
    }

    /// Opens a port of `pairs` queue pairs on side `side`. Above one pair
    /// the port waits for the host to acknowledge its control command, so
    /// a thread polls the host meanwhile; the pair is stepped by the test
    /// again once this returns.
    pub fn open_queue_pairs(
        &self,
        side: usize,
        cfg: PortConfig,
        pairs: u16,
    ) -> Result<P, sbnet_pmd::PmdError> {
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    self.poll();
                    std::thread::yield_now();
                }
            });
            let port = Port::open_queue_pairs(self.bus(side), cfg, pairs);
            done.store(true, std::sync::atomic::Ordering::Release);
            port
        })
    }

    /// One host poll.
    pub fn poll(&self) -> usize {
        self.shared.lock().poll()
    }

    /// Polls the host until two polls in a row find no work (the second
    /// one lets a wait that expired with `TxWait::Zero` turn into a
    /// deferred delivery). Returns the work done.
    pub fn quiesce(&self) -> usize {
        let mut total = 0;
        let mut idle = 0;
        for _ in 0..QUIESCE_LIMIT {
            let w = self.poll();
            total += w;
            if w == 0 {
                idle += 1;
                if idle == 2 {
                    return total;
                }
            } else {
                idle = 0;
            }
        }
        panic!("the host still finds work after {QUIESCE_LIMIT} polls without any driver activity");
    }

    /// A snapshot of the host's side of things.
    pub fn host(&self) -> HostView {
        let p = self.shared.lock();
        let n = p.switch.owners().len();
        let set = |it: &mut dyn Iterator<Item = u32>| {
            let mut v = vec![false; n];
            for s in it {
                v[s as usize] = true;
            }
            v
        };
        let posted = [set(&mut p.switch.posted(0)), set(&mut p.switch.posted(1))];
        let deferred = [
            set(&mut p.switch.deferred(0)),
            set(&mut p.switch.deferred(1)),
        ];
        HostView {
            epoch: p.epoch(),
            mode: p.switch.mode(),
            owners: p.switch.owners().to_vec(),
            posted,
            deferred,
            resyncing: [p.switch.resyncing(0), p.switch.resyncing(1)],
            waiting: p.switch.has_waiting(),
            active: [p.fns[0].is_active(), p.fns[1].is_active()],
            counters: [p.fns[0].counters, p.fns[1].counters],
            queue_counters: [p.fns[0].queue_counters(), p.fns[1].queue_counters()],
        }
    }

    /// Services both ports (receive burst: reaps, gifts, posts) and the
    /// host until a whole round changes nothing. Every packet received
    /// goes to `deliver(side, pkt, port)`, which must free, keep or send it.
    pub fn settle(
        &self,
        ports: &mut [&mut P; 2],
        deliver: &mut dyn FnMut(usize, Pkt, &mut P) -> Result<(), String>,
    ) -> Result<(), String> {
        self.settle_queues(ports, &mut |k, _, p, port| deliver(k, p, port))
    }

    /// [`InPair::settle`] over every queue pair of both ports: a packet
    /// queue pair `q` of side `k` received goes to `deliver(k, q, pkt, port)`.
    pub fn settle_queues(
        &self,
        ports: &mut [&mut P; 2],
        deliver: &mut Deliver<'_>,
    ) -> Result<(), String> {
        for _ in 0..SETTLE_LIMIT {
            let w = self.quiesce();
            let mut moved = false;
            for (k, port) in ports.iter_mut().enumerate() {
                moved |= service_queues(port, k, deliver)?;
            }
            if w == 0 && !moved {
                return Ok(());
            }
        }
        Err(format!(
            "the pair did not settle in {SETTLE_LIMIT} rounds; host: {:?}",
            self.host().counters
        ))
    }
}

/// Counters that change when a port does something (idle epoch polls do
/// not count).
fn activity(st: &Stats) -> Stats {
    Stats {
        epoch_polls: 0,
        ..*st
    }
}

/// One receive burst on port `k`; packets go to `deliver`. True when the
/// port did anything (received, reaped, gifted, posted).
pub fn service(
    port: &mut P,
    k: usize,
    deliver: &mut dyn FnMut(usize, Pkt, &mut P) -> Result<(), String>,
) -> Result<bool, String> {
    service_queues(port, k, &mut |k, _, p, port| deliver(k, p, port))
}

/// Where a packet queue pair `q` of side `k` received goes:
/// `deliver(k, q, pkt, port)` must free, keep or send it.
pub type Deliver<'a> = dyn FnMut(usize, u16, Pkt, &mut P) -> Result<(), String> + 'a;

/// [`service`] on every queue pair of the port, in order.
pub fn service_queues(port: &mut P, k: usize, deliver: &mut Deliver<'_>) -> Result<bool, String> {
    let before = activity(&port.stats());
    for q in 0..port.queue_pairs() {
        let mut out: [Option<Pkt>; 64] = [const { None }; 64];
        let n = port
            .rx_burst_q(q, &mut out)
            .map_err(|e| format!("side {k} queue pair {q}: rx_burst failed: {e}"))?;
        for p in out[..n].iter_mut().filter_map(Option::take) {
            deliver(k, q, p, port)?;
        }
    }
    Ok(activity(&port.stats()) != before)
}

/// The host's state at one moment.
#[derive(Debug, Clone)]
pub struct HostView {
    /// Pairing epoch.
    pub epoch: u32,
    /// The switch's mode.
    pub mode: HostMode,
    /// Owner of each slot.
    pub owners: Vec<u8>,
    /// Per side and slot: posted on that side's RX queue.
    pub posted: [Vec<bool>; 2],
    /// Per side and slot: delivery to that side deferred.
    pub deferred: [Vec<bool>; 2],
    /// Per side: flushing until it acknowledges the epoch.
    pub resyncing: [bool; 2],
    /// A TX waits for the peer.
    pub waiting: bool,
    /// Per side: `DRIVER_OK` and not failed.
    pub active: [bool; 2],
    /// Per side counters.
    pub counters: [SideCounters; 2],
    /// Per side and queue pair counters.
    pub queue_counters: [Vec<QueueCounters>; 2],
}

/// Deliveries and sends in flight at a host-quiescent point (see the
/// module documentation).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// Per side: slot sends the host has not matched yet.
    pub unmatched_tx: [u32; 2],
    /// Per side: slot sends matched or deferred whose completion the port
    /// has not reaped.
    pub unreaped_tx: [u32; 2],
    /// Per side: slot deliveries waiting in the port's used ring.
    pub unreaped_rx: [u32; 2],
    /// Per side: deliveries deferred until the side posts the slot.
    pub deferred: [u32; 2],
    /// Per side: sends with an early post whose completion is not reaped
    /// (matched or not).
    pub early: [u32; 2],
}

/// Host counters of slot traffic: what side `k` sent (packets + gifts)
/// and what was delivered to it.
pub fn host_slot_counts(c: &SideCounters) -> (u64, u64) {
    (
        c.tx_zero_copy + c.gifts_sent,
        c.rx_packets + c.gifts_received,
    )
}

/// Port counters of slot traffic: sent (packets + gifts), received.
pub fn port_slot_counts(st: &Stats) -> (u64, u64) {
    (
        st.tx_zero_copy + st.gifts_sent,
        st.rx_zero_copy + st.gifts_received,
    )
}

/// Checks the zero-copy agreement of the module documentation at a
/// host-quiescent point. Returns what is in flight.
pub fn check_zero_copy_agreement(h: &HostView, ports: [&P; 2]) -> Result<InFlight, String> {
    if h.mode != HostMode::ZeroCopy {
        return Err(format!("host in mode {:?}, not zero-copy", h.mode));
    }
    for (k, p) in ports.iter().enumerate() {
        p.check_ledger()
            .map_err(|e| format!("side {k}: PMD ledger broken: {e}"))?;
        if p.mode() != Mode::ZeroCopy {
            return Err(format!("side {k}: port in mode {:?}", p.mode()));
        }
        if p.epoch() != h.epoch {
            return Err(format!(
                "side {k}: port at epoch {}, host at {}",
                p.epoch(),
                h.epoch
            ));
        }
    }
    let mut f = InFlight::default();
    for s in 0..h.owners.len() {
        check_slot(h, ports, s, &mut f)?;
    }
    Ok(f)
}

/// The agreement of the module documentation for slot `s`; what it finds
/// in flight is added to `f`.
pub fn check_slot(h: &HostView, ports: [&P; 2], s: usize, f: &mut InFlight) -> Result<(), String> {
    let si = s as u32;
    let hs = h.owners[s] as usize;
    let st = [0, 1].map(|k| ports[k].slot_state(si).expect("slot in range"));
    let own = [0, 1].map(|k| ports[k].owns_slot(si));
    let posted = [h.posted[0][s], h.posted[1][s]];
    let deferred = [h.deferred[0][s], h.deferred[1][s]];
    // An early send (`SB_F_EARLY_POST`): side k sent s and posted it in the
    // same burst, so its ledger says `PeerPosted` from then on. Until the
    // host matches the send, the host still says k owns s and has k's post
    // of it in its table.
    let early = [0, 1].map(|k| ports[k].early_send_in_flight(si));
    let unmatched_early =
        [0, 1].map(|k| early[k] && st[k] == SlotState::PeerPosted && hs == k && posted[k]);
    let ctx = || {
        format!(
            "slot {s}: host owner {hs}, side 0 {:?}, side 1 {:?}, host posted {posted:?}, deferred {deferred:?}, early sends {early:?}",
            st[0], st[1]
        )
    };
    if hs > 1 {
        return Err(format!("{}: the host gives it to nobody", ctx()));
    }
    for k in 0..2 {
        // Rule 3: k posts what the peer owns, or what k is sending (an
        // early post).
        if posted[k] && (st[k] != SlotState::PeerPosted || (hs == k && !unmatched_early[k])) {
            return Err(format!(
                "{}: the host has it posted by side {k}, which it should not be",
                ctx()
            ));
        }
        if deferred[k]
            && (hs != k || !matches!(st[k], SlotState::PeerUnposted | SlotState::InFlightTx))
        {
            return Err(format!(
                "{}: deferred to side {k} but not owned by it on the host or already posted",
                ctx()
            ));
        }
    }
    match own {
        [true, true] => return Err(format!("{}: both sides own it (rule 1)", ctx())),
        [true, false] | [false, true] => {
            let k = if own[0] { 0 } else { 1 };
            let y = 1 - k;
            if hs != k {
                return Err(format!(
                    "{}: side {k} owns it but the host says side {hs}",
                    ctx()
                ));
            }
            if st[y] == SlotState::InFlightTx {
                // y sent it, the host matched it (h == k) and k has
                // already reaped the delivery; y has not reaped its
                // TX completion yet.
                f.unreaped_tx[y] += 1;
                return Ok(());
            }
            if !matches!(st[y], SlotState::PeerPosted | SlotState::PeerUnposted) {
                return Err(format!(
                    "{}: the peer of its owner has it {:?}",
                    ctx(),
                    st[y]
                ));
            }
            if posted[y] != (st[y] == SlotState::PeerPosted) {
                return Err(format!(
                    "{}: side {y} says {:?}, the host disagrees on the post",
                    ctx(),
                    st[y]
                ));
            }
        }
        [false, false] => {
            // Nobody owns it: it is moving towards the host's owner y.
            let in_tx = [0, 1].map(|k| st[k] == SlotState::InFlightTx);
            let y = hs;
            let x = 1 - y;
            if in_tx[x] {
                // x sent it, the host matched or deferred it (h == y),
                // x has not reaped the completion.
                f.unreaped_tx[x] += 1;
            } else {
                if !matches!(st[x], SlotState::PeerUnposted | SlotState::PeerPosted) {
                    return Err(format!("{}: side {x} has it {:?}", ctx(), st[x]));
                }
                if posted[x] != (st[x] == SlotState::PeerPosted) {
                    return Err(format!(
                        "{}: side {x} says {:?}, the host disagrees on the post",
                        ctx(),
                        st[x]
                    ));
                }
            }
            if deferred[y] {
                // Delivered to y as soon as y posts it. y may still
                // have its own earlier send of s unreaped (it gave s
                // to x, x sent it back before y reaped).
                f.deferred[y] += 1;
                f.unreaped_tx[y] += u32::from(in_tx[y]);
            } else if in_tx[y] || unmatched_early[y] {
                // y received it and sent it on (with an early post or
                // not); the host has not matched that send yet, so it
                // still says y.
                f.unmatched_tx[y] += 1;
                if !h.waiting {
                    return Err(format!(
                        "{}: side {y}'s send is not matched and the host waits for nothing",
                        ctx()
                    ));
                }
            } else if st[y] == SlotState::PeerPosted && !posted[y] {
                // The delivery waits in y's used ring.
                f.unreaped_rx[y] += 1;
            } else {
                return Err(format!(
                    "{}: the host gave it to side {y}, which neither received it nor will (lost)",
                    ctx()
                ));
            }
        }
    }
    for k in 0..2 {
        f.early[k] += u32::from(early[k]);
        if early[k] && !unmatched_early[k] {
            // Matched (or deferred): its completion waits to be reaped.
            f.unreaped_tx[k] += 1;
        }
    }
    Ok(())
}

/// The counter side of the agreement: with `base` the host counters and
/// port stats at a settled point of the same epoch, the host forwarded
/// exactly what the ports sent minus the unmatched sends, and delivered
/// exactly what the ports received plus what waits in their used rings.
pub fn check_counts(
    h: &HostView,
    ports: [&P; 2],
    base_host: &[SideCounters; 2],
    base_ports: &[Stats; 2],
    f: &InFlight,
) -> Result<(), String> {
    for k in 0..2 {
        let (htx, hrx) = host_slot_counts(&h.counters[k]);
        let (btx, brx) = host_slot_counts(&base_host[k]);
        let (ptx, prx) = port_slot_counts(&ports[k].stats());
        let (bptx, bprx) = port_slot_counts(&base_ports[k]);
        let (htx, hrx, ptx, prx) = (htx - btx, hrx - brx, ptx - bptx, prx - bprx);
        if htx + u64::from(f.unmatched_tx[k]) != ptx {
            return Err(format!(
                "side {k}: port sent {ptx} slots, host forwarded {htx}, {} unmatched",
                f.unmatched_tx[k]
            ));
        }
        if prx + u64::from(f.unreaped_rx[k]) != hrx {
            return Err(format!(
                "side {k}: host delivered {hrx} slots, port received {prx}, {} unreaped",
                f.unreaped_rx[k]
            ));
        }
        let c = &h.counters[k];
        if c.refusals() != 0 || c.copied_bytes != 0 || c.tx_copied != 0 || c.needs_reset != 0 {
            return Err(format!("side {k}: host counters: {c}"));
        }
    }
    Ok(())
}

/// At a settled point: nothing in flight, and `h == k ⇔ port k owns s`
/// except for deferred slots.
pub fn check_settled(h: &HostView, ports: [&P; 2]) -> Result<InFlight, String> {
    let f = check_zero_copy_agreement(h, ports)?;
    if f.unmatched_tx != [0, 0] || f.unreaped_tx != [0, 0] || f.unreaped_rx != [0, 0] {
        return Err(format!("settled, yet in flight: {f:?}"));
    }
    let mut count = [0u32; 2];
    for s in 0..h.owners.len() as u32 {
        for (k, c) in count.iter_mut().enumerate() {
            *c += u32::from(ports[k].owns_slot(s));
        }
    }
    let total = count[0] + count[1] + f.deferred[0] + f.deferred[1];
    if total != h.owners.len() as u32 {
        return Err(format!(
            "owned {count:?} + deferred {:?} = {total}, not {} slots",
            f.deferred,
            h.owners.len()
        ));
    }
    for (k, p) in ports.iter().enumerate() {
        // Rule 3: every slot the peer owns is posted, as far as the RX
        // queue has room.
        let st = p.stats();
        let rx_size = u32::from(p.queue_sizes().0);
        if st.slots.peer_unposted > 0 && st.slots.peer_posted + st.classic.posted_rx < rx_size {
            return Err(format!(
                "side {k}: {} peer slots unposted with room on the RX queue ({} slots + {} classic posted of {rx_size})",
                st.slots.peer_unposted, st.slots.peer_posted, st.classic.posted_rx
            ));
        }
    }
    Ok(f)
}

/// Every single corruption of the host's per-slot view of `h` (an owner
/// flipped, a post or a deferral of either side flipped), each handed to
/// `caught(what, bad)`, which asserts that the checks notice it.
pub fn slot_corruptions(h: &HostView, caught: &dyn Fn(String, HostView)) {
    for s in 0..h.owners.len() {
        let mut bad = h.clone();
        bad.owners[s] ^= 1;
        caught(format!("slot {s}: host owner flipped"), bad);
        for k in 0..2 {
            let mut bad = h.clone();
            bad.posted[k][s] ^= true;
            caught(format!("slot {s}: posted by side {k} flipped"), bad);
            let mut bad = h.clone();
            bad.deferred[k][s] ^= true;
            caught(format!("slot {s}: deferred to side {k} flipped"), bad);
        }
    }
}

/// A test frame: magic, sender side, sequence number, then a pattern.
pub const FRAME_HDR: usize = 6;
const MAGIC: u8 = 0x5b;

/// Writes the frame header and a pattern of `(dir, seq)` into `b`.
pub fn fill_frame(b: &mut [u8], dir: u8, seq: u32) {
    stamp(b, dir, seq);
    for (i, x) in b.iter_mut().enumerate().skip(FRAME_HDR) {
        *x = (seq as usize)
            .wrapping_mul(31)
            .wrapping_add(i * 7)
            .wrapping_add(dir as usize * 101) as u8;
    }
}

/// Rewrites only the header (forwarding in place keeps the rest).
pub fn stamp(b: &mut [u8], dir: u8, seq: u32) {
    b[0] = MAGIC;
    b[1] = dir;
    b[2..6].copy_from_slice(&seq.to_le_bytes());
}

/// The (direction, sequence number) of a test frame: the direction is
/// the sender's side, plus twice the queue pair it was sent on
/// ([`Flows::pair`]; 0 on one queue pair).
pub fn read_stamp(b: &[u8]) -> Option<(u8, u32)> {
    if b.len() < FRAME_HDR || b[0] != MAGIC || b[1] >= 2 * MAX_QUEUE_PAIRS as u8 {
        return None;
    }
    Some((b[1], u32::from_le_bytes(b[2..6].try_into().unwrap())))
}

/// A port configuration for the in-process tests: explicit gift numbers,
/// no time-driven behaviour (the one idle epoch read a port does is
/// harmless), and a drain that does not wait for a host that only runs
/// when the test polls it.
pub fn port_cfg(queue: u16) -> PortConfig {
    PortConfig {
        classic_only: false,
        rx_queue_size: queue,
        tx_queue_size: queue,
        classic_rx_buffers: 4,
        classic_buf_size: 2048,
        gift_hysteresis: Some(2),
        gift_burst: 64,
        epoch_poll_interval: Duration::from_secs(3600),
        drain_timeout: Duration::from_millis(1),
        early_post: true,
    }
}

/// Every frame sent, per direction, until it is delivered.
#[derive(Default)]
pub struct Flows {
    /// The queue pair these flows run on (frames are stamped with the
    /// direction `side + 2 * pair`).
    pub pair: u8,
    /// Next sequence number per sender.
    pub next_seq: [u32; 2],
    /// Sent, not delivered yet: per sender, sequence number to bytes.
    pub in_flight: [BTreeMap<u32, Vec<u8>>; 2],
    /// Frames sent per sender.
    pub sent: [u64; 2],
    /// Frames delivered per sender.
    pub delivered: [u64; 2],
    /// Highest sequence number delivered per sender.
    pub last: [Option<u32>; 2],
    /// Deliveries below the highest one seen, per sender.
    pub reordered: [u64; 2],
}

impl Flows {
    /// The direction byte side `k` stamps its frames of these flows with.
    pub fn dir(&self, k: usize) -> u8 {
        k as u8 + 2 * self.pair
    }

    /// Checks a packet side `k` received: from the peer, sent once, byte-exact.
    pub fn received<B: Bus>(&mut self, k: usize, pkt: &Pkt, port: &Port<B>) -> Result<(), String> {
        self.received_bytes(k, port.header(pkt).map(|h| h.flags), port.data(pkt))
    }

    /// [`Flows::received`] for a packet queue pair `q` received.
    pub fn received_q<B: Bus>(
        &mut self,
        k: usize,
        pkt: &Pkt,
        q: &PortQueue<B>,
    ) -> Result<(), String> {
        self.received_bytes(k, q.header(pkt).map(|h| h.flags), q.data(pkt))
    }

    /// Checks a delivery to side `k` with header flags `flags` and frame
    /// `bytes`.
    fn received_bytes(&mut self, k: usize, flags: Option<u8>, bytes: &[u8]) -> Result<(), String> {
        if flags != Some(0) {
            return Err(format!("side {k}: a delivered packet has header flags set"));
        }
        let (dir, seq) = read_stamp(bytes).ok_or_else(|| {
            format!(
                "side {k}: received {} bytes that are no test frame: {:02x?}",
                bytes.len(),
                &bytes[..bytes.len().min(16)]
            )
        })?;
        if dir != self.dir(1 - k) {
            return Err(format!(
                "side {k}: frame #{seq} of direction {dir} arrived on queue pair {} (direction {} expected)",
                self.pair,
                self.dir(1 - k)
            ));
        }
        let dir = 1 - k;
        let want = self.in_flight[dir].remove(&seq).ok_or_else(|| {
            format!("side {k}: frame #{seq} from side {dir} delivered twice or never sent")
        })?;
        if want.len() != bytes.len() {
            return Err(format!(
                "side {k}: frame #{seq} from side {dir}: {} bytes sent, {} received",
                want.len(),
                bytes.len()
            ));
        }
        if let Some(i) = (0..want.len()).find(|&i| want[i] != bytes[i]) {
            return Err(format!(
                "side {k}: frame #{seq} from side {dir} ({} bytes) differs at byte {i}: sent {:#04x}, received {:#04x}",
                want.len(),
                want[i],
                bytes[i]
            ));
        }
        self.delivered[dir] += 1;
        match self.last[dir] {
            Some(l) if seq < l => self.reordered[dir] += 1,
            _ => self.last[dir] = Some(seq),
        }
        Ok(())
    }
}
