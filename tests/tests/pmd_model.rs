//! Model-based test of the zero-copy protocol (`docs/abi.md` §6, ownership and zero-copy mode): two
//! real [`Port`]s on one real [`Pair`] through [`InProcessBus`], driven by
//! random interleavings of application and host steps, checked against a
//! reference model after every step.
//!
//! The steps: side X allocates and sends k frames; side X receives a
//! burst and frees, forwards back in place or keeps each packet; kept
//! packets are freed or forwarded later; a port does its housekeeping
//! without receiving; the host polls once, or until it has nothing left
//! to do on its own (then the host ledger and both PMD ledgers must agree,
//! see `pmd_common` for the exact relation, and the counters must add up);
//! the peer of X floods X until X's gift policy fires; everything settles.
//!
//! The model remembers every frame sent per direction, so every delivery
//! is checked byte for byte, exactly once, and in order, unless the host
//! deferred a delivery (`tx_deferred`), which is the one way a frame may
//! overtake another. After every burst the gift policy must have run: a
//! port never keeps more free slots than its trigger unless its TX queue
//! is full.
//!
//! Two host settings, both deterministic when the test steps the host:
//! TX waits that never expire (queues large enough to post every slot),
//! and waits that expire at once (small queues: deferred deliveries and a
//! full TX ring happen). The run is seeded (same cases every time); set
//! `SBNET_MODEL_SEED` (a number) to explore others and `SBNET_MODEL_CASES`
//! for more cases.

mod pmd_common;

use pmd_common::model;
use pmd_common::{
    check_counts, check_settled, check_zero_copy_agreement, fill_frame, port_cfg, service,
    slot_corruptions, stamp, Flows, HostView, InFlight, InPair, TxWait, P,
};
use proptest::prelude::*;
use sbnet_device::counters::SideCounters;
use sbnet_pmd::{Mode, Pkt, Port, PortConfig, Stats};
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

const SLOTS: u32 = 32;
const SLOT_SIZE: u32 = 2048;
const MAX_FRAME: usize = SLOT_SIZE as usize - 12;
/// Gift trigger of `port_cfg`: half the slots plus a hysteresis of 2.
const TRIGGER: u32 = SLOTS / 2 + 2;
/// Rounds of traffic the final drain may use to flush deferred deliveries.
const FINISH_ROUNDS: u16 = 8;

/// The two host/queue settings.
#[derive(Debug, Clone, Copy)]
struct Setup {
    wait: TxWait,
    queue: u16,
    /// Each side's `PortConfig::early_post`: sends and gifts post their
    /// slot in the same burst.
    early: [bool; 2],
}

/// Both host settings with the ports posting a slot after its send
/// completes, then both again with early posts, then a pair where only
/// side 1 posts early (a port of an older PMD beside a newer one): its
/// sends wait for side 0's posts.
const SETUPS: [Setup; 5] = [
    // Every peer slot fits the RX queue (64 - 4 classic): a send waits for
    // the post, which always comes; no deferral, strict order.
    Setup {
        wait: TxWait::Forever,
        queue: 64,
        early: [false; 2],
    },
    // 16-entry queues: a side posts at most 12 peer slots, a send of an
    // unposted slot is deferred on the next poll, the TX ring fills up.
    Setup {
        wait: TxWait::Zero,
        queue: 16,
        early: [false; 2],
    },
    Setup {
        wait: TxWait::Forever,
        queue: 64,
        early: [true; 2],
    },
    Setup {
        wait: TxWait::Zero,
        queue: 16,
        early: [true; 2],
    },
    Setup {
        wait: TxWait::Forever,
        queue: 64,
        early: [false, true],
    },
];

#[derive(Debug, Clone)]
enum Action {
    /// Allocate and send up to `k` frames from `side`; `len` picks sizes.
    Send { side: usize, k: usize, len: u16 },
    /// One receive burst of at most `max` on `side`; two bits of `what`
    /// per packet: free (0, 1), forward back in place (2), keep (3).
    Rx { side: usize, max: usize, what: u64 },
    /// Free (or forward) the `n` oldest packets `side` keeps.
    Release {
        side: usize,
        n: usize,
        forward: bool,
    },
    /// A transmit burst of nothing: reaps, gifts, posts.
    Housekeep { side: usize },
    /// One host poll.
    HostStep,
    /// Host polls until it has nothing to do alone; then the ledgers must agree.
    HostPoll,
    /// The peer floods `side` (which frees everything) until `side` gifts.
    Gift { side: usize },
    /// Everything runs until nothing moves; then the settled relation holds.
    Settle,
}

