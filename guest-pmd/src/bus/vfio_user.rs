//! vfio-user client bus (host-process mode): the PMD process is its own VMM.
//!
//! [`VfioUserBus::connect`] speaks the vfio-user protocol (QEMU's
//! `docs/interop/vfio-user.rst`, sbnet's `docs/abi.md` §7) to a host-pair
//! socket: it negotiates `VERSION`, reads the device and region infos
//! (keeping the region file descriptors), then programs the BARs and the
//! command register as firmware would. DMA memory is memfd-backed and mapped
//! into the device with `DMA_MAP` carrying the memfd.
//!
//! The server is not trusted either: every reply's id, command, type and
//! size is checked before use, sizes are bounded by [`MAX_MESSAGE`], and an
//! error reply becomes [`BusError::Refused`]. After a transport failure
//! (timeout, short read, a reply that does not match) the connection cannot
//! be resynchronised, so every later request fails fast.

use super::{Bus, BusError, DmaRegion, MappedBar};
use bytemuck::{bytes_of, pod_read_unaligned, Pod};
use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use sbnet_abi::layout::CONFIG_REGION;
use sbnet_abi::vfio_user::{
    CapHeader, DeviceInfo, DmaMap, Header, IrqInfo, RegionAccess, RegionInfo, SetIrqs, SparseArea,
    SparseMmap, Version, CMD_DEVICE_GET_INFO, CMD_DEVICE_GET_IRQ_INFO, CMD_DEVICE_GET_REGION_INFO,
    CMD_DEVICE_GET_REGION_IO_FDS, CMD_DEVICE_RESET, CMD_DEVICE_SET_IRQS, CMD_DMA_MAP, CMD_DMA_READ,
    CMD_DMA_UNMAP, CMD_DMA_WRITE, CMD_REGION_READ, CMD_REGION_WRITE, CMD_VERSION, DEVICE_FLAG_PCI,
    DMA_FLAG_READ, DMA_FLAG_WRITE, FLAG_ERROR, FLAG_TYPE_COMMAND, FLAG_TYPE_MASK, FLAG_TYPE_REPLY,
    HEADER_LEN, IRQ_SET_ACTION_TRIGGER, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE, MAX_FDS,
    MAX_MESSAGE, REGION_CAP_SPARSE_MMAP, REGION_FLAG_CAPS, REGION_FLAG_MMAP, REGION_INFO_LEN,
    VERSION_MAJOR, VERSION_MINOR,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
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

/// Config-space offset of the PCI command register.
const PCI_COMMAND: u16 = 0x04;
/// Command register: memory space enable.
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable.
const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// Config-space offset of BAR0.
const PCI_BAR0: u16 = 0x10;
/// Number of BAR regions (0-5).
const NUM_BARS: usize = 6;
/// Most regions / IRQ indices a server may report (defends against a server
/// that makes the client loop or allocate without bound).
const MAX_REGIONS: u32 = 64;
/// See [`MAX_REGIONS`].
const MAX_IRQS: u32 = 64;
/// The kernel's `SCM_MAX_FD`: the control buffer holds every descriptor one
/// `recvmsg` can return, so none is lost behind `MSG_CTRUNC`.
const SCM_MAX_FD: usize = 253;
/// Largest region-access `count` that keeps a message within [`MAX_MESSAGE`].
const MAX_XFER_FOR_MESSAGE: u32 = MAX_MESSAGE - (HEADER_LEN + size_of::<RegionAccess>()) as u32;

/// One region as the server described it.
#[derive(Debug)]
struct ClientRegion {
    info: RegionInfo,
    /// The descriptor sent with the region info (mmap-able regions).
    fd: Option<OwnedFd>,
    /// Sparse mmap areas, when the server sent that capability.
    areas: Vec<SparseArea>,
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
    stream: UnixStream,
    path: PathBuf,
    timeout: Duration,
    next_id: u16,
    /// Why the connection cannot be used any more.
    broken: Option<String>,
    /// Most descriptors the server accepts in one message (`max_msg_fds`).
    server_max_fds: usize,
    /// Largest region-access `count` (`max_data_xfer_size`, bounded).
    max_xfer: u32,
    num_irqs: u32,
    regions: Vec<ClientRegion>,
    /// Bus address each BAR was programmed at.
    bar_addr: [Option<u64>; NUM_BARS],
    bar_maps: [Option<MmapRaw>; NUM_BARS],
    dma: Vec<DmaAllocation>,
    next_iova: u64,
}

/// Name of a command, for errors and logs.
fn command_name(command: u16) -> &'static str {
    match command {
        CMD_VERSION => "VERSION",
        CMD_DMA_MAP => "DMA_MAP",
        CMD_DMA_UNMAP => "DMA_UNMAP",
        CMD_DEVICE_GET_INFO => "DEVICE_GET_INFO",
        CMD_DEVICE_GET_REGION_INFO => "DEVICE_GET_REGION_INFO",
        CMD_DEVICE_GET_REGION_IO_FDS => "DEVICE_GET_REGION_IO_FDS",
        CMD_DEVICE_GET_IRQ_INFO => "DEVICE_GET_IRQ_INFO",
        CMD_DEVICE_SET_IRQS => "DEVICE_SET_IRQS",
        CMD_REGION_READ => "REGION_READ",
        CMD_REGION_WRITE => "REGION_WRITE",
        CMD_DMA_READ => "DMA_READ",
        CMD_DMA_WRITE => "DMA_WRITE",
        CMD_DEVICE_RESET => "DEVICE_RESET",
        _ => "unknown command",
    }
}

