//! Flows over real vfio-user sockets, in-process.
//!
//! - Byte-exact delivery at 64 B, 1500 B and the largest frame a slot holds
//!   (slot size − 12), both directions, for 2 KiB and 64 KiB slots: two
//!   [`Port`]s over [`VfioUserBus`] against [`SocketPair`] (servers and
//!   switch thread in-process, `PollMode::Adaptive`), every frame compared
//!   byte for byte, host counters checked per flow.
//! - A mixed pair (one side classic, the other zero-copy capable, so copy
//!   mode), both ways; and a classic-only pair. The host's counters show
//!   one copy per frame.
//!
//! The same with the real binaries (`host-pair`, `sbnet-testpmd`) is in
//! `pmd_testpmd`.

mod pmd_common;

use pmd_common::sockets::{pair_cfg, serial};
use pmd_common::{fill_frame, Flows};
use sbnet_device::counters::SideCounters;
use sbnet_device::pair::PollMode;
use sbnet_device::switch::{Mode as HostMode, NOBODY};
use sbnet_pmd::bus::vfio_user::VfioUserBus;
use sbnet_pmd::{Mode, Pkt, Port, PortConfig};
use sbnet_tests::{temp_dir, SocketPair};
use std::time::{Duration, Instant};

type VP = Port<VfioUserBus>;

// ---------------------------------------------------------------------
// In-process flows over the sockets, byte for byte
// ---------------------------------------------------------------------

fn port_cfg(classic: bool) -> PortConfig {
    PortConfig {
        classic_only: classic,
        rx_queue_size: 256,
        tx_queue_size: 256,
        ..PortConfig::default()
    }
}

/// Two ports over the sockets of a running [`SocketPair`], both up and in
/// the mode their negotiation gives.
fn open_pair(p: &SocketPair, classic: [bool; 2]) -> [VP; 2] {
    let open = |k: usize| {
        let bus = VfioUserBus::connect(&p.sockets[k]).expect("connect");
        Port::open(bus, port_cfg(classic[k])).unwrap_or_else(|e| panic!("side {k}: open: {e}"))
    };
    let mut ports = [open(0), open(1)];
    // Side 0 learns about side 1 from a flushed receive buffer or an
    // epoch read; run both until their modes match the pair.
    let want = match classic {
        [false, false] => [Mode::ZeroCopy, Mode::ZeroCopy],
        [true, false] => [Mode::Classic, Mode::Copy],
        [false, true] => [Mode::Copy, Mode::Classic],
        [true, true] => [Mode::Classic, Mode::Classic],
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out: [Option<Pkt>; 32] = [const { None }; 32];
    loop {
        for (k, port) in ports.iter_mut().enumerate() {
            port.poll_epoch()
                .unwrap_or_else(|e| panic!("side {k}: poll_epoch: {e}"));
            let got = port.rx_burst(&mut out).expect("rx_burst");
            assert_eq!(got, 0, "side {k}: a packet before anything was sent");
        }
        let epoch = p.shared.lock().epoch();
        if [0, 1].iter().all(|&k| ports[k].mode() == want[k])
            && ports
                .iter()
                .all(|q| q.mode() == Mode::Classic || q.epoch() == epoch)
        {
            return ports;
        }
        assert!(
            Instant::now() < deadline,
            "modes {:?} {:?}, wanted {want:?}",
            ports[0].mode(),
            ports[1].mode()
        );
        std::thread::yield_now();
    }
}

/// Sends `lens.len()` frames from side `x` to the other side and checks
/// every one byte for byte; the receiver frees them. `slots`: whether they
/// must arrive in slots (zero-copy) or classic buffers.
fn flow(ports: &mut [VP; 2], x: usize, lens: &[usize], flows: &mut Flows, slots: bool) {
    let y = 1 - x;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = 0;
    let mut out: [Option<Pkt>; 32] = [const { None }; 32];
    while next < lens.len() || !flows.in_flight[x].is_empty() {
        assert!(
            Instant::now() < deadline,
            "side {x} → {y}: {next} of {} frames sent, {} not delivered after 60 s; side {x} {} side {y} {}",
            lens.len(),
            flows.in_flight[x].len(),
            ports[x].stats().to_json(),
            ports[y].stats().to_json()
        );
        let mut moved = false;
        let mut burst = Vec::new();
        let mut expect = Vec::new();
        while next + burst.len() < lens.len() && burst.len() < 32 {
            let Some(mut p) = ports[x].alloc() else { break };
            let len = lens[next + burst.len()];
            p.set_len(len)
                .unwrap_or_else(|e| panic!("side {x}: set_len({len}): {e}"));
            let seq = flows.next_seq[x] + burst.len() as u32;
            fill_frame(ports[x].data_mut(&mut p), x as u8, seq);
            expect.push((seq, ports[x].data(&p).to_vec()));
            burst.push(Some(p));
        }
        let sent = ports[x]
            .tx_burst(&mut burst)
            .unwrap_or_else(|e| panic!("side {x}: tx_burst: {e}"));
        for (i, (seq, bytes)) in expect.into_iter().enumerate() {
            if i < sent {
                flows.in_flight[x].insert(seq, bytes);
            } else {
                let p = burst[i].take().expect("unsent packet stays");
                ports[x].free(p);
            }
        }
        next += sent;
        flows.next_seq[x] += sent as u32;
        flows.sent[x] += sent as u64;
        moved |= sent > 0;
        // The sender receives too (gifts, transmit completions); no packet.
        let got = ports[x]
            .rx_burst(&mut out)
            .unwrap_or_else(|e| panic!("side {x}: rx_burst: {e}"));
        assert_eq!(got, 0, "side {x} received a packet in a one-way flow");
        let got = ports[y]
            .rx_burst(&mut out)
            .unwrap_or_else(|e| panic!("side {y}: rx_burst: {e}"));
        for p in out[..got].iter_mut().filter_map(Option::take) {
            assert_eq!(p.is_slot(), slots, "side {y}: slot packet {}", p.is_slot());
            flows
                .received(y, &p, &ports[y])
                .unwrap_or_else(|e| panic!("{e}"));
            ports[y].free(p);
        }
        moved |= got > 0;
        if !moved {
            std::thread::yield_now();
        }
    }
}

fn counters(p: &SocketPair) -> [SideCounters; 2] {
    let g = p.shared.lock();
    [g.fns[0].counters, g.fns[1].counters]
}

/// What the host must have counted for one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    ZeroCopy,
    Copied,
}

