//! One accepted client: reads framed requests, refuses what is malformed,
//! checks each command's fields and turns it into a [`Backend`] call.
//!
//! Wire rules (QEMU's `docs/interop/vfio-user.rst`, sbnet's `docs/abi.md` §7):
//!
//! * "All messages ... are preceded by a 16-byte header"; `message_size` is
//!   checked (at least `HEADER_LEN`, at most `MAX_MESSAGE`) before one
//!   body byte is read or allocated. A size outside those bounds cannot be
//!   trusted to find the next message, so the connection is closed.
//! * A body shorter than its command's fixed part, or any other bad field,
//!   gets an error reply ("the reply message must only include the reply
//!   header") and the connection carries on.
//! * "Each command message ... must be replied to with a reply message,
//!   unless the message sets the No_Reply bit" — so with `FLAG_NO_REPLY` set
//!   nothing is sent, not even an error (it is logged instead).
//! * File descriptors arrive as `SCM_RIGHTS` and are owned from the moment
//!   `recvmsg` returns (see [`crate::wire`]), so none can leak.

use super::{Backend, IrqDesc, RegionDesc};
use crate::caps::VersionData;
use crate::wire::{
    pod_at, recv_body, recv_header, send_message, CapHeader, Command, DeviceFlags, DeviceInfo,
    DmaMap, DmaMapFlags, DmaUnmap, DmaUnmapFlags, Header, IrqInfo, IrqSetFlags, Message, RecvError,
    RegionAccess, RegionFlags, RegionInfo, SetIrqs, SparseArea, SparseMmap, Version, Wait,
    FLAG_ERROR, FLAG_NO_REPLY, FLAG_TYPE_COMMAND, FLAG_TYPE_MASK, FLAG_TYPE_REPLY, MAX_DATA_XFER,
    MAX_FDS, REGION_CAP_SPARSE_MMAP, REGION_INFO_LEN, VERSION_MAJOR, VERSION_MINOR,
};
use bytemuck::{bytes_of, Pod};
use nix::errno::Errno;
use std::mem::size_of;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use tracing::{debug, info, warn};

/// Why a connection ended.
#[derive(Debug)]
pub(super) enum ConnectionEnd {
    /// The client closed the socket between messages.
    Eof,
    /// The stop flag was set.
    Stopped,
    /// The stream cannot be trusted any more.
    Protocol(String),
    /// The socket failed.
    Io(std::io::Error),
}

impl From<RecvError> for ConnectionEnd {
    fn from(e: RecvError) -> ConnectionEnd {
        match e {
            RecvError::Eof => ConnectionEnd::Eof,
            RecvError::Stopped => ConnectionEnd::Stopped,
            RecvError::Io(errno) => ConnectionEnd::Io(errno.into()),
            RecvError::TimedOut => ConnectionEnd::Io(std::io::ErrorKind::TimedOut.into()),
            other => ConnectionEnd::Protocol(other.to_string()),
        }
    }
}

/// What a successful command sends back (after the header).
pub(super) struct Reply {
    pub(super) body: Vec<u8>,
    pub(super) fd: Option<RawFd>,
}

impl Reply {
    fn empty() -> Reply {
        Reply {
            body: Vec::new(),
            fd: None,
        }
    }

    fn of<T: Pod>(value: &T) -> Reply {
        Reply {
            body: bytes_of(value).to_vec(),
            fd: None,
        }
    }
}

/// Reads a `T` at the start of `bytes` (EINVAL when too short).
fn read_pod<T: Pod>(bytes: &[u8]) -> Result<T, Errno> {
    pod_at(bytes, 0).ok_or(Errno::EINVAL)
}

/// `num_regions`/`num_irqs`: one past the highest index described.
fn count_of(indices: impl Iterator<Item = u32>) -> u32 {
    indices.map(|i| i.saturating_add(1)).max().unwrap_or(0)
}

