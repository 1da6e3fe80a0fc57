//! vfio-user protocol, both ends: sbnet's `Server` serving a mock
//! `Backend`, driven by the PMD's `VfioUserBus` (on this crate's `Client`).
//! Malformed input is in `malformed.rs`.

mod common;

use common::wire::{self, Encode};
use common::*;
use nix::errno::Errno;
use nix::sys::eventfd::EventFd;
use sbnet_pmd::bus::vfio_user::{VfioUserBus, BAR32_BASE, BAR64_BASE, DMA_IOVA_BASE};
use sbnet_pmd::bus::{Bus, BusError};
use sbnet_vfio_user::server::{Server, ServerError};
use sbnet_vfio_user::wire::{
    Command, DeviceFlags, DeviceInfo, DmaMap, DmaMapFlags, DmaUnmap, IrqInfoFlags, IrqSetFlags,
    RegionFlags, RegionInfo, SetIrqs, Version, FLAG_TYPE_REPLY,
};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

#[test]
fn negotiates_and_programs_the_function() {
    let mut h = Harness::start("negotiate");
    let mut bus = h.connect();
    assert_eq!(vendor_id(&mut bus), 0x1af4);
    assert_eq!(bus.num_regions(), 8);
    assert_eq!(bus.num_irqs(), 3);
    assert_eq!(bus.bar_address(0), Some(BAR32_BASE));
    assert_eq!(bus.bar_address(1), None);
    assert_eq!(bus.bar_address(2), Some(BAR64_BASE));
    let mut reg = [0u8; 4];
    bus.config_read(0x10, &mut reg).expect("BAR0");
    assert_eq!(u32::from_le_bytes(reg) & !0xf, BAR32_BASE as u32);
    bus.config_read(0x18, &mut reg).expect("BAR2 low");
    assert_eq!(
        u32::from_le_bytes(reg),
        0xc,
        "64-bit prefetchable, low half 0"
    );
    bus.config_read(0x1c, &mut reg).expect("BAR2 high");
    assert_eq!(u64::from(u32::from_le_bytes(reg)) << 32, BAR64_BASE);
    let mut cmd = [0u8; 2];
    bus.config_read(4, &mut cmd).expect("command");
    assert_eq!(u16::from_le_bytes(cmd) & 0x6, 0x6, "memory + bus master");

    // The raw VERSION exchange: 0.1 proposed, 0.1 and NUL-terminated JSON back.
    let (header, body, _) = {
        let mut v = Version { major: 0, minor: 1 }.encode();
        v.extend_from_slice(b"{\"capabilities\":{\"max_msg_fds\":4}}\0");
        bus.request(Command::Version, &v, &[]).expect("version")
    };
    assert_eq!(header.flags, FLAG_TYPE_REPLY);
    let v = wire::version(&body);
    assert_eq!((v.major, v.minor), (0, 1));
    assert_eq!(body.last(), Some(&0));
    let json = std::str::from_utf8(&body[4..body.len() - 1]).expect("UTF-8 capabilities");
    assert!(json.starts_with("{\"capabilities\":{"), "{json}");
    assert!(json.contains("\"max_msg_fds\":16"), "{json}");
    assert!(json.contains("\"pgsizes\""), "{json}");

    let (_, body, _) = bus
        .request(
            Command::DeviceGetInfo,
            &DeviceInfo {
                argsz: 16,
                ..DeviceInfo::default()
            }
            .encode(),
            &[],
        )
        .expect("device info");
    let info = wire::device_info(&body);
    assert_eq!(info.flags, (DeviceFlags::PCI | DeviceFlags::RESET).bits());
    assert_eq!((info.num_regions, info.num_irqs), (8, 3));

    let msix = bus.irq_info(2).expect("irq info");
    assert_eq!(
        (msix.index, msix.count, msix.flags),
        (2, 3, IrqInfoFlags::EVENTFD.bits())
    );
    let absent = bus.irq_info(1).expect("irq info of an undescribed index");
    assert_eq!(absent.count, 0);
    assert!(
        matches!(bus.irq_info(9), Err(BusError::Refused { errno, .. }) if errno == Errno::EINVAL as i32)
    );
    drop(bus);
    h.wait_disconnects(1);
    assert!(h.stop() < Duration::from_secs(1));
}