fn action() -> impl Strategy<Value = Action> {
    let side = 0usize..2;
    prop_oneof![
        4 => (side.clone(), 1usize..24, any::<u16>())
            .prop_map(|(side, k, len)| Action::Send { side, k, len }),
        4 => (side.clone(), 1usize..40, any::<u64>())
            .prop_map(|(side, max, what)| Action::Rx { side, max, what }),
        2 => (side.clone(), 1usize..8, any::<bool>())
            .prop_map(|(side, n, forward)| Action::Release { side, n, forward }),
        1 => side.clone().prop_map(|side| Action::Housekeep { side }),
        2 => Just(Action::HostStep),
        3 => Just(Action::HostPoll),
        1 => side.prop_map(|side| Action::Gift { side }),
        1 => Just(Action::Settle),
    ]
}

/// Frame length for packet `i` of a send.
fn frame_len(seed: u16, i: usize) -> usize {
    model::frame_len(seed, i, MAX_FRAME)
}

/// A delivery in zero-copy mode: a slot, and the frame the tracker expects.
fn zc_received(flows: &mut Flows, k: usize, p: &Pkt, port: &P) -> Result<(), String> {
    if !p.is_slot() {
        return Err(format!("side {k}: a classic packet in zero-copy mode"));
    }
    flows.received(k, p, port)
}

/// What a run exercised (so the test proves it reached the states it is
/// about).
#[derive(Debug, Default)]
struct Coverage {
    cases: u64,
    steps: u64,
    agreement_checks: u64,
    frames: u64,
    gifts: u64,
    gift_actions: u64,
    gift_actions_that_gifted: u64,
    deferred: u64,
    reordered: u64,
    unmatched_seen: u64,
    unreaped_rx_seen: u64,
    unreaped_tx_seen: u64,
    deferred_seen: u64,
    early_seen: u64,
    tx_ring_full: u64,
    forwarded: u64,
    max_frame_sent: u64,
}

struct Model {
    setup: Setup,
    pair: InPair,
    ports: [P; 2],
    inbox: [VecDeque<Pkt>; 2],
    flows: Flows,
    base_host: [SideCounters; 2],
    base_ports: [Stats; 2],
    cov: Coverage,
}

impl Model {
    fn new(setup: Setup) -> Result<Self, String> {
        let pair = InPair::new(SLOT_SIZE, SLOTS, 256, setup.wait);
        let open = |k: usize| {
            let cfg = PortConfig {
                early_post: setup.early[k],
                ..port_cfg(setup.queue)
            };
            Port::open(pair.bus(k), cfg).map_err(|e| format!("side {k}: open: {e}"))
        };
        let p0 = open(0)?;
        let p1 = open(1)?;
        let mut m = Self {
            setup,
            pair,
            ports: [p0, p1],
            inbox: Default::default(),
            flows: Flows::default(),
            base_host: Default::default(),
            base_ports: Default::default(),
            cov: Coverage::default(),
        };
        m.settle_keep()?;
        for (k, p) in m.ports.iter().enumerate() {
            if p.mode() != Mode::ZeroCopy {
                return Err(format!("side {k}: {:?} after bring-up", p.mode()));
            }
        }
        let h = m.pair.host();
        // Side 0 resyncs once (side 1 arrived). Side 1's open cannot take
        // its share before side 0 has acknowledged (PEER_SYNCED), so its
        // first burst finishes that sync: one resync too.
        if m.ports[0].stats().resyncs != 1 || m.ports[1].stats().resyncs != 1 {
            return Err(format!(
                "bring-up: each side should resync exactly once: {} and {}",
                m.ports[0].stats().resyncs,
                m.ports[1].stats().resyncs
            ));
        }
        // Rule 2: the initial split.
        for s in 0..SLOTS {
            let k = (s % 2) as usize;
            if h.owners[s as usize] as usize != k || !m.ports[k].owns_slot(s) {
                return Err(format!("bring-up: slot {s} is not side {k}'s (rule 2)"));
            }
        }
        check_settled(&h, [&m.ports[0], &m.ports[1]])?;
        m.base_host = h.counters;
        m.base_ports = [m.ports[0].stats(), m.ports[1].stats()];
        Ok(m)
    }

