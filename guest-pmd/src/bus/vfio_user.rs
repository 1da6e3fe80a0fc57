//! vfio-user client bus (host-process mode): the PMD process is its own VMM.
//!
//! [`VfioUserBus::connect`] opens a [`Client`] (sbnet-vfio-user) to a
//! host-pair socket, which negotiates `VERSION`; the bus then reads the device
//! and region infos (keeping the region file descriptors) and programs the
//! BARs and the command register as firmware would. DMA memory is
//! memfd-backed and mapped into the device with `DMA_MAP` carrying the memfd.
//!
//! The protocol checks (reply matching, size bounds, error replies, a broken
//! connection failing fast) are the client's; see `sbnet_vfio_user::client`.

use super::{Bus, BusError, DmaRegion, MappedBar};
use memmap2::{MmapOptions, MmapRaw};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use sbnet_abi::layout::CONFIG_REGION;
use sbnet_abi::pci::{cfg, BAR_MEM64, COMMAND_BUS_MASTER, COMMAND_MEMORY};
use sbnet_vfio_user::client::{Client, ClientError, Region};
use sbnet_vfio_user::wire::{
    page_size, Command, DmaMapFlags, Header, IrqInfo, RegionFlags, RegionInfo, SparseArea,
};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;
use tracing::{debug, warn};

/// How long [`VfioUserBus::connect`] waits for each reply by default. A
/// server serves one client at a time, so a second client waits (and then
/// fails with a clear error) while another one is connected.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// First IOVA [`Bus::dma_alloc`] hands out; allocations follow, page aligned.
pub const DMA_IOVA_BASE: u64 = 0x1_0000_0000;

/// Where 32-bit memory BARs are placed (each aligned to its size).
pub const BAR32_BASE: u64 = 0xC000_0000;

/// Where 64-bit memory BARs are placed (each aligned to its size).
pub const BAR64_BASE: u64 = 0x40_0000_0000;

/// Number of BAR regions (0-5).
const NUM_BARS: usize = 6;

impl From<ClientError> for BusError {
    fn from(e: ClientError) -> BusError {
        match e {
            ClientError::Connect { path, source } => BusError::Connect { path, source },
            ClientError::Transport(why) => BusError::Transport(why),
            ClientError::Refused { what, errno } => BusError::Refused { what, errno },
            ClientError::Unexpected(why) => BusError::Unexpected(why),
        }
    }
}

/// One `dma_alloc` allocation: the memfd and its mapping live as long as the bus.
#[derive(Debug)]
struct DmaAllocation {
    _map: MmapRaw,
    _memfd: OwnedFd,
}

/// A vfio-user connection to one sbnet function. Dropping it unmaps the BARs
/// and DMA memory and closes every descriptor and the socket, so pointers
/// from [`MappedBar`] and [`DmaRegion`] must not outlive it.
#[derive(Debug)]
pub struct VfioUserBus {
    client: Client,
    num_irqs: u32,
    regions: Vec<Region>,
    /// Bus address each BAR was programmed at.
    bar_addr: [Option<u64>; NUM_BARS],
    bar_maps: [Option<MmapRaw>; NUM_BARS],
    dma: Vec<DmaAllocation>,
    next_iova: u64,
}

