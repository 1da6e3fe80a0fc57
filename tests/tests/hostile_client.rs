//! Issue 9, "no client can crash or wedge host-pair": a hostile vfio-user
//! client against the real device model over real sockets ([`SocketPair`]).
//! Each test does one thing the issue found harmful, asserts the refusal
//! `docs/abi.md` documents, and then that host-pair is alive and the other
//! side (and the hostile one) still passes classic frames byte-exact.

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use sbnet_abi::common_cfg::{self as cc, bit, off};
use sbnet_abi::layout as l;
use sbnet_abi::net::{self, NET_HDR_LEN};
use sbnet_abi::pci::cfg;
use sbnet_abi::ring::{Desc, DESC_F_NEXT, DESC_F_WRITE};
use sbnet_device::pair::PollMode;
use sbnet_pmd::bus::vfio_user::VfioUserBus;
use sbnet_pmd::bus::{Bus, BusError};
use sbnet_tests::raw::{RawDriver, QSIZE};
use sbnet_tests::{temp_dir, SocketPair};
use sbnet_vfio_user::wire::{Command, DmaMapFlags, IrqSetFlags, FLAG_ERROR};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

const T: Duration = Duration::from_secs(5);
/// Where the tests' own DMA maps go (the raw driver allocates from 1 << 32).
const X: u64 = 0x80_0000_0000;
const LEN: u64 = 0x1_0000;
const RW: DmaMapFlags = DmaMapFlags::READ.union(DmaMapFlags::WRITE);

fn start(tag: &str) -> SocketPair {
    let cfg = sbnet_tests::test_pair_config();
    SocketPair::start(&temp_dir(tag), &cfg, PollMode::Adaptive { spin: 2000 })
}

/// Side `side` up with `features`; classic RX buffers `from..QSIZE` posted.
fn up(p: &SocketPair, side: usize, features: u64, from: u16) -> RawDriver<VfioUserBus> {
    let bus = VfioUserBus::connect(&p.sockets[side]).expect("connect");
    let mut d = RawDriver::up(bus, features).expect("bring-up");
    post_rest(&mut d, from);
    d
}

fn frame(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed * 131 + i * 17) as u8).collect()
}

/// Sends one classic frame from `d[from]`; returns the receiver's used entry.
fn send(d: &mut [RawDriver<VfioUserBus>; 2], from: usize, f: &[u8], n: usize) -> (u16, u32) {
    d[from].send((n % 32) as u16, f);
    d[from].kick(1).unwrap();
    let rx = d[1 - from].wait_used(0, 1, T);
    assert_eq!(rx.len(), 1, "frame {n} from side {from} not delivered");
    assert_eq!(d[from].wait_used(1, 1, T).len(), 1, "TX {n} not completed");
    rx[0]
}

/// `n` classic frames each way, byte-exact: host-pair and both sides are fine.
fn ping(d: &mut [RawDriver<VfioUserBus>; 2], n: usize) {
    for i in 0..2 * n {
        let (from, to) = (i % 2, 1 - i % 2);
        let f = frame(i, 60 + i % 1400);
        let (head, len) = send(d, from, &f, i);
        assert_eq!(len as usize, NET_HDR_LEN + f.len(), "frame {i}");
        assert_eq!(&d[to].rx_bytes(head, len as usize)[NET_HDR_LEN..], &f[..]);
        d[to].post_rx(head);
        d[to].kick(0).unwrap();
    }
}

fn errno(r: Result<(), BusError>) -> Option<Errno> {
    match r {
        Ok(()) => None,
        Err(BusError::Refused { errno, .. }) => Some(Errno::from_raw(errno)),
        Err(e) => panic!("not a refusal: {e}"),
    }
}

/// A raw `DMA_MAP` (the PMD's bus only maps what it allocates).
fn dma_map(
    d: &mut RawDriver<VfioUserBus>,
    iova: u64,
    size: u64,
    offset: u64,
    flags: u32,
    fd: RawFd,
) -> Option<Errno> {
    let mut body = 32u32.to_le_bytes().to_vec();
    body.extend_from_slice(&flags.to_le_bytes());
    for v in [offset, iova, size] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    errno(d.bus.request(Command::DmaMap, &body, &[fd]).map(drop))
}

fn dma_unmap(d: &mut RawDriver<VfioUserBus>, iova: u64, size: u64) -> Option<Errno> {
    let mut body = 24u32.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    for v in [iova, size] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    errno(d.bus.request(Command::DmaUnmap, &body, &[]).map(drop))
}

