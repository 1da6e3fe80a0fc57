//! Kernel-VFIO bus (VM mode): the PMD drives the sbnet function from inside
//! a guest through Linux's `vfio-pci` driver and a type-1 IOMMU container.
//!
//! [`VfioBus::open`] binds the function to `vfio-pci` through sysfs
//! (`driver_override`, unbind from its current driver — usually
//! `virtio-pci` —, `drivers_probe`), opens its IOMMU group in a new VFIO
//! container (`VFIO_TYPE1v2_IOMMU`) and the device, all with the
//! [`pci_driver`] crate. Then:
//!
//! - config space is the VFIO config region (`pread`/`pwrite` on the device
//!   file); `vfio-pci` virtualises the BAR registers but reports the address
//!   each BAR is assigned at, which is the bus address descriptors use for
//!   the Shared Buffers window;
//! - BAR registers are accessed with `pread`/`pwrite` on the BAR regions,
//!   split into naturally aligned 1/2/4-byte accesses (so a 64-bit access is
//!   two 32-bit ones, low half first, as virtio 1.2 §4.1.3.1 allows);
//! - [`Bus::map_bar`] `mmap`s a BAR region; for the Shared Buffers BAR (2)
//!   this reaches the host's region directly, because QEMU maps the
//!   vfio-user region's file descriptor into guest physical memory;
//! - [`Bus::dma_alloc`] takes anonymous memory (2 MiB huge pages by default,
//!   see [`DmaPages`]) and maps it with `VFIO_IOMMU_MAP_DMA` at IOVAs this
//!   bus chooses;
//! - [`Bus::reset`] is `VFIO_DEVICE_RESET` (refused when the function has no
//!   reset method the guest kernel can use);
//! - MSI-X is enabled with one vector routed to an eventfd the bus owns
//!   (see below); the PMD polls and never waits for it.
//!
//! # Why MSI-X is enabled although the PMD polls
//!
//! With MSI-X off, a virtio function signals configuration changes (every
//! pairing-epoch change) on INTx. QEMU's VFIO code disables a device's BAR
//! mmaps while an INTx is pending, so that it can spot the guest's
//! end-of-interrupt, and re-enables them from a timer. `vfio-pci` has that
//! timer (`x-intx-mmap-timeout-ms`, 1100 ms); QEMU 11.1's `vfio-user-pci`
//! does not, so after the first INTx the Shared Buffers BAR stays unmapped
//! for good and every PMD access to a slot becomes a vfio-user
//! `REGION_READ`/`REGION_WRITE` message (about 100 packets/s under TCG
//! instead of tens of thousands). Enabling MSI-X makes QEMU turn INTx off and map
//! the BARs again, and a virtio device with MSI-X on and no vector assigned
//! (the PMD leaves `config_msix_vector` and the queue vectors at
//! `NO_VECTOR`) sends no interrupt at all. [`VfioOptions::msix`] turns this
//! off.
//!
//! # The guest needs an IOMMU
//!
//! Debian kernels have no VFIO no-IOMMU mode. Under QEMU: `-device
//! intel-iommu,caching-mode=on` (caching mode makes the guest report every
//! new mapping, which QEMU forwards to the device as vfio-user `DMA_MAP`s)
//! and `intel_iommu=on` on the guest kernel command line. Without an IOMMU
//! the function has no `iommu_group` and [`VfioBus::open`] says so.
//!
//! # Why huge pages
//!
//! Behind a virtual IOMMU, QEMU sends the device one `DMA_MAP` per IOMMU
//! page-table leaf. With 4 KiB pages every page of a ring or buffer pool is
//! a separate map, and sbnet's device model wants each ring and each buffer
//! inside one map (and holds at most 1024 maps per client). A 2 MiB huge
//! page that is mapped at a 2 MiB-aligned IOVA becomes one 2 MiB IOMMU
//! superpage and one `DMA_MAP`. [`Bus::dma_alloc`] therefore carves
//! allocations of up to 2 MiB out of huge pages so that none straddles a
//! 2 MiB boundary, and gives larger allocations whole huge pages (an object
//! inside such an allocation must then not straddle a 2 MiB boundary
//! either; the PMD's classic buffers are powers of two and never do). The
//! guest must have huge pages reserved (`vm.nr_hugepages`): a port takes 2
//! (3 with `PortConfig::classic_only`, whose classic pool is twice as large).

