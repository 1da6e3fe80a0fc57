//! The client end: a [`Client`] connects to a vfio-user socket, negotiates
//! `VERSION` and then sends one command at a time, waiting for its reply.
//! It knows nothing of PCI beyond what the protocol says (the PMD's
//! `VfioUserBus` programs BARs on top of it).
//!
//! The server is not trusted either: every reply's id, command, type and
//! size is checked before use, sizes are bounded by
//! `MAX_MESSAGE`, and an error reply becomes
//! [`ClientError::Refused`]. After a transport failure (timeout, short read,
//! a reply that does not match) the connection cannot be resynchronised, so
//! every later request fails fast.

use crate::caps::VersionData;
use crate::wire::{
    pod_at, recv_body, recv_header, send_message, CapHeader, Command, DeviceFlags, DeviceInfo,
    DmaMap, DmaMapFlags, DmaUnmap, DmaUnmapFlags, Header, IrqInfo, IrqSetFlags, Message, RecvError,
    RegionAccess, RegionFlags, RegionInfo, SetIrqs, SparseArea, SparseMmap, Version, Wait,
    FLAG_ERROR, FLAG_TYPE_COMMAND, FLAG_TYPE_MASK, FLAG_TYPE_REPLY, HEADER_LEN, MAX_DATA_XFER,
    MAX_FDS, MAX_MESSAGE, REGION_CAP_SPARSE_MMAP, REGION_INFO_LEN, VERSION_MAJOR, VERSION_MINOR,
};
use bytemuck::{bytes_of, Pod};
use std::mem::size_of;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use tracing::{debug, warn};

/// Most regions a server may report (defends against a server that makes
/// the client loop or allocate without bound).
pub const MAX_REGIONS: u32 = 64;
/// Most IRQ indices a server may report. See [`MAX_REGIONS`].
pub const MAX_IRQS: u32 = 64;
/// Region index of PCI config space (`VFIO_PCI_CONFIG_REGION_INDEX`): a
/// device must report at least this many regions plus one.
const CONFIG_REGION: u32 = sbnet_abi::layout::CONFIG_REGION;

/// Errors of a [`Client`].
#[derive(Debug, Error)]
pub enum ClientError {
    /// Connecting to the socket failed.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The transport failed (socket closed, short read, mismatched reply...).
    #[error("transport error: {0}")]
    Transport(String),
    /// The server replied with an error.
    #[error("device refused {what}: errno {errno}")]
    Refused {
        /// The command's name.
        what: &'static str,
        /// The errno it replied with.
        errno: i32,
    },
    /// A reply made no sense (too short, out of range, not PCI...).
    #[error("unexpected device: {0}")]
    Unexpected(String),
}

/// One region as the server described it.
#[derive(Debug)]
pub struct Region {
    /// The region info (flags are [`RegionFlags`] bits).
    pub info: RegionInfo,
    /// The descriptor sent with the region info (mmap-able regions).
    pub fd: Option<OwnedFd>,
    /// Sparse mmap areas, when the server sent that capability.
    pub areas: Vec<SparseArea>,
}

/// A connection to one vfio-user server. Dropping it closes the socket.
#[derive(Debug)]
pub struct Client {
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
}

/// Reads a `T` at `offset` of `bytes`, or says what was short.
fn pod<T: Pod>(bytes: &[u8], offset: usize, what: &str) -> Result<T, ClientError> {
    pod_at(bytes, offset).ok_or_else(|| ClientError::Unexpected(format!("{what}: reply too short")))
}

