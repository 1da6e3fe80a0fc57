//! The device model driven as a guest driver would, over vfio-user sockets:
//! host-pair's servers and switch thread run in-process ([`SocketPair`]),
//! two [`RawDriver`]s connect with sbnet's vfio-user client.

use nix::sys::eventfd::{EfdFlags, EventFd};
use sbnet_abi::common_cfg::{self as cc, bit};
use sbnet_abi::layout as l;
use sbnet_abi::net::{self, NET_HDR_LEN};
use sbnet_abi::ring::AVAIL_F_NO_INTERRUPT;
use sbnet_device::pair::{PairConfig, PollMode};
use sbnet_device::testutil::hostile_chains;
use sbnet_pmd::bus::vfio_user::VfioUserBus;
use sbnet_pmd::bus::Bus;
use sbnet_tests::raw::{RawDriver, QSIZE};
use sbnet_tests::{temp_dir, SocketPair};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

fn cfg() -> PairConfig {
    sbnet_tests::test_pair_config()
}

fn start(tag: &str) -> SocketPair {
    SocketPair::start(&temp_dir(tag), &cfg(), PollMode::Adaptive { spin: 2000 })
}

fn drv(p: &SocketPair, side: usize, features: u64) -> RawDriver<VfioUserBus> {
    let bus = VfioUserBus::connect(&p.sockets[side]).expect("connect");
    RawDriver::up(bus, features).expect("bring-up")
}

fn frame(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed * 131 + i * 17) as u8).collect()
}

#[test]
fn feature_negotiation_with_and_without_shared_buffers() {
    let p = start("features");
    let mut bus = VfioUserBus::connect(&p.sockets[0]).unwrap();
    let caps = sbnet_tests::raw::read_caps(&mut bus).unwrap();
    assert!(caps.msix);
    let (bar, _, len) = caps.shm.expect("shared-memory capability");
    assert_eq!(bar, l::SHM_BAR);
    assert_eq!(len, cfg().geometry.region_size());
    drop(bus);

    let sb = bit(net::VIRTIO_NET_F_SHARED_BUFFERS);
    let mut a = drv(&p, 0, sb | bit(net::VIRTIO_NET_F_MAC));
    let f = a.device_features().unwrap();
    for b in [
        cc::VIRTIO_F_VERSION_1,
        net::VIRTIO_NET_F_SHARED_BUFFERS,
        net::VIRTIO_NET_F_MAC,
        net::VIRTIO_NET_F_STATUS,
    ] {
        assert_ne!(f & bit(b), 0, "feature bit {b} offered");
    }
    assert_eq!(f & bit(15), 0, "MRG_RXBUF is not offered");
    assert_eq!(a.device_u32(net::cfg_off::SLOT_COUNT).unwrap(), 64);
    assert_eq!(a.device_u32(net::cfg_off::SLOT_SIZE).unwrap(), 2048);
    // Side 1 without the bit: side 0 learns the peer is present without shared buffers.
    let mut b = drv(&p, 1, bit(net::VIRTIO_NET_F_MAC));
    let st = a.device_u32(net::cfg_off::PEER_STATUS).unwrap();
    assert_eq!(st & net::PEER_PRESENT, net::PEER_PRESENT);
    assert_eq!(st & net::PEER_SHARED_BUFFERS, 0);
    let st = b.device_u32(net::cfg_off::PEER_STATUS).unwrap();
    assert_eq!(st, net::PEER_PRESENT | net::PEER_SHARED_BUFFERS);
    // sbnet fields sit at their documented offset: side index.
    let mut idx = [0u8];
    let (dbar, dbase) = b.caps.device;
    b.bus
        .bar_read(
            dbar,
            dbase + net::cfg_off::SHARED_BUFFERS_OFFSET as u64,
            &mut idx,
        )
        .unwrap();
    assert_eq!(idx[0], 1);
    // A feature the device does not offer is refused at FEATURES_OK.
    drop(b);
    let bus = VfioUserBus::connect(&p.sockets[1]).unwrap();
    let err = RawDriver::up(bus, bit(15))
        .err()
        .expect("MRG_RXBUF must be refused");
    assert!(err.to_string().contains("refused the features"), "{err}");
}

