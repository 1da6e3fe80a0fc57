//! Port scenarios against the fake pair (`crate::testing`): a real
//! [`Port`] on each side, the fake host switch stepped by hand (or on a
//! thread where a resync has to wait for the host).

use std::time::{Duration, Instant};

use sbnet_abi::net::NET_HDR_LEN;

use super::*;
use crate::testing::{FakeBus, FakeOptions, FakePair};

type P = Port<FakeBus>;

fn opts() -> FakeOptions {
    FakeOptions {
        slot_count: 64,
        queue_size: 256,
        ..FakeOptions::default()
    }
}

fn cfg() -> PortConfig {
    PortConfig {
        rx_queue_size: 256,
        tx_queue_size: 256,
        classic_rx_buffers: 8,
        ..PortConfig::default()
    }
}

fn burst() -> [Option<Pkt>; 64] {
    [const { None }; 64]
}

/// Allocates, fills and sends one frame. False when no buffer is free.
fn send(port: &mut P, payload: &[u8]) -> bool {
    let Some(mut p) = port.alloc() else {
        return false;
    };
    p.set_len(payload.len()).unwrap();
    port.data_mut(&mut p).copy_from_slice(payload);
    let mut b = [Some(p)];
    assert_eq!(port.tx_burst(&mut b).unwrap(), 1);
    true
}

/// One receive burst; returns (bytes, was a slot) of each packet and frees
/// them.
fn recv(port: &mut P) -> Vec<(Vec<u8>, bool)> {
    let mut out = burst();
    let n = port.rx_burst(&mut out).unwrap();
    let mut v = Vec::new();
    for o in &mut out[..n] {
        let p = o.take().unwrap();
        v.push((port.data(&p).to_vec(), p.is_slot()));
        port.free(p);
    }
    v
}

/// Steps the host and polls both ports until nothing moves.
fn settle(pair: &FakePair, a: &mut P, b: &mut P) {
    for _ in 0..4 {
        pair.step();
        assert!(recv(a).is_empty());
        assert!(recv(b).is_empty());
    }
}

fn zc_pair() -> (FakePair, P, P) {
    let pair = FakePair::new(opts());
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    let mut b = Port::open(pair.bus(1), cfg()).unwrap();
    settle(&pair, &mut a, &mut b);
    (pair, a, b)
}

/// Every slot is owned by exactly one side, and the host agrees.
fn assert_split_consistent(pair: &FakePair, a: &P, b: &P) {
    for s in 0..a.slot_count() {
        let (ma, mb) = (a.owns_slot(s), b.owns_slot(s));
        assert!(ma != mb, "slot {s}: A owns {ma}, B owns {mb}");
        assert_eq!(pair.owner(s), Some(if ma { 0 } else { 1 }), "slot {s}");
    }
    a.check_ledger().unwrap();
    b.check_ledger().unwrap();
}

#[test]
fn port_is_send() {
    fn is_send<T: Send>() {}
    is_send::<P>();
}

#[test]
fn a_port_alone_is_in_copy_mode_and_owns_every_slot() {
    let pair = FakePair::new(opts());
    let a = Port::open(pair.bus(0), cfg()).unwrap();
    assert_eq!(a.mode(), Mode::Copy);
    assert_eq!(a.epoch(), pair.epoch());
    assert_eq!(pair.net_config(0).epoch_ack, pair.epoch());
    let st = a.stats();
    assert_eq!(st.slots.free, 64);
    // Copy mode: the whole receive queue holds classic buffers.
    assert_eq!(st.classic.posted_rx, 256);
    assert_eq!(st.slots.peer_posted, 0);
    assert_eq!(a.side(), Some(0));
    assert_eq!(a.slot_size(), Some(2048));
}

