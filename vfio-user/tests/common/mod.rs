//! Fixtures shared by the protocol tests: a mock [`Backend`] (a small PCI
//! function), a [`Harness`] running sbnet's `Server` on a thread, raw-socket
//! helpers, and spec-table encoders independent of the crate's own layouts.
//!
//! Every server runs on a thread with a stop flag, in its own temporary
//! directory, with socket timeouts, so nothing can hang.
#![allow(dead_code)]

use nix::errno::Errno;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use sbnet_abi::layout::CONFIG_REGION;
use sbnet_pmd::bus::vfio_user::VfioUserBus;
use sbnet_pmd::bus::Bus;
use sbnet_vfio_user::server::{Backend, IrqDesc, RegionDesc, Server, ServerError};
use sbnet_vfio_user::wire::{
    DeviceInfo, DmaMap, DmaMapFlags, DmaUnmap, DmaUnmapFlags, Header, IrqInfoFlags, IrqSetFlags,
    RegionAccess, RegionFlags, RegionInfo, SetIrqs, Version, HEADER_LEN,
};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wire::Encode;

pub const BAR0_SIZE: u64 = 0x4000;
pub const BAR2_SIZE: u64 = 0x1_0000;
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// What the mock backend saw, shared with the test.
#[derive(Default)]
pub struct Stats {
    pub connected: usize,
    pub disconnected: usize,
    pub resets: usize,
    /// (iova, size, file_offset, flags, had_fd)
    pub dma_maps: Vec<(u64, u64, u64, u32, bool)>,
    pub dma_unmaps: Vec<(u64, u64, u32)>,
    /// (index, flags, start, count, number of fds)
    pub set_irqs: Vec<(u32, u32, u32, u32, usize)>,
}

/// A small PCI function: BAR0 (32-bit, 16 KiB, socket access only), BAR2
/// (64-bit prefetchable, 64 KiB, backed by an mmap-able memfd) and a
/// 256-byte config space.
pub struct Mock {
    stats: Arc<Mutex<Stats>>,
    config: [u8; 256],
    bar0: Vec<u8>,
    bar2: Arc<File>,
    bar2_fd: RawFd,
}

impl Mock {
    pub fn new(stats: Arc<Mutex<Stats>>, bar2: Arc<File>) -> Mock {
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

    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// BAR registers keep only the address bits their size allows.
    pub fn bar_mask(reg: usize) -> Option<u32> {
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
        let rw = RegionFlags::READ | RegionFlags::WRITE;
        let mut regions: Vec<RegionDesc> = (0..8)
            .map(|index| RegionDesc {
                index,
                size: 0,
                flags: RegionFlags::empty(),
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
                flags: IrqInfoFlags::EVENTFD,
            },
            IrqDesc {
                index: 2,
                count: 3,
                flags: IrqInfoFlags::EVENTFD,
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
        flags: DmaMapFlags,
        fd: Option<OwnedFd>,
    ) -> Result<(), Errno> {
        self.stats()
            .dma_maps
            .push((iova, size, file_offset, flags.bits(), fd.is_some()));
        // docs/abi.md §7: a DMA_MAP must carry a file descriptor.
        let file = File::from(fd.ok_or(Errno::EINVAL)?);
        // "DMA" into the client's memory: it must see this.
        file.write_all_at(&iova.to_le_bytes(), file_offset)
            .map_err(|_| Errno::EFAULT)
    }

    fn dma_unmap(&mut self, iova: u64, size: u64, flags: DmaUnmapFlags) -> Result<(), Errno> {
        self.stats().dma_unmaps.push((iova, size, flags.bits()));
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: IrqSetFlags,
        start: u32,
        count: u32,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Errno> {
        self.stats()
            .set_irqs
            .push((index, flags.bits(), start, count, fds.len()));
        // Fire every eventfd once, as an interrupt would.
        for fd in fds {
            File::from(fd)
                .write_all(&1u64.to_ne_bytes())
                .map_err(|_| Errno::EIO)?;
        }
        Ok(())
    }

    fn max_dma_maps(&self) -> u32 {
        64
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

/// A fresh, unique temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sbnet-vfu-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A server on a thread, stopped and joined on drop.
pub struct Harness {
    pub dir: PathBuf,
    pub path: PathBuf,
    pub stop: Arc<AtomicBool>,
    pub thread: Option<JoinHandle<Result<(), ServerError>>>,
    pub stats: Arc<Mutex<Stats>>,
    pub bar2: Arc<File>,
}

impl Harness {
    pub fn start(name: &str) -> Harness {
        let dir = temp_dir(name);
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

    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn connect(&self) -> VfioUserBus {
        VfioUserBus::connect_with_timeout(&self.path, TIMEOUT).expect("client connects")
    }

    pub fn raw(&self) -> UnixStream {
        let s = UnixStream::connect(&self.path).expect("raw connect");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(TIMEOUT)).expect("timeout");
        s
    }

    /// A raw connection that has negotiated VERSION 0.0 (the server refuses
    /// every other command before it).
    pub fn raw_versioned(&self) -> UnixStream {
        let mut s = self.raw();
        let body = Version { major: 0, minor: 0 }.encode();
        s.write_all(&message(
            0x7000,
            sbnet_vfio_user::wire::Command::Version,
            0,
            &body,
        ))
        .expect("send VERSION");
        let (header, _) = read_reply(&mut s).expect("VERSION reply");
        assert_eq!(header.error, 0, "VERSION refused");
        s
    }

    /// Waits until the backend has seen `n` disconnects.
    pub fn wait_disconnects(&self, n: usize) {
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
    pub fn stop(&mut self) -> Duration {
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

pub fn message(id: u16, command: impl Into<u16>, flags: u32, body: &[u8]) -> Vec<u8> {
    let header = Header {
        message_id: id,
        command: command.into(),
        message_size: (HEADER_LEN + body.len()) as u32,
        flags,
        error: 0,
    };
    let mut out = header.encode();
    out.extend_from_slice(body);
    out
}

/// Reads one reply; None when the server closed the connection.
pub fn read_reply(stream: &mut UnixStream) -> Option<(Header, Vec<u8>)> {
    let mut raw = [0u8; HEADER_LEN];
    stream.read_exact(&mut raw).ok()?;
    let header = wire::header(&raw);
    let len = (header.message_size as usize).checked_sub(HEADER_LEN)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    Some((header, body))
}

/// The connection is closed: EOF (or reset) rather than a reply.
pub fn assert_closed(stream: &mut UnixStream, case: &str) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{case}: expected a closed connection, got {other:?}"),
    }
}

pub fn vendor_id(bus: &mut VfioUserBus) -> u16 {
    let mut id = [0u8; 2];
    bus.config_read(0, &mut id).expect("config read");
    u16::from_le_bytes(id)
}

/// Little-endian encoders and decoders written from the spec tables, so the
/// tests check the wire layout independently of the crates' own bytemuck
/// views.
pub mod wire {
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
