//! Fixtures for sbnet's cross-crate tests.
//!
//! - [`InProcessBus`]: a PMD [`Bus`] wired straight to one side of a
//!   [`Pair`] in the same process. No sockets, no threads: the test decides
//!   when the host switch runs (`pair.lock().poll()`), so interleavings are
//!   deterministic and the ledgers can be compared at any step.
//! - [`SocketPair`]: the real thing in-process: two vfio-user servers and the
//!   switch thread, as `host-pair` runs them, for clients that connect over
//!   the sockets.
//! - [`bin`]: the path of a workspace binary, built on demand.

pub mod raw;

use memmap2::{MmapOptions, MmapRaw};
use sbnet_abi::layout as l;
use sbnet_abi::pci::{self, cfg};
use sbnet_device::pair::{run_switch, Pair, PairConfig, PollMode, Shared, SideHandle};
use sbnet_pmd::bus::{Bus, BusError, DmaRegion, MappedBar};
use sbnet_vfio_user::server::Backend;
use sbnet_vfio_user::server::Server;
use sbnet_vfio_user::wire::DmaMapFlags;
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Where the in-process "firmware" puts the BARs.
pub const BAR0_ADDR: u64 = 0xc000_0000;
/// BAR 1 address.
pub const BAR1_ADDR: u64 = 0xc000_4000;
/// Shared Buffers BAR address.
pub const SHM_ADDR: u64 = 0x40_0000_0000;
/// First DMA address handed out.
pub const DMA_BASE: u64 = 0x1_0000_0000;

/// A [`Bus`] on one side of an in-process [`Pair`].
pub struct InProcessBus {
    handle: SideHandle,
    shm: Option<(MmapRaw, u64)>,
    dma: Vec<MmapRaw>,
    next_iova: u64,
}

fn refused(what: &'static str) -> impl Fn(nix::errno::Errno) -> BusError {
    move |e| BusError::Refused {
        what,
        errno: e as i32,
    }
}

impl InProcessBus {
    /// Side `side` of `shared`, with BARs programmed and memory + bus master on.
    pub fn new(shared: Arc<Shared>, side: usize) -> Self {
        let mut b = Self {
            handle: SideHandle::new(shared, side),
            shm: None,
            dma: Vec::new(),
            next_iova: DMA_BASE,
        };
        let w = |b: &mut Self, off: usize, v: u32| {
            b.config_write(off as u16, &v.to_le_bytes()).unwrap()
        };
        w(&mut b, cfg::BAR0, BAR0_ADDR as u32);
        w(&mut b, cfg::BAR0 + 4, BAR1_ADDR as u32);
        w(&mut b, cfg::BAR0 + 8, SHM_ADDR as u32);
        w(&mut b, cfg::BAR0 + 12, (SHM_ADDR >> 32) as u32);
        let cmd = (pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER) as u32;
        w(&mut b, cfg::COMMAND, cmd);
        b
    }
}