    /// The gift policy ran in the burst that just ended on `k`.
    fn gift_policy_ran(&self, k: usize) -> Result<(), String> {
        let st = self.ports[k].stats();
        let tx_size = u32::from(self.ports[k].queue_sizes().1);
        if st.slots.free > TRIGGER && st.slots.in_flight_tx < tx_size {
            return Err(format!(
                "side {k}: {} free slots after a burst (trigger {TRIGGER}) and TX room: no gift (rule 6)",
                st.slots.free
            ));
        }
        Ok(())
    }

    /// Allocates up to `k` frames on `x`, fills them and sends them.
    fn send(&mut self, x: usize, k: usize, len: u16) -> Result<usize, String> {
        let mut pkts: Vec<Option<Pkt>> = Vec::with_capacity(k);
        let mut seqs = Vec::with_capacity(k);
        for i in 0..k {
            let Some(mut p) = self.ports[x].alloc() else {
                break;
            };
            let n = frame_len(len, i);
            p.set_len(n)
                .map_err(|e| format!("side {x}: set_len({n}): {e}"))?;
            let seq = self.flows.next_seq[x];
            self.flows.next_seq[x] += 1;
            let d = self.ports[x].data_mut(&mut p);
            if d.len() != n {
                return Err(format!(
                    "side {x}: data_mut gave {} bytes, not {n}",
                    d.len()
                ));
            }
            fill_frame(d, x as u8, seq);
            seqs.push((seq, d.to_vec()));
            pkts.push(Some(p));
        }
        self.transmit(x, &mut pkts, seqs)
    }

    /// Sends `pkts` (whose expected bytes are `seqs`, in order); packets
    /// the full TX ring leaves are kept by the application.
    fn transmit(
        &mut self,
        x: usize,
        pkts: &mut [Option<Pkt>],
        seqs: Vec<(u32, Vec<u8>)>,
    ) -> Result<usize, String> {
        let sent = self.ports[x]
            .tx_burst(pkts)
            .map_err(|e| format!("side {x}: tx_burst: {e}"))?;
        for (i, (seq, bytes)) in seqs.into_iter().enumerate() {
            if i < sent {
                if pkts[i].is_some() {
                    return Err(format!(
                        "side {x}: tx_burst sent {sent} but left packet {i}"
                    ));
                }
                self.cov.max_frame_sent += u64::from(bytes.len() == MAX_FRAME);
                self.flows.in_flight[x].insert(seq, bytes);
                self.flows.sent[x] += 1;
            } else {
                let p = pkts[i]
                    .take()
                    .ok_or_else(|| format!("side {x}: unsent packet {i} vanished"))?;
                self.cov.tx_ring_full += 1;
                self.inbox[x].push_back(p);
            }
        }
        self.gift_policy_ran(x)?;
        Ok(sent)
    }

    /// Forwards packets back in place: a new header, the rest untouched.
    fn forward(&mut self, x: usize, pkts: Vec<Pkt>) -> Result<(), String> {
        let mut burst = Vec::with_capacity(pkts.len());
        let mut seqs = Vec::with_capacity(pkts.len());
        for mut p in pkts {
            let seq = self.flows.next_seq[x];
            self.flows.next_seq[x] += 1;
            let d = self.ports[x].data_mut(&mut p);
            stamp(d, x as u8, seq);
            seqs.push((seq, d.to_vec()));
            burst.push(Some(p));
        }
        self.cov.forwarded += burst.len() as u64;
        self.transmit(x, &mut burst, seqs)?;
        Ok(())
    }