#[test]
fn region_info_passes_the_mmap_fd_and_sparse_cap() {
    let h = Harness::start("mmap");
    let mut bus = h.connect();
    let info = *bus.region_info(2).expect("region 2");
    assert_eq!(info.size, BAR2_SIZE);
    assert_ne!(info.flags & RegionFlags::MMAP.bits(), 0);
    assert_ne!(info.flags & RegionFlags::CAPS.bits(), 0);
    let areas = bus.region_sparse_areas(2);
    assert_eq!(areas.len(), 1);
    assert_eq!((areas[0].offset, areas[0].size), (0, BAR2_SIZE));
    assert_eq!(
        bus.region_info(0)
            .map(|r| r.flags & RegionFlags::MMAP.bits()),
        Some(0)
    );

    // Too small an argsz: no chain, but the full argsz to ask again with.
    let (_, body, fds) = bus
        .request(
            Command::DeviceGetRegionInfo,
            &RegionInfo {
                argsz: 32,
                index: 2,
                ..RegionInfo::default()
            }
            .encode(),
            &[],
        )
        .expect("region info");
    assert_eq!(body.len(), 32);
    let small = wire::region_info(&body);
    assert_eq!(small.argsz, 64);
    assert_eq!(small.flags & RegionFlags::CAPS.bits(), 0);
    assert_eq!(fds.len(), 1, "the mmap fd comes with every MMAP reply");

    let bar = bus.map_bar(2).expect("map BAR2");
    assert_eq!((bar.bus_addr, bar.len), (BAR64_BASE, BAR2_SIZE as usize));
    let mut seen = [0u8; 10];
    for (i, b) in seen.iter_mut().enumerate() {
        // SAFETY: `bar` maps BAR2_SIZE bytes that stay mapped while `bus`
        // lives; i < 10 is inside it.
        *b = unsafe { bar.ptr.add(i).read_volatile() };
    }
    assert_eq!(
        &seen, b"sbnet-bar2",
        "the client sees what the backend wrote"
    );
    // SAFETY: as above; offset 0x100 is inside the mapping.
    unsafe { bar.ptr.add(0x100).write_volatile(0xa5) };
    let mut back = [0u8; 1];
    h.bar2.read_exact_at(&mut back, 0x100).expect("read");
    assert_eq!(back[0], 0xa5, "the backend sees what the client wrote");
    let again = bus.map_bar(2).expect("cached");
    assert_eq!(again.ptr, bar.ptr);
    assert!(
        matches!(bus.map_bar(0), Err(BusError::Map(_))),
        "BAR0 is not mmap-able"
    );
    assert!(
        matches!(bus.map_bar(1), Err(BusError::Unexpected(_))),
        "BAR1 is absent"
    );
}

#[test]
fn region_read_write_round_trip() {
    let h = Harness::start("rw");
    let mut bus = h.connect();
    bus.bar_write(0, 0x2000, &0xdead_beef_u32.to_le_bytes())
        .expect("write");
    let mut v = [0u8; 4];
    bus.bar_read(0, 0x2000, &mut v).expect("read");
    assert_eq!(u32::from_le_bytes(v), 0xdead_beef);
    bus.bar_write(0, 0x8, &[1, 2, 3, 4, 5, 6, 7, 8])
        .expect("write 8");
    let mut v8 = [0u8; 8];
    bus.bar_read(0, 0x8, &mut v8).expect("read 8");
    assert_eq!(v8, [1, 2, 3, 4, 5, 6, 7, 8]);
    // BAR2 through the socket reaches the same memfd.
    bus.bar_write(2, 0x40, &[9, 9]).expect("write BAR2");
    let mut back = [0u8; 2];
    h.bar2.read_exact_at(&mut back, 0x40).expect("read");
    assert_eq!(back, [9, 9]);
    // Out of bounds is refused by the server before the backend sees it.
    let err = bus
        .bar_read(0, BAR0_SIZE - 2, &mut v)
        .expect_err("past the end");
    assert!(
        matches!(err, BusError::Refused { what: "REGION_READ", errno } if errno == Errno::EINVAL as i32)
    );
    assert!(matches!(
        bus.bar_write(3, 0, &[0]),
        Err(BusError::Refused { .. })
    ));
    assert!(matches!(
        bus.bar_read(6, 0, &mut v),
        Err(BusError::Unexpected(_))
    ));
    // Still in step after refusals.
    assert_eq!(vendor_id(&mut bus), 0x1af4);
}