#[test]
fn classic_frames_both_ways_byte_exact_with_interrupts() {
    let p = start("classic");
    let efd: Vec<Vec<EventFd>> = (0..2)
        .map(|_| {
            (0..3)
                .map(|_| EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap())
                .collect()
        })
        .collect();
    let up = |k: usize| {
        let mut dk = drv(&p, k, 0);
        let fds: Vec<_> = efd[k].iter().map(|e| e.as_fd().as_raw_fd()).collect();
        dk.bus.set_irq_eventfds(l::IRQ_MSIX, 0, &fds).unwrap();
        dk
    };
    // Side 0 is up with its vectors before side 1 arrives.
    let mut d = [up(0), up(1)];
    for dk in d.iter_mut() {
        for i in 0..QSIZE {
            dk.post_rx(i);
        }
        dk.kick(0).unwrap();
    }
    // 600 frames each way: the 64-entry rings wrap many times.
    for n in 0..1200usize {
        let (from, to) = (n % 2, 1 - n % 2);
        let f = frame(n, 14 + (n * 97) % 1500);
        d[from].send((n / 2 % 32) as u16, &f);
        d[from].kick(1).unwrap();
        let rx = d[to].wait_used(0, 1, T);
        assert_eq!(rx.len(), 1, "frame {n} not delivered");
        let (head, len) = rx[0];
        assert_eq!(len as usize, NET_HDR_LEN + f.len(), "frame {n}");
        assert_eq!(
            &d[to].rx_bytes(head, len as usize)[NET_HDR_LEN..],
            &f[..],
            "frame {n} bytes"
        );
        assert_eq!(d[from].wait_used(1, 1, T).len(), 1, "TX {n} completed");
        d[to].post_rx(head);
        d[to].kick(0).unwrap();
    }
    // The RX vector (1) fired on both sides; side 0's config vector (0)
    // fired when side 1 came up (link status and epoch changed).
    for (k, e) in efd.iter().enumerate() {
        assert!(e[1].read().unwrap() >= 1, "side {k}: no RX interrupt");
    }
    assert!(
        efd[0][0].read().unwrap() >= 1,
        "side 0: no config interrupt"
    );
    // A driver that polls asks for no interrupt and gets none.
    d[1].set_avail_flags(0, AVAIL_F_NO_INTERRUPT);
    d[0].send(0, &frame(1, 60));
    d[0].kick(1).unwrap();
    assert_eq!(d[1].wait_used(0, 1, T).len(), 1);
    assert!(
        efd[1][1].read().is_err(),
        "interrupt despite AVAIL_F_NO_INTERRUPT"
    );
    let pair = p.shared.lock();
    let c = pair.fns[0].counters;
    assert_eq!(c.tx_packets, 601);
    assert_eq!(c.refusals(), 0);
}

#[test]
fn a_broken_ring_needs_reset_the_peer_keeps_running_and_recovery_works() {
    let p = start("broken");
    let mut d = [drv(&p, 0, 0), drv(&p, 1, 0)];
    d[1].post_rx(0);
    d[1].kick(0).unwrap();
    // Side 0 claims 1000 new TX entries in a 64-entry ring.
    d[0].set_avail_idx(1, 1000);
    d[0].kick(1).unwrap();
    let end = std::time::Instant::now() + T;
    while d[0].status().unwrap() & cc::STATUS_DEVICE_NEEDS_RESET == 0
        && std::time::Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_ne!(d[0].status().unwrap() & cc::STATUS_DEVICE_NEEDS_RESET, 0);
    // Side 1 is unaffected: its TX completes (dropped, peer not running).
    d[1].send(0, &frame(2, 100));
    d[1].kick(1).unwrap();
    assert_eq!(d[1].wait_used(1, 1, T).len(), 1);
    // Side 0 resets and comes back; traffic flows again.
    let bus = VfioUserBus::connect_with_timeout(&p.sockets[0], Duration::from_millis(300));
    assert!(
        bus.is_err(),
        "a second client waits in the backlog while the first is connected"
    );
    let [d0, d1] = d;
    let bus0 = d0.bus;
    let mut d0 = RawDriver::up(bus0, 0).expect("re-initialise after DEVICE_NEEDS_RESET");
    let mut d1 = d1;
    d0.post_rx(0);
    d0.kick(0).unwrap();
    d1.send(1, &frame(3, 200));
    d1.kick(1).unwrap();
    let rx = d0.wait_used(0, 1, T);
    assert_eq!(rx.len(), 1);
    assert_eq!(
        &d0.rx_bytes(rx[0].0, rx[0].1 as usize)[NET_HDR_LEN..],
        &frame(3, 200)[..]
    );
    let c = p.shared.lock().fns[0].counters;
    assert_eq!(c.needs_reset, 1);
}

