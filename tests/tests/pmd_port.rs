//! PMD port scenarios against the real host: a real [`Port`] on each side
//! of a real device-model `Pair` through `InProcessBus`, the host switch
//! polled by the test (or on a thread where a resync has to wait for the
//! host). Flows, epochs and resync, gifts, classic and mixed pairs,
//! counters, notifications. The random interleavings are in
//! `pmd_port_random`; the device misbehaving (broken used rings) is
//! tested inside `sbnet-pmd` against its hostile-device fake.

mod pmd_common;

use pmd_common::scenario::{
    assert_split_consistent, burst, cfg, close, copied, epoch, pair, recv, refusals, send, settle,
    total, zc_pair, zc_pair_with, zero_copy,
};
use pmd_common::InPair;
use sbnet_abi::layout as l;
use sbnet_abi::net::NET_HDR_LEN;
use sbnet_device::pair::{run_switch, PollMode, SideHandle};
use sbnet_pmd::{Mode, Pkt, PmdError, Port, PortConfig};
use sbnet_vfio_user::server::Backend;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// One round of the host: polls until it finds no more work.
fn step(pair: &InPair) {
    pair.quiesce();
}

/// The host marks side `k` broken (`DEVICE_NEEDS_RESET`), as it does when
/// the side's rings stop being valid: here the VMM unmaps the side's
/// memory under its enabled queues. The epoch moves with it.
fn break_side(pair: &InPair, k: usize) {
    let mut h = SideHandle::new(pair.shared.clone(), k);
    h.dma_unmap(0, 0, sbnet_vfio_user::wire::DmaUnmapFlags::ALL)
        .unwrap();
    assert_eq!(pair.host().counters[k].needs_reset, 1);
}

/// Notify writes side `k` made.
fn kicks(pair: &InPair, k: usize) -> u64 {
    pair.host().counters[k].kicks
}

/// The host's switch on its own thread until the guard drops.
struct SwitchThread<'a> {
    pair: &'a InPair,
    join: Option<std::thread::JoinHandle<()>>,
}

impl<'a> SwitchThread<'a> {
    fn spawn(pair: &'a InPair) -> Self {
        let shared = pair.shared.clone();
        let join = std::thread::spawn(move || run_switch(&shared, PollMode::Adaptive { spin: 64 }));
        Self {
            pair,
            join: Some(join),
        }
    }
}

impl Drop for SwitchThread<'_> {
    fn drop(&mut self) {
        self.pair.shared.stop.store(true, Ordering::Relaxed);
        self.pair.shared.wake();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

#[test]
fn a_port_alone_is_in_copy_mode_and_owns_every_slot() {
    let pair = pair();
    let a = Port::open(pair.bus(0), cfg()).unwrap();
    assert_eq!(a.mode(), Mode::Copy);
    assert_eq!(a.epoch(), epoch(&pair));
    let ack = pair.shared.lock().fns[0].epoch_ack();
    assert_eq!(ack, epoch(&pair));
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
    assert_eq!(a.epoch(), epoch(&pair));
    assert_eq!(a.stats().resyncs, 1, "A resynced when B arrived");
    for s in 0..64 {
        assert_eq!(a.owns_slot(s), s % 2 == 0);
    }
    let st = a.stats();
    assert_eq!(st.slots.free, 32);
    assert_eq!(st.slots.peer_posted, 32, "A posts B's slots");
    assert_eq!(st.classic.posted_rx, 8);
    assert_split_consistent(&pair, &a, &b);
    assert_eq!(refusals(&pair), 0);
}

/// With and without early posts (`PortConfig::early_post`).
#[test]
fn zero_copy_send_forward_and_free() {
    for early_post in [true, false] {
        send_forward_and_free(early_post);
    }
}

fn send_forward_and_free(early_post: bool) {
    let (pair, mut a, mut b) = zc_pair_with(PortConfig {
        early_post,
        ..cfg()
    });
    let frame: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
    assert!(send(&mut a, &frame));
    step(&pair);
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
    step(&pair);
    if early_post {
        // A posted the slot with its send: B's send finds it.
        assert!(!pair.host().waiting, "B's send is matched at once");
    } else {
        // B's send waits until A posts the slot, which A does once its
        // own send of it has completed: one more burst of A.
        assert!(pair.host().waiting, "B's send waits for A's post");
        assert!(recv(&mut a).is_empty());
        step(&pair);
    }
    let got = recv(&mut a);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0[0], 0xee);
    assert_eq!(&got[0].0[1..], &frame[1..]);
    assert!(got[0].1);
    assert_eq!(zero_copy(&pair), 2);
    assert_eq!(copied(&pair), 0);
    assert_eq!(refusals(&pair), 0);
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
        step(&pair);
        // B only receives and frees.
        let got = recv(&mut b);
        for (bytes, slot) in &got {
            assert!(slot);
            let seq = u32::from_le_bytes(bytes[..4].try_into().unwrap());
            assert_eq!(seq, received, "in order, nothing lost");
            received += 1;
        }
        step(&pair);
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
    assert_eq!(refusals(&pair), 0);
    // B keeps half, A has the rest back.
    assert_eq!(sb.slots.free, 32, "{:?}", sb.slots);
    assert_eq!(sa.slots.free, 32, "{:?}", sa.slots);
    assert_split_consistent(&pair, &a, &b);
}

