//! Finding the virtio structures through the PCI capability list
//! (virtio 1.2 §4.1.4): common, notify, ISR and device configuration, and
//! the shared-memory capability (`cfg_type` 8) that describes the Shared
//! Buffers BAR.
//!
//! The walk is a pure function over a copy of the 256-byte config space, so
//! a device that changes config space under us cannot make it loop: the
//! copy is read once, every pointer is bounds-checked, and a pointer seen
//! twice ends the walk with an error.

use bytemuck::pod_read_unaligned;
use sbnet_abi::common_cfg::COMMON_CFG_LEN;
use sbnet_abi::layout::SHM_ID;
use sbnet_abi::pci::{
    cfg, VirtioPciCap, VirtioPciCap64, CAP_ID_VENDOR, STATUS_CAP_LIST, VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_CAP_SHARED_MEMORY_CFG,
};
use thiserror::Error;

/// Standard config space bytes the walk reads.
pub const CONFIG_SPACE_LEN: usize = cfg::SIZE;

/// First byte after the type-0 header, where capabilities may start.
const FIRST_CAP: usize = 0x40;

/// Why the capability list cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CapError {
    /// The status register does not announce a capability list.
    #[error("the function has no PCI capability list")]
    NoCapabilityList,
    /// A capability pointer leaves the device-specific part of config space.
    #[error("capability pointer {ptr:#04x} is outside 0x40..0x100")]
    PointerOutOfRange {
        /// The pointer.
        ptr: usize,
    },
    /// The list points back to a capability already visited.
    #[error("capability list loops back to {ptr:#04x}")]
    Loop {
        /// The pointer seen twice.
        ptr: usize,
    },
    /// A virtio capability is shorter than its type needs, or runs past
    /// the end of config space.
    #[error("virtio capability at {ptr:#04x} has length {len}, needs {need} inside config space")]
    BadLength {
        /// Where the capability is.
        ptr: usize,
        /// Its `cap_len`.
        len: usize,
        /// The length its type needs.
        need: usize,
    },
    /// A structure every virtio driver needs was not found (virtio 1.2
    /// §4.1.4: common, notify, ISR and device configuration).
    #[error("no usable virtio {0} capability")]
    Missing(&'static str),
    /// A structure's advertised window is too small for what it holds.
    #[error("virtio {what} window is {len} bytes, needs at least {need}")]
    WindowTooSmall {
        /// Which structure.
        what: &'static str,
        /// The window's length.
        len: u32,
        /// The minimum.
        need: u32,
    },
}

/// A virtio structure's place: BAR, offset, window length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapLoc {
    /// BAR index (0..=5).
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u32,
    /// Window length.
    pub length: u32,
}

/// The shared-memory region (`cfg_type` 8) with sbnet's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmLoc {
    /// BAR index (0..=5).
    pub bar: u8,
    /// Offset of the region in the BAR.
    pub offset: u64,
    /// Region length.
    pub length: u64,
}

/// Every virtio structure the PMD uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioCaps {
    /// Common configuration.
    pub common: CapLoc,
    /// Notification area.
    pub notify: CapLoc,
    /// Queue notify address = `notify.offset + queue_notify_off × this`.
    pub notify_off_multiplier: u32,
    /// ISR status.
    pub isr: CapLoc,
    /// Device-specific configuration.
    pub device: CapLoc,
    /// The Shared Buffers region, when the device describes one.
    pub shm: Option<ShmLoc>,
}

