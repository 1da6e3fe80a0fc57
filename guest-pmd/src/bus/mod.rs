//! The PMD's view of a PCI function: config space, BAR access, the mapped
//! Shared Buffers BAR and DMA memory. Driver logic above this trait is the
//! same for every transport.
//!
//! Implementations: [`vfio_user::VfioUserBus`] (a host process acts as its
//! own VMM over a host-pair socket) and [`vfio::VfioBus`] (kernel VFIO inside a guest).

pub mod vfio;
pub mod vfio_user;

use thiserror::Error;

/// Errors of a bus.
#[derive(Debug, Error)]
pub enum BusError {
    /// Connecting to the device failed.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket or device path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The transport failed (socket closed, short read...).
    #[error("transport error: {0}")]
    Transport(String),
    /// The device replied with an error.
    #[error("device refused {what}: errno {errno}")]
    Refused {
        /// What was asked.
        what: &'static str,
        /// The errno it replied with.
        errno: i32,
    },
    /// The device does not look like what the PMD drives.
    #[error("unexpected device: {0}")]
    Unexpected(String),
    /// Mapping memory failed.
    #[error("memory mapping failed: {0}")]
    Map(String),
}

/// A range of memory visible to both the PMD (at `ptr`) and the device (at `iova`).
#[derive(Debug, Clone, Copy)]
pub struct DmaRegion {
    /// Where the PMD process sees it.
    pub ptr: *mut u8,
    /// The DMA address the device uses for its first byte.
    pub iova: u64,
    /// Length in bytes.
    pub len: usize,
}

// SAFETY: DmaRegion is a plain description of a mapping; the mapping itself
// is owned by the bus, which outlives every user (the driver holds the bus).
unsafe impl Send for DmaRegion {}

/// A BAR mapped into the PMD process.
#[derive(Debug, Clone, Copy)]
pub struct MappedBar {
    /// Where the PMD process sees the BAR.
    pub ptr: *mut u8,
    /// The bus address the BAR is programmed at (what descriptors use).
    pub bus_addr: u64,
    /// Length in bytes.
    pub len: usize,
}

// SAFETY: as for DmaRegion: the bus owns the mapping and outlives its users.
unsafe impl Send for MappedBar {}

/// One PCI function as the PMD sees it.
pub trait Bus: Send {
    /// Reads PCI config space.
    fn config_read(&mut self, offset: u16, data: &mut [u8]) -> Result<(), BusError>;
    /// Writes PCI config space.
    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), BusError>;
    /// Reads `data.len()` bytes (1, 2, 4 or 8) of BAR `bar` at `offset`.
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), BusError>;
    /// Writes BAR `bar` at `offset`.
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), BusError>;
    /// Maps BAR `bar` (it must be mmap-able) and reports the address it was
    /// programmed at. Maps once; later calls return the same mapping.
    fn map_bar(&mut self, bar: u8) -> Result<MappedBar, BusError>;
    /// Allocates `len` bytes of zeroed DMA memory (page-rounded) that the
    /// device can read and write. The memory stays valid as long as the bus.
    fn dma_alloc(&mut self, len: usize) -> Result<DmaRegion, BusError>;
    /// Resets the function through the transport (vfio-user `DEVICE_RESET`).
    fn reset(&mut self) -> Result<(), BusError>;
}

/// A boxed bus is a bus, so an application can choose the transport at run
/// time (`Port<Box<dyn Bus>>`, as `sbnet-testpmd --socket | --pci` does).
impl<B: Bus + ?Sized> Bus for Box<B> {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) -> Result<(), BusError> {
        (**self).config_read(offset, data)
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), BusError> {
        (**self).config_write(offset, data)
    }
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), BusError> {
        (**self).bar_read(bar, offset, data)
    }
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), BusError> {
        (**self).bar_write(bar, offset, data)
    }
    fn map_bar(&mut self, bar: u8) -> Result<MappedBar, BusError> {
        (**self).map_bar(bar)
    }
    fn dma_alloc(&mut self, len: usize) -> Result<DmaRegion, BusError> {
        (**self).dma_alloc(len)
    }
    fn reset(&mut self) -> Result<(), BusError> {
        (**self).reset()
    }
}