    fn rx(&mut self, x: usize, max: usize, what: u64) -> Result<(), String> {
        let mut out: Vec<Option<Pkt>> = (0..max).map(|_| None).collect();
        let n = self.ports[x]
            .rx_burst(&mut out)
            .map_err(|e| format!("side {x}: rx_burst: {e}"))?;
        self.gift_policy_ran(x)?;
        let mut fwd = Vec::new();
        for (i, p) in out[..n].iter_mut().enumerate() {
            let p = p
                .take()
                .ok_or_else(|| format!("side {x}: rx_burst returned {n} but entry {i} is None"))?;
            zc_received(&mut self.flows, x, &p, &self.ports[x])?;
            match (what >> (2 * (i % 32))) & 3 {
                0 | 1 => self.ports[x].free(p),
                2 => fwd.push(p),
                _ => self.inbox[x].push_back(p),
            }
        }
        if let Some(p) = out[n..].iter().position(Option::is_some) {
            return Err(format!(
                "side {x}: rx_burst wrote entry {} past n = {n}",
                n + p
            ));
        }
        self.forward(x, fwd)
    }

    fn release(&mut self, x: usize, n: usize, forward: bool) -> Result<(), String> {
        let n = n.min(self.inbox[x].len());
        let pkts: Vec<Pkt> = self.inbox[x].drain(..n).collect();
        if forward {
            self.forward(x, pkts)
        } else {
            for p in pkts {
                self.ports[x].free(p);
            }
            Ok(())
        }
    }

    /// Host and ports run until nothing moves; received packets are kept.
    fn settle_keep(&mut self) -> Result<(), String> {
        let Self {
            pair,
            ports,
            inbox,
            flows,
            ..
        } = self;
        let [a, b] = ports;
        pair.settle(&mut [a, b], &mut |k, p, port| {
            zc_received(flows, k, &p, port)?;
            inbox[k].push_back(p);
            Ok(())
        })
    }

    /// The host alone until quiet; then the ledgers must agree.
    fn host_poll_and_check(&mut self) -> Result<(), String> {
        self.pair.quiesce();
        self.check_quiescent()
    }

    fn check_quiescent(&mut self) -> Result<(), String> {
        let h = self.pair.host();
        let ports = [&self.ports[0], &self.ports[1]];
        let f = check_zero_copy_agreement(&h, ports)?;
        check_counts(&h, ports, &self.base_host, &self.base_ports, &f)?;
        self.cov.agreement_checks += 1;
        self.cov.unmatched_seen += u64::from(f.unmatched_tx[0] + f.unmatched_tx[1]);
        self.cov.unreaped_rx_seen += u64::from(f.unreaped_rx[0] + f.unreaped_rx[1]);
        self.cov.unreaped_tx_seen += u64::from(f.unreaped_tx[0] + f.unreaped_tx[1]);
        self.cov.deferred_seen += u64::from(f.deferred[0] + f.deferred[1]);
        self.cov.early_seen += u64::from(f.early[0] + f.early[1]);
        Ok(())
    }

    fn check_settled(&mut self) -> Result<(), String> {
        let h = self.pair.host();
        let ports = [&self.ports[0], &self.ports[1]];
        let f = check_settled(&h, ports)?;
        check_counts(&h, ports, &self.base_host, &self.base_ports, &f)?;
        if self.setup.wait == TxWait::Forever && (f.deferred != [0, 0] || h.waiting) {
            return Err(format!(
                "settled with room for every post, yet deferred {:?} / waiting {}",
                f.deferred, h.waiting
            ));
        }
        self.cov.agreement_checks += 1;
        Ok(())
    }

    /// The peer of `x` floods it; `x` frees everything it receives, so
    /// its free pool grows past the trigger and it must gift.
    fn gift(&mut self, x: usize) -> Result<(), String> {
        let y = 1 - x;
        self.cov.gift_actions += 1;
        for p in std::mem::take(&mut self.inbox[x]) {
            self.ports[x].free(p);
        }
        let before = self.ports[x].stats().gifts_sent;
        for round in 0..8 {
            self.send(y, SLOTS as usize, round as u16)?;
            self.pair.quiesce();
            let Self {
                ports,
                inbox,
                flows,
                ..
            } = self;
            let [a, b] = ports;
            let (px, py) = if x == 0 { (a, b) } else { (b, a) };
            service(px, x, &mut |k, p, port| {
                zc_received(flows, k, &p, port)?;
                port.free(p);
                Ok(())
            })?;
            service(py, y, &mut |k, p, port| {
                zc_received(flows, k, &p, port)?;
                inbox[k].push_back(p);
                Ok(())
            })?;
            // The frees came after the burst: the next burst gifts.
            self.ports[x]
                .tx_burst(&mut [])
                .map_err(|e| format!("side {x}: tx_burst: {e}"))?;
            self.gift_policy_ran(x)?;
            if self.ports[x].stats().gifts_sent > before {
                self.cov.gift_actions_that_gifted += 1;
                return Ok(());
            }
        }
        Ok(())
    }

