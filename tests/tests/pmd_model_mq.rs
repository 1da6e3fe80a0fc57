//! The model-based test of `pmd_model` on a multiqueue link (`docs/abi.md`
//! §8): the pair has Q queue pairs and both ports open all Q of them, so
//! the slots form Q sub-pairs (slot `s` belongs to queue pair `s % Q`).
//!
//! Every step names a queue pair: side X sends k frames on its pair q,
//! receives a burst on pair q (and frees, forwards back in place or keeps
//! each packet), releases what it keeps of pair q, does pair q's
//! housekeeping, or is flooded on pair q by its peer until pair q gifts;
//! the host polls once or until quiet; everything settles. The model keeps
//! one flow per (direction, queue pair): a frame sent on TX pair q must
//! arrive on the peer's RX pair q, as a slot, byte for byte, exactly once
//! and in order unless the host deferred a delivery of that sub-pair.
//!
//! At every host-quiescent point the ledgers agree sub-pair by sub-pair
//! (`pmd_common::mq`: slot `s` is only in queue pair `s % Q`'s ledger on
//! both ports, with the owner the host says) and the counters add up per
//! queue pair (PMD `queue_stats(q)` against the host's
//! `queue_counters()[q]`) and in total; at a settled point each pair's
//! frames and bytes are exact. After every burst on pair q, pair q's gift
//! policy must have run. Seeded like `pmd_model` (`SBNET_MODEL_SEED`,
//! `SBNET_MODEL_CASES`).

mod pmd_common;

use pmd_common::model::{self, frame_len};
use pmd_common::mq::{self, Base};
use pmd_common::{
    check_counts, fill_frame, port_cfg, slot_corruptions, stamp, Flows, HostView, InFlight, InPair,
    TxWait, P,
};
use proptest::prelude::*;
use sbnet_abi::shm::initial_owner_mq;
use sbnet_device::counters::QueueCounters;
use sbnet_pmd::{Mode, Pkt, PortConfig};
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

const SLOTS: u32 = 64;
const SLOT_SIZE: u32 = 2048;
const MAX_FRAME: usize = SLOT_SIZE as usize - 12;
/// Rounds of traffic the final drain may use to flush deferred deliveries.
const FINISH_ROUNDS: u16 = 8;

/// A link of `pairs` queue pairs, its host wait and the ports' queue size.
#[derive(Debug, Clone, Copy)]
struct Setup {
    pairs: u16,
    wait: TxWait,
    queue: u16,
}

impl Setup {
    /// Slots of one sub-pair.
    fn share(self) -> u32 {
        SLOTS / u32::from(self.pairs)
    }

    /// A queue pair's gift trigger (`port_cfg`: half its slots plus 2).
    fn trigger(self) -> u32 {
        self.share() / 2 + 2
    }
}

const SETUPS: [Setup; 3] = [
    // 32 slots a sub-pair, RX queues of 64: every peer slot is posted, a
    // send waits for its post, which always comes: strict order.
    Setup {
        pairs: 2,
        wait: TxWait::Forever,
        queue: 64,
    },
    // 16-entry queues (12 peer slots posted of up to 32): deferred
    // deliveries, full TX rings.
    Setup {
        pairs: 2,
        wait: TxWait::Zero,
        queue: 16,
    },
    // Four sub-pairs of 16 slots, 8-entry queues (4 peer slots posted).
    Setup {
        pairs: 4,
        wait: TxWait::Zero,
        queue: 8,
    },
];

#[derive(Debug, Clone)]
enum Action {
    /// Allocate and send up to `k` frames on queue pair `q` of `side`.
    Send {
        side: usize,
        q: u16,
        k: usize,
        len: u16,
    },
    /// One receive burst of at most `max` on queue pair `q` of `side`;
    /// two bits of `what` per packet: free (0, 1), forward (2), keep (3).
    Rx {
        side: usize,
        q: u16,
        max: usize,
        what: u64,
    },
    /// Free (or forward) the `n` oldest packets `side` keeps of pair `q`.
    Release {
        side: usize,
        q: u16,
        n: usize,
        forward: bool,
    },
    /// A transmit burst of nothing on pair `q`: reaps, gifts, posts.
    Housekeep { side: usize, q: u16 },
    /// One host poll.
    HostStep,
    /// Host polls until quiet; then the ledgers must agree.
    HostPoll,
    /// The peer floods pair `q` of `side` until that pair gifts.
    Gift { side: usize, q: u16 },
    /// Everything runs until nothing moves; then the settled relation holds.
    Settle,
}