#[test]
fn mixed_pair_copies_and_loses_nothing() {
    let pair = pair();
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
        step(&pair);
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
    assert_eq!(copied(&pair), 2000);
    assert_eq!(refusals(&pair), 0);
    let st = a.stats();
    assert_eq!(st.tx_copied, 1000);
    assert_eq!(st.tx_zero_copy, 0);
    // The slot stays with its sender: all 64 are A's again.
    assert_eq!(st.slots.free, 64);
}

#[test]
fn a_received_classic_packet_can_be_forwarded() {
    let pair = pair();
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    let mut b = Port::open(pair.bus(1), PortConfig::classic()).unwrap();
    settle(&pair, &mut a, &mut b);
    assert!(send(&mut b, &[4; 80]));
    step(&pair);
    let mut out = burst();
    assert_eq!(a.rx_burst(&mut out).unwrap(), 1);
    let mut p = out[0].take().unwrap();
    assert!(!p.is_slot());
    a.data_mut(&mut p)[0] = 5;
    let mut fwd = [Some(p)];
    assert_eq!(a.tx_burst(&mut fwd).unwrap(), 1);
    step(&pair);
    let got = recv(&mut b);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0[..2], [5, 4]);
    // The classic buffer came back to A's pool and is posted again.
    step(&pair);
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
    step(&pair);
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
    close(&pair, 1, b);
    step(&pair);
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
    step(&pair);
    assert_eq!(recv(&mut b), vec![(vec![9; 64], true)]);
}

#[test]
fn packets_of_an_ended_epoch_are_not_delivered() {
    let (pair, mut a, mut b) = zc_pair();
    assert!(send(&mut a, &[5; 64]));
    step(&pair);
    // The epoch changes before B looks (A goes away): B's completed slot
    // belongs to an epoch that is over.
    close(&pair, 0, a);
    step(&pair);
    let mut out = burst();
    assert_eq!(b.rx_burst(&mut out).unwrap(), 0);
    assert!(out.iter().all(Option::is_none));
    assert_eq!(b.stats().rx_dropped_resync, 1);
    assert_eq!(b.stats().rx_packets, 0);
    // A comes back.
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    settle(&pair, &mut a, &mut b);
    assert_eq!(a.epoch(), epoch(&pair));
    assert_eq!(b.epoch(), epoch(&pair));
    assert_split_consistent(&pair, &a, &b);
}

#[test]
fn idle_polls_notice_an_epoch_change() {
    let pair = pair();
    let mut a = Port::open(
        pair.bus(0),
        PortConfig {
            epoch_poll_interval: Duration::from_millis(1),
            drain_timeout: Duration::from_millis(50),
            ..cfg()
        },
    )
    .unwrap();
    let before = a.stats().epoch_polls;
    let old = a.epoch();
    // A classic peer arrives: the epoch changes, A stays in copy mode.
    let _b = Port::open(pair.bus(1), PortConfig::classic()).unwrap();
    assert_ne!(epoch(&pair), old);
    // No host runs yet, so no length-0 completion can tell A first: only
    // an idle read of the epoch can start its resync (which then waits
    // for a host to flush A's queues, up to the drain timeout per try).
    let t = Instant::now();
    while !a.resync_pending() {
        assert!(recv(&mut a).is_empty());
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "idle polls never noticed the epoch"
        );
    }
    assert!(a.stats().epoch_polls > before);
    // The host flushes A's queues and the resync completes.
    let _host = SwitchThread::spawn(&pair);
    while a.stats().resyncs == 0 {
        assert!(recv(&mut a).is_empty());
        assert!(t.elapsed() < Duration::from_secs(20), "no resync");
    }
    assert_eq!(a.epoch(), epoch(&pair));
    assert_eq!(a.mode(), Mode::Copy);
}

