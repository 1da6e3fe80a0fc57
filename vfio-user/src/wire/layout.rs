//! Message layouts: every message starts with a [`Header`]; the bodies
//! follow `<linux/vfio.h>` structures. All fields are little-endian (sbnet
//! builds only for little-endian targets, see `sbnet_abi`).

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
    /// A [`Command`](super::Command) number.
    pub command: u16,
    /// Whole message size including this header.
    pub message_size: u32,
    /// `FLAG_*` (message type and header flags).
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
    /// [`DmaMapFlags`](super::DmaMapFlags) bits.
    pub flags: u32,
    /// Offset into the passed file descriptor.
    pub offset: u64,
    /// DMA (I/O virtual) address where the range starts.
    pub address: u64,
    /// Bytes in the range.
    pub size: u64,
}

/// `DMA_UNMAP` body.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DmaUnmap {
    /// Size of this body.
    pub argsz: u32,
    /// [`DmaUnmapFlags`](super::DmaUnmapFlags) bits.
    pub flags: u32,
    /// Start of the range.
    pub address: u64,
    /// Bytes in the range.
    pub size: u64,
}

/// `DEVICE_GET_INFO` body (`struct vfio_device_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DeviceInfo {
    /// Size of this body.
    pub argsz: u32,
    /// [`DeviceFlags`](super::DeviceFlags) bits.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ indices.
    pub num_irqs: u32,
}

/// `DEVICE_GET_REGION_INFO` body (`struct vfio_region_info`); a capability
/// chain may follow when `argsz` allows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RegionInfo {
    /// Size of the caller's buffer (command) or of the full info (reply).
    pub argsz: u32,
    /// [`RegionFlags`](super::RegionFlags) bits.
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
    /// [`IrqInfoFlags`](super::IrqInfoFlags) bits.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// Number of vectors.
    pub count: u32,
}

/// `DEVICE_SET_IRQS` body (`struct vfio_irq_set`); file descriptors travel
/// as `SCM_RIGHTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SetIrqs {
    /// Size of this body.
    pub argsz: u32,
    /// [`IrqSetFlags`](super::IrqSetFlags) bits.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
}

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