fn action(pairs: u16) -> impl Strategy<Value = Action> {
    let side = 0usize..2;
    let q = 0..pairs;
    prop_oneof![
        4 => (side.clone(), q.clone(), 1usize..24, any::<u16>())
            .prop_map(|(side, q, k, len)| Action::Send { side, q, k, len }),
        4 => (side.clone(), q.clone(), 1usize..40, any::<u64>())
            .prop_map(|(side, q, max, what)| Action::Rx { side, q, max, what }),
        2 => (side.clone(), q.clone(), 1usize..8, any::<bool>())
            .prop_map(|(side, q, n, forward)| Action::Release { side, q, n, forward }),
        1 => (side.clone(), q.clone()).prop_map(|(side, q)| Action::Housekeep { side, q }),
        2 => Just(Action::HostStep),
        3 => Just(Action::HostPoll),
        1 => (side, q).prop_map(|(side, q)| Action::Gift { side, q }),
        1 => Just(Action::Settle),
    ]
}

/// What a run exercised, per queue pair where it matters.
#[derive(Debug, Default)]
struct Coverage {
    cases: u64,
    steps: u64,
    agreement_checks: u64,
    /// Frames delivered per queue pair.
    frames: Vec<u64>,
    /// Gifts the host moved, per queue pair of the giver.
    gifts: Vec<u64>,
    gift_actions_that_gifted: u64,
    deferred: u64,
    reordered: u64,
    unmatched_seen: u64,
    unreaped_rx_seen: u64,
    deferred_seen: u64,
    tx_ring_full: u64,
    forwarded: u64,
}

impl Coverage {
    fn add(&mut self, c: &Coverage) {
        let grow = |v: &mut Vec<u64>, o: &[u64]| {
            v.resize(v.len().max(o.len()), 0);
            v.iter_mut().zip(o).for_each(|(a, b)| *a += b);
        };
        self.cases += 1;
        self.steps += c.steps;
        self.agreement_checks += c.agreement_checks;
        grow(&mut self.frames, &c.frames);
        grow(&mut self.gifts, &c.gifts);
        self.gift_actions_that_gifted += c.gift_actions_that_gifted;
        self.deferred += c.deferred;
        self.reordered += c.reordered;
        self.unmatched_seen += c.unmatched_seen;
        self.unreaped_rx_seen += c.unreaped_rx_seen;
        self.deferred_seen += c.deferred_seen;
        self.tx_ring_full += c.tx_ring_full;
        self.forwarded += c.forwarded;
    }
}

struct Model {
    setup: Setup,
    pair: InPair,
    ports: [P; 2],
    /// Kept packets per side and queue pair.
    inbox: [Vec<VecDeque<Pkt>>; 2],
    /// One set of flows per queue pair.
    flows: Vec<Flows>,
    /// Frame bytes sent per side and queue pair since `base`.
    sent_bytes: [Vec<u64>; 2],
    base: Base,
    cov: Coverage,
}

/// A delivery on queue pair `q` of side `k`: a slot, and the frame the
/// pair's flows expect.
fn zc_received(flows: &mut [Flows], k: usize, q: u16, p: &Pkt, port: &P) -> Result<(), String> {
    if !p.is_slot() {
        return Err(format!(
            "side {k} queue pair {q}: a classic packet in zero-copy mode"
        ));
    }
    flows[usize::from(q)].received_q(k, p, port.queue(q))
}