/// The body of a `DEVICE_GET_REGION_INFO` reply for `region`, given the
/// client's `argsz`, and the descriptor to send with it.
pub(super) fn region_info_reply(region: Option<&RegionDesc>, index: u32, argsz: u32) -> Reply {
    let mut info = RegionInfo {
        argsz: REGION_INFO_LEN as u32,
        index,
        ..RegionInfo::default()
    };
    let Some(region) = region else {
        // An index below num_regions that the backend does not describe: a
        // region of size 0 (not implemented), as for an absent BAR.
        return Reply::of(&info);
    };
    info.size = region.size;
    let mut flags = region.flags & (RegionFlags::READ | RegionFlags::WRITE);
    info.flags = flags.bits();
    let mmap = region.mmap.filter(|_| region.size > 0);
    let Some((fd, offset)) = mmap else {
        return Reply::of(&info);
    };
    // One sparse-mmap capability with one area covering the whole region.
    let cap_len = size_of::<CapHeader>() + size_of::<SparseMmap>() + size_of::<SparseArea>();
    let full = (REGION_INFO_LEN + cap_len) as u32;
    flags |= RegionFlags::MMAP;
    info.offset = offset;
    info.argsz = full;
    let mut body = Vec::with_capacity(full as usize);
    if argsz >= full {
        // Like libvfio-user: CAPS and cap_offset only when the chain is sent;
        // otherwise argsz tells the client how much to ask for next time.
        info.flags = (flags | RegionFlags::CAPS).bits();
        info.cap_offset = REGION_INFO_LEN as u32;
        body.extend_from_slice(bytes_of(&info));
        body.extend_from_slice(bytes_of(&CapHeader {
            id: REGION_CAP_SPARSE_MMAP,
            version: 1,
            next: 0,
        }));
        body.extend_from_slice(bytes_of(&SparseMmap {
            nr_areas: 1,
            reserved: 0,
        }));
        body.extend_from_slice(bytes_of(&SparseArea {
            offset: 0,
            size: region.size,
        }));
    } else {
        info.flags = flags.bits();
        body.extend_from_slice(bytes_of(&info));
    }
    // "When [MMAP] is set, the reply will include a file descriptor."
    Reply { body, fd: Some(fd) }
}

