//! PCI identity, configuration-space offsets and the virtio vendor
//! capabilities (virtio 1.2 §4.1.4).

use core::mem::size_of;

/// Red Hat / virtio vendor ID.
pub const VENDOR_ID: u16 = 0x1af4;
/// Modern (non-transitional) virtio-net: 0x1040 + device type 1.
pub const DEVICE_ID_NET: u16 = 0x1041;
/// Revision ID of a modern virtio device (virtio 1.2 §4.1.2.1: at least 1).
pub const REVISION_ID: u8 = 1;
/// Subsystem vendor ID reported by sbnet.
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// Subsystem ID: virtio device type (1 = network).
pub const SUBSYSTEM_ID: u16 = 0x0001;
/// Class code: network controller (0x02), Ethernet (0x00), prog-if 0.
pub const CLASS_CODE: u32 = 0x02_00_00;

/// Config-space register offsets (PCI 3.0 type-0 header).
pub mod cfg {
    /// Vendor ID (u16).
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID (u16).
    pub const DEVICE_ID: usize = 0x02;
    /// Command register (u16).
    pub const COMMAND: usize = 0x04;
    /// Status register (u16).
    pub const STATUS: usize = 0x06;
    /// Revision ID (u8).
    pub const REVISION_ID: usize = 0x08;
    /// Class code, 3 bytes starting at prog-if.
    pub const CLASS_PROG: usize = 0x09;
    /// Header type (u8).
    pub const HEADER_TYPE: usize = 0x0e;
    /// First base address register (u32); six of them follow.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID (u16).
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem ID (u16).
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Capabilities pointer (u8).
    pub const CAP_PTR: usize = 0x34;
    /// Interrupt line (u8).
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin (u8).
    pub const INTERRUPT_PIN: usize = 0x3d;
    /// Size of the conventional config space.
    pub const SIZE: usize = 256;
}

/// Command register: memory space enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register: capabilities list present.
pub const STATUS_CAP_LIST: u16 = 1 << 4;

/// BAR low bits: memory space, 32-bit.
pub const BAR_MEM32: u32 = 0b000;
/// BAR low bits: memory space, 64-bit (takes two BAR registers).
pub const BAR_MEM64: u32 = 0b100;
/// BAR low bits: prefetchable.
pub const BAR_PREFETCH: u32 = 0b1000;

/// Capability ID: vendor specific (virtio structures).
pub const CAP_ID_VENDOR: u8 = 0x09;
/// Capability ID: MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

/// `virtio_pci_cap.cfg_type`: common configuration.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `virtio_pci_cap.cfg_type`: notifications.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `virtio_pci_cap.cfg_type`: ISR status.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `virtio_pci_cap.cfg_type`: device-specific configuration.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// `virtio_pci_cap.cfg_type`: PCI configuration access.
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
/// `virtio_pci_cap.cfg_type`: shared memory region (virtio 1.2 §4.1.4.7).
pub const VIRTIO_PCI_CAP_SHARED_MEMORY_CFG: u8 = 8;

/// `struct virtio_pci_cap` (virtio 1.2 §4.1.4): 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct VirtioPciCap {
    /// Generic PCI field: [`CAP_ID_VENDOR`].
    pub cap_vndr: u8,
    /// Generic PCI field: next capability pointer.
    pub cap_next: u8,
    /// Length of this capability structure in bytes.
    pub cap_len: u8,
    /// Which structure this describes (`VIRTIO_PCI_CAP_*`).
    pub cfg_type: u8,
    /// Which BAR holds the structure.
    pub bar: u8,
    /// Identifies multiple capabilities of one type (shared-memory region id).
    pub id: u8,
    /// Padding.
    pub padding: [u8; 2],
    /// Offset within the BAR (low 32 bits).
    pub offset: u32,
    /// Length of the structure (low 32 bits).
    pub length: u32,
}

/// `struct virtio_pci_notify_cap`: the generic cap plus the multiplier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct VirtioPciNotifyCap {
    /// The generic part, `cfg_type` = [`VIRTIO_PCI_CAP_NOTIFY_CFG`].
    pub cap: VirtioPciCap,
    /// Queue notify address = `offset + queue_notify_off * notify_off_multiplier`.
    pub notify_off_multiplier: u32,
}

/// `struct virtio_pci_cap64`: used by the shared-memory capability whose
/// offset and length can exceed 32 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct VirtioPciCap64 {
    /// The generic part, `cfg_type` = [`VIRTIO_PCI_CAP_SHARED_MEMORY_CFG`].
    pub cap: VirtioPciCap,
    /// Offset within the BAR, high 32 bits.
    pub offset_hi: u32,
    /// Length, high 32 bits.
    pub length_hi: u32,
}

/// MSI-X capability (PCI 3.0 §6.8.2): 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MsixCap {
    /// [`CAP_ID_MSIX`].
    pub cap_id: u8,
    /// Next capability pointer.
    pub cap_next: u8,
    /// Message control: table size - 1 in bits 0..=10, function mask bit 14, enable bit 15.
    pub msg_ctl: u16,
    /// Table BAR indicator (bits 0..=2) and offset.
    pub table: u32,
    /// PBA BAR indicator (bits 0..=2) and offset.
    pub pba: u32,
}

/// MSI-X message control: enable.
pub const MSIX_CTL_ENABLE: u16 = 1 << 15;
/// MSI-X message control: function mask.
pub const MSIX_CTL_FUNCTION_MASK: u16 = 1 << 14;
/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY_SIZE: usize = 16;
/// Offset of the vector control word inside an MSI-X table entry.
pub const MSIX_ENTRY_VECTOR_CTL: usize = 12;
/// Vector control: masked.
pub const MSIX_ENTRY_MASKED: u32 = 1;

/// Size of [`VirtioPciCap`].
pub const VIRTIO_PCI_CAP_LEN: usize = size_of::<VirtioPciCap>();

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn cap_layouts() {
        assert_eq!(size_of::<VirtioPciCap>(), 16);
        assert_eq!(offset_of!(VirtioPciCap, cfg_type), 3);
        assert_eq!(offset_of!(VirtioPciCap, bar), 4);
        assert_eq!(offset_of!(VirtioPciCap, id), 5);
        assert_eq!(offset_of!(VirtioPciCap, offset), 8);
        assert_eq!(offset_of!(VirtioPciCap, length), 12);
        assert_eq!(size_of::<VirtioPciNotifyCap>(), 20);
        assert_eq!(offset_of!(VirtioPciNotifyCap, notify_off_multiplier), 16);
        assert_eq!(size_of::<VirtioPciCap64>(), 24);
        assert_eq!(offset_of!(VirtioPciCap64, offset_hi), 16);
        assert_eq!(offset_of!(VirtioPciCap64, length_hi), 20);
        assert_eq!(size_of::<MsixCap>(), 12);
        assert_eq!(offset_of!(MsixCap, msg_ctl), 2);
        assert_eq!(offset_of!(MsixCap, table), 4);
        assert_eq!(offset_of!(MsixCap, pba), 8);
    }
}