use super::{Bus, BusError, DmaRegion, MappedBar};
use memmap2::{MmapMut, MmapOptions};
use nix::sys::eventfd::{EfdFlags, EventFd};
use pci_driver::backends::vfio::VfioPciDevice;
use pci_driver::device::PciDevice;
use pci_driver::regions::{MappedOwningPciRegion, OwningPciRegion, PciRegion, Permissions};
use sbnet_abi::pci::{cfg, BAR_MEM64, DEVICE_ID_NET as DEVICE_ID, VENDOR_ID};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// sysfs directory of PCI functions.
const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";
/// sysfs directory of the `vfio-pci` driver (present once the module is loaded).
const SYSFS_VFIO_PCI_DRIVER: &str = "/sys/bus/pci/drivers/vfio-pci";
/// sysfs file that asks the PCI core to probe a function again.
const SYSFS_DRIVERS_PROBE: &str = "/sys/bus/pci/drivers_probe";

/// Size of a huge page used for DMA memory.
pub const HUGE_PAGE: usize = 2 << 20;
/// First IOVA [`Bus::dma_alloc`] tries (moved up past anything the IOMMU
/// reserves or a BAR of the function occupies).
pub const DEFAULT_IOVA_BASE: u64 = 0x1000_0000;

/// Number of BARs.
const NUM_BARS: usize = 6;
/// Small pages.
const PAGE: usize = 4096;

/// What backs DMA memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaPages {
    /// 2 MiB huge pages (`MAP_HUGETLB`), mapped at 2 MiB-aligned IOVAs: one
    /// IOMMU superpage and one device-side DMA map per huge page. Needs
    /// reserved huge pages in the guest (`echo 16 >
    /// /proc/sys/vm/nr_hugepages`). The default, and what sbnet's device
    /// model needs behind a virtual IOMMU.
    Huge2M,
    /// Ordinary 4 KiB anonymous pages. Behind a virtual IOMMU each page
    /// reaches the device as a separate DMA map, so rings and buffers
    /// larger than a page span several maps; host-pair accepts that (maps
    /// contiguous in IOVA) and the VM test `run-pmd-pair.sh pmd-small`
    /// runs zero-copy this way (`sbnet-testpmd --small-pages`).
    Small,
}

/// Options for [`VfioBus::open_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioOptions {
    /// Bind the function to `vfio-pci` through sysfs when it is bound to
    /// another driver (or to none). Default true. When false, the function
    /// must already be bound to `vfio-pci`.
    pub bind: bool,
    /// What backs DMA memory. Default [`DmaPages::Huge2M`].
    pub dma_pages: DmaPages,
    /// First IOVA to hand out. Default [`DEFAULT_IOVA_BASE`].
    pub iova_base: u64,
    /// How long to wait for `vfio-pci` to take the function after
    /// `drivers_probe` (udev-less guests create `/dev/vfio/N` at once).
    /// Default 2 s.
    pub bind_timeout: Duration,
    /// Enable MSI-X (one vector, to an eventfd nobody waits on) so the
    /// function never uses INTx; see the module documentation. Default true.
    pub msix: bool,
}

impl Default for VfioOptions {
    fn default() -> Self {
        Self {
            bind: true,
            dma_pages: DmaPages::Huge2M,
            iova_base: DEFAULT_IOVA_BASE,
            bind_timeout: Duration::from_secs(2),
            msix: true,
        }
    }
}