#[test]
fn two_ports_go_zero_copy_with_the_interleaved_split() {
    let (pair, a, b) = zc_pair();
    assert_eq!(a.mode(), Mode::ZeroCopy);
    assert_eq!(b.mode(), Mode::ZeroCopy);
    assert_eq!(a.epoch(), pair.epoch());
    assert_eq!(a.stats().resyncs, 1, "A resynced when B arrived");
    for s in 0..64 {
        assert_eq!(a.owns_slot(s), s % 2 == 0);
    }
    let st = a.stats();
    assert_eq!(st.slots.free, 32);
    assert_eq!(st.slots.peer_posted, 32, "A posts B's slots");
    assert_eq!(st.classic.posted_rx, 8);
    assert_split_consistent(&pair, &a, &b);
    assert_eq!(pair.counters().refusals(), 0);
}

#[test]
fn zero_copy_send_forward_and_free() {
    let (pair, mut a, mut b) = zc_pair();
    let frame: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
    assert!(send(&mut a, &frame));
    pair.step();
    let mut out = burst();
    assert_eq!(b.rx_burst(&mut out).unwrap(), 1);
    let mut p = out[0].take().unwrap();
    assert!(p.is_slot());
    assert_eq!(b.data(&p), &frame[..]);
    assert_eq!(b.header(&p).unwrap().flags, 0);
    // Forward it back, modified in place.
    b.data_mut(&mut p)[0] = 0xee;
    let mut fwd = [Some(p)];
    assert_eq!(b.tx_burst(&mut fwd).unwrap(), 1);
    assert!(fwd[0].is_none());
    // B's send waits until A posts the slot, which A does once its own
    // send of it has completed: one more burst of A.
    pair.step();
    assert!(recv(&mut a).is_empty());
    pair.step();
    let got = recv(&mut a);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0[0], 0xee);
    assert_eq!(&got[0].0[1..], &frame[1..]);
    assert!(got[0].1);
    let c = pair.counters();
    assert_eq!(c.zero_copy, 2);
    assert_eq!(c.copied, 0);
    assert_eq!(c.refusals(), 0);
    assert_eq!(a.stats().tx_zero_copy, 1);
    assert_eq!(a.stats().rx_zero_copy, 1);
    settle(&pair, &mut a, &mut b);
    assert_split_consistent(&pair, &a, &b);
}

#[test]
fn one_way_flow_keeps_running_with_gifts() {
    let (pair, mut a, mut b) = zc_pair();
    const TOTAL: u32 = 20_000;
    let (mut sent, mut received, mut stuck) = (0u32, 0u32, 0);
    let mut tx_bursts = 0;
    while received < TOTAL {
        // A sends as much as it can in one burst.
        let mut pkts = burst();
        let mut k = 0;
        while k < pkts.len() && sent + (k as u32) < TOTAL {
            let Some(mut p) = a.alloc() else { break };
            p.set_len(64).unwrap();
            a.data_mut(&mut p)[..4].copy_from_slice(&(sent + k as u32).to_le_bytes());
            pkts[k] = Some(p);
            k += 1;
        }
        if k > 0 {
            tx_bursts += 1;
            assert_eq!(a.tx_burst(&mut pkts[..k]).unwrap(), k);
            sent += k as u32;
        }
        pair.step();
        // B only receives and frees.
        let got = recv(&mut b);
        for (bytes, slot) in &got {
            assert!(slot);
            let seq = u32::from_le_bytes(bytes[..4].try_into().unwrap());
            assert_eq!(seq, received, "in order, nothing lost");
            received += 1;
        }
        pair.step();
        // A receives gifts only: never a packet.
        assert!(recv(&mut a).is_empty());
        stuck = if got.is_empty() && k == 0 {
            stuck + 1
        } else {
            0
        };
        assert!(stuck < 10, "flow stalled at {received}");
    }
    // Batching: one avail.idx store per transmit burst.
    assert_eq!(a.stats().tx_publishes, tx_bursts);
    settle(&pair, &mut a, &mut b);
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sb.gifts_sent > 0 && sa.gifts_received == sb.gifts_sent);
    assert_eq!(sa.rx_packets, 0);
    assert_eq!(sb.rx_packets, u64::from(TOTAL));
    assert_eq!(pair.counters().refusals(), 0);
    // B keeps half, A has the rest back.
    assert_eq!(sb.slots.free, 32, "{:?}", sb.slots);
    assert_eq!(sa.slots.free, 32, "{:?}", sa.slots);
    assert_split_consistent(&pair, &a, &b);
}