impl VfioUserBus {
    /// Connects to the vfio-user socket at `path` with [`DEFAULT_TIMEOUT`].
    pub fn connect(path: &Path) -> Result<Self, BusError> {
        Self::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Connects, negotiates the version, reads device and region infos,
    /// checks the device is PCI, and programs BARs and the command register.
    /// `timeout` bounds every wait for a reply.
    pub fn connect_with_timeout(path: &Path, timeout: Duration) -> Result<Self, BusError> {
        let mut client = Client::connect(path, timeout)?;
        let info = client.device_info()?;
        let regions = (0..info.num_regions)
            .map(|index| client.region(index))
            .collect::<Result<Vec<_>, _>>()?;
        let mut bus = VfioUserBus {
            client,
            num_irqs: info.num_irqs,
            regions,
            bar_addr: [None; NUM_BARS],
            bar_maps: Default::default(),
            dma: Vec::new(),
            next_iova: DMA_IOVA_BASE,
        };
        bus.program_bars()?;
        Ok(bus)
    }

    /// Number of regions the device reported.
    pub fn num_regions(&self) -> u32 {
        self.regions.len() as u32
    }

    /// Number of IRQ indices the device reported.
    pub fn num_irqs(&self) -> u32 {
        self.num_irqs
    }

    /// Region `index` as the device described it.
    pub fn region_info(&self, index: u32) -> Option<&RegionInfo> {
        self.regions.get(index as usize).map(|r| &r.info)
    }

    /// The sparse mmap areas of region `index` (empty when none were sent).
    pub fn region_sparse_areas(&self, index: u32) -> &[SparseArea] {
        self.regions
            .get(index as usize)
            .map_or(&[], |r| r.areas.as_slice())
    }

    /// The address BAR `bar` was programmed at (None: not implemented).
    pub fn bar_address(&self, bar: u8) -> Option<u64> {
        self.bar_addr.get(bar as usize).copied().flatten()
    }

    /// Sends one command and returns the reply's header, body and received
    /// descriptors. An error reply becomes [`BusError::Refused`]; a reply
    /// that does not match the request breaks the connection.
    pub fn request(
        &mut self,
        command: Command,
        body: &[u8],
        fds: &[RawFd],
    ) -> Result<(Header, Vec<u8>, Vec<OwnedFd>), BusError> {
        let reply = self.client.request(command, body, fds)?;
        Ok((reply.header, reply.body, reply.fds))
    }

    /// Places every implemented memory BAR and enables memory decoding and
    /// bus mastering, as firmware would.
    fn program_bars(&mut self) -> Result<(), BusError> {
        let mut next32 = BAR32_BASE;
        let mut next64 = BAR64_BASE;
        let mut bar = 0usize;
        while bar < NUM_BARS {
            let size = self.regions.get(bar).map_or(0, |r| r.info.size);
            let this = bar;
            bar += 1;
            if size == 0 {
                continue;
            }
            let reg = (cfg::BAR0 + 4 * this) as u16;
            let low = self.config_read_u32(reg)?;
            if low & 1 != 0 {
                warn!(bar = this, "I/O BAR left unprogrammed");
                continue;
            }
            if !size.is_power_of_two() || size < 16 {
                return Err(BusError::Unexpected(format!(
                    "BAR {this} size {size:#x} is not a power of two of at least 16"
                )));
            }
            let is64 = low & 0b110 == BAR_MEM64;
            let addr = if is64 {
                if this + 1 >= NUM_BARS {
                    return Err(BusError::Unexpected(format!(
                        "64-bit BAR {this} has no upper half"
                    )));
                }
                bar += 1; // The next BAR register is the upper half.
                let addr = next64
                    .checked_next_multiple_of(size)
                    .ok_or_else(|| BusError::Unexpected(format!("BAR {this} too large")))?;
                next64 = addr + size;
                addr
            } else {
                let addr = next32
                    .checked_next_multiple_of(size)
                    .filter(|a| a.checked_add(size).is_some_and(|end| end <= 1 << 32))
                    .ok_or_else(|| {
                        BusError::Unexpected(format!("32-bit BAR {this} does not fit below 4 GiB"))
                    })?;
                next32 = addr + size;
                addr
            };
            let want_low = (addr as u32 & !0xf) | (low & 0xf);
            self.config_write(reg, &want_low.to_le_bytes())?;
            if is64 {
                self.config_write(reg + 4, &((addr >> 32) as u32).to_le_bytes())?;
            }
            let got_low = self.config_read_u32(reg)?;
            let got_high = if is64 {
                self.config_read_u32(reg + 4)?
            } else {
                0
            };
            let got = (u64::from(got_high) << 32) | u64::from(got_low & !0xf);
            if got != addr {
                return Err(BusError::Unexpected(format!(
                    "BAR {this} reads back {got:#x} after programming {addr:#x}"
                )));
            }
            debug!(bar = this, addr, size, is64, "BAR programmed");
            if let Some(slot) = self.bar_addr.get_mut(this) {
                *slot = Some(addr);
            }
        }
        let mut cmd = [0u8; 2];
        self.config_read(cfg::COMMAND as u16, &mut cmd)?;
        let cmd = u16::from_le_bytes(cmd) | COMMAND_MEMORY | COMMAND_BUS_MASTER;
        self.config_write(cfg::COMMAND as u16, &cmd.to_le_bytes())
    }

    fn config_read_u32(&mut self, offset: u16) -> Result<u32, BusError> {
        let mut data = [0u8; 4];
        self.config_read(offset, &mut data)?;
        Ok(u32::from_le_bytes(data))
    }

    fn check_bar(bar: u8) -> Result<u32, BusError> {
        if (bar as usize) < NUM_BARS {
            Ok(u32::from(bar))
        } else {
            Err(BusError::Unexpected(format!("there is no BAR {bar}")))
        }
    }

    /// `DEVICE_GET_IRQ_INFO` for IRQ `index`.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo, BusError> {
        Ok(self.client.irq_info(index)?)
    }

    /// Routes vectors `start..start + fds.len()` of IRQ `index` to the given
    /// eventfds (`DATA_EVENTFD | ACTION_TRIGGER`), in as many messages as
    /// the server's `max_msg_fds` needs.
    pub fn set_irq_eventfds(
        &mut self,
        index: u32,
        start: u32,
        fds: &[RawFd],
    ) -> Result<(), BusError> {
        Ok(self.client.set_irq_eventfds(index, start, fds)?)
    }

    /// Disables every vector of IRQ `index` (`DATA_NONE | ACTION_TRIGGER`,
    /// start 0, count 0).
    pub fn disable_irqs(&mut self, index: u32) -> Result<(), BusError> {
        Ok(self.client.disable_irqs(index)?)
    }
}