/// Parses a region-info capability chain (offsets relative to the start of
/// `body`, which begins with the [`RegionInfo`]) and returns its sparse areas.
fn parse_caps(body: &[u8], first: u32) -> Result<Vec<SparseArea>, ClientError> {
    let bad = |why: &str| ClientError::Unexpected(format!("region capability chain: {why}"));
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
        let cap: CapHeader = pod(body, offset, "capability header")?;
        if cap.id == REGION_CAP_SPARSE_MMAP {
            let sparse_at = offset + size_of::<CapHeader>();
            let sparse: SparseMmap = pod(body, sparse_at, "sparse mmap capability")?;
            let first_area = sparse_at + size_of::<SparseMmap>();
            let room = body.len().saturating_sub(first_area) / size_of::<SparseArea>();
            if sparse.nr_areas as usize > room {
                return Err(bad("more sparse areas than the reply holds"));
            }
            for i in 0..sparse.nr_areas as usize {
                let at = first_area + i * size_of::<SparseArea>();
                areas.push(pod(body, at, "sparse mmap area")?);
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

impl Client {
    /// Connects to `path` and negotiates the version and capabilities.
    /// `timeout` bounds every wait for a reply (and for room to send).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(connect_err)?;
        let mut client = Client {
            stream,
            path: path.to_path_buf(),
            timeout,
            next_id: 0,
            broken: None,
            server_max_fds: 1,
            max_xfer: MAX_MESSAGE,
        };
        client.negotiate()?;
        Ok(client)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Most descriptors one request may carry (the server's `max_msg_fds`,
    /// at most [`MAX_FDS`]).
    pub fn max_fds(&self) -> usize {
        self.server_max_fds
    }

    /// Largest region access (the server's `max_data_xfer_size`, at most
    /// [`MAX_DATA_XFER`]).
    pub fn max_xfer(&self) -> u32 {
        self.max_xfer
    }

    /// Sends one command and returns the reply (header, body, received
    /// descriptors). An error reply becomes [`ClientError::Refused`]; a reply
    /// that does not match the request breaks the connection.
    pub fn request(
        &mut self,
        command: Command,
        body: &[u8],
        fds: &[RawFd],
    ) -> Result<Message, ClientError> {
        if let Some(why) = &self.broken {
            return Err(ClientError::Transport(format!(
                "connection to {} is unusable: {why}",
                self.path.display()
            )));
        }
        let what = command.name();
        let size = HEADER_LEN
            .checked_add(body.len())
            .filter(|&s| s <= MAX_MESSAGE as usize)
            .ok_or_else(|| {
                ClientError::Transport(format!("{what}: request exceeds {MAX_MESSAGE} bytes"))
            })?;
        if fds.len() > self.server_max_fds {
            return Err(ClientError::Transport(format!(
                "{what}: {} descriptors, the server accepts {}",
                fds.len(),
                self.server_max_fds
            )));
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let header = Header {
            message_id: id,
            command: command.into(),
            message_size: size as u32,
            flags: FLAG_TYPE_COMMAND,
            error: 0,
        };
        debug!(
            id,
            command = what,
            size,
            fds = fds.len(),
            "vfio-user request"
        );
        match self.exchange(&header, body, fds) {
            Ok(reply) => {
                if reply.header.flags & FLAG_ERROR != 0 {
                    let errno = i32::try_from(reply.header.error).unwrap_or(i32::MAX);
                    debug!(id, command = what, errno, "vfio-user error reply");
                    return Err(ClientError::Refused { what, errno });
                }
                Ok(reply)
            }
            Err(why) => {
                warn!(path = %self.path.display(), command = what, reason = %why, "vfio-user connection broken");
                self.broken = Some(why.clone());
                Err(ClientError::Transport(format!("{what}: {why}")))
            }
        }
    }

    /// Sends `request` and receives the matching reply. Any error leaves the
    /// stream out of step, so the caller marks the connection broken.
    fn exchange(
        &mut self,
        request: &Header,
        body: &[u8],
        fds: &[RawFd],
    ) -> Result<Message, String> {
        send_message(&self.stream, request, body, fds).map_err(|e| format!("send failed: {e}"))?;
        let recv_err = |e: RecvError| match e {
            RecvError::TimedOut => format!("no reply within {:?}", self.timeout),
            RecvError::Eof => "server closed the connection".to_string(),
            other => other.to_string(),
        };
        let mut received = Vec::new();
        let reply = recv_header(&self.stream, &mut received, Wait::Blocking).map_err(recv_err)?;
        if reply.flags & FLAG_TYPE_MASK != FLAG_TYPE_REPLY
            || reply.message_id != request.message_id
            || reply.command != request.command
        {
            return Err(format!(
                "reply (id {}, command {}, flags {:#x}) does not answer request (id {}, command {})",
                reply.message_id, reply.command, reply.flags, request.message_id, request.command
            ));
        }
        let body = recv_body(&self.stream, &reply, true, &mut received, Wait::Blocking)
            .map_err(recv_err)?;
        if received.len() > MAX_FDS {
            return Err(format!("reply carried {} descriptors", received.len()));
        }
        Ok(Message {
            header: reply,
            body,
            fds: received,
        })
    }

    fn negotiate(&mut self) -> Result<(), ClientError> {
        let mut body = bytes_of(&Version {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
        })
        .to_vec();
        body.extend_from_slice(&VersionData::client().to_bytes());
        let reply = self.request(Command::Version, &body, &[])?.body;
        let version: Version = pod(&reply, 0, "VERSION")?;
        if version.major != VERSION_MAJOR || version.minor > VERSION_MINOR {
            return Err(ClientError::Unexpected(format!(
                "server speaks vfio-user {}.{}, we speak {VERSION_MAJOR}.{VERSION_MINOR}",
                version.major, version.minor
            )));
        }
        let data = reply.get(size_of::<Version>()..).unwrap_or_default();
        let caps = VersionData::parse(data)
            .map_err(|why| ClientError::Unexpected(format!("VERSION reply: {why}")))?
            .and_then(|v| v.capabilities)
            .unwrap_or_default(); // No capabilities: the defaults hold.
        if let Some(n) = caps.max_msg_fds {
            self.server_max_fds = usize::try_from(n).unwrap_or(usize::MAX).min(MAX_FDS);
        }
        if let Some(n) = caps.max_data_xfer_size {
            self.max_xfer = u32::try_from(n).unwrap_or(u32::MAX).min(MAX_DATA_XFER);
        }
        Ok(())
    }

    /// `DEVICE_GET_INFO`, checked: a PCI device with config space and at
    /// most [`MAX_REGIONS`] regions and [`MAX_IRQS`] IRQ indices.
    pub fn device_info(&mut self) -> Result<DeviceInfo, ClientError> {
        let asked = DeviceInfo {
            argsz: size_of::<DeviceInfo>() as u32,
            ..DeviceInfo::default()
        };
        let reply = self.request(Command::DeviceGetInfo, bytes_of(&asked), &[])?;
        let info: DeviceInfo = pod(&reply.body, 0, "DEVICE_GET_INFO")?;
        if !DeviceFlags::from_bits_retain(info.flags).contains(DeviceFlags::PCI) {
            return Err(ClientError::Unexpected("not a PCI device".into()));
        }
        if info.num_regions <= CONFIG_REGION || info.num_regions > MAX_REGIONS {
            return Err(ClientError::Unexpected(format!(
                "{} regions (need {}..={MAX_REGIONS}, config space is region {CONFIG_REGION})",
                info.num_regions,
                CONFIG_REGION + 1
            )));
        }
        if info.num_irqs > MAX_IRQS {
            return Err(ClientError::Unexpected(format!(
                "{} IRQ indices (at most {MAX_IRQS})",
                info.num_irqs
            )));
        }
        Ok(info)
    }

    /// `DEVICE_GET_REGION_INFO` for region `index`, with its descriptor and
    /// sparse areas; asks again once if the server needs a larger `argsz`.
    pub fn region(&mut self, index: u32) -> Result<Region, ClientError> {
        // Room for a few capabilities; ask again if the server needs more.
        let mut argsz = (REGION_INFO_LEN + 128) as u32;
        for _ in 0..2 {
            let asked = RegionInfo {
                argsz,
                index,
                ..RegionInfo::default()
            };
            let Message { body, mut fds, .. } =
                self.request(Command::DeviceGetRegionInfo, bytes_of(&asked), &[])?;
            let info: RegionInfo = pod(&body, 0, "DEVICE_GET_REGION_INFO")?;
            if info.index != index {
                return Err(ClientError::Unexpected(format!(
                    "asked for region {index}, got region {}",
                    info.index
                )));
            }
            if info.argsz > argsz {
                if info.argsz as usize > MAX_MESSAGE as usize - HEADER_LEN {
                    return Err(ClientError::Unexpected(format!(
                        "region {index} info needs {} bytes",
                        info.argsz
                    )));
                }
                argsz = info.argsz;
                continue;
            }
            let flags = RegionFlags::from_bits_retain(info.flags);
            let areas = if flags.contains(RegionFlags::CAPS) {
                parse_caps(&body, info.cap_offset)?
            } else {
                Vec::new()
            };
            // libvfio-user sends one (identical) descriptor per sparse area;
            // keep the first, close the others.
            let fd = if flags.contains(RegionFlags::MMAP) && !fds.is_empty() {
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
            return Ok(Region { info, fd, areas });
        }
        Err(ClientError::Unexpected(format!(
            "region {index} info keeps growing"
        )))
    }

    /// `REGION_READ` of `data.len()` bytes at `offset` of region `index`.
    pub fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), ClientError> {
        let count = self.checked_count(data.len())?;
        let access = RegionAccess {
            offset,
            region: index,
            count,
        };
        let body = self
            .request(Command::RegionRead, bytes_of(&access), &[])?
            .body;
        let echoed: RegionAccess = pod(&body, 0, "REGION_READ")?;
        let payload = body.get(size_of::<RegionAccess>()..).unwrap_or_default();
        if echoed.count != count || payload.len() != data.len() {
            return Err(ClientError::Unexpected(format!(
                "REGION_READ of {count} bytes returned {} (count {})",
                payload.len(),
                echoed.count
            )));
        }
        data.copy_from_slice(payload);
        Ok(())
    }

    /// `REGION_WRITE` of `data` at `offset` of region `index`.
    pub fn region_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let count = self.checked_count(data.len())?;
        let access = RegionAccess {
            offset,
            region: index,
            count,
        };
        let mut body = bytes_of(&access).to_vec();
        body.extend_from_slice(data);
        self.request(Command::RegionWrite, &body, &[])?;
        Ok(())
    }

    fn checked_count(&self, len: usize) -> Result<u32, ClientError> {
        u32::try_from(len)
            .ok()
            .filter(|&c| c <= self.max_xfer)
            .ok_or_else(|| {
                ClientError::Transport(format!(
                    "access of {len} bytes exceeds max_data_xfer_size {}",
                    self.max_xfer
                ))
            })
    }

    /// `DMA_MAP` of `[iova, iova + size)`, backed by `fd` from `file_offset`.
    pub fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        file_offset: u64,
        flags: DmaMapFlags,
        fd: RawFd,
    ) -> Result<(), ClientError> {
        let map = DmaMap {
            argsz: size_of::<DmaMap>() as u32,
            flags: flags.bits(),
            offset: file_offset,
            address: iova,
            size,
        };
        self.request(Command::DmaMap, bytes_of(&map), &[fd])?;
        Ok(())
    }

    /// `DMA_UNMAP` of `[iova, iova + size)` (or everything with
    /// [`DmaUnmapFlags::ALL`], address and size 0).
    pub fn dma_unmap(
        &mut self,
        iova: u64,
        size: u64,
        flags: DmaUnmapFlags,
    ) -> Result<(), ClientError> {
        let unmap = DmaUnmap {
            argsz: size_of::<DmaUnmap>() as u32,
            flags: flags.bits(),
            address: iova,
            size,
        };
        self.request(Command::DmaUnmap, bytes_of(&unmap), &[])?;
        Ok(())
    }

    /// `DEVICE_GET_IRQ_INFO` for IRQ `index`.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo, ClientError> {
        let asked = IrqInfo {
            argsz: size_of::<IrqInfo>() as u32,
            index,
            ..IrqInfo::default()
        };
        let body = self
            .request(Command::DeviceGetIrqInfo, bytes_of(&asked), &[])?
            .body;
        pod(&body, 0, "DEVICE_GET_IRQ_INFO")
    }

    /// `DEVICE_SET_IRQS` for vectors `start..start + count` of IRQ `index`,
    /// with `fds` (at most [`Client::max_fds`]).
    pub fn set_irqs(
        &mut self,
        index: u32,
        flags: IrqSetFlags,
        start: u32,
        count: u32,
        fds: &[RawFd],
    ) -> Result<(), ClientError> {
        let set = SetIrqs {
            argsz: size_of::<SetIrqs>() as u32,
            flags: flags.bits(),
            index,
            start,
            count,
        };
        self.request(Command::DeviceSetIrqs, bytes_of(&set), fds)?;
        Ok(())
    }

    /// Routes vectors `start..start + fds.len()` of IRQ `index` to the given
    /// eventfds (`DATA_EVENTFD | ACTION_TRIGGER`), in as many messages as
    /// the server's `max_msg_fds` needs.
    pub fn set_irq_eventfds(
        &mut self,
        index: u32,
        start: u32,
        fds: &[RawFd],
    ) -> Result<(), ClientError> {
        let per_message = self.server_max_fds.max(1);
        let flags = IrqSetFlags::DATA_EVENTFD | IrqSetFlags::ACTION_TRIGGER;
        let mut first = start;
        for chunk in fds.chunks(per_message) {
            let count = chunk.len() as u32;
            self.set_irqs(index, flags, first, count, chunk)?;
            first = first
                .checked_add(count)
                .ok_or_else(|| ClientError::Transport("vector number overflows".into()))?;
        }
        Ok(())
    }

    /// Disables every vector of IRQ `index` (`DATA_NONE | ACTION_TRIGGER`,
    /// start 0, count 0).
    pub fn disable_irqs(&mut self, index: u32) -> Result<(), ClientError> {
        let flags = IrqSetFlags::DATA_NONE | IrqSetFlags::ACTION_TRIGGER;
        self.set_irqs(index, flags, 0, 0, &[])
    }

    /// `DEVICE_RESET`.
    pub fn reset(&mut self) -> Result<(), ClientError> {
        self.request(Command::DeviceReset, &[], &[])?;
        Ok(())
    }

    /// Shuts the socket down both ways, so the server sees the client leave
    /// even if a descriptor of it was duplicated elsewhere.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
