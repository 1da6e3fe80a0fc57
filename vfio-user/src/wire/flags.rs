//! The protocol's flag sets as [`bitflags`] types. The message structs keep
//! `u32` fields (they are plain `Pod` layouts); convert with
//! `from_bits_retain` / `bits`.

use bitflags::bitflags;

bitflags! {
    /// `DEVICE_GET_INFO` flags (`VFIO_DEVICE_FLAGS_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct DeviceFlags: u32 {
        /// The device supports reset.
        const RESET = 1;
        /// A PCI device.
        const PCI = 1 << 1;
    }
}

bitflags! {
    /// Region flags (`VFIO_REGION_INFO_FLAG_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct RegionFlags: u32 {
        /// Readable.
        const READ = 1;
        /// Writable.
        const WRITE = 1 << 1;
        /// mmap-able with the reply's file descriptor.
        const MMAP = 1 << 2;
        /// A capability chain follows.
        const CAPS = 1 << 3;
    }
}

bitflags! {
    /// `DMA_MAP` flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct DmaMapFlags: u32 {
        /// The device may read.
        const READ = 1;
        /// The device may write.
        const WRITE = 1 << 1;
    }
}

bitflags! {
    /// `DMA_UNMAP` flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct DmaUnmapFlags: u32 {
        /// Unmap everything (address and size must be 0).
        const ALL = 1 << 1;
    }
}

bitflags! {
    /// `DEVICE_GET_IRQ_INFO` flags (`VFIO_IRQ_INFO_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct IrqInfoFlags: u32 {
        /// Eventfd signalling supported.
        const EVENTFD = 1;
        /// The vector count cannot be resized.
        const NORESIZE = 1 << 3;
    }
}

bitflags! {
    /// `DEVICE_SET_IRQS` flags (`VFIO_IRQ_SET_*`): exactly one data type and
    /// one action.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct IrqSetFlags: u32 {
        /// Data type: none.
        const DATA_NONE = 1;
        /// Data type: bools (not supported by sbnet).
        const DATA_BOOL = 1 << 1;
        /// Data type: eventfds.
        const DATA_EVENTFD = 1 << 2;
        /// Action: mask.
        const ACTION_MASK = 1 << 3;
        /// Action: unmask.
        const ACTION_UNMASK = 1 << 4;
        /// Action: trigger.
        const ACTION_TRIGGER = 1 << 5;
    }
}

impl IrqSetFlags {
    /// Every data-type bit.
    pub const DATA: IrqSetFlags = IrqSetFlags::DATA_NONE
        .union(IrqSetFlags::DATA_BOOL)
        .union(IrqSetFlags::DATA_EVENTFD);
    /// Every action bit.
    pub const ACTION: IrqSetFlags = IrqSetFlags::ACTION_MASK
        .union(IrqSetFlags::ACTION_UNMASK)
        .union(IrqSetFlags::ACTION_TRIGGER);

    /// The data-type bits of these flags.
    pub fn data(self) -> IrqSetFlags {
        self & IrqSetFlags::DATA
    }

    /// The action bits of these flags.
    pub fn action(self) -> IrqSetFlags {
        self & IrqSetFlags::ACTION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of `<linux/vfio.h>` the protocol reuses.
    #[test]
    fn flag_values() {
        assert_eq!(DeviceFlags::all().bits(), 0b11);
        assert_eq!(RegionFlags::all().bits(), 0b1111);
        assert_eq!(DmaMapFlags::all().bits(), 0b11);
        assert_eq!(DmaUnmapFlags::ALL.bits(), 2);
        assert_eq!(IrqInfoFlags::all().bits(), 0b1001);
        assert_eq!(IrqSetFlags::DATA.bits(), 0b111);
        assert_eq!(IrqSetFlags::ACTION.bits(), 0b111000);
    }
}
