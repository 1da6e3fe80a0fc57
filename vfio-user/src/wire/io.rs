//! Framing, for both ends: one routine sends a message with descriptors,
//! one receives a header (size-checked before one body byte is read), one
//! receives a body. Descriptors arrive as `SCM_RIGHTS`; each is wrapped in
//! an [`OwnedFd`] as soon as `recvmsg` returns, so none can leak.

use super::{Header, HEADER_LEN, MAX_MESSAGE, SCM_MAX_FD};
use bytemuck::{bytes_of, pod_read_unaligned};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use thiserror::Error;

/// How long a [`Wait::Until`] receive waits in `poll` before looking at its
/// stop flag again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How a receive waits for bytes.
#[derive(Debug, Clone, Copy)]
pub enum Wait<'a> {
    /// Block in `recvmsg`; the socket's read timeout bounds each wait (the
    /// client: a server that does not answer is an error).
    Blocking,
    /// Poll, checking the flag at least every [`POLL_INTERVAL`] (the server:
    /// an idle client may wait forever, but `stop` ends the wait).
    Until(&'a AtomicBool),
}

/// One received message.
#[derive(Debug)]
pub struct Message {
    /// The header (its `message_size` already checked).
    pub header: Header,
    /// The body (`message_size - HEADER_LEN` bytes).
    pub body: Vec<u8>,
    /// Every descriptor that came with the message.
    pub fds: Vec<OwnedFd>,
}

/// Why a receive failed. Except for [`RecvError::Eof`] between messages,
/// the stream cannot be trusted to find the next message afterwards.
#[derive(Debug, Error)]
pub enum RecvError {
    /// The peer closed the connection between messages.
    #[error("the peer closed the connection")]
    Eof,
    /// The [`Wait::Until`] flag was set.
    #[error("stopped")]
    Stopped,
    /// Nothing arrived within the socket's read timeout ([`Wait::Blocking`]).
    #[error("nothing received within the read timeout")]
    TimedOut,
    /// The peer closed the connection inside a message.
    #[error("truncated message: EOF after {done} of {len} bytes")]
    Truncated {
        /// Bytes received.
        done: usize,
        /// Bytes expected.
        len: usize,
    },
    /// `message_size` is smaller than the header.
    #[error("message {id} (command {command}): message_size {size} is smaller than the {HEADER_LEN}-byte header")]
    TooSmall {
        /// `message_id`.
        id: u16,
        /// `command`.
        command: u16,
        /// `message_size`.
        size: u32,
    },
    /// `message_size` exceeds [`MAX_MESSAGE`].
    #[error("message {id} (command {command}): message_size {size} exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge {
        /// `message_id`.
        id: u16,
        /// `command`.
        command: u16,
        /// `message_size`.
        size: u32,
    },
    /// The kernel truncated the control data: descriptors could not be
    /// accounted for. (Cannot happen with a buffer for [`SCM_MAX_FD`].)
    #[error("control data truncated (MSG_CTRUNC)")]
    ControlTruncated,
    /// The socket failed.
    #[error("receive failed: {0}")]
    Io(Errno),
}