fn memfd(flags: MemFdCreateFlag, len: u64) -> File {
    let f = File::from(memfd_create(c"hostile", flags | MemFdCreateFlag::MFD_CLOEXEC).unwrap());
    f.set_len(len).unwrap();
    f
}

fn sealed(len: u64) -> File {
    sbnet_device::mem::sealed_memfd(c"hostile", len).unwrap()
}

/// Posts `desc` as RX descriptor `i` of `d`.
fn post(d: &mut RawDriver<VfioUserBus>, i: u16, desc: Desc) {
    d.set_desc(0, i, desc);
    d.avail(0, i);
    d.kick(0).unwrap();
}

/// Sends `frame` (header included at `addr`) as one TX descriptor from side
/// 0; side 1 receives it byte-exact.
fn tx_one(d: &mut [RawDriver<VfioUserBus>; 2], addr: u64, frame: &[u8]) {
    let len = NET_HDR_LEN + frame.len();
    let desc = Desc {
        addr,
        len: len as u32,
        flags: 0,
        next: 0,
    };
    d[0].set_desc(1, 0, desc);
    d[0].avail(1, 0);
    d[0].kick(1).unwrap();
    let rx = d[1].wait_used(0, 1, T);
    assert_eq!(rx.len(), 1, "TX at {addr:#x} not delivered");
    assert_eq!(rx[0].1 as usize, len);
    assert_eq!(&d[1].rx_bytes(rx[0].0, len)[NET_HDR_LEN..], frame);
    assert_eq!(d[0].wait_used(1, 1, T).len(), 1, "TX completed");
}

/// Sends a frame from `d[from]` whose peer posted a bad RX chain at head 0
/// and then a good one at `next`: the bad one completes with length 0, the
/// frame lands in the good one.
fn rx_0_refused(d: &mut [RawDriver<VfioUserBus>; 2], from: usize, next: u16) {
    let fr = frame(from, 500);
    d[from].send(0, &fr);
    d[from].kick(1).unwrap();
    let rx = d[1 - from].wait_used(0, 2, T);
    assert_eq!(rx, vec![(0, 0), (next, (NET_HDR_LEN + fr.len()) as u32)]);
    assert_eq!(d[from].wait_used(1, 1, T).len(), 1, "TX completed");
}

/// Posts the raw driver's own classic RX buffers `from..QSIZE`.
fn post_rest(d: &mut RawDriver<VfioUserBus>, from: u16) {
    for i in from..QSIZE {
        d.post_rx(i);
    }
    d.kick(0).unwrap();
}

fn rx_buf(addr: u64) -> Desc {
    Desc {
        addr,
        len: 2048,
        flags: DESC_F_WRITE,
        next: 0,
    }
}

fn counters(p: &SocketPair, side: usize) -> sbnet_device::counters::SideCounters {
    p.shared.lock().fns[side].counters
}

#[test]
fn a_map_past_the_end_of_its_file_is_refused() {
    let p = start("past-end");
    let mut d = [up(&p, 0, 0, 0), up(&p, 1, 0, 0)];
    let f = sealed(LEN);
    let fd = f.as_raw_fd();
    let rw = RW.bits();
    for (iova, size, offset) in [
        (X, 2 * LEN, 0),
        (X, 0x2000, LEN - 0x1000),
        (X, 0x1000, LEN),
        (X, 0x2000, u64::MAX - 0xfff),
    ] {
        let got = dma_map(&mut d[0], iova, size, offset, rw, fd);
        assert_eq!(got, Some(Errno::EINVAL), "{size:#x} at offset {offset:#x}");
    }
    assert!(counters(&p, 0).dma_refused >= 4);
    // Had it been accepted, a ring or buffer there would SIGBUS host-pair.
    ping(&mut d, 20);
}