/// One piece of DMA memory: an anonymous mapping, mapped in the IOMMU at
/// `iova` for its whole length.
#[derive(Debug)]
struct DmaChunk {
    map: MmapMut,
    /// Start of the chunk in the process.
    ptr: *mut u8,
    iova: u64,
    len: usize,
    /// Bytes handed out from the start of the chunk.
    used: usize,
}

// SAFETY: `ptr` points into `map`, which the chunk owns; it is only a cached
// `map.as_mut_ptr()` and moves with the mapping, which is itself Send.
unsafe impl Send for DmaChunk {}

/// A function driven through kernel VFIO. Dropping it unmaps DMA memory
/// from the IOMMU, unmaps the BARs and closes the device, group and
/// container, so pointers from [`MappedBar`] and [`DmaRegion`] must not
/// outlive it. The function stays bound to `vfio-pci`.
#[derive(Debug)]
pub struct VfioBus {
    // Field order is drop order: BAR mappings and regions, then the device
    // (which owns the container). DMA memory is unmapped in `Drop`.
    bar_maps: [Option<MappedOwningPciRegion>; NUM_BARS],
    bars: [Option<OwningPciRegion>; NUM_BARS],
    device: VfioPciDevice,
    bdf: String,
    group: u32,
    opts: VfioOptions,
    dma: Vec<DmaChunk>,
    next_iova: u64,
    iova_ranges: Vec<Range<u64>>,
    iova_alignment: usize,
    /// IOVA ranges never handed out: the function's own BARs.
    avoid: Vec<Range<u64>>,
    /// The eventfd MSI-X vector 0 signals (when [`VfioOptions::msix`]).
    msix_eventfd: Option<EventFd>,
}

fn io_err(what: &str, e: io::Error) -> BusError {
    BusError::Transport(format!("{what}: {e}"))
}

/// Normalises `0000:00:03.0` / `00:03.0` to the full sysfs name.
pub fn normalize_bdf(bdf: &str) -> Result<String, BusError> {
    let full = if bdf.matches(':').count() == 1 {
        format!("0000:{bdf}")
    } else {
        bdf.to_string()
    };
    let ok = full.len() == 12
        && full.as_bytes()[4] == b':'
        && full.as_bytes()[7] == b':'
        && full.as_bytes()[10] == b'.'
        && full
            .bytes()
            .enumerate()
            .all(|(i, b)| matches!(i, 4 | 7 | 10) || b.is_ascii_hexdigit());
    if ok {
        Ok(full.to_ascii_lowercase())
    } else {
        Err(BusError::Unexpected(format!(
            "'{bdf}' is not a PCI address (DDDD:BB:DD.F or BB:DD.F)"
        )))
    }
}

fn read_sysfs(path: &Path) -> Result<String, BusError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| BusError::Connect {
            path: path.display().to_string(),
            source,
        })
}

fn write_sysfs(path: &Path, value: &str) -> Result<(), BusError> {
    std::fs::write(path, value).map_err(|source| BusError::Connect {
        path: path.display().to_string(),
        source,
    })
}