#[test]
fn mixed_pair_copies_and_loses_nothing() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    let mut b = Port::open(pair.bus(1), PortConfig::classic()).unwrap();
    settle(&pair, &mut a, &mut b);
    assert_eq!(a.mode(), Mode::Copy);
    assert_eq!(b.mode(), Mode::Classic);
    assert_eq!(b.slot_count(), 0);
    let (mut a_got, mut b_got) = (0, 0);
    for i in 0..1000u32 {
        let frame = [i.to_le_bytes().as_slice(), &[7u8; 96]].concat();
        assert!(send(&mut a, &frame), "A's slot came back at {i}");
        assert!(send(&mut b, &frame), "B's buffer came back at {i}");
        pair.step();
        for (bytes, slot) in recv(&mut b) {
            assert!(!slot);
            assert_eq!(bytes, frame);
            b_got += 1;
        }
        for (bytes, slot) in recv(&mut a) {
            assert!(!slot);
            assert_eq!(bytes, frame);
            a_got += 1;
        }
    }
    assert_eq!((a_got, b_got), (1000, 1000));
    assert_eq!(pair.counters().copied, 2000);
    assert_eq!(pair.counters().refusals(), 0);
    let st = a.stats();
    assert_eq!(st.tx_copied, 1000);
    assert_eq!(st.tx_zero_copy, 0);
    // The slot stays with its sender: all 64 are A's again.
    assert_eq!(st.slots.free, 64);
}

#[test]
fn a_received_classic_packet_can_be_forwarded() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    let mut b = Port::open(pair.bus(1), PortConfig::classic()).unwrap();
    settle(&pair, &mut a, &mut b);
    assert!(send(&mut b, &[4; 80]));
    pair.step();
    let mut out = burst();
    assert_eq!(a.rx_burst(&mut out).unwrap(), 1);
    let mut p = out[0].take().unwrap();
    assert!(!p.is_slot());
    a.data_mut(&mut p)[0] = 5;
    let mut fwd = [Some(p)];
    assert_eq!(a.tx_burst(&mut fwd).unwrap(), 1);
    pair.step();
    let got = recv(&mut b);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0[..2], [5, 4]);
    // The classic buffer came back to A's pool and is posted again.
    pair.step();
    assert!(recv(&mut a).is_empty());
    assert_eq!(a.stats().classic.posted_rx, 256);
}

#[test]
fn epoch_change_restarts_ownership_without_leaks() {
    let (pair, mut a, mut b) = zc_pair();
    for i in 0..10u8 {
        assert!(send(&mut a, &[i; 64]));
        assert!(send(&mut b, &[i; 64]));
    }
    pair.step();
    // A keeps one packet across the epoch change.
    let mut out = burst();
    let n = a.rx_burst(&mut out).unwrap();
    assert!(n > 0);
    let mut kept = out[0].take().unwrap();
    for o in &mut out[1..n] {
        a.free(o.take().unwrap());
    }
    let held = a.alloc().unwrap();
    // B goes away: the device resets, the epoch changes.
    drop(b);
    pair.step();
    assert!(recv(&mut a).is_empty());
    assert_eq!(a.mode(), Mode::Copy);
    assert_eq!(a.stats().resyncs, 2);
    assert_eq!(a.stats().slots.free, 64, "A owns every slot, none leaked");
    // Old handles are stale: empty data, refused, counted.
    assert!(a.data(&kept).is_empty());
    assert!(a.data_mut(&mut kept).is_empty());
    let mut tx = [Some(kept)];
    assert_eq!(a.tx_burst(&mut tx).unwrap(), 0);
    assert!(tx[0].is_none());
    a.free(held);
    assert_eq!(a.stats().stale_handles, 2);
    a.check_ledger().unwrap();
    // B comes back: zero-copy again, the split of rule 2.
    let mut b = Port::open(pair.bus(1), cfg()).unwrap();
    settle(&pair, &mut a, &mut b);
    assert_eq!(a.mode(), Mode::ZeroCopy);
    assert_eq!(a.epoch(), b.epoch());
    assert_split_consistent(&pair, &a, &b);
    for s in 0..64 {
        assert_eq!(a.owns_slot(s), s % 2 == 0);
    }
    assert!(send(&mut a, &[9; 64]));
    pair.step();
    assert_eq!(recv(&mut b), vec![(vec![9; 64], true)]);
}