impl Model {
    fn new(setup: Setup) -> Result<Self, String> {
        let qn = usize::from(setup.pairs);
        let pair = InPair::new_mq(SLOT_SIZE, SLOTS, 256, setup.wait, setup.pairs);
        // Side 1 posts early (queue pair 0 only, `PortConfig::early_post`),
        // side 0 does not: pair 0 runs the mixed early protocol beside
        // pairs that post after completion.
        let open = |k: usize| {
            let cfg = PortConfig {
                early_post: k == 1,
                ..port_cfg(setup.queue)
            };
            pair.open_queue_pairs(k, cfg, setup.pairs)
                .map_err(|e| format!("side {k}: open: {e}"))
        };
        let p0 = open(0)?;
        let p1 = open(1)?;
        let mut m = Self {
            setup,
            pair,
            ports: [p0, p1],
            inbox: [0, 1].map(|_| (0..qn).map(|_| VecDeque::new()).collect()),
            flows: (0..qn)
                .map(|q| Flows {
                    pair: q as u8,
                    ..Flows::default()
                })
                .collect(),
            sent_bytes: [vec![0; qn], vec![0; qn]],
            base: Base::default(),
            cov: Coverage {
                frames: vec![0; qn],
                gifts: vec![0; qn],
                ..Coverage::default()
            },
        };
        m.settle_keep()?;
        let h = m.pair.host();
        for k in 0..2 {
            for q in 0..setup.pairs {
                if m.ports[k].queue(q).mode() != Mode::ZeroCopy {
                    return Err(format!(
                        "side {k} queue pair {q}: {:?} after bring-up",
                        m.ports[k].queue(q).mode()
                    ));
                }
            }
        }
        // The initial split of §8: side (s / Q) % 2 owns slot s, through
        // its queue pair s % Q.
        for s in 0..SLOTS {
            let k = initial_owner_mq(s, setup.pairs) as usize;
            let q = (s % u32::from(setup.pairs)) as u16;
            if h.owners[s as usize] as usize != k || !m.ports[k].queue(q).owns_slot(s) {
                return Err(format!(
                    "bring-up: slot {s} is not side {k}'s queue pair {q}'s"
                ));
            }
        }
        m.base = Base::take(&h, [&m.ports[0], &m.ports[1]]);
        mq::check_settled_mq(&h, [&m.ports[0], &m.ports[1]], &m.base)?;
        Ok(m)
    }

    /// Queue pair `q`'s gift policy ran in the burst that just ended on `k`.
    fn gift_policy_ran(&self, k: usize, q: u16) -> Result<(), String> {
        let pq = self.ports[k].queue(q);
        let st = pq.stats();
        let trigger = self.setup.trigger();
        if st.slots.free > trigger && st.slots.in_flight_tx < u32::from(pq.queue_sizes().1) {
            return Err(format!(
                "side {k} queue pair {q}: {} free slots after a burst (trigger {trigger}) and TX room: no gift",
                st.slots.free
            ));
        }
        Ok(())
    }

    /// Allocates up to `k` frames on pair `q` of `x`, fills and sends them.
    fn send(&mut self, x: usize, q: u16, k: usize, len: u16) -> Result<usize, String> {
        let mut pkts = Vec::with_capacity(k);
        let fl = &mut self.flows[usize::from(q)];
        for i in 0..k {
            let Some(mut p) = self.ports[x].queue_mut(q).alloc() else {
                break;
            };
            let n = frame_len(len, i, MAX_FRAME);
            p.set_len(n)
                .map_err(|e| format!("side {x} queue pair {q}: set_len({n}): {e}"))?;
            let seq = fl.next_seq[x];
            fl.next_seq[x] += 1;
            let d = self.ports[x].queue(q).data_mut(&mut p);
            fill_frame(d, fl.dir(x), seq);
            pkts.push((seq, p));
        }
        self.transmit(x, q, pkts)
    }