impl Bus for VfioUserBus {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) -> Result<(), BusError> {
        Ok(self
            .client
            .region_read(CONFIG_REGION, u64::from(offset), data)?)
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), BusError> {
        Ok(self
            .client
            .region_write(CONFIG_REGION, u64::from(offset), data)?)
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), BusError> {
        let index = Self::check_bar(bar)?;
        Ok(self.client.region_read(index, offset, data)?)
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), BusError> {
        let index = Self::check_bar(bar)?;
        Ok(self.client.region_write(index, offset, data)?)
    }

    fn map_bar(&mut self, bar: u8) -> Result<MappedBar, BusError> {
        let index = Self::check_bar(bar)? as usize;
        let bus_addr = self
            .bar_address(bar)
            .ok_or_else(|| BusError::Unexpected(format!("BAR {bar} is not implemented")))?;
        if let Some(Some(map)) = self.bar_maps.get(index) {
            return Ok(MappedBar {
                ptr: map.as_mut_ptr(),
                bus_addr,
                len: map.len(),
            });
        }
        let region = self
            .regions
            .get(index)
            .ok_or_else(|| BusError::Unexpected(format!("BAR {bar} is not implemented")))?;
        let size = region.info.size;
        let mmap = RegionFlags::from_bits_retain(region.info.flags).contains(RegionFlags::MMAP);
        let fd = match (&region.fd, mmap) {
            (Some(fd), true) => fd.as_raw_fd(),
            _ => {
                return Err(BusError::Map(format!(
                    "BAR {bar} is not mmap-able (no MMAP flag or no descriptor)"
                )))
            }
        };
        if !region.areas.is_empty() && !region.areas.iter().any(|a| a.offset == 0 && a.size >= size)
        {
            return Err(BusError::Map(format!("BAR {bar} is only partly mmap-able")));
        }
        let len = usize::try_from(size)
            .map_err(|_| BusError::Map(format!("BAR {bar} size {size:#x} too large")))?;
        let map = MmapOptions::new()
            .offset(region.info.offset)
            .len(len)
            .map_raw(fd)
            .map_err(|e| BusError::Map(format!("mmap of BAR {bar} failed: {e}")))?;
        let mapped = MappedBar {
            ptr: map.as_mut_ptr(),
            bus_addr,
            len,
        };
        if let Some(slot) = self.bar_maps.get_mut(index) {
            *slot = Some(map);
        }
        Ok(mapped)
    }

    fn dma_alloc(&mut self, len: usize) -> Result<DmaRegion, BusError> {
        let len = len
            .checked_next_multiple_of(usize::try_from(page_size()).unwrap_or(4096))
            .filter(|&l| l > 0)
            .ok_or_else(|| BusError::Map(format!("cannot allocate {len} bytes of DMA memory")))?;
        let size = len as u64;
        let iova = self.next_iova;
        let next = iova
            .checked_add(size)
            .ok_or_else(|| BusError::Map("DMA address space exhausted".into()))?;
        // Sealable, and sealed against resizing before host-pair sees it:
        // host-pair refuses memory whose file could shrink under it.
        let memfd = memfd_create(
            c"sbnet-dma",
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .map_err(|e| BusError::Map(format!("memfd_create: {e}")))?;
        let file_len =
            i64::try_from(len).map_err(|_| BusError::Map(format!("{len} bytes is too large")))?;
        nix::unistd::ftruncate(&memfd, file_len)
            .map_err(|e| BusError::Map(format!("ftruncate of the DMA memfd: {e}")))?;
        nix::fcntl::fcntl(
            memfd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_ADD_SEALS(
                nix::fcntl::SealFlag::F_SEAL_SHRINK
                    | nix::fcntl::SealFlag::F_SEAL_GROW
                    | nix::fcntl::SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(|e| BusError::Map(format!("sealing the DMA memfd: {e}")))?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw(memfd.as_raw_fd())
            .map_err(|e| BusError::Map(format!("mmap of the DMA memfd: {e}")))?;
        self.client.dma_map(
            iova,
            size,
            0,
            DmaMapFlags::READ | DmaMapFlags::WRITE,
            memfd.as_raw_fd(),
        )?;
        self.next_iova = next;
        let region = DmaRegion {
            ptr: map.as_mut_ptr(),
            iova,
            len,
        };
        self.dma.push(DmaAllocation {
            _map: map,
            _memfd: memfd,
        });
        Ok(region)
    }

    fn reset(&mut self) -> Result<(), BusError> {
        self.client.reset()?;
        // A function reset clears the BARs and the command register: put
        // them back where the mappings handed out expect them.
        self.program_bars()
    }
}

impl Drop for VfioUserBus {
    fn drop(&mut self) {
        // Mappings are unmapped and descriptors closed by their owners'
        // drops; shutting the socket first lets the server see the client
        // leave even if a descriptor of it was duplicated elsewhere.
        self.client.shutdown();
        debug!(path = %self.client.path().display(), dma = self.dma.len(), "vfio-user bus closed");
    }
}