#[test]
fn drain_times_out_and_retries() {
    let pair = pair();
    let mut a = Port::open(
        pair.bus(0),
        PortConfig {
            drain_timeout: Duration::from_millis(20),
            ..cfg()
        },
    )
    .unwrap();
    // A peer arrives: the epoch changes.
    let _b = Port::open(pair.bus(1), PortConfig::classic()).unwrap();
    // Nobody runs the host: the posted buffers never come back. The
    // timeout is not an error for the application: bursts move nothing
    // until the resync can finish.
    assert!(matches!(a.poll_epoch(), Ok(true)));
    assert!(a.resync_pending());
    assert!(a.alloc().is_none(), "no sending while resyncing");
    let mut out = burst();
    assert_eq!(a.rx_burst(&mut out).unwrap(), 0);
    assert!(a.resync_pending());
    // The host comes back: the next burst finishes the resync.
    step(&pair);
    assert_eq!(a.rx_burst(&mut out).unwrap(), 0);
    assert!(!a.resync_pending());
    assert_eq!(a.epoch(), epoch(&pair));
    assert_eq!(a.stats().resyncs, 1);
}

#[test]
fn device_needs_reset_stops_the_port() {
    let pair = pair();
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    break_side(&pair, 0);
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

#[test]
fn a_classic_port_notices_needs_reset_while_idle() {
    let pair = pair();
    let mut a = Port::open(
        pair.bus(0),
        PortConfig {
            epoch_poll_interval: Duration::ZERO,
            ..PortConfig::classic()
        },
    )
    .unwrap();
    assert_eq!(a.epoch(), epoch(&pair));
    break_side(&pair, 0);
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
    let pair = pair();
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
    let pair = pair();
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    // Garbage in slot 0's header, written through the region's other side.
    SideHandle::new(pair.shared.clone(), 1)
        .region_write(u32::from(l::SHM_BAR), 0, &[0xff; NET_HDR_LEN])
        .unwrap();
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
    let pair = pair();
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    // Alone: the host drops the frames (no peer) and completes the sends.
    for _ in 0..64 {
        assert!(send(&mut a, &[1; 60]));
    }
    assert!(a.alloc().is_none());
    step(&pair);
    // alloc's slow path reaps the completions.
    let p = a.alloc().unwrap();
    a.free(p);
    assert_eq!(a.stats().slots.free, 64);
    assert_eq!(total(&pair, |c| c.tx_no_peer), 64);
}

#[test]
fn classic_ports_talk_to_each_other() {
    let pair = pair();
    let mut a = Port::open(pair.bus(0), PortConfig::classic()).unwrap();
    let mut b = Port::open(pair.bus(1), PortConfig::classic()).unwrap();
    settle(&pair, &mut a, &mut b);
    assert_eq!(a.mode(), Mode::Classic);
    for i in 0..300u16 {
        let frame = [i.to_le_bytes().as_slice(), &[3; 1000]].concat();
        assert!(send(&mut a, &frame));
        step(&pair);
        assert_eq!(recv(&mut b), vec![(frame, false)]);
    }
    assert_eq!(a.stats().tx_copied, 300);
}

#[test]
fn a_polling_host_gets_no_notifications() {
    let (pair, mut a, mut b) = zc_pair();
    // The host says it polls (`USED_F_NO_NOTIFY`), as its switch thread
    // does once it runs.
    pair.shared.lock().set_polling(true);
    let (before, kicked) = (a.stats().notifies, kicks(&pair, 0));
    for _ in 0..10 {
        assert!(send(&mut a, &[0; 64]));
        step(&pair);
        recv(&mut b);
    }
    assert_eq!(a.stats().notifies, before);
    assert_eq!(kicks(&pair, 0), kicked);
}

#[test]
fn a_sleeping_host_is_notified_once_per_burst() {
    let pair = pair();
    let mut a = Port::open(pair.bus(0), cfg()).unwrap();
    let before = kicks(&pair, 0);
    let mut pkts: Vec<Option<Pkt>> = (0..8).map(|_| a.alloc()).collect();
    assert_eq!(a.tx_burst(&mut pkts).unwrap(), 8);
    let after = kicks(&pair, 0);
    assert_eq!(after - before, 1);
    assert_eq!(a.stats().notifies, after);
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
    step(&pair);
    assert_eq!(recv(&mut b), vec![(max, true)]);
}

#[test]
fn idle_epoch_polls_are_time_bounded() {
    let pair = pair();
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
    step(&pair);
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