/// Walks the capability list in `space` (a copy of config space). Per
/// virtio 1.2 §4.1.4 the first capability of each type whose BAR is valid
/// is used; others, and non-virtio capabilities, are skipped.
pub fn walk(space: &[u8; CONFIG_SPACE_LEN]) -> Result<VirtioCaps, CapError> {
    let status = u16::from_le_bytes([space[cfg::STATUS], space[cfg::STATUS + 1]]);
    if status & STATUS_CAP_LIST == 0 {
        return Err(CapError::NoCapabilityList);
    }
    let mut common = None;
    let mut notify = None;
    let mut isr = None;
    let mut device = None;
    let mut shm = None;
    let mut seen = [false; CONFIG_SPACE_LEN / 4];
    // The low two bits of capability pointers are reserved (PCI 3.0 §6.7).
    let mut ptr = usize::from(space[cfg::CAP_PTR] & !3);
    while ptr != 0 {
        if !(FIRST_CAP..CONFIG_SPACE_LEN - 1).contains(&ptr) {
            return Err(CapError::PointerOutOfRange { ptr });
        }
        if std::mem::replace(&mut seen[ptr / 4], true) {
            return Err(CapError::Loop { ptr });
        }
        let id = space[ptr];
        let next = usize::from(space[ptr + 1] & !3);
        if id == CAP_ID_VENDOR {
            visit_vendor(
                space,
                ptr,
                &mut common,
                &mut notify,
                &mut isr,
                &mut device,
                &mut shm,
            )?;
        }
        ptr = next;
    }
    let common = common.ok_or(CapError::Missing("common configuration"))?;
    let (notify, notify_off_multiplier) = notify.ok_or(CapError::Missing("notify"))?;
    let isr = isr.ok_or(CapError::Missing("ISR"))?;
    let device = device.ok_or(CapError::Missing("device configuration"))?;
    window_at_least("common configuration", common, COMMON_CFG_LEN as u32)?;
    window_at_least("ISR", isr, 1)?;
    // The standard virtio-net fields up to `mtu` (docs/abi.md §3).
    window_at_least("device configuration", device, 12)?;
    window_at_least("notify", notify, 2)?;
    Ok(VirtioCaps {
        common,
        notify,
        notify_off_multiplier,
        isr,
        device,
        shm,
    })
}

fn window_at_least(what: &'static str, loc: CapLoc, need: u32) -> Result<(), CapError> {
    if loc.length < need {
        return Err(CapError::WindowTooSmall {
            what,
            len: loc.length,
            need,
        });
    }
    Ok(())
}

/// The first `need` bytes of the capability at `ptr` (a multiple of 4 no
/// larger than 0xfc, so `cap_len` at `ptr + 2` is inside config space).
fn cap_bytes(space: &[u8; CONFIG_SPACE_LEN], ptr: usize, need: usize) -> Result<&[u8], CapError> {
    let len = usize::from(space[ptr + 2]);
    if len < need || ptr + need > CONFIG_SPACE_LEN {
        return Err(CapError::BadLength { ptr, len, need });
    }
    Ok(&space[ptr..ptr + need])
}