#[test]
fn a_sealable_memfd_is_sealed_by_the_map_and_unsealable_files_are_refused() {
    let p = start("seal");
    let mut d = [up(&p, 0, 0, QSIZE), up(&p, 1, 0, 0)];
    let f = memfd(MemFdCreateFlag::MFD_ALLOW_SEALING, LEN);
    assert_eq!(
        dma_map(&mut d[0], X, LEN, 0, RW.bits(), f.as_raw_fd()),
        None
    );
    // The device sealed it against shrinking: the client cannot pull it away.
    let e = f.set_len(0).expect_err("ftruncate to 0 after the map");
    assert_eq!(e.raw_os_error(), Some(Errno::EPERM as i32));
    assert!(f.set_len(0x1000).is_err(), "shrinking at all is refused");
    // The next frame to that side lands in that memory.
    post(&mut d[0], 0, rx_buf(X + 0x1000));
    post_rest(&mut d[0], 1);
    let fr = frame(7, 1000);
    let (head, len) = send(&mut d, 1, &fr, 0);
    assert_eq!((head, len as usize), (0, NET_HDR_LEN + fr.len()));
    let mut got = vec![0u8; fr.len()];
    f.read_exact_at(&mut got, 0x1000 + NET_HDR_LEN as u64)
        .unwrap();
    assert_eq!(got, fr);
    d[0].post_rx(0);
    d[0].kick(0).unwrap();

    // Files that cannot be sealed: a memfd without MFD_ALLOW_SEALING, a
    // regular file.
    let plain = memfd(MemFdCreateFlag::empty(), LEN);
    let path = temp_dir("seal-file").join("ram");
    let regular = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    regular.set_len(LEN).unwrap();
    for (what, file) in [("plain memfd", &plain), ("regular file", &regular)] {
        let got = dma_map(&mut d[0], 2 * X, LEN, 0, RW.bits(), file.as_raw_fd());
        assert_eq!(got, Some(Errno::EINVAL), "{what} accepted");
        file.set_len(0).expect("the refused file is left as it was");
    }
    ping(&mut d, 20);
}

#[test]
fn the_shared_buffers_region_cannot_be_resized_and_slot_copies_go_on() {
    let p = start("shm-seal");
    let sb = bit(net::VIRTIO_NET_F_SHARED_BUFFERS);
    // Side 0 shared buffers, side 1 classic: copy mode, side 0 owns every slot.
    let mut d = [up(&p, 0, sb, QSIZE), up(&p, 1, 0, 0)];
    d[0].ack_epoch().unwrap();
    let mut ask = 32u32.to_le_bytes().to_vec();
    ask.extend_from_slice(&0u32.to_le_bytes());
    ask.extend_from_slice(&(l::SHM_BAR as u32).to_le_bytes());
    ask.extend_from_slice(&[0u8; 20]);
    let (_, _, fds) = d[0]
        .bus
        .request(Command::DeviceGetRegionInfo, &ask, &[])
        .unwrap();
    let region = File::from(fds.into_iter().next().expect("region fd"));
    let size = region.metadata().unwrap().len();
    assert_eq!(size, 2048 * 64);
    assert!(region.set_len(0).is_err(), "the region shrank");
    assert!(region.set_len(2 * size).is_err(), "the region grew");
    assert_eq!(region.metadata().unwrap().len(), size);
    // A copy-mode slot TX: slot 3, header then frame.
    let w = d[0].bus.bar_address(l::SHM_BAR).expect("BAR 2 programmed");
    let fr = frame(3, 900);
    let mut slot = vec![0u8; NET_HDR_LEN];
    slot.extend_from_slice(&fr);
    d[0].bus.bar_write(l::SHM_BAR, 3 * 2048, &slot).unwrap();
    tx_one(&mut d, w + 3 * 2048, &fr);
    assert_eq!(counters(&p, 0).refusals(), 0);
    assert_eq!(counters(&p, 0).copied_bytes, slot.len() as u64);
}

