//! Multiqueue with the PMD.
//!
//! With the real binaries: `host-pair serve --queue-pairs 2` and two
//! `sbnet-testpmd --queues 2`, each running one thread per queue pair. Queue pair q of the sender only ever sends the
//! slots `s % 2 == q`, which the host hands to the receiver's queue pair q
//! (two independent sub-pairs): both carry traffic, every frame arrives
//! once and intact, nothing is copied, and every ledger — each queue
//! pair's share on both PMDs, and the host's — is whole at the end.
//!
//! In process (a `SocketPair` with `queue_pairs: 2`): both ports' queue
//! pairs on four threads exchange frames both ways, every frame checked
//! once; once quiet, every slot has exactly one owner, the one the host
//! says, held by queue pair `s % 2` of that port.

mod pmd_common;
mod procs;

use pmd_common::sockets::{pair_cfg, serial};
use procs::{expect_success, json, num, testpmd, Link};
use sbnet_device::pair::{PairConfig, PollMode};
use sbnet_pmd::bus::vfio_user::VfioUserBus;
use sbnet_pmd::{Mode, Pkt, Port, PortConfig, PortQueue, Stats};
use sbnet_tests::{bin, temp_dir, SocketPair};
use std::time::{Duration, Instant};

/// Frames per queue pair.
const PER_QUEUE: u64 = 50_000;
/// Queue pairs of the link and of both ports.
const PAIRS: u64 = 2;

#[test]
fn two_queue_pairs_on_two_threads_each_zero_copy() {
    let _serial = serial();
    let dir = temp_dir("pmd_mq");
    bin("host-pair");
    bin("sbnet-testpmd");
    let link = Link::serve(&dir, "link", &["--queue-pairs", "2"]);
    let queues = ["--queues", "2"];
    let mut rx_args = vec!["--socket", &link.sockets[1], "--mode", "rxonly"];
    rx_args.extend(queues);
    let mut tx_args = vec!["--socket", &link.sockets[0], "--mode", "txonly"];
    tx_args.extend(queues);
    let (mut rx, rx_json) = testpmd(&dir, "rx", PER_QUEUE, &rx_args);
    let (mut tx, tx_json) = testpmd(&dir, "tx", PER_QUEUE, &tx_args);
    expect_success(
        &mut [&mut rx, &mut tx],
        Instant::now() + Duration::from_secs(240),
    );
    let h = link.finish();
    let (tx, rx) = (json(&tx_json), json(&rx_json));
    let ctx = format!("TX {tx}\nRX {rx}\nhost {h}");

    let total = PAIRS * PER_QUEUE;
    assert_eq!(num(&tx, "tx_packets"), total, "{ctx}");
    assert_eq!(num(&rx, "rx_packets"), total, "{ctx}");
    assert_eq!(num(&rx, "integrity_errors"), 0, "{ctx}");
    assert_eq!(num(&tx, "port.tx_zero_copy"), total, "{ctx}");
    assert_eq!(num(&rx, "port.rx_zero_copy"), total, "{ctx}");
    // Each queue pair carried its own share, without a copy.
    for q in 0..PAIRS as usize {
        assert_eq!(
            num(&tx, &format!("queues.{q}.tx_packets")),
            PER_QUEUE,
            "{ctx}"
        );
        assert_eq!(
            num(&rx, &format!("queues.{q}.rx_packets")),
            PER_QUEUE,
            "{ctx}"
        );
        let sent = num(&tx, &format!("queues.{q}.port.0.tx_zero_copy"));
        let got = num(&rx, &format!("queues.{q}.port.0.rx_zero_copy"));
        assert_eq!((sent, got), (PER_QUEUE, PER_QUEUE), "queue pair {q}\n{ctx}");
        for (name, v) in [("TX", &tx), ("RX", &rx)] {
            let copied = num(v, &format!("queues.{q}.port.0.tx_copied"))
                + num(v, &format!("queues.{q}.port.0.rx_copied"));
            assert_eq!(copied, 0, "{name} queue pair {q}\n{ctx}");
        }
    }
    // The host moved every frame as a slot and refused nothing.
    assert_eq!(num(&h, "sides.0.tx_zero_copy"), total, "{ctx}");
    for side in 0..2 {
        for k in ["tx_copied", "copied_bytes", "refusals"] {
            let path = format!("sides.{side}.{k}");
            assert_eq!(num(&h, &path), 0, "{path}\n{ctx}");
        }
    }
    // No slot lost or doubled: each PMD's queue pairs together hold every
    // slot they should, and so does the host.
    assert_eq!(tx["ledger"]["whole"], true, "{ctx}");
    assert_eq!(rx["ledger"]["whole"], true, "{ctx}");
    assert_eq!(h["ledger"]["whole"], true, "{ctx}");
    eprintln!(
        "mq: {total} frames over {PAIRS} queue pairs at {:.3} Mpps, 0 copies",
        rx["mpps"].as_f64().unwrap_or(0.0)
    );
}