/// Waits up to [`POLL_INTERVAL`] for `fd` to become readable (or hung up).
pub(crate) fn wait_readable(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let ms = u16::try_from(POLL_INTERVAL.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits (for [`Wait::Until`]) until `stream` is readable.
fn wait(stream: &UnixStream, how: Wait<'_>) -> Result<(), RecvError> {
    let Wait::Until(stop) = how else {
        return Ok(());
    };
    loop {
        // Relaxed: `stop` is a lone flag; no data is published with it.
        if stop.load(Ordering::Relaxed) {
            return Err(RecvError::Stopped);
        }
        if wait_readable(stream.as_fd()).map_err(RecvError::Io)? {
            return Ok(());
        }
    }
}

/// Receives up to `buf.len()` bytes, adding any descriptors to `fds`.
/// Returns 0 at EOF.
fn recv_some(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    how: Wait<'_>,
) -> Result<usize, RecvError> {
    let flags = match how {
        Wait::Blocking => MsgFlags::MSG_CMSG_CLOEXEC,
        Wait::Until(_) => MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    };
    loop {
        wait(stream, how)?;
        let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
            Ok(msg) => msg,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => match how {
                Wait::Blocking => return Err(RecvError::TimedOut),
                Wait::Until(_) => continue,
            },
            Err(e) => return Err(RecvError::Io(e)),
        };
        let cmsgs = msg.cmsgs().map_err(|_| RecvError::ControlTruncated)?;
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for fd in raw {
                    // SAFETY: the kernel has just installed `fd` in this
                    // process for this recvmsg call; nothing else refers to
                    // it, so this OwnedFd is its only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        return Ok(msg.bytes);
    }
}

/// Fills `buf` completely. EOF before the first byte is [`RecvError::Eof`]
/// when `eof_ok`; any other EOF is a truncated message.
fn recv_exact(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    how: Wait<'_>,
    eof_ok: bool,
) -> Result<(), RecvError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = buf.get_mut(done..).unwrap_or_default();
        let n = recv_some(stream, rest, fds, how)?;
        if n == 0 {
            if done == 0 && eof_ok {
                return Err(RecvError::Eof);
            }
            return Err(RecvError::Truncated {
                done,
                len: buf.len(),
            });
        }
        done += n;
    }
    Ok(())
}

/// Receives one header and checks its `message_size` (at least
/// [`HEADER_LEN`], at most [`MAX_MESSAGE`]) before anything else is read
/// or allocated. Descriptors that arrive with it are added to `fds`.
pub fn recv_header(
    stream: &UnixStream,
    fds: &mut Vec<OwnedFd>,
    how: Wait<'_>,
) -> Result<Header, RecvError> {
    let mut raw = [0u8; HEADER_LEN];
    recv_exact(stream, &mut raw, fds, how, true)?;
    let header: Header = pod_read_unaligned(&raw);
    let (id, command, size) = (header.message_id, header.command, header.message_size);
    if (size as usize) < HEADER_LEN {
        return Err(RecvError::TooSmall { id, command, size });
    }
    if size > MAX_MESSAGE {
        return Err(RecvError::TooLarge { id, command, size });
    }
    Ok(header)
}

/// Receives the body of `header` (from [`recv_header`]), or with `keep`
/// false reads and discards it in small chunks (a refused message is not
/// worth allocating for). Descriptors are added to `fds`.
pub fn recv_body(
    stream: &UnixStream,
    header: &Header,
    keep: bool,
    fds: &mut Vec<OwnedFd>,
    how: Wait<'_>,
) -> Result<Vec<u8>, RecvError> {
    let (id, command, size) = (header.message_id, header.command, header.message_size);
    let len = header
        .body_len()
        .ok_or(RecvError::TooLarge { id, command, size })?;
    if keep {
        let mut body = vec![0u8; len];
        recv_exact(stream, &mut body, fds, how, false)?;
        return Ok(body);
    }
    let mut scratch = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let chunk = left.min(scratch.len());
        recv_exact(stream, &mut scratch[..chunk], fds, how, false)?;
        left -= chunk;
    }
    Ok(Vec::new())
}

/// Sends `header` (its `message_size` set here) and `body`, passing `fds`
/// with the first chunk. The socket's send timeout bounds each wait. A
/// message over [`MAX_MESSAGE`] is not sent (`InvalidInput`).
pub fn send_message(
    stream: &UnixStream,
    header: &Header,
    body: &[u8],
    fds: &[RawFd],
) -> std::io::Result<()> {
    let size = HEADER_LEN
        .checked_add(body.len())
        .and_then(|s| u32::try_from(s).ok())
        .filter(|&s| s <= MAX_MESSAGE)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("message exceeds {MAX_MESSAGE} bytes"),
            )
        })?;
    let header = Header {
        message_size: size,
        ..*header
    };
    let mut bytes = Vec::with_capacity(size as usize);
    bytes.extend_from_slice(bytes_of(&header));
    bytes.extend_from_slice(body);
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
