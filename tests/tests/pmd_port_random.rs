//! Random interleavings of two PMD ports and the real host: sends,
//! receives (freeing, holding or forwarding), held packets, host polls,
//! and resets of either side, on a real device-model `Pair` through
//! `InProcessBus`. After every operation both PMD ledgers are sound, no
//! port has failed and the host refused nothing; at the end, once
//! everything is given back and settled, both ports are in zero-copy mode
//! at the host's epoch and every slot has exactly one owner, the one the
//! host's ledger names.
//!
//! The seeds of past failures are in `pmd_port_random.proptest-regressions`.

mod pmd_common;

use pmd_common::scenario::{burst, cfg, close, epoch, owner, refusals, small_pair};
use pmd_common::P;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use sbnet_pmd::{Mode, Pkt, PmdError, Port, PortConfig};
use std::time::Duration;

#[derive(Debug, Clone)]
enum Op {
    Send(usize, u8),
    Recv(usize, bool),
    Hold(usize),
    Release(usize),
    Step,
    /// The epoch changes: side 0 resets and a new port opens on it.
    Epoch,
    /// Side 1 resets and a new port opens on it.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => ((0..2usize), (1..40u8)).prop_map(|(k, n)| Op::Send(k, n)),
        4 => ((0..2usize), any::<bool>()).prop_map(|(k, f)| Op::Recv(k, f)),
        1 => (0..2usize).prop_map(Op::Hold),
        1 => (0..2usize).prop_map(Op::Release),
        4 => Just(Op::Step),
        1 => Just(Op::Epoch),
        1 => Just(Op::Reopen),
    ]
}

fn quick() -> PortConfig {
    PortConfig {
        drain_timeout: Duration::from_millis(1),
        ..cfg()
    }
}

/// A burst result where a resync waiting for the host is fine.
fn ok_or_waiting(r: Result<usize, PmdError>) -> usize {
    match r {
        Ok(n) => n,
        Err(PmdError::ResyncTimeout { .. }) => 0,
        Err(e) => panic!("{e}"),
    }
}

fn recv_some(p: &mut P, forward: bool, held: &mut Vec<Pkt>) {
    let mut out = burst();
    let n = ok_or_waiting(p.rx_burst(&mut out));
    for o in &mut out[..n] {
        let pkt = o.take().unwrap();
        assert_eq!(p.data(&pkt).len(), pkt.len());
        if forward {
            let mut b = [Some(pkt)];
            let _ = ok_or_waiting(p.tx_burst(&mut b));
            if let Some(pkt) = b[0].take() {
                p.free(pkt);
            }
        } else if held.len() < 8 {
            held.push(pkt);
        } else {
            p.free(pkt);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn ownership_survives_any_interleaving(ops in proptest::collection::vec(op(), 1..120)) {
        // The host allows up to 256 (its geometry rule: at least 32/2 + 128);
        // the ports ask for 64.
        let pair = small_pair(32, 256);
        let c = PortConfig { rx_queue_size: 64, tx_queue_size: 64, ..quick() };
        let mut ports = vec![
            Port::open(pair.bus(0), c.clone()).unwrap(),
            Port::open(pair.bus(1), c.clone()).unwrap(),
        ];
        let mut held: [Vec<Pkt>; 2] = [Vec::new(), Vec::new()];
        for op in ops {
            match op {
                Op::Send(k, n) => {
                    let mut pkts: Vec<Option<Pkt>> = Vec::new();
                    for i in 0..n {
                        let Some(mut p) = ports[k].alloc() else { break };
                        p.set_len(60).unwrap();
                        ports[k].data_mut(&mut p).fill(i);
                        pkts.push(Some(p));
                    }
                    let _ = ok_or_waiting(ports[k].tx_burst(&mut pkts));
                    for p in pkts.into_iter().flatten() {
                        ports[k].free(p);
                    }
                }
                Op::Recv(k, fwd) => recv_some(&mut ports[k], fwd, &mut held[k]),
                Op::Hold(k) => {
                    if let Some(p) = ports[k].alloc() {
                        held[k].push(p);
                    }
                }
                Op::Release(k) => {
                    for p in held[k].drain(..) {
                        ports[k].free(p);
                    }
                }
                Op::Step => {
                    pair.poll();
                }
                Op::Epoch | Op::Reopen => {
                    let k = if matches!(op, Op::Epoch) { 0 } else { 1 };
                    // The side's handles die with it (never given back).
                    held[k].clear();
                    // The old port resets the device and its connection
                    // closes before the new one opens.
                    close(&pair, k, ports.remove(k));
                    ports.insert(k, Port::open(pair.bus(k), c.clone()).unwrap());
                }
            }
            for p in &ports {
                prop_assert_eq!(p.check_ledger(), Ok(()));
                prop_assert!(p.failure().is_none());
            }
            prop_assert_eq!(refusals(&pair), 0, "{:?}", pair.host().counters);
        }
        // Quiesce: give everything back and let the host finish.
        for k in 0..2 {
            for p in held[k].drain(..) {
                ports[k].free(p);
            }
        }
        for _ in 0..20 {
            pair.quiesce();
            for p in &mut ports {
                let mut sink = Vec::new();
                recv_some(p, false, &mut sink);
                for pkt in sink {
                    p.free(pkt);
                }
            }
        }
        let (a, b) = (&ports[0], &ports[1]);
        prop_assert_eq!(a.mode(), Mode::ZeroCopy);
        prop_assert_eq!(b.mode(), Mode::ZeroCopy);
        prop_assert_eq!(a.epoch(), epoch(&pair));
        for s in 0..a.slot_count() {
            let (ma, mb) = (a.owns_slot(s), b.owns_slot(s));
            prop_assert!(ma != mb, "slot {}: A {} B {}", s, ma, mb);
            prop_assert_eq!(owner(&pair, s), Some(if ma { 0 } else { 1 }));
        }
        prop_assert_eq!(refusals(&pair), 0);
    }
}
