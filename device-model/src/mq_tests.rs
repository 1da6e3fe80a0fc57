//! Multiqueue links (`docs/abi.md` §8): negotiation, the control queue,
//! classic spreading over the peer's enabled pairs, and zero-copy
//! sub-pairs, driven through the registers by the stand-in driver.

use crate::function::{DEVICE_FEATURES, MQ_FEATURES};
use crate::pair::{ConfigError, Pair, PairConfig};
use crate::switch::{Mode, SwitchConfig};
use crate::testutil::{check_ledger, Drv, IOVA};
use sbnet_abi::common_cfg::{self as cc, bit, off};
use sbnet_abi::layout as l;
use sbnet_abi::net::{self, NET_HDR_LEN};
use sbnet_abi::shm::{initial_owner_mq, SlotGeometry};
use std::time::Duration;

pub(crate) fn mq_pair(q: u16, slots: u32, tx_wait: Duration) -> Pair {
    Pair::new(&PairConfig {
        geometry: SlotGeometry::new(2048, slots).unwrap(),
        max_queue_size: 256,
        switch: SwitchConfig { burst: 64, tx_wait },
        huge_pages: false,
        queue_pairs: q,
    })
    .unwrap()
}

/// A zero-copy link of `q` queue pairs and `slots` slots (no TX wait
/// expires): side 0 uses every pair, side 1 `e1`; both acknowledged.
pub(crate) fn zc_mq(q: u16, slots: u32, e1: u16) -> (Pair, [Drv; 2]) {
    let mut p = mq_pair(q, slots, Duration::from_secs(3600));
    let d = [
        Drv::up_mq(&mut p, 0, true, q),
        Drv::up_mq(&mut p, 1, true, e1),
    ];
    d[0].ack(&mut p);
    d[1].ack(&mut p);
    (p, d)
}

fn common_r(p: &mut Pair, side: usize, o: usize, len: usize) -> u64 {
    let mut b = [0u8; 8];
    p.fns[side].read(0, o as u64, &mut b[..len]).unwrap();
    u64::from_le_bytes(b)
}

fn features(p: &mut Pair, side: usize) -> u64 {
    let mut f = 0;
    for sel in 0..2u64 {
        p.fns[side]
            .write(
                0,
                off::DEVICE_FEATURE_SELECT as u64,
                &(sel as u32).to_le_bytes(),
            )
            .unwrap();
        f |= common_r(p, side, off::DEVICE_FEATURE, 4) << (32 * sel);
    }
    f
}

fn max_pairs(p: &mut Pair, side: usize) -> u16 {
    let mut b = [0u8; 2];
    p.fns[side]
        .read(0, l::DEVICE_OFFSET as u64 + 8, &mut b)
        .unwrap();
    u16::from_le_bytes(b)
}

#[test]
fn one_pair_offers_nothing_new() {
    let mut p = mq_pair(1, 16, Duration::ZERO);
    assert_eq!(features(&mut p, 0), DEVICE_FEATURES);
    assert_eq!(common_r(&mut p, 0, off::NUM_QUEUES, 2), 2);
    assert_eq!(max_pairs(&mut p, 0), 1);
    assert_eq!(p.fns[0].msix_vectors(), l::MSIX_VECTORS);
    assert_eq!(
        crate::backend::irqs(&p.fns[0])[l::IRQ_MSIX as usize].count,
        3
    );
}

