//! vfio-user message layouts (the vfio-user protocol as implemented by
//! QEMU 10.1+ and libvfio-user). Every message starts with a [`Header`];
//! the body layouts follow `<linux/vfio.h>` structures.

/// Protocol major version sbnet speaks.
pub const VERSION_MAJOR: u16 = 0;
/// Protocol minor version sbnet speaks.
pub const VERSION_MINOR: u16 = 1;

/// Command: negotiate version and capabilities.
pub const CMD_VERSION: u16 = 1;
/// Command: map a range of the client's memory for DMA.
pub const CMD_DMA_MAP: u16 = 2;
/// Command: unmap a DMA range.
pub const CMD_DMA_UNMAP: u16 = 3;
/// Command: device info.
pub const CMD_DEVICE_GET_INFO: u16 = 4;
/// Command: region info.
pub const CMD_DEVICE_GET_REGION_INFO: u16 = 5;
/// Command: region I/O fds (not supported by sbnet).
pub const CMD_DEVICE_GET_REGION_IO_FDS: u16 = 6;
/// Command: IRQ info.
pub const CMD_DEVICE_GET_IRQ_INFO: u16 = 7;
/// Command: set IRQ eventfds / actions.
pub const CMD_DEVICE_SET_IRQS: u16 = 8;
/// Command: read from a region.
pub const CMD_REGION_READ: u16 = 9;
/// Command: write to a region.
pub const CMD_REGION_WRITE: u16 = 10;
/// Command: server reads client memory (not used by sbnet).
pub const CMD_DMA_READ: u16 = 11;
/// Command: server writes client memory (not used by sbnet).
pub const CMD_DMA_WRITE: u16 = 12;
/// Command: reset the device.
pub const CMD_DEVICE_RESET: u16 = 13;

/// Header flag bits 0..=3: message type.
pub const FLAG_TYPE_MASK: u32 = 0xf;
/// Message type: command.
pub const FLAG_TYPE_COMMAND: u32 = 0;
/// Message type: reply.
pub const FLAG_TYPE_REPLY: u32 = 1;
/// Header flag: the sender wants no reply.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// Header flag: the reply carries an error in `error`.
pub const FLAG_ERROR: u32 = 1 << 5;

/// Every message's 16-byte header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Header {
    /// Matches a reply to its command.
    pub message_id: u16,
    /// `CMD_*`.
    pub command: u16,
    /// Whole message size including this header.
    pub message_size: u32,
    /// `FLAG_*`.
    pub flags: u32,
    /// errno of a failed command (with `FLAG_ERROR`).
    pub error: u32,
}

/// Size of [`Header`].
pub const HEADER_LEN: usize = core::mem::size_of::<Header>();

/// `VERSION` body; a NUL-terminated JSON capabilities string follows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

/// `DMA_MAP` body. With a file descriptor, `offset` is the offset into it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DmaMap {
    /// Size of this body.
    pub argsz: u32,
    /// `DMA_FLAG_*`.
    pub flags: u32,
    /// Offset into the passed file descriptor.
    pub offset: u64,
    /// DMA (I/O virtual) address where the range starts.
    pub address: u64,
    /// Bytes in the range.
    pub size: u64,
}

/// DMA map flag: the device may read.
pub const DMA_FLAG_READ: u32 = 1;
/// DMA map flag: the device may write.
pub const DMA_FLAG_WRITE: u32 = 2;

/// `DMA_UNMAP` body.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DmaUnmap {
    /// Size of this body.
    pub argsz: u32,
    /// `DMA_UNMAP_FLAG_*`.
    pub flags: u32,
    /// Start of the range.
    pub address: u64,
    /// Bytes in the range.
    pub size: u64,
}

/// DMA unmap flag: unmap everything (address and size must be 0).
pub const DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;

/// `DEVICE_GET_INFO` body (`struct vfio_device_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DeviceInfo {
    /// Size of this body.
    pub argsz: u32,
    /// `DEVICE_FLAG_*`.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ indices.
    pub num_irqs: u32,
}