/// Checks a region access against the described regions.
fn check_access(
    regions: &[RegionDesc],
    access: &RegionAccess,
    need: RegionFlags,
) -> Result<(), Errno> {
    let region = regions
        .iter()
        .find(|r| r.index == access.region)
        .ok_or(Errno::EINVAL)?;
    if !region.flags.intersects(need) {
        return Err(Errno::EINVAL);
    }
    let end = access
        .offset
        .checked_add(u64::from(access.count))
        .ok_or(Errno::EINVAL)?;
    if end > region.size {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// One accepted client.
pub(super) struct Connection<'b> {
    stream: UnixStream,
    backend: &'b mut dyn Backend,
    /// The backend's regions as last reported (refreshed on `DEVICE_GET_INFO`
    /// and `GET_REGION_INFO`), used to bound region accesses.
    regions: Vec<RegionDesc>,
    irqs: Vec<IrqDesc>,
    /// `VERSION` was negotiated: until then every other command is refused.
    versioned: bool,
    /// Requests answered with an error on this connection. The first is
    /// logged at WARN, the rest at DEBUG, and the total when the client
    /// leaves: a misbehaving client cannot flood the log.
    failed: u64,
}

impl<'b> Connection<'b> {
    pub(super) fn new(stream: UnixStream, backend: &'b mut dyn Backend) -> Connection<'b> {
        let regions = backend.regions();
        let irqs = backend.irqs();
        Connection {
            stream,
            backend,
            regions,
            irqs,
            versioned: false,
            failed: 0,
        }
    }

    /// Requests this connection answered with an error so far.
    pub(super) fn failed_requests(&self) -> u64 {
        self.failed
    }

    /// Handles messages until the client leaves, the stream breaks or `stop`.
    pub(super) fn run(&mut self, stop: &AtomicBool) -> ConnectionEnd {
        loop {
            let request = match self.read_request(stop) {
                Ok(Some(request)) => request,
                Ok(None) => continue,
                Err(end) => return end,
            };
            if let Err(end) = self.handle(request) {
                return end;
            }
        }
    }

    /// Reads one message. `Ok(None)`: the message was consumed and already
    /// answered (bad body size or unsupported command).
    fn read_request(&mut self, stop: &AtomicBool) -> Result<Option<Message>, ConnectionEnd> {
        let how = Wait::Until(stop);
        let mut fds = Vec::new();
        let header = recv_header(&self.stream, &mut fds, how)?;
        let size = header.message_size;
        let body_len = header.body_len().unwrap_or_default();
        debug!(
            id = header.message_id,
            command = header.command,
            size,
            fds = fds.len(),
            "vfio-user request"
        );
        let refusal = match Command::from_u16(header.command).and_then(Command::fixed_body_len) {
            None => Some((Errno::ENOTSUP, "unsupported command")),
            Some(min) if body_len < min => {
                Some((Errno::EINVAL, "body shorter than the command's fixed part"))
            }
            Some(_) => None,
        };
        if let Some((errno, why)) = refusal {
            recv_body(&self.stream, &header, false, &mut fds, how)?;
            warn!(
                id = header.message_id,
                command = header.command,
                size,
                %errno,
                "refusing vfio-user request: {why}"
            );
            if header.wants_reply() {
                self.reply_error(&header, errno)?;
            }
            return Ok(None);
        }
        let body = recv_body(&self.stream, &header, true, &mut fds, how)?;
        Ok(Some(Message { header, body, fds }))
    }

    /// Executes one request and sends its reply.
    fn handle(&mut self, request: Message) -> Result<(), ConnectionEnd> {
        let Message { header, body, fds } = request;
        if header.flags & FLAG_TYPE_MASK != FLAG_TYPE_COMMAND {
            warn!(
                id = header.message_id,
                command = header.command,
                flags = header.flags,
                "ignoring a vfio-user message that is not a command"
            );
            return Ok(());
        }
        let Some(command) = Command::from_u16(header.command) else {
            // read_request refuses unknown commands; nothing to run.
            return self.reply_error(&header, Errno::ENOTSUP);
        };
        let no_reply = header.flags & FLAG_NO_REPLY != 0;
        // A data-returning command that wants no reply is a client bug (and
        // a read may have side effects); descriptors only come with DMA_MAP
        // and SET_IRQS, at most MAX_FDS of them.
        let refused = (no_reply && !command.allows_no_reply())
            || fds.len() > MAX_FDS
            || (!fds.is_empty() && !command.takes_fds());
        // "After the client connects to the server, the initial client
        // message is VFIO_USER_VERSION" (vfio-user spec, Connection
        // Initiation): anything else first gets an error reply (every
        // command is answered) and the connection stays open for VERSION.
        let early = !self.versioned && command != Command::Version;
        if early {
            warn!(
                id = header.message_id,
                command = header.command,
                "refusing a vfio-user command sent before VERSION"
            );
        }
        let outcome = if refused || early {
            Err(Errno::EINVAL)
        } else {
            self.execute(command, &body, fds)
        };
        match outcome {
            Ok(reply) if no_reply => {
                drop(reply);
                Ok(())
            }
            Ok(reply) => self.send(&header, 0, 0, &reply.body, reply.fd),
            Err(errno) => {
                self.failed += 1;
                if self.failed == 1 {
                    warn!(
                        id = header.message_id,
                        command = header.command,
                        %errno,
                        no_reply,
                        "vfio-user request failed (later failures of this client are logged at debug level and counted)"
                    );
                } else {
                    tracing::debug!(
                        id = header.message_id,
                        command = header.command,
                        %errno,
                        no_reply,
                        "vfio-user request failed"
                    );
                }
                if no_reply {
                    Ok(())
                } else {
                    self.reply_error(&header, errno)
                }
            }
        }
    }

    fn execute(
        &mut self,
        command: Command,
        body: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<Reply, Errno> {
        match command {
            Command::Version => {
                let reply = self.version(body)?;
                self.versioned = true;
                Ok(reply)
            }
            Command::DmaMap => self.dma_map(body, fds),
            Command::DmaUnmap => self.dma_unmap(body),
            Command::DeviceGetInfo => self.device_info(body),
            Command::DeviceGetRegionInfo => self.region_info(body),
            Command::DeviceGetIrqInfo => self.irq_info(body),
            Command::DeviceSetIrqs => self.set_irqs(body, fds),
            Command::RegionRead => self.region_read(body),
            Command::RegionWrite => self.region_write(body),
            Command::DeviceReset => {
                self.backend.reset();
                Ok(Reply::empty())
            }
            Command::DeviceGetRegionIoFds | Command::DmaRead | Command::DmaWrite => {
                Err(Errno::ENOTSUP)
            }
        }
    }

    fn version(&mut self, body: &[u8]) -> Result<Reply, Errno> {
        let v: Version = read_pod(body)?;
        if v.major != VERSION_MAJOR {
            warn!(
                major = v.major,
                "client speaks another vfio-user major version"
            );
            return Err(Errno::ENOTSUP);
        }
        let data = body.get(size_of::<Version>()..).unwrap_or_default();
        if let Err(why) = VersionData::parse(data) {
            warn!("refusing VERSION: {why}");
            return Err(Errno::EINVAL);
        }
        // "The minor version in the reply must be equal to or less than the
        // minor version proposed" (QEMU proposes 0.0 and rejects more).
        let reply = Version {
            major: VERSION_MAJOR,
            minor: v.minor.min(VERSION_MINOR),
        };
        let mut out = bytes_of(&reply).to_vec();
        out.extend_from_slice(&VersionData::server(self.backend.max_dma_maps()).to_bytes());
        info!(
            client_minor = v.minor,
            minor = reply.minor,
            "vfio-user version negotiated"
        );
        Ok(Reply {
            body: out,
            fd: None,
        })
    }

    fn dma_map(&mut self, body: &[u8], mut fds: Vec<OwnedFd>) -> Result<Reply, Errno> {
        let map: DmaMap = read_pod(body)?;
        let flags = DmaMapFlags::from_bits(map.flags);
        let Some(flags) = flags.filter(|_| {
            (map.argsz as usize) >= size_of::<DmaMap>()
                && fds.len() <= 1
                && map.address.checked_add(map.size).is_some()
        }) else {
            return Err(Errno::EINVAL);
        };
        self.backend
            .dma_map(map.address, map.size, map.offset, flags, fds.pop())?;
        Ok(Reply::empty())
    }

    fn dma_unmap(&mut self, body: &[u8]) -> Result<Reply, Errno> {
        let unmap: DmaUnmap = read_pod(body)?;
        let flags = DmaUnmapFlags::from_bits(unmap.flags).ok_or(Errno::EINVAL)?;
        if (unmap.argsz as usize) < size_of::<DmaUnmap>()
            || (flags.contains(DmaUnmapFlags::ALL) && (unmap.address != 0 || unmap.size != 0))
        {
            return Err(Errno::EINVAL);
        }
        self.backend.dma_unmap(unmap.address, unmap.size, flags)?;
        // "The server responds with the original DMA entry in the request."
        Ok(Reply::of(&unmap))
    }

    fn device_info(&mut self, body: &[u8]) -> Result<Reply, Errno> {
        let asked: DeviceInfo = read_pod(body)?;
        if (asked.argsz as usize) < size_of::<DeviceInfo>() {
            return Err(Errno::EINVAL);
        }
        self.regions = self.backend.regions();
        self.irqs = self.backend.irqs();
        Ok(Reply::of(&DeviceInfo {
            argsz: size_of::<DeviceInfo>() as u32,
            flags: (DeviceFlags::PCI | DeviceFlags::RESET).bits(),
            num_regions: count_of(self.regions.iter().map(|r| r.index)),
            num_irqs: count_of(self.irqs.iter().map(|i| i.index)),
        }))
    }

    fn region_info(&mut self, body: &[u8]) -> Result<Reply, Errno> {
        let asked: RegionInfo = read_pod(body)?;
        if (asked.argsz as usize) < REGION_INFO_LEN {
            return Err(Errno::EINVAL);
        }
        self.regions = self.backend.regions();
        if asked.index >= count_of(self.regions.iter().map(|r| r.index)) {
            return Err(Errno::EINVAL);
        }
        let region = self.regions.iter().find(|r| r.index == asked.index);
        Ok(region_info_reply(region, asked.index, asked.argsz))
    }

    fn irq_info(&mut self, body: &[u8]) -> Result<Reply, Errno> {
        let asked: IrqInfo = read_pod(body)?;
        if (asked.argsz as usize) < size_of::<IrqInfo>() {
            return Err(Errno::EINVAL);
        }
        if asked.index >= count_of(self.irqs.iter().map(|i| i.index)) {
            return Err(Errno::EINVAL);
        }
        let (flags, count) = self
            .irqs
            .iter()
            .find(|i| i.index == asked.index)
            .map_or((0, 0), |i| (i.flags.bits(), i.count));
        Ok(Reply::of(&IrqInfo {
            argsz: size_of::<IrqInfo>() as u32,
            flags,
            index: asked.index,
            count,
        }))
    }

    fn set_irqs(&mut self, body: &[u8], fds: Vec<OwnedFd>) -> Result<Reply, Errno> {
        let set: SetIrqs = read_pod(body)?;
        let flags = IrqSetFlags::from_bits(set.flags).ok_or(Errno::EINVAL)?;
        let (data, action) = (flags.data(), flags.action());
        if (set.argsz as usize) < size_of::<SetIrqs>()
            || data.bits().count_ones() != 1
            || action.bits().count_ones() != 1
        {
            return Err(Errno::EINVAL);
        }
        if data == IrqSetFlags::DATA_BOOL {
            return Err(Errno::ENOTSUP);
        }
        let irq = self
            .irqs
            .iter()
            .find(|i| i.index == set.index)
            .ok_or(Errno::EINVAL)?;
        let end = set.start.checked_add(set.count).ok_or(Errno::EINVAL)?;
        if end > irq.count {
            return Err(Errno::EINVAL);
        }
        // One descriptor per vector, or none to de-assign them ("If no file
        // descriptors are provided, this de-assigns ...").
        let bad_fds = if data == IrqSetFlags::DATA_EVENTFD {
            !fds.is_empty() && fds.len() != set.count as usize
        } else {
            data == IrqSetFlags::DATA_NONE && !fds.is_empty()
        };
        if bad_fds {
            return Err(Errno::EINVAL);
        }
        self.backend
            .set_irqs(set.index, flags, set.start, set.count, fds)?;
        Ok(Reply::empty())
    }

    fn region_read(&mut self, body: &[u8]) -> Result<Reply, Errno> {
        let access: RegionAccess = read_pod(body)?;
        if access.count > MAX_DATA_XFER {
            return Err(Errno::EINVAL);
        }
        check_access(&self.regions, &access, RegionFlags::READ)?;
        let mut out = Vec::with_capacity(size_of::<RegionAccess>() + access.count as usize);
        out.extend_from_slice(bytes_of(&access));
        out.resize(size_of::<RegionAccess>() + access.count as usize, 0);
        let data = out.get_mut(size_of::<RegionAccess>()..).unwrap_or_default();
        self.backend
            .region_read(access.region, access.offset, data)?;
        Ok(Reply {
            body: out,
            fd: None,
        })
    }

    fn region_write(&mut self, body: &[u8]) -> Result<Reply, Errno> {
        let access: RegionAccess = read_pod(body)?;
        let data = body.get(size_of::<RegionAccess>()..).unwrap_or_default();
        if data.len() != access.count as usize {
            return Err(Errno::EINVAL);
        }
        check_access(&self.regions, &access, RegionFlags::WRITE)?;
        self.backend
            .region_write(access.region, access.offset, data)?;
        Ok(Reply::of(&access))
    }

    fn reply_error(&self, request: &Header, errno: Errno) -> Result<(), ConnectionEnd> {
        let code = match errno as i32 {
            0 => Errno::EIO as i32,
            e => e,
        };
        self.send(request, FLAG_ERROR, code as u32, &[], None)
    }

    /// Sends a reply to `request`: header (with `extra_flags`, `error`), body
    /// and at most one descriptor.
    fn send(
        &self,
        request: &Header,
        extra_flags: u32,
        error: u32,
        body: &[u8],
        fd: Option<RawFd>,
    ) -> Result<(), ConnectionEnd> {
        let header = Header {
            message_id: request.message_id,
            command: request.command,
            message_size: 0,
            flags: FLAG_TYPE_REPLY | extra_flags,
            error,
        };
        let fds: Vec<RawFd> = fd.into_iter().collect();
        send_message(&self.stream, &header, body, &fds).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidInput {
                ConnectionEnd::Protocol("reply too large".into())
            } else {
                ConnectionEnd::Io(e)
            }
        })
    }
}