#[test]
fn interrupt_fds_must_be_eventfds_and_a_saturated_one_never_blocks() {
    let p = start("irqfd");
    let mut d = [up(&p, 0, 0, 0), up(&p, 1, 0, 0)];
    let (_r, w) = nix::unistd::pipe().unwrap();
    let file = memfd(MemFdCreateFlag::empty(), 8);
    for (what, fd) in [("pipe", w.as_raw_fd()), ("file", file.as_raw_fd())] {
        let got = errno(d[0].bus.set_irq_eventfds(l::IRQ_MSIX, 0, &[fd]));
        assert_eq!(got, Some(Errno::EINVAL), "{what} accepted as MSI-X fd");
    }
    let flags = IrqSetFlags::DATA_EVENTFD | IrqSetFlags::ACTION_TRIGGER;
    let got = d[0].bus.request(
        Command::DeviceSetIrqs,
        &set_irqs_body(flags, 0, 1),
        &[w.as_raw_fd()],
    );
    assert_eq!(errno(got.map(drop)), Some(Errno::EINVAL), "INTx pipe");
    // Blocking eventfds whose counters the client filled up: a write would block.
    let efds: Vec<EventFd> = (0..3)
        .map(|_| {
            let e = EventFd::from_value_and_flags(0, EfdFlags::empty()).unwrap();
            e.write(u64::MAX - 1).unwrap();
            e
        })
        .collect();
    let raw: Vec<RawFd> = efds.iter().map(|e| e.as_fd().as_raw_fd()).collect();
    d[0].bus.set_irq_eventfds(l::IRQ_MSIX, 0, &raw).unwrap();
    // Side 0 takes RX interrupts on every frame; the switch must not block.
    ping(&mut d, 100);
    for (k, dk) in d.iter_mut().enumerate() {
        let mac = dk.device_u32(0).expect("register read");
        assert_eq!(mac, 0x5b00_5452, "side {k} MAC: 52:54:00:5b...");
    }
    assert!(counters(&p, 1).tx_packets >= 100);
}

fn set_irqs_body(flags: IrqSetFlags, index: u32, count: u32) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [20, flags.bits(), index, 0, count] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