// ---------------------------------------------------------------------
// In process: every queue pair of both ports on its own thread
// ---------------------------------------------------------------------

/// Frames each queue pair sends to (and receives from) its peer queue
/// pair in the in-process test.
const EXCHANGE: u32 = 3000;

/// Queue pair `q` of side `k`: waits for zero-copy mode, then sends
/// `EXCHANGE` frames stamped `[k, q, seq]` and receives the peer's,
/// checking each stamp once; returns when both are done.
fn exchange(k: u8, q: &mut PortQueue<VfioUserBus>) {
    let i = q.index();
    let ctx = |what: &str| format!("side {k} queue pair {i}: {what}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = q.stats();
    let mut rx: [Option<Pkt>; 32] = [const { None }; 32];
    while q.mode() != Mode::ZeroCopy || q.resync_pending() {
        assert!(Instant::now() < deadline, "{}", ctx("never zero-copy"));
        q.rx_burst(&mut rx).expect("rx_burst");
        q.poll_epoch().expect("poll_epoch");
        std::thread::yield_now();
    }
    let mut seen = vec![false; EXCHANGE as usize];
    let (mut sent, mut got) = (0u32, 0u32);
    let mut tx: [Option<Pkt>; 32] = [const { None }; 32];
    while sent < EXCHANGE || got < EXCHANGE {
        assert!(
            Instant::now() < deadline,
            "{}",
            ctx(&format!(
                "sent {sent}, received {got}: {}",
                q.stats().to_json()
            ))
        );
        let n = q.rx_burst(&mut rx).expect("rx_burst");
        for p in rx[..n].iter_mut().filter_map(Option::take) {
            let d = q.data(&p);
            assert_eq!(d.len(), 64, "{}", ctx("length"));
            assert_eq!((d[0], u16::from(d[1])), (1 - k, i), "{}", ctx("stamp"));
            let seq = u32::from_le_bytes([d[2], d[3], d[4], d[5]]);
            let fresh = seen
                .get_mut(seq as usize)
                .map(|b| !std::mem::replace(b, true));
            assert_eq!(
                fresh,
                Some(true),
                "{}",
                ctx(&format!("frame {seq} twice or unknown"))
            );
            got += 1;
            q.free(p);
        }
        let mut want = 0;
        while sent + (want as u32) < EXCHANGE && want < tx.len() {
            let Some(mut p) = q.alloc() else { break };
            p.set_len(64).expect("64 bytes fit");
            let d = q.data_mut(&mut p);
            d.fill(0);
            d[0] = k;
            d[1] = i as u8;
            d[2..6].copy_from_slice(&(sent + want as u32).to_le_bytes());
            tx[want] = Some(p);
            want += 1;
        }
        let n = q.tx_burst(&mut tx[..want]).expect("tx_burst");
        sent += n as u32;
        // A full ring keeps the rest for the next burst, in order.
        for p in tx[n..want].iter_mut().filter_map(Option::take) {
            q.free(p);
        }
        std::thread::yield_now();
    }
    let (st, b) = (q.stats(), before);
    assert_eq!(
        (
            st.tx_zero_copy - b.tx_zero_copy,
            st.rx_zero_copy - b.rx_zero_copy,
            st.tx_copied - b.tx_copied,
            st.rx_copied - b.rx_copied,
        ),
        (u64::from(EXCHANGE), u64::from(EXCHANGE), 0, 0),
        "{}",
        ctx("not all zero-copy")
    );
}

/// Runs every queue pair of both ports on its own thread until each has
/// exchanged `EXCHANGE` frames with its peer queue pair.
fn exchange_all(ports: &mut [Port<VfioUserBus>; 2]) {
    std::thread::scope(|s| {
        for (k, port) in ports.iter_mut().enumerate() {
            for q in port.queues_mut() {
                s.spawn(move || exchange(k as u8, q));
            }
        }
    });
}

/// Bursts on every queue pair until nothing moves for a while.
fn settle(ports: &mut [Port<VfioUserBus>; 2]) {
    let mut out: [Option<Pkt>; 32] = [const { None }; 32];
    let deadline = Instant::now() + Duration::from_secs(10);
    let activity = |p: &Port<VfioUserBus>| Stats {
        epoch_polls: 0,
        ..p.stats()
    };
    let mut quiet = 0;
    while quiet < 2000 {
        assert!(Instant::now() < deadline, "never settled");
        let before = ports.each_ref().map(activity);
        for port in ports.iter_mut() {
            for q in 0..port.queue_pairs() {
                assert_eq!(port.rx_burst_q(q, &mut out).expect("rx_burst"), 0);
            }
        }
        quiet = if ports.each_ref().map(activity) == before {
            quiet + 1
        } else {
            0
        };
    }
}

/// Every slot has exactly one owner, the one the host says, held by
/// queue pair `s % 2` of that port; the host copied and refused nothing.
fn check_owners(p: &SocketPair, ports: &[Port<VfioUserBus>; 2], slots: u32) {
    let g = p.shared.lock();
    let owners = g.switch.owners().to_vec();
    let deferred: Vec<u32> = (0..2).flat_map(|k| g.switch.deferred(k)).collect();
    let counters = [g.fns[0].counters, g.fns[1].counters];
    drop(g);
    assert!(deferred.is_empty(), "deferred after settling: {deferred:?}");
    for (k, c) in counters.iter().enumerate() {
        assert_eq!((c.tx_copied, c.refusals()), (0, 0), "host side {k}: {c:?}");
    }
    for s in 0..slots {
        let own = [ports[0].owns_slot(s), ports[1].owns_slot(s)];
        let host = owners[s as usize] as usize;
        assert!(
            own[0] != own[1] && own[host],
            "slot {s}: side 0 owns {}, side 1 owns {}, host says side {host}",
            own[0],
            own[1]
        );
        let q = (s % 2) as u16;
        assert!(
            ports[host].queue(q).owns_slot(s),
            "slot {s} not in queue pair {q}"
        );
        assert!(
            !ports[host].queue(1 - q).owns_slot(s),
            "slot {s} in queue pair {}",
            1 - q
        );
    }
    for (k, port) in ports.iter().enumerate() {
        port.check_ledger()
            .unwrap_or_else(|e| panic!("side {k}: {e}"));
    }
}

#[test]
fn sub_pairs_on_four_threads_keep_one_owner_per_slot_across_a_restart() {
    let _serial = serial();
    let dir = temp_dir("pmd_mq_inproc");
    let slots = 128;
    let cfg = PairConfig {
        queue_pairs: 2,
        ..pair_cfg(2048, slots)
    };
    let p = SocketPair::start(&dir, &cfg, PollMode::Adaptive { spin: 2000 });
    let open = |k: usize| {
        let bus = VfioUserBus::connect(&p.sockets[k]).expect("connect");
        let cfg = PortConfig {
            rx_queue_size: 256,
            tx_queue_size: 256,
            ..PortConfig::default()
        };
        Port::open_queue_pairs(bus, cfg, 2).unwrap_or_else(|e| panic!("side {k}: {e}"))
    };
    let mut ports = [open(0), open(1)];
    exchange_all(&mut ports);
    settle(&mut ports);
    check_owners(&p, &ports, slots);
    // Side 1 restarts: the epoch moves, and each of side 0's queue pairs
    // drains and resyncs on its own thread; the epoch is acknowledged
    // once both have drained.
    let [p0, p1] = ports;
    let resyncs = p0.stats().resyncs;
    drop(p1);
    let mut ports = [p0, open(1)];
    exchange_all(&mut ports);
    settle(&mut ports);
    check_owners(&p, &ports, slots);
    for q in 0..2 {
        let st = ports[0].queue_stats(q).expect("open");
        assert!(st.resyncs > 0, "queue pair {q} never resynchronised");
        assert_eq!(
            st.tx_zero_copy,
            2 * u64::from(EXCHANGE),
            "queue pair {q}: both rounds zero-copy"
        );
    }
    assert!(ports[0].stats().resyncs > resyncs);
}

/// Peers with different numbers of queue pairs (`docs/abi.md` §8): side 0
/// uses two, side 1 one. Sub-pair 1 is then not in use on both sides, so
/// the host copies what side 0 sends on queue pair 1 into side 1's classic
/// buffers and completes the TX with `TX_USED_SLOT_KEPT`: the slot comes
/// back to side 0's queue pair 1. Sub-pair 0 still hands slots over. At
/// the end every slot has exactly one owner, the one the host says, and no
/// PMD ledger has lost a slot (before the kept completion existed, side 0
/// took each copied slot for handed over and lost it).
#[test]
fn a_peer_with_fewer_queue_pairs_gets_copies_and_no_slot_is_lost() {
    let _serial = serial();
    let dir = temp_dir("pmd_mq_uneven");
    let slots = 128;
    let cfg = PairConfig {
        queue_pairs: 2,
        ..pair_cfg(2048, slots)
    };
    let p = SocketPair::start(&dir, &cfg, PollMode::Adaptive { spin: 2000 });
    let open = |k: usize, n: u16| {
        let bus = VfioUserBus::connect(&p.sockets[k]).expect("connect");
        let cfg = PortConfig {
            rx_queue_size: 256,
            tx_queue_size: 256,
            ..PortConfig::default()
        };
        Port::open_queue_pairs(bus, cfg, n).unwrap_or_else(|e| panic!("side {k}: {e}"))
    };
    let mut ports = [open(0, 2), open(1, 1)];
    // More frames per queue pair than the sub-pair has slots: a lost slot
    // would stall the sender.
    const N: u32 = 1000;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rx: [Option<Pkt>; 32] = [const { None }; 32];
    let mut tx: [Option<Pkt>; 32] = [const { None }; 32];
    let zero_copy = |ports: &[Port<VfioUserBus>; 2]| {
        ports
            .iter()
            .all(|p| p.mode() == Mode::ZeroCopy && !p.resync_pending())
    };
    while !zero_copy(&ports) {
        assert!(Instant::now() < deadline, "never zero-copy");
        for port in ports.iter_mut() {
            for q in 0..port.queue_pairs() {
                port.rx_burst_q(q, &mut rx).expect("rx_burst");
            }
            port.poll_epoch().expect("poll_epoch");
        }
        std::thread::yield_now();
    }
    let (mut sent, mut got) = ([0u32; 2], [0u32; 2]);
    while sent.iter().any(|&n| n < N) || got.iter().sum::<u32>() < 2 * N {
        assert!(
            Instant::now() < deadline,
            "sent {sent:?}, received {got:?}: side 0 {}",
            ports[0].stats().to_json()
        );
        // Side 1 receives on its only queue pair; the stamp says which of
        // side 0's queue pairs sent the frame.
        let n = ports[1].rx_burst_q(0, &mut rx).expect("rx_burst");
        for pkt in rx[..n].iter_mut().filter_map(Option::take) {
            let d = ports[1].data(&pkt);
            assert_eq!(d.len(), 64);
            got[usize::from(d[0])] += 1;
            ports[1].free(pkt);
        }
        ports[0].rx_burst_q(0, &mut rx).expect("rx_burst");
        ports[0].rx_burst_q(1, &mut rx).expect("rx_burst");
        for q in 0..2u16 {
            let qp = ports[0].queue_mut(q);
            let mut want = 0;
            while sent[q as usize] + (want as u32) < N && want < 8 {
                let Some(mut pkt) = qp.alloc() else { break };
                pkt.set_len(64).expect("64 bytes fit");
                let d = qp.data_mut(&mut pkt);
                d.fill(0);
                d[0] = q as u8;
                tx[want] = Some(pkt);
                want += 1;
            }
            let n = qp.tx_burst(&mut tx[..want]).expect("tx_burst");
            sent[q as usize] += n as u32;
            for pkt in tx[n..want].iter_mut().filter_map(Option::take) {
                qp.free(pkt);
            }
        }
        std::thread::yield_now();
    }
    assert_eq!(got, [N, N], "every frame arrives once");
    // Let the last completions and gifts land.
    let quiet_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet_until {
        for port in ports.iter_mut() {
            for q in 0..port.queue_pairs() {
                let n = port.rx_burst_q(q, &mut rx).expect("rx_burst");
                for pkt in rx[..n].iter_mut().filter_map(Option::take) {
                    port.free(pkt);
                }
            }
        }
        std::thread::yield_now();
    }
    // The PMD sent slots on both queue pairs (it counts them as zero-copy
    // sends); the host handed over those of pair 0 and copied those of
    // pair 1.
    let q1 = ports[0].queue_stats(1).expect("open");
    assert_eq!(q1.tx_packets, u64::from(N), "{q1:?}");
    let g = p.shared.lock();
    let owners = g.switch.owners().to_vec();
    let c = g.fns[0].counters;
    let per_pair = g.fns[0].queue_counters();
    drop(g);
    assert_eq!(c.refusals(), 0, "{c:?}");
    assert_eq!(per_pair[1].tx_packets, u64::from(N), "{per_pair:?}");
    assert!(c.tx_copied >= u64::from(N), "pair 1 copied: {c:?}");
    assert!(c.tx_zero_copy >= u64::from(N), "pair 0 handed over: {c:?}");
    for s in 0..slots {
        let own = [ports[0].owns_slot(s), ports[1].owns_slot(s)];
        let host = owners[s as usize] as usize;
        if s % 2 == 1 && host == 1 {
            // Sub-pair 1's slots of side 1, which opened one pair: its port
            // does not track them, and side 0 must not think it owns them.
            assert!(!own[0], "slot {s}: side 0 claims a slot of side 1");
            continue;
        }
        assert!(
            own[0] != own[1] && own[host],
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
