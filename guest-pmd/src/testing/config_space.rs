//! A config space laid out exactly as `docs/abi.md` §1 describes, for
//! tests of the capability walk and the fake bus.

use bytemuck::bytes_of;
use sbnet_abi::layout::{
    CAP_COMMON, CAP_DEVICE, CAP_ISR, CAP_MSIX, CAP_NOTIFY, CAP_SHM, COMMON_LEN, COMMON_OFFSET,
    DEVICE_LEN, DEVICE_OFFSET, ISR_LEN, ISR_OFFSET, MSIX_BAR, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET,
    MSIX_VECTORS, NOTIFY_LEN, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER, SHM_BAR, SHM_ID, VIRTIO_BAR,
};
use sbnet_abi::pci::{
    self, cfg, MsixCap, VirtioPciCap, VirtioPciCap64, VirtioPciNotifyCap, CAP_ID_MSIX,
    CAP_ID_VENDOR, STATUS_CAP_LIST,
};

use crate::caps::CONFIG_SPACE_LEN;

/// What to vary in the generated config space.
#[derive(Debug, Clone)]
pub struct ConfigSpaceOptions {
    /// Shared Buffers region length (the shared-memory cap's 64-bit length).
    pub shm_len: u64,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
}

impl Default for ConfigSpaceOptions {
    fn default() -> Self {
        Self {
            shm_len: 2048 * 64,
            vendor: pci::VENDOR_ID,
            device: pci::DEVICE_ID_NET,
        }
    }
}

fn put(space: &mut [u8], at: u8, bytes: &[u8]) {
    space[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

fn vendor_cap(
    next: u8,
    len: usize,
    cfg_type: u8,
    bar: u8,
    offset: u32,
    length: u32,
) -> VirtioPciCap {
    VirtioPciCap {
        cap_vndr: CAP_ID_VENDOR,
        cap_next: next,
        cap_len: len as u8,
        cfg_type,
        bar,
        id: 0,
        padding: [0; 2],
        offset,
        length,
    }
}

/// The sbnet function's config space (`docs/abi.md` §1).
pub fn sbnet_config_space(o: &ConfigSpaceOptions) -> [u8; CONFIG_SPACE_LEN] {
    let mut s = [0u8; CONFIG_SPACE_LEN];
    s[cfg::VENDOR_ID..cfg::VENDOR_ID + 2].copy_from_slice(&o.vendor.to_le_bytes());
    s[cfg::DEVICE_ID..cfg::DEVICE_ID + 2].copy_from_slice(&o.device.to_le_bytes());
    s[cfg::STATUS..cfg::STATUS + 2].copy_from_slice(&STATUS_CAP_LIST.to_le_bytes());
    s[cfg::REVISION_ID] = pci::REVISION_ID;
    s[cfg::CAP_PTR] = CAP_COMMON;
    let cap_len = core::mem::size_of::<VirtioPciCap>();
    let c = vendor_cap(
        CAP_NOTIFY,
        cap_len,
        pci::VIRTIO_PCI_CAP_COMMON_CFG,
        VIRTIO_BAR,
        COMMON_OFFSET,
        COMMON_LEN,
    );
    put(&mut s, CAP_COMMON, bytes_of(&c));
    let n = VirtioPciNotifyCap {
        cap: vendor_cap(
            CAP_ISR,
            core::mem::size_of::<VirtioPciNotifyCap>(),
            pci::VIRTIO_PCI_CAP_NOTIFY_CFG,
            VIRTIO_BAR,
            NOTIFY_OFFSET,
            NOTIFY_LEN,
        ),
        notify_off_multiplier: NOTIFY_OFF_MULTIPLIER,
    };
    put(&mut s, CAP_NOTIFY, bytes_of(&n));
    let i = vendor_cap(
        CAP_DEVICE,
        cap_len,
        pci::VIRTIO_PCI_CAP_ISR_CFG,
        VIRTIO_BAR,
        ISR_OFFSET,
        ISR_LEN,
    );
    put(&mut s, CAP_ISR, bytes_of(&i));
    let d = vendor_cap(
        CAP_SHM,
        cap_len,
        pci::VIRTIO_PCI_CAP_DEVICE_CFG,
        VIRTIO_BAR,
        DEVICE_OFFSET,
        DEVICE_LEN,
    );
    put(&mut s, CAP_DEVICE, bytes_of(&d));
    let mut m = VirtioPciCap64 {
        cap: vendor_cap(
            CAP_MSIX,
            core::mem::size_of::<VirtioPciCap64>(),
            pci::VIRTIO_PCI_CAP_SHARED_MEMORY_CFG,
            SHM_BAR,
            0,
            o.shm_len as u32,
        ),
        offset_hi: 0,
        length_hi: (o.shm_len >> 32) as u32,
    };
    m.cap.id = SHM_ID;
    put(&mut s, CAP_SHM, bytes_of(&m));
    let x = MsixCap {
        cap_id: CAP_ID_MSIX,
        cap_next: 0,
        msg_ctl: MSIX_VECTORS - 1,
        table: MSIX_TABLE_OFFSET | u32::from(MSIX_BAR),
        pba: MSIX_PBA_OFFSET | u32::from(MSIX_BAR),
    };
    put(&mut s, CAP_MSIX, bytes_of(&x));
    s
}
