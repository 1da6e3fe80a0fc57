//! The switch against a model on multiqueue links (Q = 2 and 4): random
//! slot posts, slot sends (own, peer's, foreign), gifts and classic frames
//! on random queue pairs, with random pairs in use on side 1. After every
//! polling round the host ledger must be whole and equal to the model's,
//! every slot delivery must have happened on the slot's own sub-pair (one
//! both sides use) and moved it from the sender, and every classic frame
//! must have arrived on the receiver's queue pair `i % E`.

use crate::mq_tests::zc_mq;
use crate::pair::Pair;
use crate::testutil::{check_ledger, Drv};
use proptest::prelude::*;
use sbnet_abi::net::{self, rx_queue, tx_queue, NET_HDR_LEN};
use sbnet_abi::shm::{initial_owner_mq, slot_pair};
use std::collections::HashMap;

const SLOTS: u32 = 32;
/// Tag bit of a classic send's first frame byte (the rest is its pair).
const CLASSIC: u8 = 0x80;

#[derive(Debug, Clone)]
enum Op {
    /// Side `k` posts slot `s` on receiveq(`pair`).
    Post { k: usize, pair: u16, s: u32 },
    /// Side `k` posts a classic buffer on receiveq(`pair`).
    PostClassic { k: usize, pair: u16 },
    /// Side `k` sends slot `s` on transmitq(`pair`) (a gift when `gift`).
    Send {
        k: usize,
        pair: u16,
        s: u32,
        gift: bool,
    },
    /// Side `k` sends a classic frame on transmitq(`pair`).
    Classic { k: usize, pair: u16 },
    /// A polling round, then every side reaps and the model checks.
    Poll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..16u16, 0..SLOTS).prop_map(|(k, pair, s)| Op::Post { k, pair, s }),
        2 => (0..2usize, 0..16u16).prop_map(|(k, pair)| Op::PostClassic { k, pair }),
        4 => (0..2usize, 0..16u16, 0..SLOTS, prop::bool::weighted(0.2))
            .prop_map(|(k, pair, s, gift)| Op::Send { k, pair, s, gift }),
        2 => (0..2usize, 0..16u16).prop_map(|(k, pair)| Op::Classic { k, pair }),
        3 => Just(Op::Poll),
    ]
}

/// What a driver put behind an RX head.
#[derive(Debug, Clone, Copy)]
enum Posted {
    Slot(u32),
    Classic,
}

struct Model {
    q: u16,
    e: [u16; 2],
    owner: Vec<u8>,
    /// Per side: (rx queue, head) -> what was posted.
    rx: [HashMap<(u16, u16), Posted>; 2],
    deliveries: usize,
}

impl Model {
    fn reap(&mut self, p: &Pair, d: &mut [Drv; 2]) {
        for (k, dk) in d.iter_mut().enumerate() {
            for pair in 0..self.e[k] {
                let rq = rx_queue(pair);
                for (h, len) in dk.used(rq) {
                    let what = self.rx[k]
                        .remove(&(rq, h))
                        .expect("a head the driver posted");
                    if len == 0 {
                        continue;
                    }
                    match what {
                        Posted::Slot(s) => {
                            assert_eq!(
                                slot_pair(s, self.q),
                                pair,
                                "slot {s} delivered on pair {pair}"
                            );
                            assert!(
                                pair < self.e[0].min(self.e[1]),
                                "slot {s} moved on pair {pair}, not in use on both sides {:?}",
                                self.e
                            );
                            assert_eq!(
                                self.owner[s as usize],
                                (1 - k) as u8,
                                "slot {s} moved from a side that did not own it"
                            );
                            self.owner[s as usize] = k as u8;
                            self.deliveries += 1;
                        }
                        Posted::Classic => {
                            assert!(len as usize >= NET_HDR_LEN);
                            let iova = dk.buf_iova(rq, h) + NET_HDR_LEN as u64;
                            let tag = dk.read(iova, 1)[0];
                            // Classic sends are tagged CLASSIC | pair. A slot's
                            // bytes may have been rewritten by the other side
                            // before the copy (both write the region here), so
                            // copied slots are not checked.
                            if len as usize > NET_HDR_LEN && tag & CLASSIC != 0 {
                                let i = u16::from(tag & !CLASSIC);
                                assert_eq!(
                                    pair,
                                    i % self.e[k],
                                    "frame from transmitq({i}) on receiveq({pair})"
                                );
                            }
                        }
                    }
                }
            }
            for pair in 0..self.e[k] {
                dk.used(tx_queue(pair));
            }
        }
        check_ledger(p);
        assert_eq!(
            &p.switch.owners()[..],
            &self.owner[..],
            "host ledger and model differ"
        );
    }
}

