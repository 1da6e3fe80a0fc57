//! The vfio-user server: binds a UNIX socket, serves one client at a time
//! and turns each framed, size-checked request into a [`Backend`] call.
//!
//! Wire rules (QEMU's `docs/interop/vfio-user.rst`, sbnet's `docs/abi.md` §7):
//!
//! * "All messages ... are preceded by a 16-byte header"; `message_size` is
//!   checked (at least [`HEADER_LEN`], at most [`MAX_MESSAGE`]) before one
//!   body byte is read or allocated. A size outside those bounds cannot be
//!   trusted to find the next message, so the connection is closed.
//! * A body shorter than its command's fixed part, or any other bad field,
//!   gets an error reply ("the reply message must only include the reply
//!   header") and the connection carries on.
//! * "Each command message ... must be replied to with a reply message,
//!   unless the message sets the No_Reply bit" — so with `FLAG_NO_REPLY` set
//!   nothing is sent, not even an error (it is logged instead).
//! * File descriptors arrive as `SCM_RIGHTS`; each is wrapped in an
//!   [`OwnedFd`] as soon as `recvmsg` returns, so none can leak.

use super::{Backend, IrqDesc, RegionDesc};
use bytemuck::{bytes_of, pod_read_unaligned, Pod};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use sbnet_abi::vfio_user::{
    CapHeader, DeviceInfo, DmaMap, DmaUnmap, Header, IrqInfo, RegionAccess, RegionInfo, SetIrqs,
    SparseArea, SparseMmap, Version, CMD_DEVICE_GET_INFO, CMD_DEVICE_GET_IRQ_INFO,
    CMD_DEVICE_GET_REGION_INFO, CMD_DEVICE_RESET, CMD_DEVICE_SET_IRQS, CMD_DMA_MAP, CMD_DMA_UNMAP,
    CMD_REGION_READ, CMD_REGION_WRITE, CMD_VERSION, DEVICE_FLAG_PCI, DEVICE_FLAG_RESET,
    DMA_FLAG_READ, DMA_FLAG_WRITE, DMA_UNMAP_FLAG_ALL, FLAG_ERROR, FLAG_NO_REPLY,
    FLAG_TYPE_COMMAND, FLAG_TYPE_MASK, FLAG_TYPE_REPLY, HEADER_LEN, IRQ_SET_ACTION_MASK,
    IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD,
    IRQ_SET_DATA_NONE, MAX_FDS, MAX_MESSAGE, REGION_CAP_SPARSE_MMAP, REGION_FLAG_CAPS,
    REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE, REGION_INFO_LEN, VERSION_MAJOR,
    VERSION_MINOR,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use thiserror::Error;
use tracing::{debug, info, warn};

/// How long the server waits in `poll` before looking at the stop flag again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Largest `count` of one `REGION_READ`/`REGION_WRITE` (advertised as
/// `max_data_xfer_size`): the largest that keeps the whole message, header and
/// [`RegionAccess`] included, within [`MAX_MESSAGE`].
pub const MAX_DATA_XFER: u32 = MAX_MESSAGE - (HEADER_LEN + size_of::<RegionAccess>()) as u32;

/// Largest number of DMA maps the server advertises (`max_dma_maps`).
pub const MAX_DMA_MAPS: u32 = 65535;

/// How long one reply may wait for room in the socket before the client is
/// considered gone (a client that never reads must not stall `stop`).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The kernel's `SCM_MAX_FD`: the most descriptors one `recvmsg` can return.
/// The control buffer is sized for all of them, so that every descriptor the
/// kernel installs is seen (and closed when refused) instead of leaking
/// behind `MSG_CTRUNC`.
const SCM_MAX_FD: usize = 253;

/// Errors of [`Server::bind`] and [`Server::serve`]. Each says what to do.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The socket's directory does not exist.
    #[error("directory {dir} does not exist; create it or choose another --socket")]
    MissingParent {
        /// The missing directory.
        dir: PathBuf,
    },
    /// A server already answers on the path.
    #[error("another server is listening on {path}; stop it or choose another --socket")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; it is left alone.
    #[error("{path} exists and is not a socket; remove it or choose another --socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Probing an existing socket failed for a reason other than "nobody listens".
    #[error("cannot tell whether a server listens on {path}: {source}; remove the file if it is stale or choose another --socket")]
    Probe {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stale socket file could not be removed.
    #[error(
        "cannot remove stale socket {path}: {source}; remove it by hand or choose another --socket"
    )]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `bind` or `listen` failed.
    #[error("cannot listen on {path}: {source}; check permissions and that the path is shorter than 108 bytes")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for clients failed; the listening socket is unusable.
    #[error("waiting for clients on {path} failed: {source}; restart the server")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A bound vfio-user socket. [`Server::serve`] runs the accept loop; dropping