/// Reads a `T` at `offset` of `bytes`, or says what was short.
fn pod_at<T: Pod>(bytes: &[u8], offset: usize, what: &str) -> Result<T, BusError> {
    offset
        .checked_add(size_of::<T>())
        .and_then(|end| bytes.get(offset..end))
        .map(pod_read_unaligned::<T>)
        .ok_or_else(|| BusError::Unexpected(format!("{what}: reply too short")))
}

fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers and only reads a constant of the
    // running system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// Parses a region-info capability chain (offsets relative to the start of
/// `body`, which begins with the [`RegionInfo`]) and returns its sparse areas.
fn parse_caps(body: &[u8], first: u32) -> Result<Vec<SparseArea>, BusError> {
    let bad = |why: &str| BusError::Unexpected(format!("region capability chain: {why}"));
    let mut areas = Vec::new();
    let mut offset = first as usize;
    let mut hops = 0;
    while offset != 0 {
        hops += 1;
        if hops > 16 {
            return Err(bad("too many capabilities"));
        }
        if offset < REGION_INFO_LEN {
            return Err(bad("capability overlaps the region info"));
        }
        let cap: CapHeader = pod_at(body, offset, "capability header")?;
        if cap.id == REGION_CAP_SPARSE_MMAP {
            let sparse_at = offset + size_of::<CapHeader>();
            let sparse: SparseMmap = pod_at(body, sparse_at, "sparse mmap capability")?;
            let first_area = sparse_at + size_of::<SparseMmap>();
            let room = body.len().saturating_sub(first_area) / size_of::<SparseArea>();
            if sparse.nr_areas as usize > room {
                return Err(bad("more sparse areas than the reply holds"));
            }
            for i in 0..sparse.nr_areas as usize {
                let at = first_area + i * size_of::<SparseArea>();
                areas.push(pod_at(body, at, "sparse mmap area")?);
            }
        }
        let next = cap.next as usize;
        if next != 0 && next <= offset {
            return Err(bad("capability list goes backwards"));
        }
        offset = next;
    }
    Ok(areas)
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
        let connect_err = |source| BusError::Connect {
            path: path.display().to_string(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(connect_err)?;
        let mut bus = VfioUserBus {
            stream,
            path: path.to_path_buf(),
            timeout,
            next_id: 0,
            broken: None,
            server_max_fds: 1,
            max_xfer: 1 << 20,
            num_irqs: 0,
            regions: Vec::new(),
            bar_addr: [None; NUM_BARS],
            bar_maps: Default::default(),
            dma: Vec::new(),
            next_iova: DMA_IOVA_BASE,
        };
        bus.negotiate()?;
        bus.read_device()?;
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
        command: u16,
        body: &[u8],
        fds: &[RawFd],
    ) -> Result<(Header, Vec<u8>, Vec<OwnedFd>), BusError> {
        if let Some(why) = &self.broken {
            return Err(BusError::Transport(format!(
                "connection to {} is unusable: {why}",
                self.path.display()
            )));
        }
        let what = command_name(command);
        let size = HEADER_LEN
            .checked_add(body.len())
            .filter(|&s| s <= MAX_MESSAGE as usize)
            .ok_or_else(|| {
                BusError::Transport(format!("{what}: request exceeds {MAX_MESSAGE} bytes"))
            })?;
        if fds.len() > self.server_max_fds {
            return Err(BusError::Transport(format!(
                "{what}: {} descriptors, the server accepts {}",
                fds.len(),
                self.server_max_fds
            )));
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let header = Header {
            message_id: id,
            command,
            message_size: size as u32,
            flags: FLAG_TYPE_COMMAND,
            error: 0,
        };
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(bytes_of(&header));
        out.extend_from_slice(body);
        debug!(
            id,
            command = what,
            size,
            fds = fds.len(),
            "vfio-user request"
        );
        match self.exchange(&out, fds, &header) {
            Ok((reply, body, fds)) => {
                if reply.flags & FLAG_ERROR != 0 {
                    let errno = i32::try_from(reply.error).unwrap_or(i32::MAX);
                    debug!(id, command = what, errno, "vfio-user error reply");
                    return Err(BusError::Refused { what, errno });
                }
                Ok((reply, body, fds))
            }
            Err(why) => {
                warn!(path = %self.path.display(), command = what, reason = %why, "vfio-user connection broken");
                self.broken = Some(why.clone());
                Err(BusError::Transport(format!("{what}: {why}")))
            }
        }
    }

    /// Sends `out` and receives the matching reply. Any error leaves the
    /// stream out of step, so the caller marks the connection broken.
    fn exchange(
        &mut self,
        out: &[u8],
        fds: &[RawFd],
        request: &Header,
    ) -> Result<(Header, Vec<u8>, Vec<OwnedFd>), String> {
        self.send_all(out, fds)
            .map_err(|e| format!("send failed: {e}"))?;
        let mut received = Vec::new();
        let mut raw = [0u8; HEADER_LEN];
        self.recv_exact(&mut raw, &mut received)?;
        let reply: Header = pod_read_unaligned(&raw);
        if reply.flags & FLAG_TYPE_MASK != FLAG_TYPE_REPLY
            || reply.message_id != request.message_id
            || reply.command != request.command
        {
            return Err(format!(
                "reply (id {}, command {}, flags {:#x}) does not answer request (id {}, command {})",
                reply.message_id, reply.command, reply.flags, request.message_id, request.command
            ));
        }
        let size = reply.message_size as usize;
        if size < HEADER_LEN || reply.message_size > MAX_MESSAGE {
            return Err(format!("reply message_size {size} out of bounds"));
        }
        let mut body = vec![0u8; size - HEADER_LEN];
        self.recv_exact(&mut body, &mut received)?;
        if received.len() > MAX_FDS {
            return Err(format!("reply carried {} descriptors", received.len()));
        }
        Ok((reply, body, received))
    }

    fn send_all(&self, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
        let mut done = 0;
        while done < bytes.len() {
            let rest = bytes.get(done..).unwrap_or_default();
            let iov = [IoSlice::new(rest)];
            let rights = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage<'_>] = if done == 0 && !fds.is_empty() {
                &rights
            } else {
                &[]
            };
            match sendmsg::<()>(
                self.stream.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Fills `buf`, adding received descriptors to `fds`.
    fn recv_exact(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<(), String> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.get_mut(done..).unwrap_or_default();
            let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
            let mut iov = [IoSliceMut::new(rest)];
            let msg = match recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => msg,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(format!("no reply within {:?}", self.timeout));
                }
                Err(e) => return Err(format!("receive failed: {e}")),
            };
            let cmsgs = msg
                .cmsgs()
                .map_err(|_| "control data truncated".to_string())?;
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    for fd in raw {
                        // SAFETY: the kernel has just installed `fd` in this
                        // process for this recvmsg call; nothing else refers
                        // to it, so this OwnedFd is its only owner.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            if msg.bytes == 0 {
                return Err(format!(
                    "server closed the connection ({done} of {} bytes read)",
                    buf.len()
                ));
            }
            done += msg.bytes;
        }
        Ok(())
    }

    fn negotiate(&mut self) -> Result<(), BusError> {
        let caps = serde_json::json!({
            "capabilities": {
                "max_msg_fds": MAX_FDS,
                "max_data_xfer_size": MAX_XFER_FOR_MESSAGE,
            }
        });
        let mut body = bytes_of(&Version {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
        })
        .to_vec();
        body.extend_from_slice(caps.to_string().as_bytes());
        body.push(0);
        let (_, reply, _) = self.request(CMD_VERSION, &body, &[])?;
        let version: Version = pod_at(&reply, 0, "VERSION")?;
        if version.major != VERSION_MAJOR || version.minor > VERSION_MINOR {
            return Err(BusError::Unexpected(format!(
                "server speaks vfio-user {}.{}, we speak {VERSION_MAJOR}.{VERSION_MINOR}",
                version.major, version.minor
            )));
        }
        let data = reply.get(size_of::<Version>()..).unwrap_or_default();
        let Some((&last, text)) = data.split_last() else {
            return Ok(()); // No capabilities: the defaults hold.
        };
        let bad = |why: &str| BusError::Unexpected(format!("VERSION reply: {why}"));
        if last != 0 {
            return Err(bad("capabilities are not NUL-terminated"));
        }
        let text = std::str::from_utf8(text).map_err(|_| bad("capabilities are not UTF-8"))?;
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|_| bad("capabilities are not JSON"))?;
        let caps = value.get("capabilities");
        if let Some(n) = caps.and_then(|c| c.get("max_msg_fds")) {
            let n = n
                .as_u64()
                .ok_or_else(|| bad("max_msg_fds is not a number"))?;
            self.server_max_fds = usize::try_from(n).unwrap_or(usize::MAX).min(MAX_FDS);
        }
        if let Some(n) = caps.and_then(|c| c.get("max_data_xfer_size")) {
            let n = n
                .as_u64()
                .ok_or_else(|| bad("max_data_xfer_size is not a number"))?;
            self.max_xfer = u32::try_from(n)
                .unwrap_or(u32::MAX)
                .min(MAX_XFER_FOR_MESSAGE);
        }
        Ok(())
    }

    fn read_device(&mut self) -> Result<(), BusError> {
        let asked = DeviceInfo {
            argsz: size_of::<DeviceInfo>() as u32,
            ..DeviceInfo::default()
        };
        let (_, reply, _) = self.request(CMD_DEVICE_GET_INFO, bytes_of(&asked), &[])?;
        let info: DeviceInfo = pod_at(&reply, 0, "DEVICE_GET_INFO")?;
        if info.flags & DEVICE_FLAG_PCI == 0 {
            return Err(BusError::Unexpected("not a PCI device".into()));
        }
        if info.num_regions <= CONFIG_REGION || info.num_regions > MAX_REGIONS {
            return Err(BusError::Unexpected(format!(
                "{} regions (need {}..={MAX_REGIONS}, config space is region {CONFIG_REGION})",
                info.num_regions,
                CONFIG_REGION + 1
            )));
        }
        if info.num_irqs > MAX_IRQS {
            return Err(BusError::Unexpected(format!(
                "{} IRQ indices (at most {MAX_IRQS})",
                info.num_irqs
            )));
        }
        self.num_irqs = info.num_irqs;
        self.regions.clear();
        for index in 0..info.num_regions {
            let region = self.fetch_region_info(index)?;
            self.regions.push(region);
        }
        Ok(())
    }

    fn fetch_region_info(&mut self, index: u32) -> Result<ClientRegion, BusError> {
        // Room for a few capabilities; ask again if the server needs more.
        let mut argsz = (REGION_INFO_LEN + 128) as u32;
        for _ in 0..2 {
            let asked = RegionInfo {
                argsz,
                index,
                ..RegionInfo::default()
            };
            let (_, body, mut fds) =
                self.request(CMD_DEVICE_GET_REGION_INFO, bytes_of(&asked), &[])?;
            let info: RegionInfo = pod_at(&body, 0, "DEVICE_GET_REGION_INFO")?;
            if info.index != index {
                return Err(BusError::Unexpected(format!(
                    "asked for region {index}, got region {}",
                    info.index
                )));
            }
            if info.argsz > argsz {
                if info.argsz as usize > MAX_MESSAGE as usize - HEADER_LEN {
                    return Err(BusError::Unexpected(format!(
                        "region {index} info needs {} bytes",
                        info.argsz
                    )));
                }
                argsz = info.argsz;
                continue;
            }
            let areas = if info.flags & REGION_FLAG_CAPS != 0 {
                parse_caps(&body, info.cap_offset)?
            } else {
                Vec::new()
            };
            // libvfio-user sends one (identical) descriptor per sparse area;
            // keep the first, close the others.
            let fd = if info.flags & REGION_FLAG_MMAP != 0 && !fds.is_empty() {
                Some(fds.swap_remove(0))
            } else {
                None
            };
            debug!(
                index,
                size = info.size,
                flags = info.flags,
                mmap = fd.is_some(),
                "vfio-user region"
            );
            return Ok(ClientRegion { info, fd, areas });
        }
        Err(BusError::Unexpected(format!(
            "region {index} info keeps growing"
        )))
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
            let reg = PCI_BAR0 + 4 * this as u16;
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
            let is64 = low & 0b110 == 0b100;
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
        self.config_read(PCI_COMMAND, &mut cmd)?;
        let cmd = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        self.config_write(PCI_COMMAND, &cmd.to_le_bytes())
    }

    fn config_read_u32(&mut self, offset: u16) -> Result<u32, BusError> {
        let mut data = [0u8; 4];
        self.config_read(offset, &mut data)?;
        Ok(u32::from_le_bytes(data))
    }

    /// `REGION_READ` of `data.len()` bytes at `offset` of region `index`.
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), BusError> {
        let count = self.checked_count(data.len())?;
        let access = RegionAccess {
            offset,
            region: index,
            count,
        };
        let (_, body, _) = self.request(CMD_REGION_READ, bytes_of(&access), &[])?;
        let echoed: RegionAccess = pod_at(&body, 0, "REGION_READ")?;
        let payload = body.get(size_of::<RegionAccess>()..).unwrap_or_default();
        if echoed.count != count || payload.len() != data.len() {
            return Err(BusError::Unexpected(format!(
                "REGION_READ of {count} bytes returned {} (count {})",
                payload.len(),
                echoed.count
            )));
        }
        data.copy_from_slice(payload);
        Ok(())
    }

    /// `REGION_WRITE` of `data` at `offset` of region `index`.
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), BusError> {
        let count = self.checked_count(data.len())?;
        let access = RegionAccess {
            offset,
            region: index,
            count,
        };
        let mut body = bytes_of(&access).to_vec();
        body.extend_from_slice(data);
        self.request(CMD_REGION_WRITE, &body, &[])?;
        Ok(())
    }

    fn checked_count(&self, len: usize) -> Result<u32, BusError> {
        u32::try_from(len)
            .ok()
            .filter(|&c| c <= self.max_xfer)
            .ok_or_else(|| {
                BusError::Transport(format!(
                    "access of {len} bytes exceeds max_data_xfer_size {}",
                    self.max_xfer
                ))
            })
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
        let asked = IrqInfo {
            argsz: size_of::<IrqInfo>() as u32,
            index,
            ..IrqInfo::default()
        };
        let (_, body, _) = self.request(CMD_DEVICE_GET_IRQ_INFO, bytes_of(&asked), &[])?;
        pod_at(&body, 0, "DEVICE_GET_IRQ_INFO")
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
        let per_message = self.server_max_fds.max(1);
        let mut first = start;
        for chunk in fds.chunks(per_message) {
            let count = chunk.len() as u32;
            let set = SetIrqs {
                argsz: size_of::<SetIrqs>() as u32,
                flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
                index,
                start: first,
                count,
            };
            self.request(CMD_DEVICE_SET_IRQS, bytes_of(&set), chunk)?;
            first = first
                .checked_add(count)
                .ok_or_else(|| BusError::Transport("vector number overflows".into()))?;
        }
        Ok(())
    }

    /// Disables every vector of IRQ `index` (`DATA_NONE | ACTION_TRIGGER`,
    /// start 0, count 0).
    pub fn disable_irqs(&mut self, index: u32) -> Result<(), BusError> {
        let set = SetIrqs {
            argsz: size_of::<SetIrqs>() as u32,
            flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 0,
        };
        self.request(CMD_DEVICE_SET_IRQS, bytes_of(&set), &[])?;
        Ok(())
    }
}