fn run(q: u16, e1: u16, ops: Vec<Op>) {
    let (mut p, mut d) = zc_mq(q, SLOTS, e1);
    let mut m = Model {
        q,
        e: [q, e1],
        owner: (0..SLOTS).map(|s| initial_owner_mq(s, q)).collect(),
        rx: Default::default(),
        deliveries: 0,
    };
    for o in ops {
        match o {
            Op::Post { k, pair, s } => {
                let pair = pair % m.e[k];
                if d[k].room(rx_queue(pair)) > 0 {
                    let h = d[k].post_slot_on(&p, pair, s);
                    m.rx[k].insert((rx_queue(pair), h), Posted::Slot(s));
                }
            }
            Op::PostClassic { k, pair } => {
                let pair = pair % m.e[k];
                if d[k].room(rx_queue(pair)) > 0 {
                    let h = d[k].post_classic_on(pair, 2048);
                    m.rx[k].insert((rx_queue(pair), h), Posted::Classic);
                }
            }
            Op::Send { k, pair, s, gift } => {
                let pair = pair % m.e[k];
                if d[k].room(tx_queue(pair)) > 0 {
                    let f: Vec<u8> = if gift { vec![] } else { vec![pair as u8; 64] };
                    d[k].send_slot_on(&p, pair, s, &f, gift);
                }
            }
            Op::Classic { k, pair } => {
                let pair = pair % m.e[k];
                if d[k].room(tx_queue(pair)) > 1 {
                    d[k].send_classic_on(pair, &[CLASSIC | pair as u8; 80]);
                }
            }
            Op::Poll => {
                p.poll();
                m.reap(&p, &mut d);
            }
        }
    }
    p.poll();
    m.reap(&p, &mut d);
    assert!(p.fns[0].is_active() && p.fns[1].is_active());
    let _ = net::MAX_QUEUE_PAIRS;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn two_queue_pairs_follow_the_model(ops in proptest::collection::vec(op(), 1..160), e1 in prop_oneof![Just(1u16), Just(2)]) {
        run(2, e1, ops);
    }

    #[test]
    fn four_queue_pairs_follow_the_model(ops in proptest::collection::vec(op(), 1..160), e1 in prop_oneof![Just(1u16), Just(2), Just(4)]) {
        run(4, e1, ops);
    }
}

/// The model test finds deliveries at all (it is not vacuous): a fixed
/// run where every slot of every sub-pair crosses once.
#[test]
fn the_model_sees_every_slot_cross() {
    let mut ops = Vec::new();
    for s in 0..SLOTS {
        let owner = initial_owner_mq(s, 4) as usize;
        let pair = slot_pair(s, 4);
        ops.push(Op::Post {
            k: 1 - owner,
            pair,
            s,
        });
        ops.push(Op::Poll);
        ops.push(Op::Send {
            k: owner,
            pair,
            s,
            gift: s % 3 == 0,
        });
        ops.push(Op::Poll);
    }
    // Through the model: all 32 deliveries are seen and checked.
    let (mut p, mut d) = zc_mq(4, SLOTS, 4);
    let mut m = Model {
        q: 4,
        e: [4, 4],
        owner: (0..SLOTS).map(|s| initial_owner_mq(s, 4)).collect(),
        rx: Default::default(),
        deliveries: 0,
    };
    for o in ops {
        match o {
            Op::Post { k, pair, s } => {
                let h = d[k].post_slot_on(&p, pair, s);
                m.rx[k].insert((rx_queue(pair), h), Posted::Slot(s));
            }
            Op::Send { k, pair, s, gift } => {
                d[k].send_slot_on(&p, pair, s, if gift { &[] } else { &[1; 64] }, gift);
            }
            Op::Poll => {
                p.poll();
                m.reap(&p, &mut d);
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(m.deliveries, SLOTS as usize);
    for s in 0..SLOTS {
        assert_eq!(p.switch.owners()[s as usize], 1 - initial_owner_mq(s, 4));
    }
}