/// the server removes the socket file it created.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file this server created, so `Drop`
    /// removes only that file and not one a successor created since.
    ident: Option<(u64, u64)>,
}

impl Server {
    /// Binds `path`. A stale socket file (nobody answers on it) is replaced;
    /// a live server, a missing directory or a non-socket file is an error.
    pub fn bind(path: &Path) -> Result<Server, ServerError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.is_dir() {
                return Err(ServerError::MissingParent {
                    dir: dir.to_path_buf(),
                });
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ServerError::InUse {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    warn!(path = %path.display(), "removing stale vfio-user socket (nobody listens on it)");
                    std::fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
                        path: path.to_path_buf(),
                        source,
                    })?;
                }
                Err(source) => {
                    return Err(ServerError::Probe {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            },
            Ok(_) => {
                return Err(ServerError::NotASocket {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ServerError::Probe {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let bind_err = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let ident = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        info!(path = %path.display(), "vfio-user server listening");
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            ident,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients one at a time until `stop` is set (checked at least
    /// every [`POLL_INTERVAL`], while waiting for a client and while one is
    /// connected). Later clients wait in the listen backlog. The backend sees
    /// `connected()` after each accept and `disconnected()` when that client
    /// leaves for any reason. Errors only when the listening socket fails.
    pub fn serve(&self, backend: &mut dyn Backend, stop: &AtomicBool) -> Result<(), ServerError> {
        let listen_err = |source| ServerError::Listen {
            path: self.path.clone(),
            source,
        };
        loop {
            // Relaxed: `stop` is a lone flag; no data is published with it.
            if stop.load(Ordering::Relaxed) {
                info!(path = %self.path.display(), "vfio-user server stopping");
                return Ok(());
            }
            match wait_readable(self.listener.as_fd()) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => return Err(listen_err(e.into())),
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.serve_client(stream, backend, stop),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // ECONNABORTED, EMFILE...: the listener itself is fine;
                    // back off so a persistent error does not spin.
                    warn!(path = %self.path.display(), error = %e, "accept failed");
                    std::thread::sleep(POLL_INTERVAL);
                }
            }
        }
    }

    fn serve_client(&self, stream: UnixStream, backend: &mut dyn Backend, stop: &AtomicBool) {
        info!(path = %self.path.display(), "vfio-user client connected");
        if let Err(e) = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_write_timeout(Some(SEND_TIMEOUT)))
        {
            warn!(error = %e, "cannot configure the client socket; dropping the client");
            return;
        }
        backend.connected();
        let mut conn = Connection::new(stream, backend);
        let end = conn.run(stop);
        match &end {
            ConnectionEnd::Eof => {
                info!(path = %self.path.display(), "vfio-user client disconnected")
            }
            ConnectionEnd::Stopped => info!("server stopping: dropping the vfio-user client"),
            ConnectionEnd::Protocol(why) => {
                warn!(reason = %why, "closing the vfio-user connection: protocol error")
            }
            ConnectionEnd::Io(e) => {
                warn!(error = %e, "closing the vfio-user connection: I/O error")
            }
        }
        drop(conn);
        backend.disconnected();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let current = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if current.is_some() && current == self.ident {
            if let Err(e) = std::fs::remove_file(&self.path) {
                warn!(path = %self.path.display(), error = %e, "cannot remove the socket file");
            }
        }
    }
}

/// Waits up to [`POLL_INTERVAL`] for `fd` to become readable (or hung up).
fn wait_readable(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let ms = u16::try_from(POLL_INTERVAL.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum ConnectionEnd {
    /// The client closed the socket between messages.
    Eof,
    /// The stop flag was set.
    Stopped,
    /// The stream cannot be trusted any more.
    Protocol(String),
    /// The socket failed.
    Io(std::io::Error),
}

/// One framed request.
struct Request {
    header: Header,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// What a successful command sends back (after the header).
struct Reply {
    body: Vec<u8>,
    fd: Option<RawFd>,
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

/// Size of the fixed body of each supported command (`None`: not supported).
fn fixed_body_len(command: u16) -> Option<usize> {
    Some(match command {
        CMD_VERSION => size_of::<Version>(),
        CMD_DMA_MAP => size_of::<DmaMap>(),
        CMD_DMA_UNMAP => size_of::<DmaUnmap>(),
        CMD_DEVICE_GET_INFO => size_of::<DeviceInfo>(),
        CMD_DEVICE_GET_REGION_INFO => REGION_INFO_LEN,
        CMD_DEVICE_GET_IRQ_INFO => size_of::<IrqInfo>(),
        CMD_DEVICE_SET_IRQS => size_of::<SetIrqs>(),
        CMD_REGION_READ | CMD_REGION_WRITE => size_of::<RegionAccess>(),
        CMD_DEVICE_RESET => 0,
        _ => return None,
    })
}

/// Whether `FLAG_NO_REPLY` is meaningful: commands whose reply carries data
/// are refused (and not executed) when the client says it wants no reply.
fn allows_no_reply(command: u16) -> bool {
    matches!(
        command,
        CMD_DMA_MAP | CMD_DMA_UNMAP | CMD_DEVICE_SET_IRQS | CMD_REGION_WRITE | CMD_DEVICE_RESET
    )
}

/// Whether a reply is due: the message is a command without `FLAG_NO_REPLY`.
fn wants_reply(header: &Header) -> bool {
    header.flags & FLAG_TYPE_MASK == FLAG_TYPE_COMMAND && header.flags & FLAG_NO_REPLY == 0
}

/// Reads a `T` at the start of `bytes` (EINVAL when too short).
fn read_pod<T: Pod>(bytes: &[u8]) -> Result<T, Errno> {
    bytes
        .get(..size_of::<T>())
        .map(pod_read_unaligned::<T>)
        .ok_or(Errno::EINVAL)
}

/// `num_regions`/`num_irqs`: one past the highest index described.
fn count_of(indices: impl Iterator<Item = u32>) -> u32 {
    indices.map(|i| i.saturating_add(1)).max().unwrap_or(0)
}

/// The server's capabilities, as sent in the `VERSION` reply.
fn server_capabilities() -> serde_json::Value {
    let pgsize = page_size();
    serde_json::json!({
        "capabilities": {
            "max_msg_fds": MAX_FDS,
            "max_data_xfer_size": MAX_DATA_XFER,
            "pgsizes": pgsize,
            "max_dma_maps": MAX_DMA_MAPS,
            "migration": { "pgsize": pgsize },
        }
    })
}

fn page_size() -> u64 {
    // SAFETY: sysconf takes no pointers and only reads a constant of the
    // running system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// Checks the client's optional version data: a NUL-terminated UTF-8 JSON
/// object whose `capabilities`, when present, is an object.
fn check_client_capabilities(data: &[u8]) -> Result<(), &'static str> {
    let Some((&last, text)) = data.split_last() else {
        return Ok(()); // "version data ... Optional."
    };
    if last != 0 {
        return Err("version data is not NUL-terminated");
    }
    let text = std::str::from_utf8(text).map_err(|_| "version data is not UTF-8")?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| "version data is not valid JSON")?;
    let obj = value
        .as_object()
        .ok_or("version data is not a JSON object")?;
    match obj.get("capabilities") {
        None => Ok(()),
        Some(caps) => {
            let caps = caps
                .as_object()
                .ok_or("\"capabilities\" is not an object")?;
            for key in [
                "max_msg_fds",
                "max_data_xfer_size",
                "max_dma_maps",
                "pgsizes",
            ] {
                if caps.get(key).is_some_and(|v| !v.is_u64()) {
                    return Err("a numeric capability is not a non-negative integer");
                }
            }
            Ok(())
        }
    }
}

/// The body of a `DEVICE_GET_REGION_INFO` reply for `region`, given the
/// client's `argsz`, and the descriptor to send with it.
fn region_info_reply(region: Option<&RegionDesc>, index: u32, argsz: u32) -> Reply {
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
    info.flags = region.flags & (REGION_FLAG_READ | REGION_FLAG_WRITE);
    let mmap = region.mmap.filter(|_| region.size > 0);
    let Some((fd, offset)) = mmap else {
        return Reply::of(&info);
    };
    // One sparse-mmap capability with one area covering the whole region.
    let cap_len = size_of::<CapHeader>() + size_of::<SparseMmap>() + size_of::<SparseArea>();
    let full = (REGION_INFO_LEN + cap_len) as u32;
    info.flags |= REGION_FLAG_MMAP;
    info.offset = offset;
    info.argsz = full;
    let mut body = Vec::with_capacity(full as usize);
    if argsz >= full {
        // Like libvfio-user: CAPS and cap_offset only when the chain is sent;
        // otherwise argsz tells the client how much to ask for next time.
        info.flags |= REGION_FLAG_CAPS;
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
        body.extend_from_slice(bytes_of(&info));
    }
    // "When [MMAP] is set, the reply will include a file descriptor."
    Reply { body, fd: Some(fd) }
}

/// Checks a region access against the described regions.
fn check_access(
    regions: &[RegionDesc],
    access: &RegionAccess,
    need_flag: u32,
) -> Result<(), Errno> {
    let region = regions
        .iter()
        .find(|r| r.index == access.region)
        .ok_or(Errno::EINVAL)?;
    if region.flags & need_flag == 0 {
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
struct Connection<'b> {
    stream: UnixStream,
    backend: &'b mut dyn Backend,
    /// The backend's regions as last reported (refreshed on `DEVICE_GET_INFO`
    /// and `GET_REGION_INFO`), used to bound region accesses.
    regions: Vec<RegionDesc>,
    irqs: Vec<IrqDesc>,
}

impl<'b> Connection<'b> {
    fn new(stream: UnixStream, backend: &'b mut dyn Backend) -> Connection<'b> {
        let regions = backend.regions();
        let irqs = backend.irqs();
        Connection {
            stream,
            backend,
            regions,
            irqs,
        }
    }

    /// Handles messages until the client leaves, the stream breaks or `stop`.
    fn run(&mut self, stop: &AtomicBool) -> ConnectionEnd {
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

    /// Waits for readability, checking `stop` every [`POLL_INTERVAL`].
    fn wait(&self, stop: &AtomicBool) -> Result<(), ConnectionEnd> {
        loop {
            // Relaxed: `stop` is a lone flag; no data is published with it.
            if stop.load(Ordering::Relaxed) {
                return Err(ConnectionEnd::Stopped);
            }
            match wait_readable(self.stream.as_fd()) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(ConnectionEnd::Io(e.into())),
            }
        }
    }

    /// Receives up to `buf.len()` bytes, adding any descriptors to `fds`.
    /// Returns 0 at EOF.
    fn recv(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        stop: &AtomicBool,
    ) -> Result<usize, ConnectionEnd> {
        loop {
            self.wait(stop)?;
            let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
            let mut iov = [IoSliceMut::new(buf)];
            let msg = match recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(msg) => msg,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => return Err(ConnectionEnd::Io(e.into())),
            };
            let cmsgs = msg.cmsgs().map_err(|_| {
                // Cannot happen with a buffer for SCM_MAX_FD descriptors; if it
                // did, descriptors could not be accounted for.
                ConnectionEnd::Protocol("control data truncated (MSG_CTRUNC)".into())
            })?;
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
            return Ok(msg.bytes);
        }
    }

    /// Fills `buf` completely. EOF before the first byte is `Ok(false)` when
    /// `eof_ok`; EOF later is a truncated message.
    fn recv_exact(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        stop: &AtomicBool,
        eof_ok: bool,
    ) -> Result<bool, ConnectionEnd> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.get_mut(done..).unwrap_or_default();
            let n = self.recv(rest, fds, stop)?;
            if n == 0 {
                if done == 0 && eof_ok {
                    return Ok(false);
                }
                return Err(ConnectionEnd::Protocol(format!(
                    "truncated message: EOF after {done} of {} bytes",
                    buf.len()
                )));
            }
            done += n;
        }
        Ok(true)
    }

    /// Reads and discards `len` body bytes.
    fn discard(
        &self,
        mut len: usize,
        fds: &mut Vec<OwnedFd>,
        stop: &AtomicBool,
    ) -> Result<(), ConnectionEnd> {
        let mut scratch = [0u8; 4096];
        while len > 0 {
            let chunk = len.min(scratch.len());
            self.recv_exact(&mut scratch[..chunk], fds, stop, false)?;
            len -= chunk;
        }
        Ok(())
    }

    /// Reads one message. `Ok(None)`: the message was consumed and already
    /// answered (bad body size or unsupported command).
    fn read_request(&mut self, stop: &AtomicBool) -> Result<Option<Request>, ConnectionEnd> {
        let mut fds = Vec::new();
        let mut raw = [0u8; HEADER_LEN];
        if !self.recv_exact(&mut raw, &mut fds, stop, true)? {
            return Err(ConnectionEnd::Eof);
        }
        let header: Header = pod_read_unaligned(&raw);
        let size = header.message_size;
        if (size as usize) < HEADER_LEN {
            return Err(ConnectionEnd::Protocol(format!(
                "message {} (command {}): message_size {size} is smaller than the {HEADER_LEN}-byte header",
                header.message_id, header.command
            )));
        }
        if size > MAX_MESSAGE {
            return Err(ConnectionEnd::Protocol(format!(
                "message {} (command {}): message_size {size} exceeds the {MAX_MESSAGE}-byte limit",
                header.message_id, header.command
            )));
        }
        let body_len = size as usize - HEADER_LEN;
        debug!(
            id = header.message_id,
            command = header.command,
            size,
            fds = fds.len(),
            "vfio-user request"
        );
        let refusal = match fixed_body_len(header.command) {
            None => Some((Errno::ENOTSUP, "unsupported command")),
            Some(min) if body_len < min => {
                Some((Errno::EINVAL, "body shorter than the command's fixed part"))
            }
            Some(_) => None,
        };
        if let Some((errno, why)) = refusal {
            self.discard(body_len, &mut fds, stop)?;
            warn!(
                id = header.message_id,
                command = header.command,
                size,
                %errno,
                "refusing vfio-user request: {why}"
            );
            if wants_reply(&header) {
                self.reply_error(&header, errno)?;
            }
            return Ok(None);
        }
        let mut body = vec![0u8; body_len];
        self.recv_exact(&mut body, &mut fds, stop, false)?;
        Ok(Some(Request { header, body, fds }))
    }

    /// Executes one request and sends its reply.
    fn handle(&mut self, request: Request) -> Result<(), ConnectionEnd> {
        let Request { header, body, fds } = request;
        if header.flags & FLAG_TYPE_MASK != FLAG_TYPE_COMMAND {
            warn!(
                id = header.message_id,
                command = header.command,
                flags = header.flags,
                "ignoring a vfio-user message that is not a command"
            );
            return Ok(());
        }
        let no_reply = header.flags & FLAG_NO_REPLY != 0;
        // A data-returning command that wants no reply is a client bug (and
        // a read may have side effects); descriptors only come with DMA_MAP
        // and SET_IRQS, at most MAX_FDS of them.
        let takes_fds = matches!(header.command, CMD_DMA_MAP | CMD_DEVICE_SET_IRQS);
        let refused = (no_reply && !allows_no_reply(header.command))
            || fds.len() > MAX_FDS
            || (!fds.is_empty() && !takes_fds);
        let outcome = if refused {
            Err(Errno::EINVAL)
        } else {
            self.execute(header.command, &body, fds)
        };
        match outcome {
            Ok(reply) if no_reply => {
                drop(reply);
                Ok(())
            }
            Ok(reply) => self.send(&header, 0, 0, &reply.body, reply.fd),
            Err(errno) => {
                warn!(
                    id = header.message_id,
                    command = header.command,
                    %errno,
                    no_reply,
                    "vfio-user request failed"
                );
                if no_reply {
                    Ok(())
                } else {
                    self.reply_error(&header, errno)
                }
            }
        }
    }

    fn execute(&mut self, command: u16, body: &[u8], fds: Vec<OwnedFd>) -> Result<Reply, Errno> {
        match command {
            CMD_VERSION => self.version(body),
            CMD_DMA_MAP => self.dma_map(body, fds),
            CMD_DMA_UNMAP => self.dma_unmap(body),
            CMD_DEVICE_GET_INFO => self.device_info(body),
            CMD_DEVICE_GET_REGION_INFO => self.region_info(body),
            CMD_DEVICE_GET_IRQ_INFO => self.irq_info(body),
            CMD_DEVICE_SET_IRQS => self.set_irqs(body, fds),
            CMD_REGION_READ => self.region_read(body),
            CMD_REGION_WRITE => self.region_write(body),
            CMD_DEVICE_RESET => {
                self.backend.reset();
                Ok(Reply::empty())
            }
            _ => Err(Errno::ENOTSUP),
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
        if let Err(why) = check_client_capabilities(data) {
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
        out.extend_from_slice(server_capabilities().to_string().as_bytes());
        out.push(0);
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
        if (map.argsz as usize) < size_of::<DmaMap>()
            || fds.len() > 1
            || map.flags & !(DMA_FLAG_READ | DMA_FLAG_WRITE) != 0
            || map.address.checked_add(map.size).is_none()
        {
            return Err(Errno::EINVAL);
        }
        self.backend
            .dma_map(map.address, map.size, map.offset, map.flags, fds.pop())?;
        Ok(Reply::empty())
    }

    fn dma_unmap(&mut self, body: &[u8]) -> Result<Reply, Errno> {
        let unmap: DmaUnmap = read_pod(body)?;
        if (unmap.argsz as usize) < size_of::<DmaUnmap>()
            || unmap.flags & !DMA_UNMAP_FLAG_ALL != 0
            || (unmap.flags & DMA_UNMAP_FLAG_ALL != 0 && (unmap.address != 0 || unmap.size != 0))
        {
            return Err(Errno::EINVAL);
        }
        self.backend
            .dma_unmap(unmap.address, unmap.size, unmap.flags)?;
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
            flags: DEVICE_FLAG_PCI | DEVICE_FLAG_RESET,
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
            .map_or((0, 0), |i| (i.flags, i.count));
        Ok(Reply::of(&IrqInfo {
            argsz: size_of::<IrqInfo>() as u32,
            flags,
            index: asked.index,
            count,
        }))
    }

    fn set_irqs(&mut self, body: &[u8], fds: Vec<OwnedFd>) -> Result<Reply, Errno> {
        let set: SetIrqs = read_pod(body)?;
        let data = set.flags & (IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD);
        let action =
            set.flags & (IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER);
        if (set.argsz as usize) < size_of::<SetIrqs>()
            || set.flags & !(data | action) != 0
            || data.count_ones() != 1
            || action.count_ones() != 1
        {
            return Err(Errno::EINVAL);
        }
        if data == IRQ_SET_DATA_BOOL {
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
        match data {
            // One descriptor per vector, or none to de-assign them ("If no
            // file descriptors are provided, this de-assigns ...").
            IRQ_SET_DATA_EVENTFD if !fds.is_empty() && fds.len() != set.count as usize => {
                return Err(Errno::EINVAL)
            }
            IRQ_SET_DATA_NONE if !fds.is_empty() => return Err(Errno::EINVAL),
            _ => {}
        }
        self.backend
            .set_irqs(set.index, set.flags, set.start, set.count, fds)?;
        Ok(Reply::empty())
    }

    fn region_read(&mut self, body: &[u8]) -> Result<Reply, Errno> {
        let access: RegionAccess = read_pod(body)?;
        if access.count > MAX_DATA_XFER {
            return Err(Errno::EINVAL);
        }
        check_access(&self.regions, &access, REGION_FLAG_READ)?;
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
        check_access(&self.regions, &access, REGION_FLAG_WRITE)?;
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
        let size = HEADER_LEN + body.len();
        let header = Header {
            message_id: request.message_id,
            command: request.command,
            message_size: u32::try_from(size)
                .map_err(|_| ConnectionEnd::Protocol("reply too large".into()))?,
            flags: FLAG_TYPE_REPLY | extra_flags,
            error,
        };
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(bytes_of(&header));
        out.extend_from_slice(body);
        send_all(&self.stream, &out, fd).map_err(ConnectionEnd::Io)
    }
}

/// Writes all of `bytes`, passing `fd` (if any) with the first chunk. The
/// socket's send timeout bounds each wait.
fn send_all(stream: &UnixStream, bytes: &[u8], fd: Option<RawFd>) -> std::io::Result<()> {
    let mut done = 0;
    let fd_arr: Vec<RawFd> = fd.into_iter().collect();
    while done < bytes.len() {
        let rest = bytes.get(done..).unwrap_or_default();
        let iov = [IoSlice::new(rest)];
        let rights = [ControlMessage::ScmRights(&fd_arr)];
        let cmsgs: &[ControlMessage<'_>] = if done == 0 && !fd_arr.is_empty() {
            &rights
        } else {
            &[]
        };
        match sendmsg::<()>(
            stream.as_raw_fd(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use sbnet_abi::vfio_user::{REGION_FLAG_READ, REGION_FLAG_WRITE};
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn temp_dir(name: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sbnet-vfu-unit-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    /// A config region of 256 bytes and one mmap-able region 2 (fd given).
    struct Mock {
        config: [u8; 256],
        mmap_fd: Option<RawFd>,
        resets: usize,
        disconnects: usize,
    }

    impl Mock {
        fn new() -> Mock {
            Mock {
                config: [0; 256],
                mmap_fd: None,
                resets: 0,
                disconnects: 0,
            }
        }
    }

    impl Backend for Mock {
        fn regions(&self) -> Vec<RegionDesc> {
            vec![
                RegionDesc {
                    index: 2,
                    size: 0x1000,
                    flags: REGION_FLAG_READ | REGION_FLAG_WRITE,
                    mmap: self.mmap_fd.map(|fd| (fd, 0x2000)),
                },
                RegionDesc {
                    index: 7,
                    size: 256,
                    flags: REGION_FLAG_READ | REGION_FLAG_WRITE,
                    mmap: None,
                },
            ]
        }
        fn irqs(&self) -> Vec<IrqDesc> {
            vec![IrqDesc {
                index: 2,
                count: 3,
                flags: 1,
            }]
        }
        fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
            if region != 7 {
                return Err(Errno::EIO);
            }
            let at = offset as usize;
            data.copy_from_slice(&self.config[at..at + data.len()]);
            Ok(())
        }
        fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
            if region != 7 {
                return Err(Errno::EIO);
            }
            let at = offset as usize;
            self.config[at..at + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn dma_map(
            &mut self,
            _: u64,
            _: u64,
            _: u64,
            _: u32,
            fd: Option<OwnedFd>,
        ) -> Result<(), Errno> {
            fd.map(drop).ok_or(Errno::EINVAL)
        }
        fn dma_unmap(&mut self, _: u64, _: u64, _: u32) -> Result<(), Errno> {
            Ok(())
        }
        fn set_irqs(
            &mut self,
            _: u32,
            _: u32,
            _: u32,
            _: u32,
            _: Vec<OwnedFd>,
        ) -> Result<(), Errno> {
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
        fn disconnected(&mut self) {
            self.disconnects += 1;
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
        let mut out = bytes_of(&header).to_vec();
        out.extend_from_slice(body);
        out
    }

    /// Reads one reply; None at EOF.
    fn read_reply(stream: &mut UnixStream) -> Option<(Header, Vec<u8>)> {
        let mut raw = [0u8; HEADER_LEN];
        stream.read_exact(&mut raw).ok()?;
        let header: Header = pod_read_unaligned(&raw);
        let mut body = vec![0u8; header.message_size as usize - HEADER_LEN];
        stream.read_exact(&mut body).ok()?;
        Some((header, body))
    }

    /// Runs a Connection on one end of a socketpair in a thread.
    fn with_connection(mock: Mock, client: impl FnOnce(&mut UnixStream)) -> (Mock, ConnectionEnd) {
        let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
        ours.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let server = std::thread::spawn(move || {
            let mut mock = mock;
            let end = Connection::new(theirs, &mut mock).run(&stop2);
            (mock, end)
        });
        client(&mut ours);
        drop(ours);
        let result = server.join().expect("connection thread panicked");
        stop.store(true, Ordering::Relaxed);
        result
    }

    #[test]
    fn bind_reports_missing_directory() {
        let dir = temp_dir("missing");
        let path = dir.join("no-such-dir").join("s.sock");
        match Server::bind(&path) {
            Err(ServerError::MissingParent { dir: d }) => assert_eq!(d, dir.join("no-such-dir")),
            other => panic!("expected MissingParent, got {other:?}"),
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bind_leaves_a_regular_file_alone() {
        let dir = temp_dir("file");
        let path = dir.join("s.sock");
        std::fs::write(&path, b"keep me").expect("write");
        assert!(matches!(
            Server::bind(&path),
            Err(ServerError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&path).expect("read"), b"keep me");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bind_replaces_a_stale_socket_and_refuses_a_live_one() {
        let dir = temp_dir("stale");
        let path = dir.join("s.sock");
        drop(UnixListener::bind(&path).expect("bind")); // leaves the file
        assert!(path.exists());
        let server = Server::bind(&path).expect("stale socket replaced");
        match Server::bind(&path) {
            Err(e @ ServerError::InUse { .. }) => {
                assert!(e.to_string().contains("choose another --socket"))
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(server);
        assert!(!path.exists(), "drop removes the socket file");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn client_capabilities_are_checked() {
        assert!(check_client_capabilities(b"").is_ok());
        assert!(check_client_capabilities(b"{}\0").is_ok());
        assert!(check_client_capabilities(b"{\"capabilities\":{\"max_msg_fds\":8}}\0").is_ok());
        for bad in [
            &b"{}"[..],
            b"{not json}\0",
            b"\xff\xfe\0",
            b"[1,2]\0",
            b"{\"capabilities\":3}\0",
            b"{\"capabilities\":{\"max_msg_fds\":-1}}\0",
            b"{}\0{}\0",
        ] {
            assert!(check_client_capabilities(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn region_info_sends_caps_only_when_they_fit() {
        let region = RegionDesc {
            index: 2,
            size: 0x1000,
            flags: REGION_FLAG_READ | REGION_FLAG_WRITE,
            mmap: Some((42, 0x2000)),
        };
        let small = region_info_reply(Some(&region), 2, REGION_INFO_LEN as u32);
        assert_eq!(small.body.len(), REGION_INFO_LEN);
        assert_eq!(small.fd, Some(42));
        let info: RegionInfo = pod_read_unaligned(&small.body);
        assert_eq!(info.argsz, 64);
        assert_eq!(info.flags & REGION_FLAG_CAPS, 0);
        assert_ne!(info.flags & REGION_FLAG_MMAP, 0);
        assert_eq!(info.offset, 0x2000);

        let full = region_info_reply(Some(&region), 2, 64);
        assert_eq!(full.body.len(), 64);
        let info: RegionInfo = pod_read_unaligned(&full.body[..REGION_INFO_LEN]);
        assert_eq!(info.flags & REGION_FLAG_CAPS, REGION_FLAG_CAPS);
        assert_eq!(info.cap_offset, 32);
        let cap: CapHeader = pod_read_unaligned(&full.body[32..40]);
        assert_eq!(
            (cap.id, cap.version, cap.next),
            (REGION_CAP_SPARSE_MMAP, 1, 0)
        );
        let sparse: SparseMmap = pod_read_unaligned(&full.body[40..48]);
        assert_eq!(sparse.nr_areas, 1);
        let area: SparseArea = pod_read_unaligned(&full.body[48..64]);
        assert_eq!((area.offset, area.size), (0, 0x1000));

        let absent = region_info_reply(None, 5, 64);
        let info: RegionInfo = pod_read_unaligned(&absent.body);
        assert_eq!((info.index, info.size, info.flags), (5, 0, 0));
        assert_eq!(absent.fd, None);
    }

    #[test]
    fn version_reply_never_exceeds_the_proposed_minor() {
        let (_, end) = with_connection(Mock::new(), |s| {
            let mut body = bytes_of(&Version { major: 0, minor: 0 }).to_vec();
            body.extend_from_slice(b"{}\0");
            s.write_all(&message(7, CMD_VERSION, 0, &body))
                .expect("send");
            let (h, reply) = read_reply(s).expect("reply");
            assert_eq!(
                (h.message_id, h.command, h.flags),
                (7, CMD_VERSION, FLAG_TYPE_REPLY)
            );
            let v: Version = pod_read_unaligned(&reply[..4]);
            assert_eq!((v.major, v.minor), (0, 0));
            assert_eq!(reply.last(), Some(&0));
            let json: serde_json::Value =
                serde_json::from_slice(&reply[4..reply.len() - 1]).expect("json");
            assert_eq!(json["capabilities"]["max_msg_fds"], MAX_FDS);

            let mut body = bytes_of(&Version { major: 0, minor: 9 }).to_vec();
            body.extend_from_slice(b"{}\0");
            s.write_all(&message(8, CMD_VERSION, 0, &body))
                .expect("send");
            let (_, reply) = read_reply(s).expect("reply");
            let v: Version = pod_read_unaligned(&reply[..4]);
            assert_eq!(v.minor, VERSION_MINOR);

            let body = bytes_of(&Version { major: 1, minor: 0 }).to_vec();
            s.write_all(&message(9, CMD_VERSION, 0, &body))
                .expect("send");
            let (h, _) = read_reply(s).expect("reply");
            assert_eq!(h.flags, FLAG_TYPE_REPLY | FLAG_ERROR);
            assert_eq!(h.error, Errno::ENOTSUP as u32);
        });
        assert!(matches!(end, ConnectionEnd::Eof));
    }

    #[test]
    fn no_reply_is_honoured_and_queries_without_reply_are_not_run() {
        let (mock, end) = with_connection(Mock::new(), |s| {
            let write = RegionAccess {
                offset: 0x10,
                region: 7,
                count: 4,
            };
            let mut body = bytes_of(&write).to_vec();
            body.extend_from_slice(&[1, 2, 3, 4]);
            s.write_all(&message(1, CMD_REGION_WRITE, FLAG_NO_REPLY, &body))
                .expect("send");
            s.write_all(&message(2, CMD_DEVICE_RESET, FLAG_NO_REPLY, &[]))
                .expect("send");
            let read = RegionAccess {
                offset: 0x10,
                region: 7,
                count: 4,
            };
            s.write_all(&message(3, CMD_REGION_READ, FLAG_NO_REPLY, bytes_of(&read)))
                .expect("send");
            s.write_all(&message(4, CMD_REGION_READ, 0, bytes_of(&read)))
                .expect("send");
            let (h, reply) = read_reply(s).expect("reply");
            assert_eq!(h.message_id, 4, "only the last message is answered");
            assert_eq!(&reply[16..], &[1, 2, 3, 4]);
        });
        assert!(matches!(end, ConnectionEnd::Eof));
        assert_eq!(mock.resets, 1);
    }

    #[test]
    fn untrusted_sizes_close_the_connection() {
        for size in [0u32, 15, MAX_MESSAGE + 1, u32::MAX] {
            let (_, end) = with_connection(Mock::new(), |s| {
                let header = Header {
                    message_id: 1,
                    command: CMD_VERSION,
                    message_size: size,
                    flags: 0,
                    error: 0,
                };
                s.write_all(bytes_of(&header)).expect("send");
                assert!(read_reply(s).is_none(), "size {size}: expected EOF");
            });
            assert!(
                matches!(end, ConnectionEnd::Protocol(_)),
                "size {size}: {end:?}"
            );
        }
    }

    #[test]
    fn region_info_over_the_socket_carries_the_fd() {
        let memfd =
            nix::sys::memfd::memfd_create(c"unit", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
                .expect("memfd");
        let mut mock = Mock::new();
        mock.mmap_fd = Some(memfd.as_raw_fd());
        let (_, end) = with_connection(mock, |s| {
            let asked = RegionInfo {
                argsz: 64,
                index: 2,
                ..RegionInfo::default()
            };
            s.write_all(&message(1, CMD_DEVICE_GET_REGION_INFO, 0, bytes_of(&asked)))
                .expect("send");
            let mut raw = [0u8; 80];
            let mut cmsg = nix::cmsg_space!([RawFd; 2]);
            let mut iov = [IoSliceMut::new(&mut raw)];
            let msg = recvmsg::<()>(
                s.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .expect("recvmsg");
            assert_eq!(msg.bytes, 80);
            let mut got = Vec::new();
            for c in msg.cmsgs().expect("cmsgs") {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for fd in fds {
                        // SAFETY: installed for us by this recvmsg; sole owner.
                        got.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            assert_eq!(got.len(), 1);
        });
        assert!(matches!(end, ConnectionEnd::Eof));
    }

    #[test]
    fn stop_ends_an_idle_connection() {
        let (_ours, theirs) = UnixStream::pair().expect("socketpair");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let server = std::thread::spawn(move || {
            let mut mock = Mock::new();
            let end = Connection::new(theirs, &mut mock).run(&stop2);
            matches!(end, ConnectionEnd::Stopped)
        });
        std::thread::sleep(Duration::from_millis(50));
        let t = std::time::Instant::now();
        stop.store(true, Ordering::Relaxed);
        assert!(server.join().expect("no panic"));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
