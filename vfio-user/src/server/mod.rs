//! The vfio-user server: a thin front end that speaks the protocol on a UNIX
//! socket and forwards each request to a [`Backend`]. It knows nothing of
//! virtio; sbnet's virtio-net function implements [`Backend`].
//!
//! Messages come from an untrusted client: every size is checked against the
//! message and against [`MAX_MESSAGE`](crate::wire::MAX_MESSAGE) before
//! anything is allocated, and a malformed message gets an error reply (or
//! closes the connection when the stream cannot be resynchronised), never a
//! panic.
//!
//! | file | what |
//! |---|---|
//! | `listen.rs` | [`Server`]: bind (stale-socket handling), the accept loop, stop |
//! | `connection.rs` | one client: framing, refusals, per-command checks, replies |

mod connection;
mod listen;
#[cfg(test)]
mod tests;

pub use crate::wire::{MAX_DATA_XFER, POLL_INTERVAL};
#[doc(hidden)]
pub use listen::serve_stream;
pub use listen::{Server, ServerError, SEND_TIMEOUT};

use crate::wire::{DmaMapFlags, DmaUnmapFlags, IrqInfoFlags, IrqSetFlags, RegionFlags};
use nix::errno::Errno;
use std::os::fd::{OwnedFd, RawFd};

/// Static description of one region, as `DEVICE_GET_REGION_INFO` reports it.
#[derive(Debug, Clone)]
pub struct RegionDesc {
    /// Region index (`layout::CONFIG_REGION` for config space, 0-5 for BARs).
    pub index: u32,
    /// Size in bytes (0 = region not implemented).
    pub size: u64,
    /// `READ`/`WRITE` (`MMAP` and `CAPS` are derived from `mmap`).
    pub flags: RegionFlags,
    /// When the region can be mapped: the file descriptor to send and its
    /// offset. The whole region is one mmap-able area.
    pub mmap: Option<(RawFd, u64)>,
}

/// Static description of one IRQ index, as `DEVICE_GET_IRQ_INFO` reports it.
#[derive(Debug, Clone, Copy)]
pub struct IrqDesc {
    /// IRQ index (`layout::IRQ_*`).
    pub index: u32,
    /// Number of vectors.
    pub count: u32,
    /// What the index supports.
    pub flags: IrqInfoFlags,
}

/// What a vfio-user server serves. Every method gets already-framed,
/// size-checked arguments; each returns an errno for the error reply.
pub trait Backend {
    /// The regions to report; called when a client connects and once per
    /// `DEVICE_GET_INFO`/`GET_REGION_INFO`. The server keeps the last answer
    /// to bound `REGION_READ`/`REGION_WRITE` before calling the backend.
    fn regions(&self) -> Vec<RegionDesc>;
    /// The IRQ indices to report; called when a client connects and once per
    /// `DEVICE_GET_INFO`.
    fn irqs(&self) -> Vec<IrqDesc>;
    /// Reads `data.len()` bytes at `offset` of `region`.
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno>;
    /// Writes `data` at `offset` of `region`.
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;
    /// Maps `[iova, iova + size)` of the client's memory from `fd` at `file_offset`.
    fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        file_offset: u64,
        flags: DmaMapFlags,
        fd: Option<OwnedFd>,
    ) -> Result<(), Errno>;
    /// Unmaps a range (or all with [`DmaUnmapFlags::ALL`]).
    fn dma_unmap(&mut self, iova: u64, size: u64, flags: DmaUnmapFlags) -> Result<(), Errno>;
    /// `DEVICE_SET_IRQS` with the fds that came with it. The server has
    /// checked that `flags` holds exactly one data type and one action,
    /// that the range fits the index, and the descriptor count.
    fn set_irqs(
        &mut self,
        index: u32,
        flags: IrqSetFlags,
        start: u32,
        count: u32,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Errno>;
    /// `DEVICE_RESET`.
    fn reset(&mut self);
    /// The most DMA maps the backend holds at once: advertised as
    /// `max_dma_maps` in the `VERSION` reply.
    fn max_dma_maps(&self) -> u32;
    /// A client connected (after the socket accept, before any message).
    fn connected(&mut self) {}
    /// The client went away (EOF, error, or server shutdown): drop its DMA
    /// maps and IRQ fds and reset the function.
    fn disconnected(&mut self);
}