#[test]
fn negotiation_with_and_without_mq() {
    let mut p = mq_pair(4, 64, Duration::ZERO);
    assert_eq!(features(&mut p, 0), DEVICE_FEATURES | MQ_FEATURES);
    assert_ne!(MQ_FEATURES & bit(net::VIRTIO_NET_F_MQ), 0);
    assert_ne!(MQ_FEATURES & bit(net::VIRTIO_NET_F_CTRL_VQ), 0);
    assert_eq!(common_r(&mut p, 0, off::NUM_QUEUES, 2), 9);
    assert_eq!(max_pairs(&mut p, 0), 4);
    assert_eq!(p.fns[0].msix_vectors(), 10);
    assert_eq!(
        crate::backend::irqs(&p.fns[0])[l::IRQ_MSIX as usize].count,
        10
    );

    // A driver with MQ: four pairs after VQ_PAIRS_SET, control queue at 8.
    let d = Drv::up_mq(&mut p, 0, true, 4);
    assert_eq!(p.fns[0].active_pairs(), 4);
    assert_eq!(p.fns[0].ctrl_queue(), Some(8));
    assert_eq!(d.ctrl_queue(), 8);
    assert!(p.fns[0].queue_mut(7).is_some() && p.fns[0].queue_mut(8).is_some());

    // A driver without MQ: one pair, and queue 2 cannot be enabled.
    let d1 = Drv::up(&mut p, 1, true);
    assert_eq!(p.fns[1].active_pairs(), 1);
    assert_eq!(p.fns[1].ctrl_queue(), None);
    let before = p.fns[1].counters.ignored_writes;
    d1.common_w(&mut p, off::QUEUE_SELECT, 2, 2);
    d1.common_w(&mut p, off::QUEUE_ENABLE, 2, 1);
    assert!(p.fns[1].queue_mut(2).is_none());
    assert_eq!(p.fns[1].counters.ignored_writes, before + 1);

    // MQ without CTRL_VQ is refused at FEATURES_OK (virtio 1.2 §5.1.3.1).
    let mut p = mq_pair(2, 16, Duration::ZERO);
    let f = bit(cc::VIRTIO_F_VERSION_1) | bit(net::VIRTIO_NET_F_MQ);
    for (sel, v) in [(0u32, f as u32), (1, (f >> 32) as u32)] {
        p.fns[0]
            .write(0, off::DRIVER_FEATURE_SELECT as u64, &sel.to_le_bytes())
            .unwrap();
        p.fns[0]
            .write(0, off::DRIVER_FEATURE as u64, &v.to_le_bytes())
            .unwrap();
    }
    p.fns[0]
        .write(
            0,
            off::DEVICE_STATUS as u64,
            &[cc::STATUS_DRIVER | cc::STATUS_FEATURES_OK],
        )
        .unwrap();
    assert_eq!(p.fns[0].status() & cc::STATUS_FEATURES_OK, 0);

    // Geometry: queue pairs a power of two up to 16 and half the slots;
    // queue size >= slots/Q/2 + 128.
    let cfg = |q: u16, slots: u32, qs: u16| PairConfig {
        geometry: SlotGeometry::new(2048, slots).unwrap(),
        max_queue_size: qs,
        switch: SwitchConfig::default(),
        huge_pages: false,
        queue_pairs: q,
    };
    assert_eq!(PairConfig::min_queue_size_mq(2048, 4), 384);
    assert_eq!(cfg(4, 2048, 512).validate(), Ok(()));
    assert!(matches!(
        cfg(2, 2048, 512).validate(),
        Err(ConfigError::QueueTooSmall { need: 640, .. })
    ));
    for bad in [0u16, 3, 32] {
        assert!(matches!(
            cfg(bad, 2048, 1024).validate(),
            Err(ConfigError::QueuePairs { .. })
        ));
    }
    assert!(matches!(
        cfg(4, 4, 256).validate(),
        Err(ConfigError::QueuePairs { .. })
    ));
}

#[test]
fn vq_pairs_set_and_refusals() {
    use net::{VIRTIO_NET_CTRL_MQ as MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as SET};
    let mut p = mq_pair(4, 64, Duration::ZERO);
    let mut d = Drv::up_mq(&mut p, 0, false, 4);
    let ok = Some(net::VIRTIO_NET_OK);
    let err = Some(net::VIRTIO_NET_ERR);
    assert_eq!(d.ctrl(&mut p, MQ, SET, &2u16.to_le_bytes()), ok);
    assert_eq!(p.fns[0].active_pairs(), 2);
    for bad in [0u16, 5, 0xffff] {
        assert_eq!(d.ctrl(&mut p, MQ, SET, &bad.to_le_bytes()), err, "{bad}");
        assert_eq!(p.fns[0].active_pairs(), 2);
    }
    // Unknown class, unknown command: ERR.
    assert_eq!(d.ctrl(&mut p, 0x77, SET, &2u16.to_le_bytes()), err);
    assert_eq!(d.ctrl(&mut p, MQ, 9, &2u16.to_le_bytes()), err);
    // Wrong data length: ERR, and counted as a malformed chain.
    let bad = p.fns[0].counters.bad_chain;
    assert_eq!(d.ctrl(&mut p, MQ, SET, &[1]), err);
    assert_eq!(d.ctrl(&mut p, MQ, SET, &[1, 0, 0]), err);
    assert_eq!(p.fns[0].counters.bad_chain, bad + 2);
    assert_eq!(p.fns[0].active_pairs(), 2);
    assert_eq!(d.ctrl(&mut p, MQ, SET, &1u16.to_le_bytes()), ok);
    assert_eq!(p.fns[0].active_pairs(), 1);
    let c = p.fns[0].counters;
    assert_eq!((c.ctrl_ok, c.ctrl_err), (3, 7));
    assert!(p.fns[0].is_active());
    // A reset forgets the enabled pairs.
    d.ctrl(&mut p, MQ, SET, &4u16.to_le_bytes());
    d.status(&mut p, 0);
    assert_eq!(p.fns[0].active_pairs(), 1);
}