/// Runs `frames` frames of `len` bytes from `x`, checks them byte for
/// byte and the host's counters for exactly this flow.
fn checked_flow(
    p: &SocketPair,
    ports: &mut [VP; 2],
    flows: &mut Flows,
    x: usize,
    len: usize,
    frames: usize,
    path: Via,
) {
    let y = 1 - x;
    let before = counters(p);
    let lens = vec![len; frames];
    flow(ports, x, &lens, flows, path == Via::ZeroCopy);
    let after = counters(p);
    let d = |k: usize, f: fn(&SideCounters) -> u64| f(&after[k]) - f(&before[k]);
    let what = format!(
        "{frames} × {len} B from side {x} ({path:?}): host side {x} {} / side {y} {}",
        after[x], after[y]
    );
    let count = frames as u64;
    assert_eq!(d(x, |c| c.tx_packets), count, "{what}");
    assert_eq!(d(y, |c| c.rx_packets), count, "{what}");
    assert_eq!(d(y, |c| c.rx_bytes), count * len as u64, "{what}");
    match path {
        Via::ZeroCopy => {
            assert_eq!(d(x, |c| c.tx_zero_copy), count, "{what}");
            assert_eq!(d(x, |c| c.tx_copied), 0, "{what}");
            assert_eq!(d(x, |c| c.copied_bytes), 0, "{what}");
        }
        Via::Copied => {
            assert_eq!(d(x, |c| c.tx_copied), count, "{what}");
            assert_eq!(d(x, |c| c.tx_zero_copy), 0, "{what}");
            assert_eq!(
                d(x, |c| c.copied_bytes),
                count * (len as u64 + 12),
                "{what}"
            );
        }
    }
    for (k, c) in after.iter().enumerate() {
        assert_eq!(c.refusals(), 0, "side {k}: {c}");
        assert_eq!(d(k, |c| c.rx_no_buffer + c.tx_no_peer), 0, "side {k}: {c}");
    }
    assert!(
        flows.reordered[x] <= after[x].tx_deferred,
        "{what}: {} frames reordered with {} deferred deliveries",
        flows.reordered[x],
        after[x].tx_deferred
    );
}

/// Frame sizes of (b): 64 B, 1500 B and the largest a slot holds.
fn sizes(slot_size: u32) -> [usize; 3] {
    [64, 1500, slot_size as usize - 12]
}