#[test]
fn malformed_chains_over_the_socket_are_refused_and_counted() {
    let p = start("chains");
    let mut d = [drv(&p, 0, 0), drv(&p, 1, 0)];
    for i in 0..8 {
        d[1].post_rx(i);
    }
    d[1].kick(0).unwrap();
    // The table the chain unit test uses; every case the switch refuses as
    // a TX goes over the socket. 0x1000 is below the driver's DMA region.
    let a = d[0].buf(1, 10);
    let cases = hostile_chains(a, 0x1000, QSIZE);
    let mut sent = 0;
    for (i, case) in cases.iter().enumerate().filter(|(_, c)| c.refused_as_tx) {
        let name = case.name;
        let before = p.shared.lock().fns[0].counters.refusals();
        for (idx, desc) in case.descs.iter().enumerate() {
            d[0].set_desc(1, idx as u16, *desc);
        }
        d[0].avail(1, 0);
        d[0].kick(1).unwrap();
        let used = d[0].wait_used(1, 1, T);
        assert_eq!(used.len(), 1, "case {i} {name}: completed");
        assert_eq!(used[0].1, 0, "case {i} {name}: length 0");
        assert_eq!(
            p.shared.lock().fns[0].counters.refusals(),
            before + 1,
            "case {i} {name}: counted"
        );
        sent += 1;
    }
    assert!(sent >= 12, "the table lost its TX cases");
    // Both sides still work.
    d[0].send(5, &frame(9, 64));
    d[0].kick(1).unwrap();
    assert_eq!(d[1].wait_used(0, 1, T).len(), 1);
    assert!(d[1].used(0).is_empty(), "nothing else reached the peer");
    let pair = p.shared.lock();
    assert_eq!(pair.fns[1].counters.refusals(), 0);
    assert_eq!(pair.fns[1].counters.rx_packets, 1);
}

#[test]
fn disconnect_changes_the_epoch_and_drops_the_link() {
    let p = start("disconnect");
    let sb = bit(net::VIRTIO_NET_F_SHARED_BUFFERS) | bit(net::VIRTIO_NET_F_STATUS);
    let mut a = drv(&p, 0, sb);
    let b = drv(&p, 1, sb);
    let e1 = a.device_u32(net::cfg_off::PAIRING_EPOCH).unwrap();
    let mut st = [0u8; 2];
    let (bar, base) = a.caps.device;
    a.bus
        .bar_read(bar, base + net::cfg_off::STATUS as u64, &mut st)
        .unwrap();
    assert_eq!(
        u16::from_le_bytes(st) & net::VIRTIO_NET_S_LINK_UP,
        net::VIRTIO_NET_S_LINK_UP
    );
    drop(b);
    let end = std::time::Instant::now() + T;
    while a.device_u32(net::cfg_off::PAIRING_EPOCH).unwrap() == e1
        && std::time::Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        a.device_u32(net::cfg_off::PAIRING_EPOCH).unwrap() > e1,
        "epoch moved"
    );
    a.bus
        .bar_read(bar, base + net::cfg_off::STATUS as u64, &mut st)
        .unwrap();
    assert_eq!(
        u16::from_le_bytes(st) & net::VIRTIO_NET_S_LINK_UP,
        0,
        "link down"
    );
    assert_eq!(a.device_u32(net::cfg_off::PEER_STATUS).unwrap(), 0);
    assert!(p.shared.lock().switch.resyncing(0));
    a.ack_epoch().unwrap();
    assert!(!p.shared.lock().switch.resyncing(0));
}