#[allow(clippy::too_many_arguments)]
fn visit_vendor(
    space: &[u8; CONFIG_SPACE_LEN],
    ptr: usize,
    common: &mut Option<CapLoc>,
    notify: &mut Option<(CapLoc, u32)>,
    isr: &mut Option<CapLoc>,
    device: &mut Option<CapLoc>,
    shm: &mut Option<ShmLoc>,
) -> Result<(), CapError> {
    const CAP_LEN: usize = core::mem::size_of::<VirtioPciCap>();
    let cap: VirtioPciCap = pod_read_unaligned(cap_bytes(space, ptr, CAP_LEN)?);
    // virtio 1.2 §4.1.4: "The driver MUST ignore any vendor-specific
    // capability structure which has a reserved bar value."
    if cap.bar > 5 {
        return Ok(());
    }
    let loc = CapLoc {
        bar: cap.bar,
        offset: cap.offset,
        length: cap.length,
    };
    match cap.cfg_type {
        VIRTIO_PCI_CAP_COMMON_CFG if common.is_none() => *common = Some(loc),
        VIRTIO_PCI_CAP_ISR_CFG if isr.is_none() => *isr = Some(loc),
        VIRTIO_PCI_CAP_DEVICE_CFG if device.is_none() => *device = Some(loc),
        VIRTIO_PCI_CAP_NOTIFY_CFG if notify.is_none() => {
            let b = cap_bytes(space, ptr, CAP_LEN + 4)?;
            let mult = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
            *notify = Some((loc, mult));
        }
        VIRTIO_PCI_CAP_SHARED_MEMORY_CFG if shm.is_none() && cap.id == SHM_ID => {
            let c: VirtioPciCap64 = pod_read_unaligned(cap_bytes(
                space,
                ptr,
                core::mem::size_of::<VirtioPciCap64>(),
            )?);
            *shm = Some(ShmLoc {
                bar: cap.bar,
                offset: u64::from(c.offset_hi) << 32 | u64::from(cap.offset),
                length: u64::from(c.length_hi) << 32 | u64::from(cap.length),
            });
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::config_space::{sbnet_config_space, ConfigSpaceOptions};
    use sbnet_abi::layout::{
        CAP_COMMON, CAP_DEVICE, CAP_ISR, CAP_NOTIFY, CAP_SHM, COMMON_OFFSET, DEVICE_OFFSET,
        ISR_OFFSET, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER, SHM_BAR,
    };

    fn space() -> [u8; CONFIG_SPACE_LEN] {
        sbnet_config_space(&ConfigSpaceOptions::default())
    }

    #[test]
    fn finds_every_structure_of_the_abi() {
        let c = walk(&space()).unwrap();
        assert_eq!(c.common.bar, 0);
        assert_eq!(c.common.offset, COMMON_OFFSET);
        assert_eq!(c.notify.offset, NOTIFY_OFFSET);
        assert_eq!(c.notify_off_multiplier, NOTIFY_OFF_MULTIPLIER);
        assert_eq!(c.isr.offset, ISR_OFFSET);
        assert_eq!(c.device.offset, DEVICE_OFFSET);
        let shm = c.shm.unwrap();
        assert_eq!(shm.bar, SHM_BAR);
        assert_eq!(shm.offset, 0);
        assert_eq!(shm.length, ConfigSpaceOptions::default().shm_len);
    }

    #[test]
    fn sixty_four_bit_shm_length() {
        let s = sbnet_config_space(&ConfigSpaceOptions {
            shm_len: 0x3_0000_0000,
            ..Default::default()
        });
        assert_eq!(walk(&s).unwrap().shm.unwrap().length, 0x3_0000_0000);
    }

    #[test]
    fn shm_is_optional() {
        let mut s = space();
        // Unlink the shared-memory cap: the device cap points past it.
        s[CAP_DEVICE as usize + 1] = s[CAP_SHM as usize + 1];
        assert_eq!(walk(&s).unwrap().shm, None);
    }

    #[test]
    fn wrong_shm_id_is_skipped() {
        let mut s = space();
        s[CAP_SHM as usize + 5] = 7;
        assert_eq!(walk(&s).unwrap().shm, None);
    }

    #[test]
    fn no_cap_list() {
        let mut s = space();
        s[cfg::STATUS] &= !(STATUS_CAP_LIST as u8);
        assert_eq!(walk(&s), Err(CapError::NoCapabilityList));
    }

    #[test]
    fn loop_is_detected() {
        let mut s = space();
        s[CAP_ISR as usize + 1] = CAP_COMMON;
        assert_eq!(
            walk(&s),
            Err(CapError::Loop {
                ptr: CAP_COMMON as usize
            })
        );
    }

    #[test]
    fn self_loop_is_detected() {
        let mut s = space();
        s[CAP_COMMON as usize + 1] = CAP_COMMON;
        assert!(matches!(walk(&s), Err(CapError::Loop { .. })));
    }

    #[test]
    fn pointer_out_of_range() {
        let mut s = space();
        s[cfg::CAP_PTR] = 0x20;
        assert_eq!(walk(&s), Err(CapError::PointerOutOfRange { ptr: 0x20 }));
        let mut s = space();
        // 0xff is masked to 0xfc: in range, but the zeros there end the
        // list before the notify capability.
        s[CAP_COMMON as usize + 1] = 0xff;
        assert_eq!(walk(&s), Err(CapError::Missing("notify")));
    }

    #[test]
    fn short_cap_is_refused() {
        let mut s = space();
        s[CAP_NOTIFY as usize + 2] = 16; // notify needs 20
        assert_eq!(
            walk(&s),
            Err(CapError::BadLength {
                ptr: CAP_NOTIFY as usize,
                len: 16,
                need: 20
            })
        );
    }

    #[test]
    fn missing_common_is_refused() {
        let mut s = space();
        s[cfg::CAP_PTR] = CAP_NOTIFY;
        assert_eq!(walk(&s), Err(CapError::Missing("common configuration")));
    }

    #[test]
    fn reserved_bar_is_ignored() {
        let mut s = space();
        s[CAP_COMMON as usize + 4] = 6;
        assert_eq!(walk(&s), Err(CapError::Missing("common configuration")));
    }

    #[test]
    fn small_common_window_is_refused() {
        let mut s = space();
        s[CAP_COMMON as usize + 12..CAP_COMMON as usize + 16].copy_from_slice(&8u32.to_le_bytes());
        assert!(matches!(walk(&s), Err(CapError::WindowTooSmall { .. })));
    }

    #[test]
    fn random_config_space_never_panics() {
        use proptest::prelude::*;
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), CONFIG_SPACE_LEN))| {
            let mut s = [0u8; CONFIG_SPACE_LEN];
            s.copy_from_slice(&bytes);
            let _ = walk(&s);
        });
    }
}