    fn step(&mut self, a: &Action) -> Result<(), String> {
        self.cov.steps += 1;
        match *a {
            Action::Send { side, k, len } => self.send(side, k, len).map(drop),
            Action::Rx { side, max, what } => self.rx(side, max, what),
            Action::Release { side, n, forward } => self.release(side, n, forward),
            Action::Housekeep { side } => {
                self.ports[side]
                    .tx_burst(&mut [])
                    .map_err(|e| format!("side {side}: tx_burst: {e}"))?;
                self.gift_policy_ran(side)
            }
            Action::HostStep => {
                self.pair.poll();
                Ok(())
            }
            Action::HostPoll => self.host_poll_and_check(),
            Action::Gift { side } => self.gift(side),
            Action::Settle => {
                self.settle_keep()?;
                self.check_settled()
            }
        }
    }

    /// Frees everything, lets it all arrive, and checks the end state:
    /// every frame delivered once, order kept but for deferrals, ledgers
    /// settled.
    fn finish(&mut self) -> Result<(), String> {
        for round in 0..=FINISH_ROUNDS {
            for k in 0..2 {
                for p in std::mem::take(&mut self.inbox[k]) {
                    self.ports[k].free(p);
                }
            }
            self.settle_keep()?;
            self.check_settled()?;
            if round == FINISH_ROUNDS || self.flows.in_flight.iter().all(BTreeMap::is_empty) {
                break;
            }
            // A deferred delivery waits until its receiver has room on its
            // RX queue to post the slot, i.e. until the other side sends
            // into the slots the receiver has posted: both send everything.
            self.send(0, SLOTS as usize, round)?;
            self.send(1, SLOTS as usize, round)?;
        }
        for k in 0..2 {
            if let Some((seq, _)) = self.flows.in_flight[k].first_key_value() {
                let h = self.pair.host();
                let deferred: Vec<Vec<usize>> = (0..2)
                    .map(|y| (0..SLOTS as usize).filter(|&s| h.deferred[y][s]).collect())
                    .collect();
                return Err(format!(
                    "{} frames from side {k} never arrived (first #{seq}); deferred on the host {deferred:?}; side 0 {:?}; side 1 {:?}",
                    self.flows.in_flight[k].len(),
                    self.ports[0].stats().slots,
                    self.ports[1].stats().slots,
                ));
            }
        }
        let h = self.pair.host();
        for x in 0..2 {
            let deferred = h.counters[x].tx_deferred - self.base_host[x].tx_deferred;
            if self.flows.reordered[x] > deferred {
                return Err(format!(
                    "side {x}'s frames: {} arrived out of order, but only {deferred} deliveries were deferred",
                    self.flows.reordered[x]
                ));
            }
            self.cov.deferred += deferred;
            self.cov.reordered += self.flows.reordered[x];
            self.cov.gifts += h.counters[x].gifts_sent - self.base_host[x].gifts_sent;
            self.cov.frames += self.flows.delivered[x];
            model::check_clean(&format!("side {x}"), &self.ports[x].stats())?;
        }
        Ok(())
    }
}