fn zero_copy_sizes(slot_size: u32, slots: u32, frames: usize) {
    let dir = temp_dir("flows-zc");
    let p = SocketPair::start(
        &dir,
        &pair_cfg(slot_size, slots),
        PollMode::Adaptive { spin: 2000 },
    );
    let mut ports = open_pair(&p, [false, false]);
    assert_eq!(p.shared.lock().switch.mode(), HostMode::ZeroCopy);
    let mut flows = Flows::default();
    for len in sizes(slot_size) {
        for x in 0..2 {
            checked_flow(&p, &mut ports, &mut flows, x, len, frames, Via::ZeroCopy);
        }
    }
    // Once nothing moves any more, every slot is owned by exactly one
    // port, the one the host says.
    settle_sockets(&p, &mut ports);
    let g = p.shared.lock();
    let owners = g.switch.owners().to_vec();
    let deferred: Vec<u32> = (0..2).flat_map(|k| g.switch.deferred(k)).collect();
    drop(g);
    assert!(deferred.is_empty(), "deferred after settling: {deferred:?}");
    for s in 0..slots {
        let own = [ports[0].owns_slot(s), ports[1].owns_slot(s)];
        let host = owners[s as usize];
        assert!(
            own[0] != own[1] && own[host as usize],
            "slot {s}: side 0 owns {}, side 1 owns {}, host says side {host}",
            own[0],
            own[1]
        );
    }
    for (k, port) in ports.iter().enumerate() {
        port.check_ledger()
            .unwrap_or_else(|e| panic!("side {k}: {e}"));
    }
}

/// Runs both ports until neither does anything for a good while (the
/// switch thread polls on its own; a port's burst reaps, gifts and posts).
fn settle_sockets(p: &SocketPair, ports: &mut [VP; 2]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out: [Option<Pkt>; 32] = [const { None }; 32];
    let mut quiet = 0;
    let activity = |port: &VP| sbnet_pmd::Stats {
        epoch_polls: 0,
        ..port.stats()
    };
    while quiet < 2000 {
        assert!(
            Instant::now() < deadline,
            "the pair never settled: host {:?}",
            counters(p)
        );
        let before = [activity(&ports[0]), activity(&ports[1])];
        for (k, port) in ports.iter_mut().enumerate() {
            let got = port.rx_burst(&mut out).expect("rx_burst");
            assert_eq!(got, 0, "side {k}: a packet nobody sent");
        }
        if [activity(&ports[0]), activity(&ports[1])] == before {
            quiet += 1;
            std::thread::yield_now();
        } else {
            quiet = 0;
        }
    }
}

#[test]
fn byte_exact_zero_copy_both_ways_2k_slots() {
    let _serial = serial();
    // 64, 1500 and 2036 B.
    zero_copy_sizes(2048, 256, 3000);
}

#[test]
fn byte_exact_zero_copy_both_ways_64k_slots() {
    let _serial = serial();
    // 64, 1500 and 65524 B.
    zero_copy_sizes(65536, 64, 500);
}

/// One side classic (no shared buffers), the other zero-copy capable: the
/// latter runs in copy mode; every frame is copied once, both ways.
fn mixed(classic_side: usize) {
    let dir = temp_dir("flows-mixed");
    let p = SocketPair::start(
        &dir,
        &pair_cfg(2048, 256),
        PollMode::Adaptive { spin: 2000 },
    );
    let mut classic = [false, false];
    classic[classic_side] = true;
    let mut ports = open_pair(&p, classic);
    let sb = 1 - classic_side;
    {
        let g = p.shared.lock();
        assert_eq!(g.switch.mode(), HostMode::Copy);
        assert!(
            g.switch.owners().iter().all(|&o| o as usize == sb),
            "copy mode: the shared-buffers side owns every slot"
        );
    }
    let mut flows = Flows::default();
    // The classic side's receive buffers hold 2048 bytes: 2036-byte frames.
    for len in [64, 1500, 2036] {
        for x in 0..2 {
            checked_flow(&p, &mut ports, &mut flows, x, len, 300, Via::Copied);
        }
    }
    let port = &ports[sb];
    assert_eq!(port.mode(), Mode::Copy);
    assert!(
        (0..256).all(|s| port.owns_slot(s)),
        "copy mode: every sent slot came back: {:?}",
        port.stats().slots
    );
    assert_eq!(port.stats().tx_zero_copy + port.stats().rx_zero_copy, 0);
}

#[test]
fn mixed_pair_side_0_classic() {
    let _serial = serial();
    mixed(0);
}

#[test]
fn mixed_pair_side_1_classic() {
    let _serial = serial();
    mixed(1);
}

#[test]
fn classic_only_pair() {
    let _serial = serial();
    let dir = temp_dir("flows-classic");
    let p = SocketPair::start(
        &dir,
        &pair_cfg(2048, 256),
        PollMode::Adaptive { spin: 2000 },
    );
    let mut ports = open_pair(&p, [true, true]);
    {
        let g = p.shared.lock();
        assert_eq!(g.switch.mode(), HostMode::Copy);
        assert!(
            g.switch.owners().iter().all(|&o| o == NOBODY),
            "no slot has an owner"
        );
    }
    let mut flows = Flows::default();
    for len in [64, 1500, 2036] {
        for x in 0..2 {
            checked_flow(&p, &mut ports, &mut flows, x, len, 300, Via::Copied);
        }
    }
    for port in &ports {
        assert_eq!(port.mode(), Mode::Classic);
        assert_eq!(port.slot_count(), 0);
    }
}
