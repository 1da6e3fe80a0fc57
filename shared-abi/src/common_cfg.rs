//! virtio 1.x common configuration structure (virtio 1.2 §4.1.4.3), device
//! status bits and transport feature bits.

/// `struct virtio_pci_common_cfg`, the 1.0 part (56 bytes). Field offsets are
/// the register offsets inside the common-config window; the `off` module
/// names them for code that decodes accesses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CommonCfg {
    /// Selects which 32-bit window of device features `device_feature` shows.
    pub device_feature_select: u32,
    /// Device features, 32 bits at a time (read-only).
    pub device_feature: u32,
    /// Selects which 32-bit window of driver features `driver_feature` shows.
    pub driver_feature_select: u32,
    /// Driver (accepted) features, 32 bits at a time.
    pub driver_feature: u32,
    /// MSI-X vector for configuration-change interrupts.
    pub config_msix_vector: u16,
    /// Number of virtqueues (read-only).
    pub num_queues: u16,
    /// Device status (`STATUS_*`).
    pub device_status: u8,
    /// Configuration atomicity value (read-only).
    pub config_generation: u8,
    /// Selects the queue the `queue_*` fields refer to.
    pub queue_select: u16,
    /// Queue size; reads the maximum after reset, the driver may lower it.
    pub queue_size: u16,
    /// MSI-X vector for the selected queue.
    pub queue_msix_vector: u16,
    /// 1 = queue enabled.
    pub queue_enable: u16,
    /// Notification offset of the selected queue (read-only).
    pub queue_notify_off: u16,
    /// Descriptor table address.
    pub queue_desc: u64,
    /// Driver (available) ring address.
    pub queue_driver: u64,
    /// Device (used) ring address.
    pub queue_device: u64,
}

/// Register offsets inside [`CommonCfg`].
pub mod off {
    use super::CommonCfg;
    use core::mem::offset_of;
    /// `device_feature_select`.
    pub const DEVICE_FEATURE_SELECT: usize = offset_of!(CommonCfg, device_feature_select);
    /// `device_feature`.
    pub const DEVICE_FEATURE: usize = offset_of!(CommonCfg, device_feature);
    /// `driver_feature_select`.
    pub const DRIVER_FEATURE_SELECT: usize = offset_of!(CommonCfg, driver_feature_select);
    /// `driver_feature`.
    pub const DRIVER_FEATURE: usize = offset_of!(CommonCfg, driver_feature);
    /// `config_msix_vector`.
    pub const CONFIG_MSIX_VECTOR: usize = offset_of!(CommonCfg, config_msix_vector);
    /// `num_queues`.
    pub const NUM_QUEUES: usize = offset_of!(CommonCfg, num_queues);
    /// `device_status`.
    pub const DEVICE_STATUS: usize = offset_of!(CommonCfg, device_status);
    /// `config_generation`.
    pub const CONFIG_GENERATION: usize = offset_of!(CommonCfg, config_generation);
    /// `queue_select`.
    pub const QUEUE_SELECT: usize = offset_of!(CommonCfg, queue_select);
    /// `queue_size`.
    pub const QUEUE_SIZE: usize = offset_of!(CommonCfg, queue_size);
    /// `queue_msix_vector`.
    pub const QUEUE_MSIX_VECTOR: usize = offset_of!(CommonCfg, queue_msix_vector);
    /// `queue_enable`.
    pub const QUEUE_ENABLE: usize = offset_of!(CommonCfg, queue_enable);
    /// `queue_notify_off`.
    pub const QUEUE_NOTIFY_OFF: usize = offset_of!(CommonCfg, queue_notify_off);
    /// `queue_desc` (64-bit, may be written as two 32-bit halves).
    pub const QUEUE_DESC: usize = offset_of!(CommonCfg, queue_desc);
    /// `queue_driver` (64-bit, may be written as two 32-bit halves).
    pub const QUEUE_DRIVER: usize = offset_of!(CommonCfg, queue_driver);
    /// `queue_device` (64-bit, may be written as two 32-bit halves).
    pub const QUEUE_DEVICE: usize = offset_of!(CommonCfg, queue_device);
}

