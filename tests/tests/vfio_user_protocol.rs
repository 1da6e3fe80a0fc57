//! vfio-user protocol, both ends: sbnet's `Server` (device-model) serving a
//! mock `Backend`, driven by sbnet's `VfioUserBus` (guest-pmd) and by raw
//! sockets sending malformed messages.
//!
//! Every test runs its server on a thread with a stop flag, in its own
//! temporary directory, with socket timeouts, so nothing can hang.

use nix::errno::Errno;
use nix::sys::eventfd::EventFd;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use sbnet_abi::layout::CONFIG_REGION;
use sbnet_abi::vfio_user::{
    DeviceInfo, DmaMap, DmaUnmap, Header, RegionAccess, RegionInfo, SetIrqs, Version,
    CMD_DEVICE_GET_INFO, CMD_DEVICE_GET_REGION_INFO, CMD_DEVICE_SET_IRQS, CMD_DMA_MAP,
    CMD_DMA_UNMAP, CMD_REGION_READ, CMD_REGION_WRITE, CMD_VERSION, DEVICE_FLAG_PCI,
    DEVICE_FLAG_RESET, DMA_FLAG_READ, DMA_FLAG_WRITE, FLAG_ERROR, FLAG_NO_REPLY, FLAG_TYPE_REPLY,
    HEADER_LEN, IRQ_INFO_EVENTFD, IRQ_SET_ACTION_TRIGGER, IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD,
    MAX_MESSAGE, REGION_FLAG_CAPS, REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE,
};
use sbnet_device::vfio_user::{Backend, IrqDesc, RegionDesc, Server, ServerError};
use sbnet_pmd::bus::vfio_user::{VfioUserBus, BAR32_BASE, BAR64_BASE, DMA_IOVA_BASE};
use sbnet_pmd::bus::{Bus, BusError};
use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wire::Encode;

const BAR0_SIZE: u64 = 0x4000;
const BAR2_SIZE: u64 = 0x1_0000;
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the mock backend saw, shared with the test.
#[derive(Default)]
struct Stats {
    connected: usize,
    disconnected: usize,
    resets: usize,
    /// (iova, size, file_offset, flags, had_fd)
    dma_maps: Vec<(u64, u64, u64, u32, bool)>,
    dma_unmaps: Vec<(u64, u64, u32)>,
    /// (index, flags, start, count, number of fds)
    set_irqs: Vec<(u32, u32, u32, u32, usize)>,
}

/// A small PCI function: BAR0 (32-bit, 16 KiB, socket access only), BAR2
/// (64-bit prefetchable, 64 KiB, backed by an mmap-able memfd) and a
/// 256-byte config space.
struct Mock {
    stats: Arc<Mutex<Stats>>,
    config: [u8; 256],
    bar0: Vec<u8>,
    bar2: Arc<File>,
    bar2_fd: RawFd,
}

impl Mock {
    fn new(stats: Arc<Mutex<Stats>>, bar2: Arc<File>) -> Mock {
        let mut config = [0u8; 256];
        config[0..2].copy_from_slice(&0x1af4u16.to_le_bytes());
        config[2..4].copy_from_slice(&0x1041u16.to_le_bytes());
        config[0x18..0x1c].copy_from_slice(&0xcu32.to_le_bytes()); // BAR2: 64-bit, prefetchable
        let bar2_fd = bar2.as_raw_fd();
        Mock {
            stats,
            config,
            bar0: vec![0; BAR0_SIZE as usize],
            bar2,
            bar2_fd,
        }
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// BAR registers keep only the address bits their size allows.
    fn bar_mask(reg: usize) -> Option<u32> {
        match reg {
            0x10 => Some(!(BAR0_SIZE as u32 - 1)),
            0x18 => Some(!(BAR2_SIZE as u32 - 1)),
            0x1c => Some(!0xf), // upper half: type bits are 0, all of it kept
            0x14 | 0x20 | 0x24 => Some(0),
            _ => None,
        }
    }
}

impl Backend for Mock {
    fn regions(&self) -> Vec<RegionDesc> {
        let rw = REGION_FLAG_READ | REGION_FLAG_WRITE;
        let mut regions: Vec<RegionDesc> = (0..8)
            .map(|index| RegionDesc {
                index,
                size: 0,
                flags: 0,
                mmap: None,
            })
            .collect();
        regions[0] = RegionDesc {
            index: 0,
            size: BAR0_SIZE,
            flags: rw,
            mmap: None,
        };
        regions[2] = RegionDesc {
            index: 2,
            size: BAR2_SIZE,
            flags: rw,
            mmap: Some((self.bar2_fd, 0)),
        };
        regions[7] = RegionDesc {
            index: CONFIG_REGION,
            size: 256,
            flags: rw,
            mmap: None,
        };
        regions
    }