#[test]
fn dma_map_with_fd_reaches_the_backend_and_without_fd_is_refused() {
    let h = Harness::start("dma");
    let mut bus = h.connect();
    let a = bus.dma_alloc(100).expect("dma alloc");
    let b = bus.dma_alloc(5000).expect("dma alloc");
    assert_eq!((a.iova, a.len), (DMA_IOVA_BASE, 4096));
    assert_eq!(b.iova, DMA_IOVA_BASE + 4096);
    assert_eq!(b.len, 8192);
    let mut first = [0u8; 8];
    for (i, byte) in first.iter_mut().enumerate() {
        // SAFETY: `a` maps 4096 bytes owned by `bus`, alive here; i < 8.
        *byte = unsafe { a.ptr.add(i).read_volatile() };
    }
    assert_eq!(
        u64::from_le_bytes(first),
        DMA_IOVA_BASE,
        "the backend wrote through the memfd it received"
    );
    {
        let stats = h.stats();
        assert_eq!(stats.dma_maps.len(), 2);
        assert_eq!(
            stats.dma_maps[0],
            (
                DMA_IOVA_BASE,
                4096,
                0,
                (DmaMapFlags::READ | DmaMapFlags::WRITE).bits(),
                true
            )
        );
    }

    let no_fd = DmaMap {
        argsz: 32,
        flags: DmaMapFlags::READ.bits(),
        offset: 0,
        address: 0x2_0000_0000,
        size: 4096,
    };
    let err = bus
        .request(Command::DmaMap, &no_fd.encode(), &[])
        .expect_err("no fd");
    assert!(
        matches!(err, BusError::Refused { what: "DMA_MAP", errno } if errno == Errno::EINVAL as i32),
        "{err:?}"
    );
    assert_eq!(h.stats().dma_maps.last().map(|m| m.4), Some(false));

    let unmap = DmaUnmap {
        argsz: 24,
        flags: 0,
        address: DMA_IOVA_BASE,
        size: 4096,
    };
    let (_, echo, _) = bus
        .request(Command::DmaUnmap, &unmap.encode(), &[])
        .expect("unmap");
    assert_eq!(echo, unmap.encode(), "DMA_UNMAP echoes its body");
    assert_eq!(h.stats().dma_unmaps, vec![(DMA_IOVA_BASE, 4096, 0)]);
}

