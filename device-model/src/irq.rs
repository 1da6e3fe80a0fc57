//! Interrupt file descriptors from a VMM, made safe to signal.
//!
//! A client's `SET_IRQS` may carry any fd: the write end of a pipe that
//! nobody reads, a socket, a file. Writing to such an fd can block, and the
//! switch signals interrupts while it holds the pair's lock, so one blocked
//! write would stop the peer's traffic too. So an interrupt fd is accepted
//! only if it is an eventfd, and it is switched to non-blocking: a write
//! then either adds to the counter or, when the counter is saturated (the
//! interrupt is pending anyway), fails at once with `EAGAIN`.

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use std::os::fd::{AsRawFd, OwnedFd};
use thiserror::Error;

/// Why an interrupt fd is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IrqError {
    /// The fd is not an eventfd (a pipe, socket, file, ...).
    #[error("interrupt fd is not an eventfd ({0}); pass eventfds in SET_IRQS")]
    NotEventfd(String),
    /// `fcntl` failed on the fd.
    #[error("interrupt fd: fcntl failed: {0}")]
    Fcntl(nix::errno::Errno),
}

/// An eventfd in non-blocking mode: signalling it never blocks.
#[derive(Debug)]
pub struct IrqFd(OwnedFd);

impl IrqFd {
    /// Checks that `fd` is an eventfd and makes it non-blocking.
    pub fn new(fd: OwnedFd) -> Result<Self, IrqError> {
        // The kernel names an eventfd's inode "anon_inode:[eventfd]" in
        // /proc; nothing else has that name.
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| IrqError::NotEventfd(e.to_string()))?;
        let name = link.to_string_lossy();
        if name != "anon_inode:[eventfd]" {
            return Err(IrqError::NotEventfd(name.into_owned()));
        }
        let fl = OFlag::from_bits_truncate(
            fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(IrqError::Fcntl)?,
        );
        if !fl.contains(OFlag::O_NONBLOCK) {
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))
                .map_err(IrqError::Fcntl)?;
        }
        Ok(Self(fd))
    }

    /// Adds one to the eventfd's counter. Never blocks; a saturated
    /// counter (`EAGAIN`) means an interrupt is pending already, so it is
    /// not an error.
    #[inline]
    pub fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // An eventfd write is 8 bytes or nothing; the only failures are a
        // saturated counter (EAGAIN) and a closed or broken fd, which the
        // client caused and can only affect its own interrupts.
        let _ = nix::unistd::write(&self.0, &one);
    }
}

impl AsRawFd for IrqFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use std::os::fd::AsFd;

    #[test]
    fn only_eventfds_are_accepted() {
        let (r, w) = nix::unistd::pipe().unwrap();
        assert!(matches!(IrqFd::new(w), Err(IrqError::NotEventfd(_))));
        drop(r);
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(matches!(
            IrqFd::new(OwnedFd::from(f)),
            Err(IrqError::NotEventfd(_))
        ));
        let e = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap();
        let irq = IrqFd::new(OwnedFd::from(e)).unwrap();
        let fl = OFlag::from_bits_truncate(fcntl(irq.as_raw_fd(), FcntlArg::F_GETFL).unwrap());
        assert!(fl.contains(OFlag::O_NONBLOCK));
    }

    #[test]
    fn a_saturated_eventfd_does_not_block() {
        let e = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap();
        let client = e.as_fd().try_clone_to_owned().unwrap();
        let irq = IrqFd::new(OwnedFd::from(e)).unwrap();
        // The client fills the counter to its maximum (u64::MAX - 1).
        nix::unistd::write(&client, &(u64::MAX - 1).to_ne_bytes()).unwrap();
        // A blocking write would hang here forever.
        irq.signal();
        irq.signal();
    }
}