#[test]
fn read_only_maps_are_never_written_and_flags_0_is_refused() {
    let p = start("ro");
    let mut d = [up(&p, 0, 0, QSIZE), up(&p, 1, 0, 0)];
    let ro = sealed(LEN);
    ro.write_all_at(&[0xaa; LEN as usize], 0).unwrap();
    let read = DmaMapFlags::READ.bits();
    assert_eq!(dma_map(&mut d[0], X, LEN, 0, read, ro.as_raw_fd()), None);
    let got = dma_map(&mut d[0], 2 * X, LEN, 0, 0, ro.as_raw_fd());
    assert_eq!(got, Some(Errno::EINVAL), "flags 0 accepted");
    // An RX buffer in the read-only map is refused; the frame goes to the next.
    post(&mut d[0], 0, rx_buf(X + 0x1000));
    post_rest(&mut d[0], 1);
    rx_0_refused(&mut d, 1, 1);
    assert_eq!(counters(&p, 0).bad_chain, 1);
    let mut back = vec![0u8; LEN as usize];
    ro.read_exact_at(&mut back, 0).unwrap();
    assert!(
        back.iter().all(|&b| b == 0xaa),
        "the device wrote a read-only map"
    );
    drop(d);

    // A used ring in a read-only map: the queue is not enabled, NEEDS_RESET.
    let mut bus = VfioUserBus::connect(&p.sockets[0]).unwrap();
    let caps = sbnet_tests::raw::read_caps(&mut bus).unwrap();
    let (bar, base) = caps.common;
    {
        let mut w = |o: usize, v: &[u8]| bus.bar_write(bar, base + o as u64, v).unwrap();
        w(off::DEVICE_STATUS, &[0]);
        w(
            off::DEVICE_STATUS,
            &[cc::STATUS_ACKNOWLEDGE | cc::STATUS_DRIVER],
        );
        w(off::DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
        w(off::DRIVER_FEATURE, &1u32.to_le_bytes()); // VERSION_1
        let ok = cc::STATUS_ACKNOWLEDGE | cc::STATUS_DRIVER | cc::STATUS_FEATURES_OK;
        w(off::DEVICE_STATUS, &[ok]);
    }
    let ro2 = sealed(LEN);
    let mut map = 32u32.to_le_bytes().to_vec();
    map.extend_from_slice(&read.to_le_bytes());
    for v in [0, X, LEN] {
        map.extend_from_slice(&v.to_le_bytes());
    }
    bus.request(Command::DmaMap, &map, &[ro2.as_raw_fd()])
        .unwrap();
    let mut w = |o: usize, v: &[u8]| bus.bar_write(bar, base + o as u64, v).unwrap();
    w(off::QUEUE_SELECT, &0u16.to_le_bytes());
    w(off::QUEUE_SIZE, &64u16.to_le_bytes());
    w(off::QUEUE_DESC, &X.to_le_bytes());
    w(off::QUEUE_DRIVER, &(X + 0x1000).to_le_bytes());
    w(off::QUEUE_DEVICE, &(X + 0x2000).to_le_bytes());
    w(off::QUEUE_ENABLE, &1u16.to_le_bytes());
    let mut st = [0u8];
    bus.bar_read(bar, base + off::DEVICE_STATUS as u64, &mut st)
        .unwrap();
    assert_ne!(
        st[0] & cc::STATUS_DEVICE_NEEDS_RESET,
        0,
        "used ring in a RO map"
    );
    let mut en = [0u8; 2];
    bus.bar_read(bar, base + off::QUEUE_ENABLE as u64, &mut en)
        .unwrap();
    assert_eq!(en, [0, 0]);
    drop(bus);
    let mut d = [up(&p, 0, 0, 0), up(&p, 1, 0, 0)];
    ping(&mut d, 20);
}

#[test]
fn an_overlapping_map_answers_eexist_and_an_unmap_may_end_at_2_64() {
    let p = start("overlap");
    let mut d = [up(&p, 0, 0, 0), up(&p, 1, 0, 0)];
    let f = sealed(2 * LEN);
    let fd = f.as_raw_fd();
    assert_eq!(dma_map(&mut d[0], X, LEN, 0, RW.bits(), fd), None);
    for (iova, size) in [(X, LEN), (X + 0x1000, LEN), (X - 0x1000, 0x2000)] {
        let got = dma_map(&mut d[0], iova, size, 0, RW.bits(), fd);
        assert_eq!(got, Some(Errno::EEXIST), "{iova:#x}+{size:#x}");
    }
    // Covers no map, ends exactly at 2^64: accepted (abi.md §7).
    let top = 0u64.wrapping_sub(LEN);
    assert_eq!(dma_unmap(&mut d[0], top, LEN), None, "unmap ending at 2^64");
    assert_eq!(
        dma_unmap(&mut d[0], top, LEN + 1),
        Some(Errno::EINVAL),
        "past 2^64"
    );
    assert_eq!(dma_unmap(&mut d[0], X, LEN), None);
    ping(&mut d, 20);
}

#[test]
fn the_window_is_inert_without_shared_buffers_and_while_bar_2_is_unset() {
    let p = start("inert");
    // A plain driver whose DMA memory lies where its BAR 2 is programmed.
    let mut d = [up(&p, 0, 0, QSIZE), up(&p, 1, 0, 0)];
    let w = d[0].bus.bar_address(l::SHM_BAR).expect("BAR 2 programmed");
    let f = sealed(LEN);
    assert_eq!(
        dma_map(&mut d[0], w, LEN, 0, RW.bits(), f.as_raw_fd()),
        None
    );
    post(&mut d[0], 0, rx_buf(w));
    post_rest(&mut d[0], 1);
    let fr = frame(2, 700);
    let (head, len) = send(&mut d, 1, &fr, 0);
    assert_eq!((head, len as usize), (0, NET_HDR_LEN + fr.len()));
    let mut got = vec![0u8; fr.len()];
    f.read_exact_at(&mut got, NET_HDR_LEN as u64).unwrap();
    assert_eq!(got, fr);
    // And a TX from there.
    f.write_all_at(&[0; NET_HDR_LEN], 0x8000).unwrap();
    f.write_all_at(&fr, 0x8000 + NET_HDR_LEN as u64).unwrap();
    tx_one(&mut d, w + 0x8000, &fr);
    assert_eq!(counters(&p, 0).bad_slot_ref, 0);
    drop(d);

    // A shared-buffers driver that leaves BAR 2 at 0: address 0.. is DMA memory.
    let sb = bit(net::VIRTIO_NET_F_SHARED_BUFFERS);
    let mut d = [up(&p, 0, sb, QSIZE), up(&p, 1, 0, 0)];
    for o in [cfg::BAR0 + 8, cfg::BAR0 + 12] {
        d[0].bus
            .config_write(o as u16, &0u32.to_le_bytes())
            .unwrap();
    }
    d[0].ack_epoch().unwrap();
    let low = sealed(LEN);
    assert_eq!(
        dma_map(&mut d[0], 0, LEN, 0, RW.bits(), low.as_raw_fd()),
        None
    );
    post(&mut d[0], 0, rx_buf(0x1000));
    post_rest(&mut d[0], 1);
    let (head, len) = send(&mut d, 1, &fr, 1);
    assert_eq!((head, len as usize), (0, NET_HDR_LEN + fr.len()));
    low.read_exact_at(&mut got, 0x1000 + NET_HDR_LEN as u64)
        .unwrap();
    assert_eq!(got, fr);
    assert_eq!(counters(&p, 0).bad_slot_ref, 0);
}

#[test]
fn a_cyclic_rx_chain_is_refused_as_a_loop() {
    let p = start("rx-loop");
    let mut d = [up(&p, 0, 0, 0), up(&p, 1, 0, QSIZE)];
    let a = d[1].buf(0, 0);
    let link = |addr, next| Desc {
        addr,
        len: 1024,
        flags: DESC_F_WRITE | DESC_F_NEXT,
        next,
    };
    d[1].set_desc(0, 0, link(a, 1));
    d[1].set_desc(0, 1, link(a + 1024, 0));
    d[1].avail(0, 0);
    post_rest(&mut d[1], 2);
    rx_0_refused(&mut d, 0, 2);
    assert_eq!(counters(&p, 1).bad_chain, 1);
    d[1].post_rx(0);
    d[1].post_rx(2);
    d[1].kick(0).unwrap();
    ping(&mut d, 10);
}

#[test]
fn msix_vectors_past_the_table_read_back_no_vector() {
    let p = start("vector");
    let mut d = up(&p, 0, 0, 0);
    let read = |d: &mut RawDriver<VfioUserBus>, o: usize| {
        let (bar, base) = d.caps.common;
        let mut b = [0u8; 2];
        d.bus.bar_read(bar, base + o as u64, &mut b).unwrap();
        u16::from_le_bytes(b)
    };
    for reg in [off::CONFIG_MSIX_VECTOR, off::QUEUE_MSIX_VECTOR] {
        for (v, want) in [(2u16, 2u16), (3, cc::NO_VECTOR), (0x7fff, cc::NO_VECTOR)] {
            d.common_w(reg, &v.to_le_bytes()).unwrap();
            assert_eq!(read(&mut d, reg), want, "register {reg:#x} written {v}");
        }
    }
}

/// One raw message: header then body.
fn message(id: u16, command: Command, body: &[u8]) -> Vec<u8> {
    let mut m = id.to_le_bytes().to_vec();
    m.extend_from_slice(&u16::from(command).to_le_bytes());
    m.extend_from_slice(&(16 + body.len() as u32).to_le_bytes());
    m.extend_from_slice(&[0u8; 8]);
    m.extend_from_slice(body);
    m
}

/// One raw reply: (message id, flags, error, body).
fn reply(s: &mut UnixStream) -> (u16, u32, u32, Vec<u8>) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let le = |r: std::ops::Range<usize>| u32::from_le_bytes(h[r].try_into().unwrap());
    let mut body = vec![0u8; le(4..8) as usize - 16];
    s.read_exact(&mut body).unwrap();
    (
        u16::from_le_bytes([h[0], h[1]]),
        le(8..12),
        le(12..16),
        body,
    )
}