/// Device flag: supports reset.
pub const DEVICE_FLAG_RESET: u32 = 1;
/// Device flag: PCI device.
pub const DEVICE_FLAG_PCI: u32 = 2;

/// `DEVICE_GET_REGION_INFO` body (`struct vfio_region_info`); a capability
/// chain may follow when `argsz` allows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RegionInfo {
    /// Size of the caller's buffer (command) or of the full info (reply).
    pub argsz: u32,
    /// `REGION_FLAG_*`.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability from the start of this struct.
    pub cap_offset: u32,
    /// Region size.
    pub size: u64,
    /// Offset to pass to `mmap` with the file descriptor of the reply.
    pub offset: u64,
}

/// Size of [`RegionInfo`].
pub const REGION_INFO_LEN: usize = core::mem::size_of::<RegionInfo>();

/// Region flag: readable.
pub const REGION_FLAG_READ: u32 = 1;
/// Region flag: writable.
pub const REGION_FLAG_WRITE: u32 = 2;
/// Region flag: mmap-able with the reply's file descriptor.
pub const REGION_FLAG_MMAP: u32 = 4;
/// Region flag: a capability chain follows.
pub const REGION_FLAG_CAPS: u32 = 8;

/// Capability header in a region-info chain (`struct vfio_info_cap_header`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CapHeader {
    /// Capability ID.
    pub id: u16,
    /// Capability version.
    pub version: u16,
    /// Offset of the next capability from the start of [`RegionInfo`], 0 = last.
    pub next: u32,
}

/// Capability ID: sparse mmap areas.
pub const REGION_CAP_SPARSE_MMAP: u16 = 1;

/// Sparse mmap capability body: `nr_areas` [`SparseArea`]s follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SparseMmap {
    /// Number of areas.
    pub nr_areas: u32,
    /// Reserved.
    pub reserved: u32,
}

/// One mmap-able area of a region.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SparseArea {
    /// Offset of the area in the region.
    pub offset: u64,
    /// Size of the area.
    pub size: u64,
}

/// `REGION_READ` / `REGION_WRITE` body; write data (or read reply data) follows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RegionAccess {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Byte count.
    pub count: u32,
}

/// `DEVICE_GET_IRQ_INFO` body (`struct vfio_irq_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct IrqInfo {
    /// Size of this body.
    pub argsz: u32,
    /// `IRQ_INFO_*`.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// Number of vectors.
    pub count: u32,
}

/// IRQ info flag: eventfd signalling supported.
pub const IRQ_INFO_EVENTFD: u32 = 1;
/// IRQ info flag: the vector count cannot be resized.
pub const IRQ_INFO_NORESIZE: u32 = 8;

/// `DEVICE_SET_IRQS` body (`struct vfio_irq_set`); file descriptors travel
/// as `SCM_RIGHTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SetIrqs {
    /// Size of this body.
    pub argsz: u32,
    /// `IRQ_SET_*`.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
}

/// Set-IRQs data type: none.
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// Set-IRQs data type: bools (not supported by sbnet).
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// Set-IRQs data type: eventfds.
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// Set-IRQs action: mask.
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// Set-IRQs action: unmask.
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// Set-IRQs action: trigger.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

/// Largest message sbnet's server accepts or sends (header included).
pub const MAX_MESSAGE: u32 = 1 << 20;
/// Most file descriptors one message may carry.
pub const MAX_FDS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn message_layouts() {
        assert_eq!(HEADER_LEN, 16);
        assert_eq!(size_of::<Version>(), 4);
        assert_eq!(size_of::<DmaMap>(), 32);
        assert_eq!(size_of::<DmaUnmap>(), 24);
        assert_eq!(size_of::<DeviceInfo>(), 16);
        assert_eq!(REGION_INFO_LEN, 32);
        assert_eq!(size_of::<CapHeader>(), 8);
        assert_eq!(size_of::<SparseMmap>(), 8);
        assert_eq!(size_of::<SparseArea>(), 16);
        assert_eq!(size_of::<RegionAccess>(), 16);
        assert_eq!(size_of::<IrqInfo>(), 16);
        assert_eq!(size_of::<SetIrqs>(), 20);
    }
}