#[test]
fn packets_of_an_ended_epoch_are_not_delivered() {
    let (pair, mut a, mut b) = zc_pair();
    assert!(send(&mut a, &[5; 64]));
    pair.step();
    // The epoch changes before B looks: B's completed slot belongs to an
    // epoch that is over.
    pair.bump_epoch();
    pair.step();
    let mut out = burst();
    assert_eq!(b.rx_burst(&mut out).unwrap(), 0);
    assert!(out.iter().all(Option::is_none));
    assert_eq!(b.stats().rx_dropped_resync, 1);
    assert_eq!(b.stats().rx_packets, 0);
    settle(&pair, &mut a, &mut b);
    assert_eq!(a.epoch(), pair.epoch());
    assert_eq!(b.epoch(), pair.epoch());
    assert_split_consistent(&pair, &a, &b);
}

#[test]
fn idle_polls_notice_an_epoch_change() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(
        pair.bus(0),
        PortConfig {
            epoch_poll_interval: Duration::from_millis(1),
            drain_timeout: Duration::from_secs(5),
            ..cfg()
        },
    )
    .unwrap();
    let _host = pair.spawn_switch();
    let before = a.stats().epoch_polls;
    pair.bump_epoch();
    let t = Instant::now();
    while a.stats().resyncs == 0 {
        assert!(recv(&mut a).is_empty());
        assert!(t.elapsed() < Duration::from_secs(10), "no resync");
    }
    assert!(a.stats().epoch_polls > before);
    assert_eq!(a.epoch(), pair.epoch());
    assert_eq!(a.mode(), Mode::Copy);
}

#[test]
fn drain_times_out_and_retries() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(
        pair.bus(0),
        PortConfig {
            drain_timeout: Duration::from_millis(20),
            ..cfg()
        },
    )
    .unwrap();
    pair.bump_epoch();
    // Nobody runs the host: the posted buffers never come back. The
    // timeout is not an error for the application: bursts move nothing
    // until the resync can finish.
    assert!(matches!(a.poll_epoch(), Ok(true)));
    assert!(a.resync_pending);
    assert!(a.alloc().is_none(), "no sending while resyncing");
    let mut out = burst();
    assert_eq!(a.rx_burst(&mut out).unwrap(), 0);
    assert!(a.resync_pending);
    // The host comes back: the next burst finishes the resync.
    pair.step();
    assert_eq!(a.rx_burst(&mut out).unwrap(), 0);
    assert_eq!(a.epoch(), pair.epoch());
    assert_eq!(a.stats().resyncs, 1);
}

#[test]
fn device_needs_reset_stops_the_port() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    pair.set_needs_reset(0);
    assert!(matches!(
        a.poll_epoch(),
        Err(PmdError::DeviceNeedsReset { .. })
    ));
    let mut out = burst();
    assert!(matches!(
        a.rx_burst(&mut out),
        Err(PmdError::DeviceNeedsReset { .. })
    ));
    assert!(a.alloc().is_none());
    assert!(a.failure().is_some());
}