/// Size of the common configuration structure.
pub const COMMON_CFG_LEN: usize = core::mem::size_of::<CommonCfg>();

bitflags::bitflags! {
    /// The `device_status` register (virtio 1.2 §2.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct DeviceStatus: u8 {
        /// The guest noticed the device.
        const ACKNOWLEDGE = 1;
        /// The guest knows how to drive it.
        const DRIVER = 2;
        /// The driver is ready.
        const DRIVER_OK = 4;
        /// Feature negotiation is complete.
        const FEATURES_OK = 8;
        /// The device hit an error it cannot recover from without a reset.
        const DEVICE_NEEDS_RESET = 64;
        /// The driver gave up on the device.
        const FAILED = 128;
    }
}

/// Device status: the guest noticed the device (raw register value).
pub const STATUS_ACKNOWLEDGE: u8 = DeviceStatus::ACKNOWLEDGE.bits();
/// Device status: the guest knows how to drive it (raw register value).
pub const STATUS_DRIVER: u8 = DeviceStatus::DRIVER.bits();
/// Device status: the driver is ready (raw register value).
pub const STATUS_DRIVER_OK: u8 = DeviceStatus::DRIVER_OK.bits();
/// Device status: feature negotiation is complete (raw register value).
pub const STATUS_FEATURES_OK: u8 = DeviceStatus::FEATURES_OK.bits();
/// Device status: the device needs a reset (raw register value).
pub const STATUS_DEVICE_NEEDS_RESET: u8 = DeviceStatus::DEVICE_NEEDS_RESET.bits();
/// Device status: the driver gave up on the device (raw register value).
pub const STATUS_FAILED: u8 = DeviceStatus::FAILED.bits();

/// MSI-X vector value meaning "no vector".
pub const NO_VECTOR: u16 = 0xffff;

/// Transport feature: virtio 1.x device (bit 32).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Transport feature: the device reaches memory through the platform IOMMU (bit 33).
pub const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;
/// Transport feature: indirect descriptors (bit 28). sbnet does not offer it.
pub const VIRTIO_F_RING_INDIRECT_DESC: u32 = 28;
/// Transport feature: used/avail event index (bit 29). sbnet does not offer it.
pub const VIRTIO_F_RING_EVENT_IDX: u32 = 29;

/// A feature bit as a 64-bit mask.
pub const fn bit(n: u32) -> u64 {
    1u64 << n
}

/// ISR status bit: a virtqueue interrupt (legacy INTx only).
pub const ISR_QUEUE: u8 = 1;
/// ISR status bit: a configuration change.
pub const ISR_CONFIG: u8 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_cfg_layout() {
        assert_eq!(COMMON_CFG_LEN, 56);
        assert_eq!(off::DEVICE_FEATURE_SELECT, 0);
        assert_eq!(off::DEVICE_FEATURE, 4);
        assert_eq!(off::DRIVER_FEATURE_SELECT, 8);
        assert_eq!(off::DRIVER_FEATURE, 12);
        assert_eq!(off::CONFIG_MSIX_VECTOR, 16);
        assert_eq!(off::NUM_QUEUES, 18);
        assert_eq!(off::DEVICE_STATUS, 20);
        assert_eq!(off::CONFIG_GENERATION, 21);
        assert_eq!(off::QUEUE_SELECT, 22);
        assert_eq!(off::QUEUE_SIZE, 24);
        assert_eq!(off::QUEUE_MSIX_VECTOR, 26);
        assert_eq!(off::QUEUE_ENABLE, 28);
        assert_eq!(off::QUEUE_NOTIFY_OFF, 30);
        assert_eq!(off::QUEUE_DESC, 32);
        assert_eq!(off::QUEUE_DRIVER, 40);
        assert_eq!(off::QUEUE_DEVICE, 48);
    }
}