fn run_case(setup: Setup, actions: &[Action], total: &mut Coverage) -> Result<(), String> {
    let mut m = Model::new(setup)?;
    for (i, a) in actions.iter().enumerate() {
        m.step(a)
            .map_err(|e| format!("step {i} ({a:?}) with {setup:?}: {e}"))?;
    }
    m.finish()
        .map_err(|e| format!("final drain with {setup:?}: {e}"))?;
    let c = &m.cov;
    total.cases += 1;
    total.steps += c.steps;
    total.agreement_checks += c.agreement_checks;
    total.frames += c.frames;
    total.gifts += c.gifts;
    total.gift_actions += c.gift_actions;
    total.gift_actions_that_gifted += c.gift_actions_that_gifted;
    total.deferred += c.deferred;
    total.reordered += c.reordered;
    total.unmatched_seen += c.unmatched_seen;
    total.unreaped_rx_seen += c.unreaped_rx_seen;
    total.unreaped_tx_seen += c.unreaped_tx_seen;
    total.deferred_seen += c.deferred_seen;
    total.early_seen += c.early_seen;
    total.tx_ring_full += c.tx_ring_full;
    total.forwarded += c.forwarded;
    total.max_frame_sent += c.max_frame_sent;
    Ok(())
}

/// Cases per setup: a few seconds in a debug build; the suite runs in
/// release, where eight times as many take about as long.
const CASES: u32 = if cfg!(debug_assertions) { 256 } else { 2048 };

fn run_setup(setup: Setup, cases: u32) -> Coverage {
    let total = std::cell::RefCell::new(Coverage::default());
    let started = Instant::now();
    model::run_seeded(&setup, cases, action(), 160, |actions| {
        run_case(setup, actions, &mut total.borrow_mut())
    });
    let total = total.into_inner();
    eprintln!("{setup:?}: {total:?} in {:.2?}", started.elapsed());
    total
}

#[test]
fn zero_copy_model_waits_never_expire() {
    let c = run_setup(SETUPS[0], CASES);
    // The run reached what it is about.
    assert!(c.frames > 10_000, "too little traffic: {c:?}");
    assert!(
        c.gift_actions_that_gifted > 0 && c.gifts > 0,
        "gifts never fired: {c:?}"
    );
    assert!(
        c.unreaped_rx_seen > 0 && c.unreaped_tx_seen > 0 && c.unmatched_seen > 0,
        "no in-flight state checked: {c:?}"
    );
    assert!(c.forwarded > 0 && c.max_frame_sent > 0, "{c:?}");
    assert_eq!(
        c.deferred, 0,
        "waits that never expire deferred a delivery: {c:?}"
    );
    assert_eq!(
        c.reordered, 0,
        "frames overtook each other without a deferral: {c:?}"
    );
    assert_eq!(c.early_seen, 0, "early posts while switched off: {c:?}");
}

#[test]
fn zero_copy_model_waits_expire_small_queues() {
    let c = run_setup(SETUPS[1], CASES);
    assert!(c.frames > 10_000, "too little traffic: {c:?}");
    assert!(
        c.gift_actions_that_gifted > 0 && c.gifts > 0,
        "gifts never fired: {c:?}"
    );
    assert!(
        c.deferred > 0 && c.deferred_seen > 0,
        "no deferred delivery: {c:?}"
    );
    assert!(c.tx_ring_full > 0, "the TX ring never filled: {c:?}");
    assert_eq!(c.early_seen, 0, "early posts while switched off: {c:?}");
}

#[test]
fn zero_copy_model_early_post_waits_never_expire() {
    let c = run_setup(SETUPS[2], CASES);
    assert!(c.frames > 10_000, "too little traffic: {c:?}");
    assert!(
        c.gift_actions_that_gifted > 0 && c.gifts > 0,
        "gifts never fired: {c:?}"
    );
    assert!(
        c.early_seen > 0 && c.unreaped_rx_seen > 0 && c.unreaped_tx_seen > 0,
        "no early send in flight checked: {c:?}"
    );
    assert!(c.forwarded > 0, "{c:?}");
    assert_eq!(c.deferred, 0, "{c:?}");
    assert_eq!(c.reordered, 0, "{c:?}");
}

#[test]
fn zero_copy_model_early_post_waits_expire_small_queues() {
    let c = run_setup(SETUPS[3], CASES);
    assert!(c.frames > 10_000, "too little traffic: {c:?}");
    assert!(c.early_seen > 0, "no early send in flight checked: {c:?}");
    assert!(
        c.deferred > 0 && c.deferred_seen > 0,
        "no deferred delivery: {c:?}"
    );
    assert!(c.tx_ring_full > 0, "the TX ring never filled: {c:?}");
}