    fn irqs(&self) -> Vec<IrqDesc> {
        vec![
            IrqDesc {
                index: 0,
                count: 1,
                flags: IRQ_INFO_EVENTFD,
            },
            IrqDesc {
                index: 2,
                count: 3,
                flags: IRQ_INFO_EVENTFD,
            },
        ]
    }

    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        let at = offset as usize;
        match region {
            0 => data.copy_from_slice(&self.bar0[at..at + data.len()]),
            2 => self
                .bar2
                .read_exact_at(data, offset)
                .map_err(|_| Errno::EIO)?,
            CONFIG_REGION => data.copy_from_slice(&self.config[at..at + data.len()]),
            _ => return Err(Errno::EINVAL),
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let at = offset as usize;
        match region {
            0 => self.bar0[at..at + data.len()].copy_from_slice(data),
            2 => self
                .bar2
                .write_all_at(data, offset)
                .map_err(|_| Errno::EIO)?,
            CONFIG_REGION => {
                if let (Some(mask), Ok(value)) = (Self::bar_mask(at), <[u8; 4]>::try_from(data)) {
                    // Address bits the size allows; the type bits stay.
                    let old = u32::from_le_bytes(self.config[at..at + 4].try_into().unwrap());
                    let new = (u32::from_le_bytes(value) & mask & !0xf) | (old & 0xf);
                    self.config[at..at + 4].copy_from_slice(&new.to_le_bytes());
                } else {
                    self.config[at..at + data.len()].copy_from_slice(data);
                }
            }
            _ => return Err(Errno::EINVAL),
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        file_offset: u64,
        flags: u32,
        fd: Option<OwnedFd>,
    ) -> Result<(), Errno> {
        self.stats()
            .dma_maps
            .push((iova, size, file_offset, flags, fd.is_some()));
        // docs/abi.md §7: a DMA_MAP must carry a file descriptor.
        let file = File::from(fd.ok_or(Errno::EINVAL)?);
        // "DMA" into the client's memory: it must see this.
        file.write_all_at(&iova.to_le_bytes(), file_offset)
            .map_err(|_| Errno::EFAULT)
    }

    fn dma_unmap(&mut self, iova: u64, size: u64, flags: u32) -> Result<(), Errno> {
        self.stats().dma_unmaps.push((iova, size, flags));
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Errno> {
        self.stats()
            .set_irqs
            .push((index, flags, start, count, fds.len()));
        // Fire every eventfd once, as an interrupt would.
        for fd in fds {
            File::from(fd)
                .write_all(&1u64.to_ne_bytes())
                .map_err(|_| Errno::EIO)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stats().resets += 1;
        self.config[4..6].copy_from_slice(&[0, 0]);
    }

    fn connected(&mut self) {
        self.stats().connected += 1;
    }

    fn disconnected(&mut self) {
        self.stats().disconnected += 1;
    }
}

/// A server on a thread, stopped and joined on drop.
struct Harness {
    dir: PathBuf,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
    stats: Arc<Mutex<Stats>>,
    bar2: Arc<File>,
}

impl Harness {
    fn start(name: &str) -> Harness {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sbnet-vfu-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("dev.sock");
        let memfd = memfd_create(c"mock-bar2", MemFdCreateFlag::MFD_CLOEXEC).expect("memfd");
        let bar2 = Arc::new(File::from(memfd));
        bar2.set_len(BAR2_SIZE).expect("ftruncate");
        bar2.write_all_at(b"sbnet-bar2", 0).expect("write");
        let stats = Arc::new(Mutex::new(Stats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let server = Server::bind(&path).expect("bind");
        let thread = {
            let (stats, bar2, stop) = (Arc::clone(&stats), Arc::clone(&bar2), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut mock = Mock::new(stats, bar2);
                server.serve(&mut mock, &stop)
            })
        };
        Harness {
            dir,
            path,
            stop,
            thread: Some(thread),
            stats,
            bar2,
        }
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connect(&self) -> VfioUserBus {
        VfioUserBus::connect_with_timeout(&self.path, TIMEOUT).expect("client connects")
    }

    fn raw(&self) -> UnixStream {
        let s = UnixStream::connect(&self.path).expect("raw connect");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(TIMEOUT)).expect("timeout");
        s
    }

    /// Waits until the backend has seen `n` disconnects.
    fn wait_disconnects(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.stats().disconnected < n {
            assert!(
                Instant::now() < deadline,
                "server did not see the client leave"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sets stop and returns how long serve() took to return; panics if
    /// the server thread panicked or failed.
    fn stop(&mut self) -> Duration {
        let t = Instant::now();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .expect("server thread panicked")
                .expect("serve failed");
        }
        t.elapsed()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let joined = thread.join();
            if !std::thread::panicking() {
                assert!(joined.is_ok(), "server thread panicked");
            }
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn message(id: u16, command: u16, flags: u32, body: &[u8]) -> Vec<u8> {
    let header = Header {
        message_id: id,
        command,
        message_size: (HEADER_LEN + body.len()) as u32,
        flags,
        error: 0,
    };
    let mut out = header.encode();
    out.extend_from_slice(body);
    out
}

/// Reads one reply; None when the server closed the connection.
fn read_reply(stream: &mut UnixStream) -> Option<(Header, Vec<u8>)> {
    let mut raw = [0u8; HEADER_LEN];
    stream.read_exact(&mut raw).ok()?;
    let header = wire::header(&raw);
    let len = (header.message_size as usize).checked_sub(HEADER_LEN)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    Some((header, body))
}

/// The connection is closed: EOF (or reset) rather than a reply.
fn assert_closed(stream: &mut UnixStream, case: &str) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{case}: expected a closed connection, got {other:?}"),
    }
}

fn vendor_id(bus: &mut VfioUserBus) -> u16 {
    let mut id = [0u8; 2];
    bus.config_read(0, &mut id).expect("config read");
    u16::from_le_bytes(id)
}

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
        bus.request(CMD_VERSION, &v, &[]).expect("version")
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
            CMD_DEVICE_GET_INFO,
            &DeviceInfo {
                argsz: 16,
                ..DeviceInfo::default()
            }
            .encode(),
            &[],
        )
        .expect("device info");
    let info = wire::device_info(&body);
    assert_eq!(info.flags, DEVICE_FLAG_PCI | DEVICE_FLAG_RESET);
    assert_eq!((info.num_regions, info.num_irqs), (8, 3));

    let msix = bus.irq_info(2).expect("irq info");
    assert_eq!(
        (msix.index, msix.count, msix.flags),
        (2, 3, IRQ_INFO_EVENTFD)
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
    assert_ne!(info.flags & REGION_FLAG_MMAP, 0);
    assert_ne!(info.flags & REGION_FLAG_CAPS, 0);
    let areas = bus.region_sparse_areas(2);
    assert_eq!(areas.len(), 1);
    assert_eq!((areas[0].offset, areas[0].size), (0, BAR2_SIZE));
    assert_eq!(
        bus.region_info(0).map(|r| r.flags & REGION_FLAG_MMAP),
        Some(0)
    );

    // Too small an argsz: no chain, but the full argsz to ask again with.
    let (_, body, fds) = bus
        .request(
            CMD_DEVICE_GET_REGION_INFO,
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
    assert_eq!(small.flags & REGION_FLAG_CAPS, 0);
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
            (DMA_IOVA_BASE, 4096, 0, DMA_FLAG_READ | DMA_FLAG_WRITE, true)
        );
    }

    let no_fd = DmaMap {
        argsz: 32,
        flags: DMA_FLAG_READ,
        offset: 0,
        address: 0x2_0000_0000,
        size: 4096,
    };
    let err = bus
        .request(CMD_DMA_MAP, &no_fd.encode(), &[])
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
        .request(CMD_DMA_UNMAP, &unmap.encode(), &[])
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
            (2, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, 0, 3, 3)
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
        flags: IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER,
        index: 2,
        start: 0,
        count: 1,
    };
    let mut body = boolean.encode();
    body.push(1);
    assert!(matches!(
        bus.request(CMD_DEVICE_SET_IRQS, &body, &[]),
        Err(BusError::Refused { errno, .. }) if errno == Errno::ENOTSUP as i32
    ));
    // Count says 2, one fd comes.
    let mismatch = SetIrqs {
        argsz: 20,
        flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
        index: 2,
        start: 0,
        count: 2,
    };
    assert!(matches!(
        bus.request(CMD_DEVICE_SET_IRQS, &mismatch.encode(), &raw[..1]),
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

/// How the server must answer a malformed message.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// An error reply with this errno, and the connection keeps working.
    Error(Errno),
    /// The connection is closed.
    Closed,
}

fn header_only(command: u16, message_size: u32) -> Vec<u8> {
    Header {
        message_id: 1,
        command,
        message_size,
        flags: 0,
        error: 0,
    }
    .encode()
}

fn version_with(data: &[u8]) -> Vec<u8> {
    let mut body = Version { major: 0, minor: 1 }.encode();
    body.extend_from_slice(data);
    message(1, CMD_VERSION, 0, &body)
}

fn access(region: u32, offset: u64, count: u32) -> Vec<u8> {
    RegionAccess {
        offset,
        region,
        count,
    }
    .encode()
}

#[test]
fn malformed_messages_are_refused_and_the_server_survives() {
    let mut h = Harness::start("malformed");
    let memfd = |name| memfd_create(name, MemFdCreateFlag::MFD_CLOEXEC).expect("memfd");
    let dma = DmaMap {
        argsz: 32,
        flags: DMA_FLAG_READ,
        offset: 0,
        address: 0x3_0000_0000,
        size: 4096,
    }
    .encode();
    let mut short_write = access(CONFIG_REGION, 0, 8);
    short_write.extend_from_slice(&[1, 2, 3, 4]);
    let mut long_write = access(CONFIG_REGION, 0, 2);
    long_write.extend_from_slice(&[1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>, usize, Expect)> = vec![
        (
            "message_size 0",
            header_only(CMD_VERSION, 0),
            0,
            Expect::Closed,
        ),
        (
            "message_size 8",
            header_only(CMD_DEVICE_GET_INFO, 8),
            0,
            Expect::Closed,
        ),
        (
            "message_size 2 MiB",
            header_only(CMD_VERSION, 2 << 20),
            0,
            Expect::Closed,
        ),
        (
            "message_size MAX+1",
            header_only(CMD_REGION_WRITE, MAX_MESSAGE + 1),
            0,
            Expect::Closed,
        ),
        (
            "DMA_MAP body shorter than DmaMap",
            message(1, CMD_DMA_MAP, 0, &dma[..8]),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "GET_REGION_INFO with no body",
            message(1, CMD_DEVICE_GET_REGION_INFO, 0, &[]),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "REGION_READ count 0xFFFFFFFF",
            message(1, CMD_REGION_READ, 0, &access(CONFIG_REGION, 0, u32::MAX)),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "REGION_READ offset overflows",
            message(1, CMD_REGION_READ, 0, &access(CONFIG_REGION, u64::MAX, 4)),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "REGION_WRITE count > data",
            message(1, CMD_REGION_WRITE, 0, &short_write),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "REGION_WRITE count < data",
            message(1, CMD_REGION_WRITE, 0, &long_write),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "unknown command 999",
            message(1, 999, 0, &[0u8; 64]),
            0,
            Expect::Error(Errno::ENOTSUP),
        ),
        (
            "GET_REGION_IO_FDS",
            message(1, 6, 0, &[0u8; 16]),
            0,
            Expect::Error(Errno::ENOTSUP),
        ),
        (
            "VERSION JSON not NUL-terminated",
            version_with(b"{\"capabilities\":{}}"),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "VERSION invalid JSON",
            version_with(b"{capabilities\0"),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "VERSION invalid UTF-8",
            version_with(b"\xff\xff\0"),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "VERSION major 1",
            {
                let mut m = version_with(b"{}\0");
                m[HEADER_LEN] = 1;
                m
            },
            0,
            Expect::Error(Errno::ENOTSUP),
        ),
        (
            "DMA_MAP with 3 fds",
            message(1, CMD_DMA_MAP, 0, &dma),
            3,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "REGION_READ with an fd",
            message(1, CMD_REGION_READ, 0, &access(CONFIG_REGION, 0, 4)),
            1,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "REGION_READ region 99",
            message(1, CMD_REGION_READ, 0, &access(99, 0, 4)),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "GET_REGION_INFO index 99",
            message(
                1,
                CMD_DEVICE_GET_REGION_INFO,
                0,
                &RegionInfo {
                    argsz: 32,
                    index: 99,
                    ..RegionInfo::default()
                }
                .encode(),
            ),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "DMA_UNMAP unknown flag",
            message(
                1,
                CMD_DMA_UNMAP,
                0,
                &DmaUnmap {
                    argsz: 24,
                    flags: 1 << 7,
                    address: 0,
                    size: 0,
                }
                .encode(),
            ),
            0,
            Expect::Error(Errno::EINVAL),
        ),
    ];
    let mut disconnects = 0;
    for (case, bytes, nfds, expect) in cases {
        let mut s = h.raw();
        let fds: Vec<OwnedFd> = (0..nfds).map(|_| memfd(c"case")).collect();
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let sent = sendmsg::<()>(
            s.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .expect("send");
        assert_eq!(sent, bytes.len(), "{case}");
        drop(fds);
        match expect {
            Expect::Closed => assert_closed(&mut s, case),
            Expect::Error(errno) => {
                let (header, body) =
                    read_reply(&mut s).unwrap_or_else(|| panic!("{case}: no reply"));
                assert_eq!(header.flags, FLAG_TYPE_REPLY | FLAG_ERROR, "{case}");
                assert_eq!(header.error, errno as u32, "{case}");
                assert!(body.is_empty(), "{case}: an error reply is only a header");
                // The stream is still in step.
                let info = DeviceInfo {
                    argsz: 16,
                    ..DeviceInfo::default()
                };
                s.write_all(&message(2, CMD_DEVICE_GET_INFO, 0, &info.encode()))
                    .expect("send");
                let (header, _) =
                    read_reply(&mut s).unwrap_or_else(|| panic!("{case}: no follow-up"));
                assert_eq!(
                    (header.message_id, header.flags),
                    (2, FLAG_TYPE_REPLY),
                    "{case}"
                );
            }
        }
        drop(s);
        disconnects += 1;
        h.wait_disconnects(disconnects);
        // A new, well-formed client is served.
        let mut bus = h.connect();
        assert_eq!(
            vendor_id(&mut bus),
            0x1af4,
            "{case}: server unusable afterwards"
        );
        drop(bus);
        disconnects += 1;
        h.wait_disconnects(disconnects);
    }
    assert!(h.stop() < Duration::from_secs(1));
}

#[test]
fn truncated_message_then_eof_is_dropped() {
    let h = Harness::start("truncated");
    let mut s = h.raw();
    let full = message(1, CMD_DMA_MAP, 0, &[0u8; 32]);
    s.write_all(&full[..20]).expect("send");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_closed(&mut s, "truncated");
    h.wait_disconnects(1);
    let mut bus = h.connect();
    assert_eq!(vendor_id(&mut bus), 0x1af4);
}

#[test]
fn no_reply_suppresses_replies() {
    let h = Harness::start("noreply");
    let mut s = h.raw();
    let mut body = access(0, 0x10, 4);
    body.extend_from_slice(&7u32.to_le_bytes());
    s.write_all(&message(1, CMD_REGION_WRITE, FLAG_NO_REPLY, &body))
        .expect("send");
    // A refused command with NO_REPLY gets no reply either.
    s.write_all(&message(2, 999, FLAG_NO_REPLY, &[]))
        .expect("send");
    s.write_all(&message(3, CMD_REGION_READ, 0, &access(0, 0x10, 4)))
        .expect("send");
    let (header, body) = read_reply(&mut s).expect("reply");
    assert_eq!(header.message_id, 3);
    assert_eq!(&body[16..], &7u32.to_le_bytes());
}

#[test]
fn client_refuses_a_lying_server() {
    // A fake server that answers VERSION with a mismatched id, then one
    // whose reply claims 4 GiB: the client errors, never panics or allocates.
    for reply in [
        message(77, CMD_VERSION, FLAG_TYPE_REPLY, &[0, 0, 0, 0]),
        Header {
            message_id: 0,
            command: CMD_VERSION,
            message_size: u32::MAX,
            flags: FLAG_TYPE_REPLY,
            error: 0,
        }
        .encode(),
        message(
            0,
            CMD_VERSION,
            FLAG_TYPE_REPLY,
            &[0, 0, 9, 0, b'{', b'}', 0],
        ),
    ] {
        let dir = std::env::temp_dir().join(format!("sbnet-vfu-liar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("liar.sock");
        std::fs::remove_file(&path).ok();
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut header = [0u8; HEADER_LEN];
            s.read_exact(&mut header).expect("request");
            let h = wire::header(&header);
            let mut rest = vec![0u8; h.message_size as usize - HEADER_LEN];
            s.read_exact(&mut rest).expect("body");
            s.write_all(&reply).ok();
            std::thread::sleep(Duration::from_millis(100));
        });
        let err = VfioUserBus::connect_with_timeout(&path, TIMEOUT).expect_err("lying server");
        assert!(
            matches!(err, BusError::Transport(_) | BusError::Unexpected(_)),
            "{err:?}"
        );
        fake.join().expect("fake server");
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// Little-endian encoders and decoders written from the spec tables, so the
/// tests check the wire layout independently of the crates' own bytemuck
/// views.
mod wire {
    use super::*;

    pub trait Encode {
        fn encode(&self) -> Vec<u8>;
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    impl Encode for Header {
        fn encode(&self) -> Vec<u8> {
            cat(&[
                &self.message_id.to_le_bytes(),
                &self.command.to_le_bytes(),
                &self.message_size.to_le_bytes(),
                &self.flags.to_le_bytes(),
                &self.error.to_le_bytes(),
            ])
        }
    }

    impl Encode for Version {
        fn encode(&self) -> Vec<u8> {
            cat(&[&self.major.to_le_bytes(), &self.minor.to_le_bytes()])
        }
    }

    impl Encode for DmaMap {
        fn encode(&self) -> Vec<u8> {
            cat(&[
                &self.argsz.to_le_bytes(),
                &self.flags.to_le_bytes(),
                &self.offset.to_le_bytes(),
                &self.address.to_le_bytes(),
                &self.size.to_le_bytes(),
            ])
        }
    }

    impl Encode for DmaUnmap {
        fn encode(&self) -> Vec<u8> {
            cat(&[
                &self.argsz.to_le_bytes(),
                &self.flags.to_le_bytes(),
                &self.address.to_le_bytes(),
                &self.size.to_le_bytes(),
            ])
        }
    }

    impl Encode for DeviceInfo {
        fn encode(&self) -> Vec<u8> {
            cat(&[
                &self.argsz.to_le_bytes(),
                &self.flags.to_le_bytes(),
                &self.num_regions.to_le_bytes(),
                &self.num_irqs.to_le_bytes(),
            ])
        }
    }

    impl Encode for RegionInfo {
        fn encode(&self) -> Vec<u8> {
            cat(&[
                &self.argsz.to_le_bytes(),
                &self.flags.to_le_bytes(),
                &self.index.to_le_bytes(),
                &self.cap_offset.to_le_bytes(),
                &self.size.to_le_bytes(),
                &self.offset.to_le_bytes(),
            ])
        }
    }

    impl Encode for RegionAccess {
        fn encode(&self) -> Vec<u8> {
            cat(&[
                &self.offset.to_le_bytes(),
                &self.region.to_le_bytes(),
                &self.count.to_le_bytes(),
            ])
        }
    }

    impl Encode for SetIrqs {
        fn encode(&self) -> Vec<u8> {
            cat(&[
                &self.argsz.to_le_bytes(),
                &self.flags.to_le_bytes(),
                &self.index.to_le_bytes(),
                &self.start.to_le_bytes(),
                &self.count.to_le_bytes(),
            ])
        }
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    pub fn header(b: &[u8]) -> Header {
        Header {
            message_id: u16_at(b, 0),
            command: u16_at(b, 2),
            message_size: u32_at(b, 4),
            flags: u32_at(b, 8),
            error: u32_at(b, 12),
        }
    }

    pub fn version(b: &[u8]) -> Version {
        Version {
            major: u16_at(b, 0),
            minor: u16_at(b, 2),
        }
    }

    pub fn device_info(b: &[u8]) -> DeviceInfo {
        DeviceInfo {
            argsz: u32_at(b, 0),
            flags: u32_at(b, 4),
            num_regions: u32_at(b, 8),
            num_irqs: u32_at(b, 12),
        }
    }

    pub fn region_info(b: &[u8]) -> RegionInfo {
        RegionInfo {
            argsz: u32_at(b, 0),
            flags: u32_at(b, 4),
            index: u32_at(b, 8),
            cap_offset: u32_at(b, 12),
            size: u64_at(b, 16),
            offset: u64_at(b, 24),
        }
    }
}