/// Hostile chains on the control queue: never a panic; every chain is
/// completed (with the ack when there is a writable status byte), the
/// function stays up, and a good command still works after them.
#[test]
fn hostile_control_chains() {
    use crate::mem::Prot;
    use net::{VIRTIO_NET_CTRL_MQ as MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as SET};
    use sbnet_abi::ring::{Desc, DESC_F_NEXT as N, DESC_F_WRITE as W};
    let mut p = mq_pair(2, 16, Duration::ZERO);
    let mut d = Drv::up_mq(&mut p, 0, false, 2);
    let q = d.ctrl_queue();
    // A read-only map of a separate file, for a status byte the device
    // must not write.
    let ro = crate::mem::sealed_memfd(c"ro", 0x1000).unwrap();
    let ro_iova = IOVA + 0x1000_0000;
    p.fns[0]
        .map_dma(ro_iova, 0x1000, Some(ro), 0, Prot::READ)
        .unwrap();
    let unmapped = IOVA + 0x2000_0000;
    let a = d.buf_iova(q, 0);
    d.write(a, &[MQ, SET, 2, 0]);
    let desc = |addr, len, flags, next| Desc {
        addr,
        len,
        flags,
        next,
    };
    let st = d.buf_iova(q, 1);
    // Two-buffer chains: (address, length, flags) of each.
    let two = |x: (u64, u32, u16), y: (u64, u32, u16)| {
        vec![(0, desc(x.0, x.1, x.2, 1)), (1, desc(y.0, y.1, y.2, 0))]
    };
    let cmd = (a, 4, N);
    let status = (st, 1, W);
    type Case = (&'static str, Vec<(u16, Desc)>, Option<u32>);
    let mut cases: Vec<Case> = vec![
        ("no status byte", vec![(0, desc(a, 4, 0, 0))], Some(0)),
        ("only a status byte", vec![(0, desc(st, 1, W, 0))], Some(0)),
        ("header shorter than 2", two((a, 1, N), status), Some(0)),
        ("read-only status", two(cmd, (ro_iova, 1, W)), Some(0)),
        ("unmapped status", two(cmd, (unmapped, 1, W)), Some(0)),
        ("unmapped command", two((unmapped, 4, N), status), Some(0)),
        ("loop", two(cmd, (st, 1, W | N)), Some(0)),
        (
            "readable after the status",
            two((st, 1, W | N), (a, 4, 0)),
            Some(0),
        ),
        ("a well-formed command", two(cmd, status), Some(1)),
        ("a long status buffer", two(cmd, (st, 64, W)), Some(1)),
    ];
    // A huge chain: 64 readable buffers (the walk's limit), then more.
    let huge: Vec<(u16, Desc)> = (0..QSIZE_CTRL)
        .map(|i| (i, desc(a, 1, N, (i + 1) % QSIZE_CTRL)))
        .collect();
    cases.push(("huge chain (a loop through the whole table)", huge, Some(0)));
    for (name, descs, want) in cases {
        let used = d.ctrl_raw(&mut p, &descs, descs[0].0);
        assert_eq!(used.len(), 1, "{name}: not completed");
        assert_eq!(Some(used[0].1), want, "{name}");
        assert!(p.fns[0].is_active(), "{name}: the function went down");
    }
    // The hostile-chain table of the data queues, on the control queue.
    for case in crate::testutil::hostile_chains(a, unmapped, crate::testutil::QSIZE) {
        let descs: Vec<(u16, Desc)> = case
            .descs
            .iter()
            .enumerate()
            .map(|(i, x)| (i as u16, *x))
            .collect();
        let used = d.ctrl_raw(&mut p, &descs, 0);
        assert_eq!(used.len(), 1, "{}: not completed", case.name);
        assert!(used[0].1 <= 1, "{}", case.name);
        assert!(
            p.fns[0].is_active(),
            "{}: the function went down",
            case.name
        );
    }
    // The descriptors the raw chains used are the driver's again.
    let set = d.ctrl(&mut p, MQ, SET, &2u16.to_le_bytes());
    assert_eq!(set, Some(net::VIRTIO_NET_OK));
    assert_eq!(p.fns[0].active_pairs(), 2);
    // A broken avail index is a broken ring: NEEDS_RESET, no panic.
    d.set_avail_idx(q, 0x8000);
    p.poll();
    assert!(!p.fns[0].is_active());
    assert_ne!(p.fns[0].status() & cc::STATUS_DEVICE_NEEDS_RESET, 0);
}

const QSIZE_CTRL: u16 = crate::testutil::QSIZE;

fn frame(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
}

/// Which of side `k`'s receive queues a classic frame arrived on, by its
/// first byte.
fn received(d: &mut Drv, pairs: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    for q in 0..pairs {
        for (h, len) in d.used(net::rx_queue(q)) {
            assert!(len as usize > NET_HDR_LEN);
            let b = d.read(d.buf_iova(net::rx_queue(q), h) + NET_HDR_LEN as u64, 1)[0];
            out.push((q, b));
        }
    }
    out
}

#[test]
fn classic_frames_spread_over_the_peers_enabled_pairs() {
    for (e0, e1) in [(4u16, 4u16), (4, 2), (2, 4), (4, 1), (1, 4)] {
        let mut p = mq_pair(4, 64, Duration::ZERO);
        let mut d = [
            Drv::up_mq(&mut p, 0, false, e0),
            Drv::up_mq(&mut p, 1, false, e1),
        ];
        let e = [e0, e1];
        for k in 0..2 {
            for q in 0..e[k] {
                for _ in 0..8 {
                    d[k].post_classic_on(q, 2048);
                }
            }
        }
        for from in 0..2 {
            let to = 1 - from;
            for i in 0..e[from] {
                d[from].send_classic_on(i, &frame(i as u8, 100));
            }
            p.poll();
            for i in 0..e[from] {
                assert_eq!(d[from].used(net::tx_queue(i)).len(), 1);
            }
            let mut got = received(&mut d[to], e[to]);
            got.sort();
            let mut want: Vec<(u16, u8)> = (0..e[from]).map(|i| (i % e[to], i as u8)).collect();
            want.sort();
            assert_eq!(got, want, "E = {e:?}, from side {from}");
        }
        // Per-pair counters: one frame sent on each pair a side uses, and
        // received on the peer's pair i % E_peer.
        for k in 0..2 {
            let qc = p.fns[k].queue_counters();
            assert_eq!(qc.len(), 4);
            for (i, c) in qc.iter().enumerate() {
                let i = i as u16;
                assert_eq!(
                    c.tx_packets,
                    u64::from(i < e[k]),
                    "E = {e:?}, side {k} pair {i}"
                );
                assert_eq!(c.tx_bytes, 100 * u64::from(i < e[k]));
                let rx = (0..e[1 - k]).filter(|s| s % e[k] == i).count() as u64;
                assert_eq!(c.rx_packets, rx, "E = {e:?}, side {k} pair {i}");
            }
            let sum: u64 = qc.iter().map(|c| c.rx_packets).sum();
            assert_eq!(sum, p.fns[k].counters.rx_packets);
        }
        check_ledger(&p);
    }
}

/// Zero-copy on Q = 2: each pair moves only its own slots, with its own
/// gifts; a foreign slot is refused and counted on both TX and RX.
#[test]
fn zero_copy_sub_pairs() {
    let (mut p, mut d) = zc_mq(2, 16, 2);
    assert_eq!(p.switch.mode(), Mode::ZeroCopy);
    for s in 0..16 {
        assert_eq!(p.switch.owners()[s as usize], initial_owner_mq(s, 2));
    }
    // Slot 1: pair 1, side 0's. Slot 5: pair 1, side 0's. Slot 0: pair 0.
    d[1].post_slot_on(&p, 1, 1);
    d[1].post_slot_on(&p, 1, 5);
    p.poll();
    d[0].send_slot_on(&p, 1, 1, &frame(1, 200), false);
    d[0].send_slot_on(&p, 1, 5, &[], true);
    p.poll();
    assert_eq!(d[0].used(net::tx_queue(1)).len(), 2);
    let rx = d[1].used(net::rx_queue(1));
    assert_eq!(rx.len(), 2);
    assert_eq!(p.switch.owners()[1], 1);
    assert_eq!(p.switch.owners()[5], 1);
    let c = (p.fns[0].counters, p.fns[1].counters);
    assert_eq!(
        (c.0.tx_zero_copy, c.0.gifts_sent, c.1.gifts_received),
        (1, 1, 1)
    );
    check_ledger(&p);

    // Foreign: slot 0 (pair 0, side 0's) on pair 1, TX and RX post.
    let (n0, n1) = (
        p.fns[0].counters.tx_not_owner,
        p.fns[1].counters.rx_post_not_peer_owned,
    );
    d[0].send_slot_on(&p, 1, 0, &frame(2, 60), false);
    d[1].post_slot_on(&p, 1, 0);
    p.poll();
    let tx = d[0].used(net::tx_queue(1));
    assert_eq!((tx.len(), tx[0].1), (1, 0), "the foreign TX is refused");
    let rx = d[1].used(net::rx_queue(1));
    assert_eq!((rx.len(), rx[0].1), (1, 0), "the foreign post is refused");
    assert_eq!(p.fns[0].counters.tx_not_owner, n0 + 1);
    assert_eq!(p.fns[1].counters.rx_post_not_peer_owned, n1 + 1);
    assert_eq!(p.switch.owners()[0], 0);
    // On its own pair, slot 0 moves.
    d[1].post_slot_on(&p, 0, 0);
    d[0].send_slot_on(&p, 0, 0, &frame(3, 60), false);
    p.poll();
    assert_eq!(d[1].used(net::rx_queue(0))[0].1 as usize, NET_HDR_LEN + 60);
    assert_eq!(p.switch.owners()[0], 1);
    check_ledger(&p);
    assert_eq!(
        p.fns[0].counters.copied_bytes + p.fns[1].counters.copied_bytes,
        0
    );
}

/// A sub-pair one side does not use moves no slot: a slot sent on it is
/// copied to the peer's classic buffer and stays with its sender.
#[test]
fn a_sub_pair_not_in_use_on_both_sides_copies() {
    let (mut p, mut d) = zc_mq(2, 16, 2);
    // Side 1 goes down to one pair.
    let one = 1u16.to_le_bytes();
    let set = net::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET;
    assert_eq!(
        d[1].ctrl(&mut p, net::VIRTIO_NET_CTRL_MQ, set, &one),
        Some(net::VIRTIO_NET_OK)
    );
    d[1].post_classic_on(0, 2048);
    d[1].post_slot_on(&p, 1, 1);
    p.poll();
    d[0].send_slot_on(&p, 1, 1, &frame(9, 300), false);
    p.poll();
    // The completion tells the sender the slot came back.
    let tx = d[0].used(net::tx_queue(1));
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].1, net::TX_USED_SLOT_KEPT);
    let rx = d[1].used(net::rx_queue(0));
    assert_eq!(rx.len(), 1);
    assert_eq!(rx[0].1 as usize, NET_HDR_LEN + 300);
    assert_eq!(
        d[1].rx_bytes(rx[0].0, NET_HDR_LEN + 300)[NET_HDR_LEN..],
        frame(9, 300)[..]
    );
    assert_eq!(p.switch.owners()[1], 0, "the slot stays with its sender");
    assert_eq!(p.fns[0].counters.tx_copied, 1);
    check_ledger(&p);
    // Back to two pairs: the post made earlier is still there and pair 1
    // moves slots again.
    let two = 2u16.to_le_bytes();
    assert_eq!(
        d[1].ctrl(&mut p, net::VIRTIO_NET_CTRL_MQ, set, &two),
        Some(net::VIRTIO_NET_OK)
    );
    d[0].send_slot_on(&p, 1, 1, &frame(10, 100), false);
    p.poll();
    // A hand-over completes with length 0.
    assert_eq!(d[0].used(net::tx_queue(1))[0].1, 0);
    assert_eq!(d[1].used(net::rx_queue(1))[0].1 as usize, NET_HDR_LEN + 100);
    assert_eq!(p.switch.owners()[1], 1);
    check_ledger(&p);
}
