//! vfio-user front end: a thin server that speaks the protocol on a UNIX
//! socket and forwards each request to a [`Backend`]. It knows nothing of
//! virtio; the virtio-net function implements [`Backend`].
//!
//! Messages come from an untrusted client: every size is checked against the
//! message and against [`sbnet_abi::vfio_user::MAX_MESSAGE`] before anything
//! is allocated, and a malformed message gets an error reply (or closes the
//! connection when the stream cannot be resynchronised), never a panic.

pub mod server;

pub use server::{Server, ServerError, MAX_DATA_XFER};

use nix::errno::Errno;
use std::os::fd::{OwnedFd, RawFd};

/// Static description of one region, as `DEVICE_GET_REGION_INFO` reports it.
#[derive(Debug, Clone)]
pub struct RegionDesc {
    /// Region index (`layout::CONFIG_REGION` for config space, 0-5 for BARs).
    pub index: u32,
    /// Size in bytes (0 = region not implemented).
    pub size: u64,
    /// `REGION_FLAG_*` (`MMAP` and `CAPS` are derived from `mmap`).
    pub flags: u32,
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
    /// `IRQ_INFO_*`.
    pub flags: u32,
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
        flags: u32,
        fd: Option<OwnedFd>,
    ) -> Result<(), Errno>;
    /// Unmaps a range (or all with `DMA_UNMAP_FLAG_ALL`).
    fn dma_unmap(&mut self, iova: u64, size: u64, flags: u32) -> Result<(), Errno>;
    /// `DEVICE_SET_IRQS` with the fds that came with it.
    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Errno>;
    /// `DEVICE_RESET`.
    fn reset(&mut self);
    /// A client connected (after the socket accept, before any message).
    fn connected(&mut self) {}
    /// The client went away (EOF, error, or server shutdown): drop its DMA
    /// maps and IRQ fds and reset the function.
    fn disconnected(&mut self);
}