#[test]
fn set_irqs_passes_eventfds() {
    let h = Harness::start("irqs");
    let mut bus = h.connect();
    let efds: Vec<EventFd> = (0..3).map(|_| EventFd::new().expect("eventfd")).collect();
    let raw: Vec<RawFd> = efds.iter().map(|e| e.as_fd().as_raw_fd()).collect();
    bus.set_irq_eventfds(2, 0, &raw).expect("set irqs");
    for e in &efds {
        assert_eq!(e.read().expect("eventfd fired by the backend"), 1);
    }
    bus.disable_irqs(2).expect("disable");
    {
        let stats = h.stats();
        assert_eq!(
            stats.set_irqs[0],
            (
                2,
                (IrqSetFlags::DATA_EVENTFD | IrqSetFlags::ACTION_TRIGGER).bits(),
                0,
                3,
                3
            )
        );
        assert_eq!(stats.set_irqs.last().map(|s| (s.3, s.4)), Some((0, 0)));
    }
    // More vectors than the index has, and DATA_BOOL, are refused.
    assert!(matches!(
        bus.set_irq_eventfds(0, 0, &raw[..2]),
        Err(BusError::Refused { errno, .. }) if errno == Errno::EINVAL as i32
    ));
    let boolean = SetIrqs {
        argsz: 21,
        flags: (IrqSetFlags::DATA_BOOL | IrqSetFlags::ACTION_TRIGGER).bits(),
        index: 2,
        start: 0,
        count: 1,
    };
    let mut body = boolean.encode();
    body.push(1);
    assert!(matches!(
        bus.request(Command::DeviceSetIrqs, &body, &[]),
        Err(BusError::Refused { errno, .. }) if errno == Errno::ENOTSUP as i32
    ));
    // Count says 2, one fd comes.
    let mismatch = SetIrqs {
        argsz: 20,
        flags: (IrqSetFlags::DATA_EVENTFD | IrqSetFlags::ACTION_TRIGGER).bits(),
        index: 2,
        start: 0,
        count: 2,
    };
    assert!(matches!(
        bus.request(Command::DeviceSetIrqs, &mismatch.encode(), &raw[..1]),
        Err(BusError::Refused { errno, .. }) if errno == Errno::EINVAL as i32
    ));
}

#[test]
fn reset_reaches_the_backend_and_bars_are_restored() {
    let h = Harness::start("reset");
    let mut bus = h.connect();
    bus.reset().expect("reset");
    assert_eq!(h.stats().resets, 1);
    let mut cmd = [0u8; 2];
    bus.config_read(4, &mut cmd).expect("command");
    assert_eq!(u16::from_le_bytes(cmd) & 0x6, 0x6, "re-enabled after reset");
}

#[test]
fn reconnect_after_disconnect_and_backlog() {
    let h = Harness::start("reconnect");
    let mut first = h.connect();
    assert_eq!(vendor_id(&mut first), 0x1af4);
    // A second client waits in the backlog while the first is served.
    let path = h.path.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let r = VfioUserBus::connect_with_timeout(&path, TIMEOUT).map(|mut b| vendor_id(&mut b));
        tx.send(()).ok();
        r.map_err(|e| e.to_string())
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "second client served while the first is connected"
    );
    drop(first);
    assert_eq!(waiter.join().expect("no panic"), Ok(0x1af4));
    h.wait_disconnects(2);
    let mut third = h.connect();
    assert_eq!(vendor_id(&mut third), 0x1af4);
    drop(third);
    h.wait_disconnects(3);
    let stats = h.stats();
    assert_eq!((stats.connected, stats.disconnected), (3, 3));
}

#[test]
fn stop_returns_promptly_idle_and_with_a_client() {
    let mut idle = Harness::start("stop-idle");
    std::thread::sleep(Duration::from_millis(150));
    assert!(idle.stop() < Duration::from_secs(1));

    let mut busy = Harness::start("stop-busy");
    let mut bus = busy.connect();
    assert_eq!(vendor_id(&mut bus), 0x1af4);
    assert!(busy.stop() < Duration::from_secs(1));
    assert_eq!(busy.stats().disconnected, 1, "stop tells the backend");
    assert!(matches!(
        bus.config_read(0, &mut [0u8; 2]),
        Err(BusError::Transport(_))
    ));
    assert!(!busy.path.exists(), "the socket file is removed");
}

#[test]
fn second_server_on_a_live_socket_is_refused() {
    let h = Harness::start("inuse");
    let err = Server::bind(&h.path).expect_err("in use");
    assert!(matches!(err, ServerError::InUse { .. }));
    assert!(err
        .to_string()
        .contains("stop it or choose another --socket"));
    let mut bus = h.connect();
    assert_eq!(vendor_id(&mut bus), 0x1af4, "the live server is untouched");
}