    /// Sends `pkts` (sequence number, packet) on pair `q` of `x`; packets
    /// the full TX ring leaves are kept by the application.
    fn transmit(&mut self, x: usize, q: u16, pkts: Vec<(u32, Pkt)>) -> Result<usize, String> {
        let qi = usize::from(q);
        let mut seqs = Vec::with_capacity(pkts.len());
        let mut burst = Vec::with_capacity(pkts.len());
        for (seq, p) in pkts {
            seqs.push((seq, self.ports[x].queue(q).data(&p).to_vec()));
            burst.push(Some(p));
        }
        let sent = self.ports[x]
            .tx_burst_q(q, &mut burst)
            .map_err(|e| format!("side {x} queue pair {q}: tx_burst: {e}"))?;
        for (i, ((seq, bytes), p)) in seqs.into_iter().zip(&mut burst).enumerate() {
            match (i < sent, p.take()) {
                (true, None) => {
                    self.sent_bytes[x][qi] += bytes.len() as u64;
                    self.flows[qi].in_flight[x].insert(seq, bytes);
                    self.flows[qi].sent[x] += 1;
                }
                (false, Some(p)) => {
                    self.cov.tx_ring_full += 1;
                    self.inbox[x][qi].push_back(p);
                }
                _ => {
                    return Err(format!(
                        "side {x} queue pair {q}: tx_burst sent {sent}, packet {i} wrongly left or taken"
                    ))
                }
            }
        }
        self.gift_policy_ran(x, q)?;
        Ok(sent)
    }

    /// Forwards packets back in place on their pair: a new header only.
    fn forward(&mut self, x: usize, q: u16, pkts: Vec<Pkt>) -> Result<(), String> {
        let fl = &mut self.flows[usize::from(q)];
        let mut burst = Vec::with_capacity(pkts.len());
        for mut p in pkts {
            let seq = fl.next_seq[x];
            fl.next_seq[x] += 1;
            stamp(self.ports[x].queue(q).data_mut(&mut p), fl.dir(x), seq);
            burst.push((seq, p));
        }
        self.cov.forwarded += burst.len() as u64;
        self.transmit(x, q, burst).map(drop)
    }

    fn rx(&mut self, x: usize, q: u16, max: usize, what: u64) -> Result<(), String> {
        let mut out: Vec<Option<Pkt>> = (0..max).map(|_| None).collect();
        let n = self.ports[x]
            .rx_burst_q(q, &mut out)
            .map_err(|e| format!("side {x} queue pair {q}: rx_burst: {e}"))?;
        self.gift_policy_ran(x, q)?;
        if out[n..].iter().any(Option::is_some) {
            return Err(format!("side {x}: rx_burst wrote past n = {n}"));
        }
        let mut fwd = Vec::new();
        for (i, p) in out.into_iter().take(n).enumerate() {
            let p = p.ok_or_else(|| format!("side {x}: rx_burst gave {n}, entry {i} is None"))?;
            zc_received(&mut self.flows, x, q, &p, &self.ports[x])?;
            match (what >> (2 * (i % 32))) & 3 {
                0 | 1 => self.ports[x].queue_mut(q).free(p),
                2 => fwd.push(p),
                _ => self.inbox[x][usize::from(q)].push_back(p),
            }
        }
        self.forward(x, q, fwd)
    }

    fn release(&mut self, x: usize, q: u16, n: usize, forward: bool) -> Result<(), String> {
        let inbox = &mut self.inbox[x][usize::from(q)];
        let pkts: Vec<Pkt> = inbox.drain(..n.min(inbox.len())).collect();
        if forward {
            return self.forward(x, q, pkts);
        }
        for p in pkts {
            self.ports[x].queue_mut(q).free(p);
        }
        Ok(())
    }