#[test]
fn version_comes_first_and_tells_the_truth() {
    let p = start("version");
    let mut s = UnixStream::connect(&p.sockets[0]).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let info = [16u32, 0, 0, 0].map(u32::to_le_bytes).concat();
    s.write_all(&message(1, Command::DeviceGetInfo, &info))
        .unwrap();
    let (id, flags, error, body) = reply(&mut s);
    assert_eq!(id, 1);
    assert_ne!(
        flags & FLAG_ERROR,
        0,
        "DEVICE_GET_INFO served before VERSION"
    );
    assert_eq!(error, Errno::EINVAL as u32);
    assert!(body.is_empty());
    s.write_all(&message(2, Command::Version, &[0, 0, 0, 0]))
        .unwrap();
    let (id, _, error, body) = reply(&mut s);
    assert_eq!((id, error), (2, 0));
    let json = body[4..].strip_suffix(&[0]).expect("NUL-terminated JSON");
    let v: serde_json::Value = serde_json::from_slice(json).unwrap();
    let caps = &v["capabilities"];
    assert_eq!(
        caps["max_dma_maps"].as_u64(),
        Some(sbnet_device::mem::MAX_MAPS as u64)
    );
    assert!(caps.get("migration").is_none(), "{v}");
    s.write_all(&message(3, Command::DeviceGetInfo, &info))
        .unwrap();
    assert_eq!(reply(&mut s).2, 0, "served after VERSION");
    drop(s);
    // The server is fine for the next client, and the pair passes traffic.
    std::thread::sleep(Duration::from_millis(50));
    let mut d = [up(&p, 0, 0, 0), up(&p, 1, 0, 0)];
    ping(&mut d, 10);
}