fn parse_hex_id(s: &str) -> Option<u16> {
    u16::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// The driver a function is bound to, if any.
fn bound_driver(dev: &Path) -> Option<String> {
    std::fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// The PCI functions with the sbnet IDs (`1af4:1041`, modern virtio-net),
/// sorted by address. A stock virtio-net function has the same IDs: check
/// that the one you pick is an sbnet function (the PMD does, through its
/// shared-memory capability).
pub fn find_functions() -> Vec<String> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir(SYSFS_PCI_DEVICES) else {
        return found;
    };
    for entry in dir.flatten() {
        let p = entry.path();
        let id = |f: &str| read_sysfs(&p.join(f)).ok().and_then(|s| parse_hex_id(&s));
        if id("vendor") == Some(VENDOR_ID) && id("device") == Some(DEVICE_ID) {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found.sort();
    found
}

/// Binds function `bdf` to `vfio-pci` through sysfs (what `driverctl` or
/// `dpdk-devbind.py` do): sets `driver_override`, unbinds the function from
/// its current driver, asks the PCI core to probe it again, and waits for
/// `vfio-pci` to hold it. Returns the IOMMU group number. Nothing is done
/// when the function is bound to `vfio-pci` already.
pub fn bind_to_vfio_pci(bdf: &str, timeout: Duration) -> Result<u32, BusError> {
    let bdf = normalize_bdf(bdf)?;
    let dev = Path::new(SYSFS_PCI_DEVICES).join(&bdf);
    if !dev.exists() {
        return Err(BusError::Unexpected(format!(
            "there is no PCI function {bdf} (no {})",
            dev.display()
        )));
    }
    let vendor = parse_hex_id(&read_sysfs(&dev.join("vendor"))?);
    let device = parse_hex_id(&read_sysfs(&dev.join("device"))?);
    if vendor != Some(VENDOR_ID) || device != Some(DEVICE_ID) {
        return Err(BusError::Unexpected(format!(
            "PCI function {bdf} is {:04x}:{:04x}, not an sbnet function ({VENDOR_ID:04x}:{DEVICE_ID:04x})",
            vendor.unwrap_or(0),
            device.unwrap_or(0)
        )));
    }
    let group = iommu_group(&dev)?;
    let current = bound_driver(&dev);
    if current.as_deref() == Some("vfio-pci") {
        return Ok(group);
    }
    if !Path::new(SYSFS_VFIO_PCI_DRIVER).exists() {
        return Err(BusError::Unexpected(
            "the vfio-pci driver is not loaded (modprobe vfio-pci)".into(),
        ));
    }
    write_sysfs(&dev.join("driver_override"), "vfio-pci")?;
    if let Some(drv) = &current {
        debug!(%bdf, driver = %drv, "unbinding");
        write_sysfs(&dev.join("driver").join("unbind"), &bdf)?;
    }
    // drivers_probe fails (ENODEV...) when no driver takes the function;
    // the wait below reports that with more context.
    if let Err(e) = write_sysfs(Path::new(SYSFS_DRIVERS_PROBE), &bdf) {
        warn!(%bdf, error = %e, "drivers_probe");
    }
    let end = Instant::now() + timeout;
    loop {
        let now = bound_driver(&dev);
        if now.as_deref() == Some("vfio-pci") && Path::new(&format!("/dev/vfio/{group}")).exists() {
            debug!(%bdf, group, previous = ?current, "bound to vfio-pci");
            return Ok(group);
        }
        if Instant::now() >= end {
            return Err(BusError::Unexpected(format!(
                "PCI function {bdf} is bound to {} instead of vfio-pci after drivers_probe (was {}); see dmesg",
                now.as_deref().unwrap_or("no driver"),
                current.as_deref().unwrap_or("unbound")
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The IOMMU group of the function at sysfs path `dev`.
fn iommu_group(dev: &Path) -> Result<u32, BusError> {
    let link = std::fs::read_link(dev.join("iommu_group")).map_err(|_| {
        BusError::Unexpected(format!(
            "{} has no IOMMU group: the guest has no (enabled) IOMMU. VFIO needs one: \
             QEMU `-device intel-iommu,caching-mode=on` and `intel_iommu=on` on the guest kernel command line",
            dev.display()
        ))
    })?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| BusError::Unexpected(format!("odd iommu_group link {}", link.display())))
}

impl VfioBus {
    /// Opens function `bdf` (e.g. `0000:00:03.0`) with default
    /// [`VfioOptions`]: binds it to `vfio-pci` if needed, 2 MiB DMA pages.
    pub fn open(bdf: &str) -> Result<Self, BusError> {
        Self::open_with(bdf, VfioOptions::default())
    }

    /// Opens function `bdf` with `opts`.
    pub fn open_with(bdf: &str, opts: VfioOptions) -> Result<Self, BusError> {
        let bdf = normalize_bdf(bdf)?;
        let dev = PathBuf::from(SYSFS_PCI_DEVICES).join(&bdf);
        let group = if opts.bind {
            bind_to_vfio_pci(&bdf, opts.bind_timeout)?
        } else {
            let g = iommu_group(&dev)?;
            match bound_driver(&dev) {
                Some(d) if d == "vfio-pci" => g,
                other => {
                    return Err(BusError::Unexpected(format!(
                        "PCI function {bdf} is bound to {}, not vfio-pci",
                        other.as_deref().unwrap_or("no driver")
                    )))
                }
            }
        };
        let device = VfioPciDevice::open(&dev).map_err(|source| BusError::Connect {
            path: format!("/dev/vfio/{group} ({bdf})"),
            source: io::Error::new(
                source.kind(),
                format!(
                    "{source} (is every function of IOMMU group {group} bound to vfio-pci, \
                     and the group not open elsewhere?)"
                ),
            ),
        })?;
        let iommu = device.iommu();
        let iova_ranges = iommu.valid_iova_ranges().to_vec();
        let iova_alignment = iommu.alignment().max(PAGE);
        let bars: [Option<OwningPciRegion>; NUM_BARS] = std::array::from_fn(|i| device.bar(i));
        let mut bus = VfioBus {
            bar_maps: Default::default(),
            bars,
            device,
            bdf,
            group,
            next_iova: opts.iova_base,
            opts,
            dma: Vec::new(),
            iova_ranges,
            iova_alignment,
            avoid: Vec::new(),
            msix_eventfd: None,
        };
        if bus.opts.msix {
            bus.enable_msix()?;
        }
        for bar in 0..NUM_BARS as u8 {
            if let (Some(addr), Some(region)) = (
                bus.bar_address(bar).ok().flatten(),
                bus.bars[bar as usize].as_ref(),
            ) {
                bus.avoid.push(addr..addr.saturating_add(region.len()));
            }
        }
        debug!(
            bdf = %bus.bdf,
            group,
            ranges = ?bus.iova_ranges,
            alignment = bus.iova_alignment,
            bars = ?bus.avoid,
            "VFIO device open"
        );
        Ok(bus)
    }

    /// Enables MSI-X with vector 0 routed to a fresh eventfd (see the
    /// module documentation: this keeps the function, and QEMU, off INTx).
    fn enable_msix(&mut self) -> Result<(), BusError> {
        let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| BusError::Transport(format!("eventfd: {e}")))?;
        let interrupts = self.device.interrupts();
        let msix = interrupts.msi_x();
        if msix.max() == 0 {
            warn!(bdf = %self.bdf, "the function has no MSI-X vector: it may use INTx");
            return Ok(());
        }
        msix.enable(&[efd.as_raw_fd()]).map_err(|e| {
            BusError::Transport(format!("VFIO_DEVICE_SET_IRQS (enable MSI-X): {e}"))
        })?;
        self.msix_eventfd = Some(efd);
        Ok(())
    }

    /// Interrupts the function signalled on MSI-X vector 0 since the last
    /// call (0 when MSI-X was not enabled). The PMD polls; a non-zero count
    /// only means the device model raised a vector the PMD did not assign.
    pub fn take_interrupts(&mut self) -> u64 {
        self.msix_eventfd
            .as_ref()
            .and_then(|e| e.read().ok())
            .unwrap_or(0)
    }

    /// The function's PCI address (`DDDD:BB:DD.F`).
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The function's IOMMU group.
    pub fn iommu_group(&self) -> u32 {
        self.group
    }

    /// The IOVA ranges the IOMMU accepts (as VFIO reports them).
    pub fn iova_ranges(&self) -> &[Range<u64>] {
        &self.iova_ranges
    }

    /// Bytes of DMA memory mapped in the IOMMU.
    pub fn dma_bytes(&self) -> usize {
        self.dma.iter().map(|c| c.len).sum()
    }

    /// The bus address BAR `bar` is assigned at, from config space (`None`:
    /// not a memory BAR, or unassigned). For a 64-bit BAR give the lower
    /// index.
    pub fn bar_address(&self, bar: u8) -> Result<Option<u64>, BusError> {
        if bar as usize >= NUM_BARS {
            return Err(BusError::Unexpected(format!("there is no BAR {bar}")));
        }
        let reg = cfg::BAR0 as u16 + 4 * u16::from(bar);
        let low = self.config_read_u32(reg)?;
        if low & 1 != 0 {
            return Ok(None); // I/O BAR
        }
        let mut addr = u64::from(low & !0xf);
        if low & 0b110 == BAR_MEM64 {
            if bar as usize + 1 >= NUM_BARS {
                return Err(BusError::Unexpected(format!(
                    "64-bit BAR {bar} has no upper half"
                )));
            }
            addr |= u64::from(self.config_read_u32(reg + 4)?) << 32;
        }
        Ok((addr != 0).then_some(addr))
    }

    fn config_read_u32(&self, offset: u16) -> Result<u32, BusError> {
        self.device
            .config()
            .read_le_u32(u64::from(offset))
            .map_err(|e| io_err("config space read", e))
    }

    fn bar_region(&self, bar: u8) -> Result<&OwningPciRegion, BusError> {
        self.bars
            .get(bar as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| BusError::Unexpected(format!("BAR {bar} is not implemented")))
    }

    /// Picks `len` bytes of IOVA space aligned to `align`, inside a range
    /// the IOMMU accepts and clear of the function's BARs.
    fn pick_iova(&mut self, len: usize, align: usize) -> Result<u64, BusError> {
        let size = len as u64;
        let align = align.max(self.iova_alignment) as u64;
        let mut at = self.next_iova;
        // Each pass either succeeds or moves `at` forward past an obstacle.
        for _ in 0..64 {
            at = at
                .checked_next_multiple_of(align)
                .ok_or_else(|| BusError::Map("IOVA space exhausted".into()))?;
            let end = at
                .checked_add(size)
                .ok_or_else(|| BusError::Map("IOVA space exhausted".into()))?;
            if let Some(b) = self.avoid.iter().find(|b| at < b.end && b.start < end) {
                at = b.end;
                continue;
            }
            match self
                .iova_ranges
                .iter()
                .find(|r| at < r.end && end > r.start)
            {
                Some(r) if at >= r.start && end <= r.end => {
                    self.next_iova = end;
                    return Ok(at);
                }
                Some(r) if at < r.start => at = r.start,
                Some(r) => {
                    // Runs past the end of this range: the next one.
                    at = self
                        .iova_ranges
                        .iter()
                        .map(|n| n.start)
                        .filter(|&s| s >= r.end)
                        .min()
                        .ok_or_else(|| BusError::Map("IOVA space exhausted".into()))?;
                }
                None => {
                    // In a hole between ranges (or past the last one).
                    at = self
                        .iova_ranges
                        .iter()
                        .map(|n| n.start)
                        .filter(|&s| s > at)
                        .min()
                        .ok_or_else(|| BusError::Map("IOVA space exhausted".into()))?;
                }
            }
        }
        Err(BusError::Map("no free IOVA range found".into()))
    }

    /// Maps a fresh chunk of at least `len` bytes in the process and the IOMMU.
    fn new_chunk(&mut self, len: usize) -> Result<usize, BusError> {
        let (unit, huge) = match self.opts.dma_pages {
            DmaPages::Huge2M => (HUGE_PAGE, Some(21u8)),
            DmaPages::Small => (PAGE, None),
        };
        let len = len
            .checked_next_multiple_of(unit)
            .filter(|&l| l > 0)
            .ok_or_else(|| BusError::Map(format!("cannot allocate {len} bytes of DMA memory")))?;
        let mut opts = MmapOptions::new();
        opts.len(len).populate();
        if let Some(bits) = huge {
            opts.huge(Some(bits));
        }
        let mut map = opts.map_anon().map_err(|e| {
            BusError::Map(if huge.is_some() {
                format!(
                    "cannot allocate {len} bytes of DMA memory in 2 MiB huge pages: {e} \
                     (reserve huge pages: echo 16 > /proc/sys/vm/nr_hugepages)"
                )
            } else {
                format!("cannot allocate {len} bytes of DMA memory: {e}")
            })
        })?;
        let ptr = map.as_mut_ptr();
        let iova = self.pick_iova(len, unit)?;
        // SAFETY: `ptr..ptr + len` is the anonymous mapping `map`, which the
        // chunk pushed below keeps alive until `Drop` unmaps the IOVA range
        // from the IOMMU first; the device may read and write it (that is
        // what DMA memory is for) and the PMD only reaches it through the
        // DmaRegion contract.
        unsafe {
            self.device
                .iommu()
                .map(iova, len, ptr, Permissions::ReadWrite)
        }
        .map_err(|e| {
            BusError::Map(format!(
                "VFIO_IOMMU_MAP_DMA of {len} bytes at IOVA {iova:#x}: {e}"
            ))
        })?;
        debug!(iova, len, huge = huge.is_some(), "DMA chunk mapped");
        self.dma.push(DmaChunk {
            map,
            ptr,
            iova,
            len,
            used: 0,
        });
        Ok(self.dma.len() - 1)
    }
}

impl Bus for VfioBus {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) -> Result<(), BusError> {
        self.device
            .config()
            .read_bytes(u64::from(offset), data)
            .map_err(|e| io_err("config space read", e))
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), BusError> {
        let config = self.device.config();
        split_write(u64::from(offset), data, |at, piece| match piece.len() {
            4 => config.write_le_u32(
                at,
                u32::from_le_bytes([piece[0], piece[1], piece[2], piece[3]]),
            ),
            2 => config.write_le_u16(at, u16::from_le_bytes([piece[0], piece[1]])),
            _ => config.write_u8(at, piece[0]),
        })
        .map_err(|e| io_err("config space write", e))
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), BusError> {
        let region = self.bar_region(bar)?;
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let n = piece_len(at, data.len() - done);
            region
                .read_bytes(at, &mut data[done..done + n])
                .map_err(|e| io_err("BAR read", e))?;
            done += n;
        }
        Ok(())
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), BusError> {
        let region = self.bar_region(bar)?;
        split_write(offset, data, |at, piece| match piece.len() {
            4 => region.write_le_u32(
                at,
                u32::from_le_bytes([piece[0], piece[1], piece[2], piece[3]]),
            ),
            2 => region.write_le_u16(at, u16::from_le_bytes([piece[0], piece[1]])),
            _ => region.write_u8(at, piece[0]),
        })
        .map_err(|e| io_err("BAR write", e))
    }

    fn map_bar(&mut self, bar: u8) -> Result<MappedBar, BusError> {
        let bus_addr = self.bar_address(bar)?.ok_or_else(|| {
            BusError::Unexpected(format!("BAR {bar} is not an assigned memory BAR"))
        })?;
        if let Some(Some(m)) = self.bar_maps.get(bar as usize) {
            return Ok(MappedBar {
                ptr: m.as_mut_ptr(),
                bus_addr,
                len: m.len(),
            });
        }
        let region = self.bar_region(bar)?;
        if !region.is_mappable() {
            return Err(BusError::Map(format!(
                "BAR {bar} of {} is not mmap-able through VFIO (the VMM must offer it as an mmap-able region)",
                self.bdf
            )));
        }
        let map = region
            .map(.., Permissions::ReadWrite)
            .map_err(|e| BusError::Map(format!("mmap of BAR {bar}: {e}")))?;
        let mapped = MappedBar {
            ptr: map.as_mut_ptr(),
            bus_addr,
            len: map.len(),
        };
        debug!(bar, bus_addr, len = mapped.len, "BAR mapped");
        self.bar_maps[bar as usize] = Some(map);
        Ok(mapped)
    }

    fn dma_alloc(&mut self, len: usize) -> Result<DmaRegion, BusError> {
        let len = len
            .checked_next_multiple_of(PAGE)
            .filter(|&l| l > 0)
            .ok_or_else(|| BusError::Map(format!("cannot allocate {len} bytes of DMA memory")))?;
        // Carve from the last chunk when the allocation fits in what is
        // left of it (so it never straddles a huge-page boundary: chunks of
        // one huge page only are carved); otherwise a fresh chunk.
        let carve = self.opts.dma_pages == DmaPages::Huge2M && len <= HUGE_PAGE;
        let index = match self.dma.last() {
            Some(c) if carve && c.len == HUGE_PAGE && c.len - c.used >= len => self.dma.len() - 1,
            _ => self.new_chunk(len)?,
        };
        let chunk = &mut self.dma[index];
        let at = chunk.used;
        chunk.used += len;
        Ok(DmaRegion {
            // `at + len <= chunk.len`, so this stays inside the mapping.
            ptr: chunk.ptr.wrapping_add(at),
            iova: chunk.iova + at as u64,
            len,
        })
    }

    fn reset(&mut self) -> Result<(), BusError> {
        self.device.reset().map_err(|e| BusError::Refused {
            what: "VFIO_DEVICE_RESET",
            errno: e.raw_os_error().unwrap_or(0),
        })
    }
}

/// Largest naturally aligned access (4, 2 or 1 bytes) at `at` within `left`.
fn piece_len(at: u64, left: usize) -> usize {
    if left >= 4 && at.is_multiple_of(4) {
        4
    } else if left >= 2 && at.is_multiple_of(2) {
        2
    } else {
        1
    }
}

/// Calls `f(offset, piece)` for naturally aligned pieces of `data`, in order.
fn split_write(
    offset: u64,
    data: &[u8],
    mut f: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < data.len() {
        let at = offset + done as u64;
        let n = piece_len(at, data.len() - done);
        f(at, &data[done..done + n])?;
        done += n;
    }
    Ok(())
}

impl Drop for VfioBus {
    fn drop(&mut self) {
        if self.msix_eventfd.is_some() {
            if let Err(e) = self.device.interrupts().msi_x().disable() {
                debug!(error = %e, "disabling MSI-X");
            }
        }
        // Take DMA memory away from the device before the process loses it.
        for c in self.dma.drain(..) {
            if let Err(e) = self.device.iommu().unmap(c.iova, c.len) {
                warn!(iova = c.iova, len = c.len, error = %e, "VFIO_IOMMU_UNMAP_DMA failed");
            }
            drop(c.map);
        }
        debug!(bdf = %self.bdf, "VFIO bus closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_forms() {
        assert_eq!(normalize_bdf("00:03.0").unwrap(), "0000:00:03.0");
        assert_eq!(normalize_bdf("0000:0A:1f.7").unwrap(), "0000:0a:1f.7");
        assert!(normalize_bdf("0000:00:03").is_err());
        assert!(normalize_bdf("../../x").is_err());
        assert!(normalize_bdf("0000:00:03.0/..").is_err());
    }

    #[test]
    fn access_split() {
        let mut seen = Vec::new();
        split_write(0x2002, &[0u8; 11], |at, p| {
            seen.push((at, p.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(0x2002, 2), (0x2004, 4), (0x2008, 4), (0x200c, 1)]
        );
        assert_eq!(piece_len(0x10, 8), 4);
        assert_eq!(piece_len(0x11, 8), 1);
    }
}