#[test]
fn zero_copy_model_early_post_on_one_side_only() {
    let c = run_setup(SETUPS[4], CASES);
    assert!(c.frames > 10_000, "too little traffic: {c:?}");
    assert!(
        c.early_seen > 0 && c.unmatched_seen > 0,
        "no early send waiting for its match checked: {c:?}"
    );
    assert_eq!(c.deferred, 0, "{c:?}");
    assert_eq!(c.reordered, 0, "{c:?}");
}

/// The checks above can fail: in a real snapshot with traffic in flight
/// (deliveries and completions not reaped, a send waiting for its post),
/// every single corruption of the host's view (an owner, a post, a
/// deferral, a counter) is caught.
#[test]
fn agreement_checks_catch_every_single_corruption() {
    let mut m = Model::new(SETUPS[0]).expect("bring-up");
    m.send(0, 10, 1).unwrap();
    m.send(1, 10, 2).unwrap();
    m.pair.quiesce();
    // Side 1 takes three and forwards them at once: side 0 has not
    // reaped its completions, so it has not posted them: the sends wait.
    m.rx(1, 3, 0xaa).unwrap();
    m.pair.quiesce();
    every_corruption_caught(&m, |f| {
        f.unmatched_tx[1] > 0 && f.unreaped_rx[0] > 0 && f.unreaped_tx[0] > 0
    });
}

/// The same with early posts: with both sides posting early, side 1's
/// forwards are matched at once (side 0 posted the slots with its sends);
/// with only side 1 posting early, they wait for side 0's posts, so the
/// host still says side 1 owns slots its ledger says are posted.
#[test]
fn agreement_checks_catch_every_single_corruption_with_early_posts() {
    for (setup, want) in [
        (
            SETUPS[2],
            (|f| f.early[0] > 0 && f.early[1] > 0 && f.unreaped_tx[1] > 0) as fn(&InFlight) -> bool,
        ),
        (SETUPS[4], |f| {
            f.early[1] > 0 && f.unmatched_tx[1] > 0 && f.unreaped_rx[0] > 0
        }),
    ] {
        let mut m = Model::new(setup).expect("bring-up");
        m.send(0, 10, 1).unwrap();
        m.send(1, 10, 2).unwrap();
        m.pair.quiesce();
        m.rx(1, 3, 0xaa).unwrap();
        m.pair.quiesce();
        every_corruption_caught(&m, want);
    }
}

/// Checks that `m`'s real state agrees and has what `in_flight` asks for,
/// then that every single corruption of the host's view is caught.
fn every_corruption_caught(m: &Model, in_flight: impl Fn(&InFlight) -> bool) {
    let h = m.pair.host();
    let ports = [&m.ports[0], &m.ports[1]];
    let check = |h: &HostView| {
        let f = check_zero_copy_agreement(h, ports)?;
        check_counts(h, ports, &m.base_host, &m.base_ports, &f).map(|()| f)
    };
    let f = check(&h).unwrap_or_else(|e| panic!("the real state must agree: {e}"));
    assert!(in_flight(&f), "the snapshot has states in flight: {f:?}");
    let caught = |what: String, bad: HostView| {
        assert!(check(&bad).is_err(), "{what} went unnoticed");
    };
    slot_corruptions(&h, &caught);
    for k in 0..2 {
        for (name, f) in [
            (
                "rx_packets",
                (|c| &mut c.rx_packets) as fn(&mut SideCounters) -> &mut u64,
            ),
            ("tx_zero_copy", |c| &mut c.tx_zero_copy),
            ("gifts_sent", |c| &mut c.gifts_sent),
            ("copied_bytes", |c| &mut c.copied_bytes),
            ("tx_not_owner", |c| &mut c.tx_not_owner),
        ] {
            let mut bad = h.clone();
            *f(&mut bad.counters[k]) += 1;
            caught(format!("side {k}: {name} + 1"), bad);
        }
    }
    assert!(
        check_settled(&h, ports).is_err(),
        "an unsettled state passed as settled"
    );
}
