//! The wire: message layouts, the [`Command`] numbers, the flag sets, the
//! protocol limits, and the framing ([`send_message`], [`recv_header`],
//! [`recv_body`]) that both the server and the client use.
//!
//! The protocol is QEMU 10.1+'s and libvfio-user's (QEMU's
//! `docs/interop/vfio-user.rst`; sbnet's `docs/abi.md` §7).

mod command;
mod flags;
mod io;
mod layout;

pub use command::Command;
pub use flags::{DeviceFlags, DmaMapFlags, DmaUnmapFlags, IrqInfoFlags, IrqSetFlags, RegionFlags};
pub(crate) use io::wait_readable;
pub use io::{recv_body, recv_header, send_message, Message, RecvError, Wait, POLL_INTERVAL};
pub use layout::*;

use core::mem::size_of;

/// Protocol major version sbnet speaks.
pub const VERSION_MAJOR: u16 = 0;
/// Protocol minor version sbnet speaks.
pub const VERSION_MINOR: u16 = 1;

/// Largest message either end accepts or sends (header included).
pub const MAX_MESSAGE: u32 = 1 << 20;

/// Most file descriptors one message may carry (advertised as `max_msg_fds`).
pub const MAX_FDS: usize = 16;

/// The kernel's `SCM_MAX_FD`: the most descriptors one `recvmsg` can return.
/// The receive control buffer is sized for all of them, so that every
/// descriptor the kernel installs is seen (and closed when refused) instead
/// of leaking behind `MSG_CTRUNC`.
pub const SCM_MAX_FD: usize = 253;

/// Largest `count` of one `REGION_READ`/`REGION_WRITE` (advertised as
/// `max_data_xfer_size`): the largest that keeps the whole message, header
/// and [`RegionAccess`] included, within [`MAX_MESSAGE`].
pub const MAX_DATA_XFER: u32 = MAX_MESSAGE - (HEADER_LEN + size_of::<RegionAccess>()) as u32;

/// The running system's page size (4096 if it cannot be read).
pub fn page_size() -> u64 {
    // SAFETY: sysconf takes no pointers and only reads a constant of the
    // running system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

impl Header {
    /// Whether a reply is due: the message is a command without
    /// `FLAG_NO_REPLY`.
    pub fn wants_reply(&self) -> bool {
        self.flags & FLAG_TYPE_MASK == FLAG_TYPE_COMMAND && self.flags & FLAG_NO_REPLY == 0
    }

    /// The header's body length (`message_size` minus the header), or
    /// `None` when `message_size` is outside `HEADER_LEN..=MAX_MESSAGE`.
    pub fn body_len(&self) -> Option<usize> {
        if self.message_size > MAX_MESSAGE {
            return None;
        }
        (self.message_size as usize).checked_sub(HEADER_LEN)
    }
}

/// Reads a `T` at `offset` of `bytes`; `None` when `bytes` is too short.
pub fn pod_at<T: bytemuck::Pod>(bytes: &[u8], offset: usize) -> Option<T> {
    offset
        .checked_add(size_of::<T>())
        .and_then(|end| bytes.get(offset..end))
        .map(bytemuck::pod_read_unaligned::<T>)
}