impl Bus for InProcessBus {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) -> Result<(), BusError> {
        self.handle
            .region_read(l::CONFIG_REGION, offset as u64, data)
            .map_err(refused("config read"))
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), BusError> {
        self.handle
            .region_write(l::CONFIG_REGION, offset as u64, data)
            .map_err(refused("config write"))
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), BusError> {
        self.handle
            .region_read(bar as u32, offset, data)
            .map_err(refused("BAR read"))
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), BusError> {
        self.handle
            .region_write(bar as u32, offset, data)
            .map_err(refused("BAR write"))
    }

    fn map_bar(&mut self, bar: u8) -> Result<MappedBar, BusError> {
        if bar != l::SHM_BAR {
            return Err(BusError::Map(format!("BAR {bar} is not mmap-able")));
        }
        if self.shm.is_none() {
            let r = self
                .handle
                .regions()
                .into_iter()
                .find(|r| r.index == bar as u32)
                .ok_or_else(|| BusError::Map("no such region".into()))?;
            let (fd, off) = r
                .mmap
                .ok_or_else(|| BusError::Map("region has no fd".into()))?;
            // SAFETY: the fd belongs to the pair's region, alive as long as the pair (held by the handle).
            let owned = unsafe { BorrowedFd::borrow_raw(fd) }
                .try_clone_to_owned()
                .map_err(|e| BusError::Map(e.to_string()))?;
            let map = MmapOptions::new()
                .offset(off)
                .len(r.size as usize)
                .map_raw(&File::from(owned))
                .map_err(|e| BusError::Map(e.to_string()))?;
            self.shm = Some((map, r.size));
        }
        let (map, len) = self.shm.as_ref().expect("mapped above");
        Ok(MappedBar {
            ptr: map.as_mut_ptr(),
            bus_addr: SHM_ADDR,
            len: *len as usize,
        })
    }

    fn dma_alloc(&mut self, len: usize) -> Result<DmaRegion, BusError> {
        let len = len.div_ceil(4096) * 4096;
        let file = sbnet_device::mem::sealed_memfd(c"sbnet-test-dma", len as u64)
            .map_err(|e| BusError::Map(e.to_string()))?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|e| BusError::Map(e.to_string()))?;
        let iova = self.next_iova;
        self.handle
            .dma_map(
                iova,
                len as u64,
                0,
                DmaMapFlags::READ | DmaMapFlags::WRITE,
                Some(file.into()),
            )
            .map_err(refused("DMA map"))?;
        self.next_iova += len as u64 + 0x10_0000;
        let r = DmaRegion {
            ptr: map.as_mut_ptr(),
            iova,
            len,
        };
        self.dma.push(map);
        Ok(r)
    }

    fn reset(&mut self) -> Result<(), BusError> {
        self.handle.reset();
        Ok(())
    }
}

/// Two vfio-user servers and the switch thread, in-process.
pub struct SocketPair {
    /// Shared state (lock it to read counters or the ledger).
    pub shared: Arc<Shared>,
    /// Socket of side 0 and side 1.
    pub sockets: [PathBuf; 2],
    threads: Vec<JoinHandle<()>>,
}

impl SocketPair {
    /// Starts a pair with sockets in `dir`.
    pub fn start(dir: &Path, cfg: &PairConfig, poll: PollMode) -> Self {
        let shared = Shared::new(Pair::new(cfg).expect("pair")).expect("shared");
        let sockets = [dir.join("side0.sock"), dir.join("side1.sock")];
        let mut threads = Vec::new();
        for (side, path) in sockets.iter().enumerate() {
            let server = Server::bind(path).expect("bind");
            let shared = shared.clone();
            threads.push(std::thread::spawn(move || {
                let mut h = SideHandle::new(shared.clone(), side);
                server.serve(&mut h, &shared.stop).expect("serve");
            }));
        }
        let s2 = shared.clone();
        threads.push(std::thread::spawn(move || run_switch(&s2, poll)));
        Self {
            shared,
            sockets,
            threads,
        }
    }
}

impl Drop for SocketPair {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The pair the socket tests use: 64 slots of 2048 bytes, queues of up to
/// 256 entries, bursts of 64, a 20 ms TX wait.
pub fn test_pair_config() -> PairConfig {
    PairConfig {
        geometry: sbnet_abi::shm::SlotGeometry::new(2048, 64).expect("geometry"),
        max_queue_size: 256,
        switch: sbnet_device::switch::SwitchConfig {
            burst: 64,
            tx_wait: std::time::Duration::from_millis(20),
        },
        huge_pages: false,
        queue_pairs: 1,
    }
}

/// A fresh, unique temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "sbnet-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Path of workspace binary `name`, built with the same profile as the
/// running test if it is missing or stale (`cargo build --bin name`).
pub fn bin(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let release = !cfg!(debug_assertions);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target
        .join(if release { "release" } else { "debug" })
        .join(name);
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--quiet", "--bin", name]);
    if release {
        cmd.arg("--release");
    }
    let st = cmd.status().expect("run cargo build");
    assert!(st.success(), "cargo build --bin {name} failed");
    assert!(path.exists(), "{} missing after the build", path.display());
    path
}