    /// Frees every packet side `x` keeps on pair `q` (all pairs if None).
    fn free_kept(&mut self, x: usize, q: Option<u16>) {
        for (i, inbox) in self.inbox[x].iter_mut().enumerate() {
            if q.is_none_or(|q| usize::from(q) == i) {
                for p in inbox.drain(..) {
                    self.ports[x].queue_mut(i as u16).free(p);
                }
            }
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
        pair.settle_queues(&mut [a, b], &mut |k, q, p, port| {
            zc_received(flows, k, q, &p, port)?;
            inbox[k][usize::from(q)].push_back(p);
            Ok(())
        })
    }

    /// Host-quiescent checks; with `settled`, the settled relation too.
    fn check(&mut self, settled: bool) -> Result<Vec<InFlight>, String> {
        let h = self.pair.host();
        let ports = [&self.ports[0], &self.ports[1]];
        let f = if settled {
            mq::check_settled_mq(&h, ports, &self.base)?
        } else {
            mq::check_agreement_mq(&h, ports)?
        };
        let t = mq::total(&f);
        check_counts(&h, ports, &self.base.host, &self.base.ports, &t)?;
        mq::check_counts_mq(&h, ports, &self.base, &f)?;
        if settled {
            self.check_settled_bytes(&h)?;
        }
        self.cov.agreement_checks += 1;
        self.cov.unmatched_seen += u64::from(t.unmatched_tx[0] + t.unmatched_tx[1]);
        self.cov.unreaped_rx_seen += u64::from(t.unreaped_rx[0] + t.unreaped_rx[1]);
        self.cov.deferred_seen += u64::from(t.deferred[0] + t.deferred[1]);
        Ok(f)
    }

    /// Settled: the host forwarded exactly the bytes each pair sent.
    fn check_settled_bytes(&self, h: &HostView) -> Result<(), String> {
        for k in 0..2 {
            for (q, c) in h.queue_counters[k].iter().enumerate() {
                let b: &QueueCounters = &self.base.host_q[k][q];
                if c.tx_bytes - b.tx_bytes != self.sent_bytes[k][q] {
                    return Err(format!(
                        "side {k} queue pair {q}: sent {} frame bytes, the host forwarded {}",
                        self.sent_bytes[k][q],
                        c.tx_bytes - b.tx_bytes
                    ));
                }
            }
        }
        if self.setup.wait == TxWait::Forever && h.waiting {
            return Err("settled with room for every post, yet a send waits".into());
        }
        Ok(())
    }

    /// The peer of `x` floods pair `q` of it; `x` frees everything it
    /// receives there, so the pair's free pool grows and it must gift.
    fn gift(&mut self, x: usize, q: u16) -> Result<(), String> {
        let y = 1 - x;
        self.free_kept(x, Some(q));
        let before = self.ports[x].queue(q).stats().gifts_sent;
        for round in 0..8 {
            self.send(y, q, SLOTS as usize, round)?;
            self.pair.quiesce();
            let mut out: [Option<Pkt>; 64] = [const { None }; 64];
            let n = self.ports[x]
                .rx_burst_q(q, &mut out)
                .map_err(|e| format!("side {x} queue pair {q}: rx_burst: {e}"))?;
            for p in out[..n].iter_mut().filter_map(Option::take) {
                zc_received(&mut self.flows, x, q, &p, &self.ports[x])?;
                self.ports[x].queue_mut(q).free(p);
            }
            // The frees came after the burst: the next burst gifts.
            self.ports[x]
                .tx_burst_q(q, &mut [])
                .map_err(|e| format!("side {x} queue pair {q}: tx_burst: {e}"))?;
            self.gift_policy_ran(x, q)?;
            if self.ports[x].queue(q).stats().gifts_sent > before {
                self.cov.gift_actions_that_gifted += 1;
                return Ok(());
            }
        }
        Ok(())
    }

    fn step(&mut self, a: &Action) -> Result<(), String> {
        self.cov.steps += 1;
        match *a {
            Action::Send { side, q, k, len } => self.send(side, q, k, len).map(drop),
            Action::Rx { side, q, max, what } => self.rx(side, q, max, what),
            Action::Release {
                side,
                q,
                n,
                forward,
            } => self.release(side, q, n, forward),
            Action::Housekeep { side, q } => {
                self.ports[side]
                    .tx_burst_q(q, &mut [])
                    .map_err(|e| format!("side {side} queue pair {q}: tx_burst: {e}"))?;
                self.gift_policy_ran(side, q)
            }
            Action::HostStep => {
                self.pair.poll();
                Ok(())
            }
            Action::HostPoll => {
                self.pair.quiesce();
                self.check(false).map(drop)
            }
            Action::Gift { side, q } => self.gift(side, q),
            Action::Settle => {
                self.settle_keep()?;
                self.check(true).map(drop)
            }
        }
    }

    /// Frees everything, lets it all arrive, and checks the end state.
    fn finish(&mut self) -> Result<(), String> {
        for round in 0..=FINISH_ROUNDS {
            self.free_kept(0, None);
            self.free_kept(1, None);
            self.settle_keep()?;
            self.check(true)?;
            let done = self
                .flows
                .iter()
                .all(|f| f.in_flight.iter().all(BTreeMap::is_empty));
            if round == FINISH_ROUNDS || done {
                break;
            }
            // A deferred delivery waits until its receiver posts the slot:
            // both sides send everything on every pair.
            for q in 0..self.setup.pairs {
                self.send(0, q, SLOTS as usize, round)?;
                self.send(1, q, SLOTS as usize, round)?;
            }
        }
        let h = self.pair.host();
        let f = self.check(true)?;
        for (q, fl) in self.flows.iter().enumerate() {
            for k in 0..2 {
                if let Some((seq, _)) = fl.in_flight[k].first_key_value() {
                    return Err(format!(
                        "queue pair {q}: {} frames from side {k} never arrived (first #{seq}); deferred {:?}",
                        fl.in_flight[k].len(),
                        f[q].deferred
                    ));
                }
                self.cov.frames[q] += fl.delivered[k];
            }
            self.cov.reordered += fl.reordered[0] + fl.reordered[1];
        }
        for x in 0..2 {
            let deferred = h.counters[x].tx_deferred - self.base.host[x].tx_deferred;
            let reordered: u64 = self.flows.iter().map(|f| f.reordered[x]).sum();
            if reordered > deferred {
                return Err(format!(
                    "side {x}'s frames: {reordered} arrived out of order, but only {deferred} deliveries were deferred"
                ));
            }
            self.cov.deferred += deferred;
            for q in 0..self.setup.pairs {
                let st = self.ports[x].queue(q).stats();
                self.cov.gifts[usize::from(q)] +=
                    st.gifts_sent - self.base.ports_q[x][usize::from(q)].gifts_sent;
                model::check_clean(&format!("side {x} queue pair {q}"), &st)?;
            }
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
    total.add(&m.cov);
    Ok(())
}

/// Cases per setup: a few seconds in a debug build.
const CASES: u32 = if cfg!(debug_assertions) { 256 } else { 2048 };

fn run_setup(setup: Setup) -> Coverage {
    let total = std::cell::RefCell::new(Coverage::default());
    let started = Instant::now();
    model::run_seeded(&setup, CASES, action(setup.pairs), 160, |actions| {
        run_case(setup, actions, &mut total.borrow_mut())
    });
    let total = total.into_inner();
    eprintln!("{setup:?}: {total:?} in {:.2?}", started.elapsed());
    // Every queue pair carried traffic and gifted; the quiescent checks
    // saw deliveries in flight.
    assert!(
        total.frames.iter().all(|&f| f > 1000),
        "too little traffic on some pair: {total:?}"
    );
    assert!(
        total.gifts.iter().all(|&g| g > 0) && total.gift_actions_that_gifted > 0,
        "some pair never gifted: {total:?}"
    );
    assert!(
        total.unreaped_rx_seen > 0 && total.forwarded > 0,
        "no in-flight state checked: {total:?}"
    );
    total
}

#[test]
fn zero_copy_model_two_pairs_waits_never_expire() {
    let c = run_setup(SETUPS[0]);
    assert!(c.unmatched_seen > 0, "no waiting send checked: {c:?}");
    assert_eq!(c.deferred, 0, "waits that never expire deferred: {c:?}");
    assert_eq!(c.reordered, 0, "frames overtook without a deferral: {c:?}");
}

#[test]
fn zero_copy_model_two_pairs_waits_expire_small_queues() {
    let c = run_setup(SETUPS[1]);
    assert!(c.deferred > 0 && c.deferred_seen > 0, "no deferral: {c:?}");
    assert!(c.tx_ring_full > 0, "the TX ring never filled: {c:?}");
}

#[test]
fn zero_copy_model_four_pairs_waits_expire_small_queues() {
    let c = run_setup(SETUPS[2]);
    assert!(c.deferred > 0 && c.deferred_seen > 0, "no deferral: {c:?}");
}

/// The per-sub-pair checks can fail: in a real two-pair snapshot with
/// traffic in flight on both pairs, every single corruption of the host's
/// view (an owner, a post, a deferral, a pair's counter, or a frame
/// counted on the wrong pair with the side's totals unchanged) is caught.
#[test]
fn agreement_checks_catch_every_single_corruption() {
    let mut m = Model::new(SETUPS[0]).expect("bring-up");
    for q in 0..2 {
        m.send(0, q, 10, 1).unwrap();
        m.send(1, q, 10, 2).unwrap();
    }
    m.pair.quiesce();
    // Side 1 forwards three of each pair at once: side 0 has not reaped
    // its completions, so it has not posted them: the sends wait (on pair
    // 0 they are early sends, posted by side 1 with the send).
    m.rx(1, 0, 3, 0xaa).unwrap();
    m.rx(1, 1, 3, 0xaa).unwrap();
    m.pair.quiesce();
    let h = m.pair.host();
    let ports = [&m.ports[0], &m.ports[1]];
    let check = |h: &HostView| {
        let f = mq::check_agreement_mq(h, ports)?;
        check_counts(h, ports, &m.base.host, &m.base.ports, &mq::total(&f))?;
        mq::check_counts_mq(h, ports, &m.base, &f).map(|()| f)
    };
    let f = check(&h).unwrap_or_else(|e| panic!("the real state must agree: {e}"));
    for (q, fq) in f.iter().enumerate() {
        assert!(
            fq.unmatched_tx[1] > 0
                && fq.unreaped_rx[0] > 0
                && fq.unreaped_tx[0] > 0
                && (fq.early[1] > 0) == (q == 0),
            "sub-pair {q} has states in flight: {fq:?}"
        );
    }
    let caught = |what: String, bad: HostView| {
        assert!(check(&bad).is_err(), "{what} went unnoticed");
    };
    slot_corruptions(&h, &caught);
    type Field = fn(&mut QueueCounters) -> &mut u64;
    let fields: [(&str, Field); 4] = [
        ("tx_packets", |c| &mut c.tx_packets),
        ("rx_packets", |c| &mut c.rx_packets),
        ("tx_bytes", |c| &mut c.tx_bytes),
        ("rx_bytes", |c| &mut c.rx_bytes),
    ];
    for k in 0..2 {
        for q in 0..2 {
            for (name, f) in fields {
                let mut bad = h.clone();
                *f(&mut bad.queue_counters[k][q]) += 1;
                caught(format!("side {k} pair {q}: {name} + 1"), bad);
            }
            // One frame counted on the other pair: the totals still add up.
            for (name, f) in &fields[..2] {
                let mut bad = h.clone();
                *f(&mut bad.queue_counters[k][q]) -= 1;
                *f(&mut bad.queue_counters[k][1 - q]) += 1;
                caught(format!("side {k}: a {name} of pair {q} on the other"), bad);
            }
        }
    }
    assert!(
        mq::check_settled_mq(&h, ports, &m.base).is_err(),
        "an unsettled state passed as settled"
    );
    // A settled state: a frame's bytes counted on the wrong pair are
    // caught there (the model knows what each pair sent).
    m.free_kept(0, None);
    m.free_kept(1, None);
    m.settle_keep().unwrap();
    m.check(true).expect("the settled state must agree");
    let mut bad = m.pair.host();
    bad.queue_counters[0][0].tx_bytes -= 1;
    bad.queue_counters[0][1].tx_bytes += 1;
    assert!(
        m.check_settled_bytes(&bad).is_err(),
        "bytes on the wrong pair went unnoticed"
    );
}