fn misbehave(f: impl FnOnce(&mut crate::testing::DeviceRing)) -> (PmdError, Stats) {
    let pair = FakePair::new(opts());
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    pair.with_rings(0, |r| {
        f(&mut r[0]);
        r[0].publish_used();
    })
    .unwrap();
    let mut out = burst();
    let err = a.rx_burst(&mut out).unwrap_err();
    // Sticky.
    assert!(a.rx_burst(&mut out).is_err());
    assert!(a.tx_burst(&mut out).is_err());
    (err, a.stats())
}

#[test]
fn used_id_out_of_range_stops_the_port() {
    let (err, st) = misbehave(|r| r.push_used(9999, 0));
    assert!(
        matches!(
            err,
            PmdError::DeviceMisbehaved {
                queue: 0,
                error: VqError::IdOutOfRange { id: 9999, .. }
            }
        ),
        "{err}"
    );
    assert_eq!(st.device_misbehaved, 1);
}

#[test]
fn used_len_beyond_the_buffer_stops_the_port() {
    let (err, _) = misbehave(|r| {
        let (id, d) = r.next_avail().unwrap();
        r.push_used(u32::from(id), d.len + 1);
    });
    assert!(
        matches!(
            err,
            PmdError::DeviceMisbehaved {
                error: VqError::LenTooBig { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn used_idx_racing_ahead_stops_the_port() {
    let (err, _) = misbehave(|r| r.set_used_idx(1000));
    assert!(
        matches!(
            err,
            PmdError::DeviceMisbehaved {
                error: VqError::UsedIdxTooFar { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn good_packets_come_before_the_error() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    pair.with_rings(0, |r| {
        let (id, _) = r[0].next_avail().unwrap();
        r[0].push_used(u32::from(id), NET_HDR_LEN as u32 + 60);
        r[0].push_used(9999, 0);
        r[0].publish_used();
    });
    let mut out = burst();
    assert_eq!(a.rx_burst(&mut out).unwrap(), 1);
    assert_eq!(out[0].as_ref().unwrap().len(), 60);
    assert!(matches!(
        a.rx_burst(&mut out[1..]),
        Err(PmdError::DeviceMisbehaved { .. })
    ));
}

#[test]
fn a_refused_post_is_counted_not_a_resync() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    pair.with_rings(0, |r| {
        let (id, _) = r[0].next_avail().unwrap();
        r[0].push_used(u32::from(id), 0);
        r[0].publish_used();
    });
    assert!(recv(&mut a).is_empty());
    let st = a.stats();
    assert_eq!(st.refused_completions, 1);
    assert_eq!(st.resyncs, 0);
    // The buffer is posted again by the next burst.
    assert!(recv(&mut a).is_empty());
    assert_eq!(a.stats().classic.posted_rx, 256);
}

#[test]
fn a_runt_is_dropped() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    pair.with_rings(0, |r| {
        let (id, _) = r[0].next_avail().unwrap();
        r[0].push_used(u32::from(id), 5);
        r[0].publish_used();
    });
    assert!(recv(&mut a).is_empty());
    assert_eq!(a.stats().rx_runts, 1);
    assert!(a.failure().is_none());
}

#[test]
fn handles_of_another_port_are_stale() {
    let (_pair, mut a, mut b) = zc_pair();
    let mut p = a.alloc().unwrap();
    p.set_len(10).unwrap();
    assert!(b.data(&p).is_empty());
    assert!(b.header(&p).is_none());
    b.free(p);
    assert_eq!(b.stats().stale_handles, 1);
    assert_eq!(a.stats().slots.held, 1, "still A's");
}

#[test]
fn a_full_transmit_queue_leaves_packets_with_the_caller() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(
        pair.bus(0),
        PortConfig {
            tx_queue_size: 4,
            ..cfg()
        },
    )
    .unwrap();
    let mut pkts: Vec<Option<Pkt>> = (0..6).map(|_| a.alloc()).collect();
    assert!(pkts.iter().all(Option::is_some));
    assert_eq!(a.tx_burst(&mut pkts).unwrap(), 4);
    assert!(pkts[..4].iter().all(Option::is_none));
    assert!(pkts[4..].iter().all(Option::is_some));
    let st = a.stats();
    assert_eq!(st.tx_ring_full, 2);
    assert_eq!(st.tx_publishes, 1);
    for p in pkts.iter_mut().filter_map(Option::take) {
        a.free(p);
    }
}

#[test]
fn alloc_zeroes_the_header_and_waits_for_slots() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    pair.shm_write(0, &[0xff; NET_HDR_LEN]);
    let p = a.alloc().unwrap();
    assert_eq!(a.header(&p).unwrap(), sbnet_abi::net::NetHdr::default());
    assert_eq!(p.capacity(), 2048 - NET_HDR_LEN);
    let mut all = vec![p];
    while let Some(p) = a.alloc() {
        all.push(p);
    }
    assert_eq!(all.len(), 64);
    assert_eq!(a.stats().alloc_failed, 1);
    for p in all {
        a.free(p);
    }
    assert_eq!(a.stats().slots.free, 64);
}

#[test]
fn copy_mode_slot_returns_on_completion() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    // Alone: the host drops the frames (no peer) and completes the sends.
    for _ in 0..64 {
        assert!(send(&mut a, &[1; 60]));
    }
    assert!(a.alloc().is_none());
    pair.step();
    // alloc's slow path reaps the completions.
    let p = a.alloc().unwrap();
    a.free(p);
    assert_eq!(a.stats().slots.free, 64);
    assert_eq!(pair.counters().tx_no_peer, 64);
}

#[test]
fn classic_ports_talk_to_each_other() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(pair.bus(0), PortConfig::classic()).unwrap();
    let mut b = Port::open(pair.bus(1), PortConfig::classic()).unwrap();
    settle(&pair, &mut a, &mut b);
    assert_eq!(a.mode(), Mode::Classic);
    for i in 0..300u16 {
        let frame = [i.to_le_bytes().as_slice(), &[3; 1000]].concat();
        assert!(send(&mut a, &frame));
        pair.step();
        assert_eq!(recv(&mut b), vec![(frame, false)]);
    }
    assert_eq!(a.stats().tx_copied, 300);
}

#[test]
fn a_polling_host_gets_no_notifications() {
    let (pair, mut a, mut b) = zc_pair();
    for _ in 0..10 {
        assert!(send(&mut a, &[0; 64]));
        pair.step();
        recv(&mut b);
    }
    assert_eq!(a.stats().notifies, 0);
    assert_eq!(pair.side_regs(0).notifies, [0, 0]);
}

#[test]
fn a_sleeping_host_is_notified_once_per_burst() {
    let pair = FakePair::new(FakeOptions {
        no_notify: false,
        ..opts()
    });
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    let before = pair.side_regs(0).notifies;
    let mut pkts: Vec<Option<Pkt>> = (0..8).map(|_| a.alloc()).collect();
    assert_eq!(a.tx_burst(&mut pkts).unwrap(), 8);
    let after = pair.side_regs(0).notifies;
    assert_eq!(after[1] - before[1], 1);
    assert_eq!(a.stats().notifies, after[0] + after[1]);
}

#[test]
fn frames_up_to_the_slot_capacity() {
    let (pair, mut a, mut b) = zc_pair();
    let max = vec![0x5a; 2048 - NET_HDR_LEN];
    assert!(send(&mut a, &max));
    let mut p = a.alloc().unwrap();
    assert!(matches!(
        p.set_len(2048),
        Err(PmdError::FrameTooBig { len: 2048, .. })
    ));
    a.free(p);
    pair.step();
    assert_eq!(recv(&mut b), vec![(max, true)]);
}

#[test]
fn a_classic_port_notices_needs_reset_while_idle() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(
        pair.bus(0),
        PortConfig {
            epoch_poll_interval: Duration::ZERO,
            ..PortConfig::classic()
        },
    )
    .unwrap();
    assert_eq!(a.epoch(), pair.epoch());
    pair.set_needs_reset(0);
    let t = Instant::now();
    let mut out = burst();
    loop {
        match a.rx_burst(&mut out) {
            Ok(_) => assert!(t.elapsed() < Duration::from_secs(5), "not noticed"),
            Err(PmdError::DeviceNeedsReset { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn idle_epoch_polls_are_time_bounded() {
    let pair = FakePair::new(opts());
    let mut a = Port::open(
        pair.bus(0),
        PortConfig {
            epoch_poll_interval: Duration::from_millis(5),
            ..cfg()
        },
    )
    .unwrap();
    let t = Instant::now();
    let mut out = burst();
    for _ in 0..200_000 {
        assert_eq!(a.rx_burst(&mut out).unwrap(), 0);
    }
    let bound = t.elapsed().as_millis() as u64 / 5 + 2;
    assert!(
        a.stats().epoch_polls <= bound,
        "{} polls",
        a.stats().epoch_polls
    );
}

#[test]
fn gifts_and_packets_share_one_publish() {
    let (pair, mut a, mut b) = zc_pair();
    // Give A a surplus: B sends it 20 packets, A frees them after its
    // burst (so that burst's chores saw no surplus yet).
    for i in 0..20u8 {
        assert!(send(&mut b, &[i; 60]));
    }
    pair.step();
    let mut out = burst();
    assert_eq!(a.rx_burst(&mut out).unwrap(), 20);
    for o in &mut out[..20] {
        a.free(o.take().unwrap());
    }
    let before = a.stats();
    assert!(before.slots.free > 32 + 4, "{:?}", before.slots);
    let mut pkts = [a.alloc(), a.alloc()];
    assert_eq!(a.tx_burst(&mut pkts).unwrap(), 2);
    let after = a.stats();
    assert!(after.gifts_sent > before.gifts_sent);
    assert_eq!(after.tx_publishes, before.tx_publishes + 1);
    assert_eq!(after.slots.free, 32);
}

mod random {
    //! Random interleavings of both ports and the host.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Send(usize, u8),
        Recv(usize, bool),
        Hold(usize),
        Release(usize),
        Step,
        Epoch,
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
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn ownership_survives_any_interleaving(ops in proptest::collection::vec(op(), 1..120)) {
            let pair = FakePair::new(FakeOptions { slot_count: 32, queue_size: 64, ..opts() });
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
                        pair.step();
                    }
                    Op::Epoch => pair.bump_epoch(),
                    Op::Reopen => {
                        // B's handles die with it (never given back).
                        held[1].clear();
                        // The old port resets the device before the new one
                        // opens.
                        drop(ports.pop());
                        ports.push(Port::open(pair.bus(1), c.clone()).unwrap());
                    }
                }
                for p in &ports {
                    prop_assert_eq!(p.check_ledger(), Ok(()));
                    prop_assert!(p.failure().is_none());
                }
                prop_assert_eq!(pair.counters().refusals(), 0, "{:?}", pair.counters());
            }
            // Quiesce: give everything back and let the host finish.
            for k in 0..2 {
                for p in held[k].drain(..) {
                    ports[k].free(p);
                }
            }
            for _ in 0..20 {
                pair.step();
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
            prop_assert_eq!(a.epoch(), pair.epoch());
            for s in 0..a.slot_count() {
                let (ma, mb) = (a.owns_slot(s), b.owns_slot(s));
                prop_assert!(ma != mb, "slot {}: A {} B {}", s, ma, mb);
                prop_assert_eq!(pair.owner(s), Some(if ma { 0 } else { 1 }));
            }
            prop_assert_eq!(pair.counters().refusals(), 0);
        }
    }
}