impl Bus for VfioUserBus {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) -> Result<(), BusError> {
        self.region_read(CONFIG_REGION, u64::from(offset), data)
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), BusError> {
        self.region_write(CONFIG_REGION, u64::from(offset), data)
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), BusError> {
        let index = Self::check_bar(bar)?;
        self.region_read(index, offset, data)
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), BusError> {
        let index = Self::check_bar(bar)?;
        self.region_write(index, offset, data)
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
        let fd = match (&region.fd, region.info.flags & REGION_FLAG_MMAP != 0) {
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
            .checked_next_multiple_of(page_size())
            .filter(|&l| l > 0)
            .ok_or_else(|| BusError::Map(format!("cannot allocate {len} bytes of DMA memory")))?;
        let size = len as u64;
        let iova = self.next_iova;
        let next = iova
            .checked_add(size)
            .ok_or_else(|| BusError::Map("DMA address space exhausted".into()))?;
        let memfd = memfd_create(c"sbnet-dma", MemFdCreateFlag::MFD_CLOEXEC)
            .map_err(|e| BusError::Map(format!("memfd_create: {e}")))?;
        let file_len =
            i64::try_from(len).map_err(|_| BusError::Map(format!("{len} bytes is too large")))?;
        nix::unistd::ftruncate(&memfd, file_len)
            .map_err(|e| BusError::Map(format!("ftruncate of the DMA memfd: {e}")))?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw(memfd.as_raw_fd())
            .map_err(|e| BusError::Map(format!("mmap of the DMA memfd: {e}")))?;
        let dma_map = DmaMap {
            argsz: size_of::<DmaMap>() as u32,
            flags: DMA_FLAG_READ | DMA_FLAG_WRITE,
            offset: 0,
            address: iova,
            size,
        };
        self.request(CMD_DMA_MAP, bytes_of(&dma_map), &[memfd.as_raw_fd()])?;
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
        self.request(CMD_DEVICE_RESET, &[], &[])?;
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
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        debug!(path = %self.path.display(), dma = self.dma.len(), "vfio-user bus closed");
    }
}
