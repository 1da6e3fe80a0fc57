//! PCI configuration space of the sbnet function: identity, BARs with
//! sizing, the virtio vendor capabilities and MSI-X (`docs/abi.md` §1).

use sbnet_abi::layout as l;
use sbnet_abi::pci::{self, cfg, VirtioPciCap, VirtioPciCap64, VirtioPciNotifyCap};

const NUM_BARS: usize = 6;

/// The 256-byte config space with per-byte write masks.
#[derive(Debug, Clone)]
pub struct PciConfig {
    bytes: [u8; cfg::SIZE],
    wmask: [u8; cfg::SIZE],
    bar_size: [u64; NUM_BARS],
    bar_flags: [u32; NUM_BARS],
    msix_vectors: u16,
}

impl PciConfig {
    /// Builds the config space for a function whose Shared Buffers BAR is
    /// `shm_size` bytes (a power of two).
    pub fn new(shm_size: u64) -> Self {
        Self::with_msix(shm_size, l::MSIX_VECTORS)
    }

    /// As [`Self::new`], with an MSI-X table of `vectors` entries
    /// (`1..=`[`l::MAX_MSIX_VECTORS`], [`l::msix_vectors`] of the link's
    /// queue pairs).
    pub fn with_msix(shm_size: u64, vectors: u16) -> Self {
        let vectors = vectors.clamp(1, l::MAX_MSIX_VECTORS);
        let mut c = Self {
            bytes: [0; cfg::SIZE],
            wmask: [0; cfg::SIZE],
            bar_size: [0; NUM_BARS],
            bar_flags: [0; NUM_BARS],
            msix_vectors: vectors,
        };
        c.put16(cfg::VENDOR_ID, pci::VENDOR_ID);
        c.put16(cfg::DEVICE_ID, pci::DEVICE_ID_NET);
        c.put16(cfg::STATUS, pci::STATUS_CAP_LIST);
        c.bytes[cfg::REVISION_ID] = pci::REVISION_ID;
        c.bytes[cfg::CLASS_PROG..cfg::CLASS_PROG + 3]
            .copy_from_slice(&pci::CLASS_CODE.to_le_bytes()[..3]);
        c.put16(cfg::SUBSYSTEM_VENDOR_ID, pci::SUBSYSTEM_VENDOR_ID);
        c.put16(cfg::SUBSYSTEM_ID, pci::SUBSYSTEM_ID);
        c.bytes[cfg::CAP_PTR] = l::CAP_COMMON;
        c.bytes[cfg::INTERRUPT_PIN] = 1;
        c.wmask[cfg::INTERRUPT_LINE] = 0xff;
        let cmd = pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER | pci::COMMAND_INTX_DISABLE;
        c.wmask[cfg::COMMAND..cfg::COMMAND + 2].copy_from_slice(&cmd.to_le_bytes());

        c.bar_size[l::VIRTIO_BAR as usize] = l::VIRTIO_BAR_SIZE;
        c.bar_flags[l::VIRTIO_BAR as usize] = pci::BAR_MEM32;
        c.bar_size[l::MSIX_BAR as usize] = l::MSIX_BAR_SIZE;
        c.bar_flags[l::MSIX_BAR as usize] = pci::BAR_MEM32;
        c.bar_size[l::SHM_BAR as usize] = shm_size;
        c.bar_flags[l::SHM_BAR as usize] = pci::BAR_MEM64 | pci::BAR_PREFETCH;
        for bar in 0..NUM_BARS {
            let off = cfg::BAR0 + 4 * bar;
            c.wmask[off..off + 4].fill(0xff);
        }
        c.fixup_bars();

        let vcap = |cfg_type: u8, next: u8, len: usize, offset: u32, length: u32| VirtioPciCap {
            cap_vndr: pci::CAP_ID_VENDOR,
            cap_next: next,
            cap_len: len as u8,
            cfg_type,
            bar: l::VIRTIO_BAR,
            id: 0,
            padding: [0; 2],
            offset,
            length,
        };
        let cap_len = std::mem::size_of::<VirtioPciCap>();
        c.put(
            l::CAP_COMMON,
            bytemuck::bytes_of(&vcap(
                pci::VIRTIO_PCI_CAP_COMMON_CFG,
                l::CAP_NOTIFY,
                cap_len,
                l::COMMON_OFFSET,
                l::COMMON_LEN,
            )),
        );
        let notify = VirtioPciNotifyCap {
            cap: vcap(
                pci::VIRTIO_PCI_CAP_NOTIFY_CFG,
                l::CAP_ISR,
                std::mem::size_of::<VirtioPciNotifyCap>(),
                l::NOTIFY_OFFSET,
                l::NOTIFY_LEN,
            ),
            notify_off_multiplier: l::NOTIFY_OFF_MULTIPLIER,
        };
        c.put(l::CAP_NOTIFY, bytemuck::bytes_of(&notify));
        c.put(
            l::CAP_ISR,
            bytemuck::bytes_of(&vcap(
                pci::VIRTIO_PCI_CAP_ISR_CFG,
                l::CAP_DEVICE,
                cap_len,
                l::ISR_OFFSET,
                l::ISR_LEN,
            )),
        );
        c.put(
            l::CAP_DEVICE,
            bytemuck::bytes_of(&vcap(
                pci::VIRTIO_PCI_CAP_DEVICE_CFG,
                l::CAP_SHM,
                cap_len,
                l::DEVICE_OFFSET,
                l::DEVICE_LEN,
            )),
        );
        let shm = VirtioPciCap64 {
            cap: VirtioPciCap {
                bar: l::SHM_BAR,
                id: l::SHM_ID,
                ..vcap(
                    pci::VIRTIO_PCI_CAP_SHARED_MEMORY_CFG,
                    l::CAP_MSIX,
                    std::mem::size_of::<VirtioPciCap64>(),
                    0,
                    shm_size as u32,
                )
            },
            offset_hi: 0,
            length_hi: (shm_size >> 32) as u32,
        };
        c.put(l::CAP_SHM, bytemuck::bytes_of(&shm));
        let msix = pci::MsixCap {
            cap_id: pci::CAP_ID_MSIX,
            cap_next: 0,
            msg_ctl: vectors - 1,
            table: l::MSIX_TABLE_OFFSET | l::MSIX_BAR as u32,
            pba: l::MSIX_PBA_OFFSET | l::MSIX_BAR as u32,
        };
        c.put(l::CAP_MSIX, bytemuck::bytes_of(&msix));
        let ctl = (pci::MSIX_CTL_ENABLE | pci::MSIX_CTL_FUNCTION_MASK).to_le_bytes();
        c.wmask[l::CAP_MSIX as usize + 2..l::CAP_MSIX as usize + 4].copy_from_slice(&ctl);
        c
    }

    fn put(&mut self, off: u8, b: &[u8]) {
        self.bytes[off as usize..off as usize + b.len()].copy_from_slice(b);
    }

    fn put16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn dword(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[off],
            self.bytes[off + 1],
            self.bytes[off + 2],
            self.bytes[off + 3],
        ])
    }

    fn fixup_bars(&mut self) {
        let mut bar = 0;
        while bar < NUM_BARS {
            let off = cfg::BAR0 + 4 * bar;
            let size = self.bar_size[bar];
            let flags = self.bar_flags[bar];
            if size == 0 {
                self.bytes[off..off + 4].fill(0);
                bar += 1;
                continue;
            }
            let lo = (self.dword(off) & !((size - 1) as u32) & !0xf) | flags;
            self.bytes[off..off + 4].copy_from_slice(&lo.to_le_bytes());
            if flags & pci::BAR_MEM64 != 0 && bar + 1 < NUM_BARS {
                let hi_off = off + 4;
                let hi = self.dword(hi_off) & !(((size - 1) >> 32) as u32);
                self.bytes[hi_off..hi_off + 4].copy_from_slice(&hi.to_le_bytes());
                bar += 2;
            } else {
                bar += 1;
            }
        }
    }

    /// Reads `data.len()` bytes at `offset`; false when out of range.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> bool {
        match range(offset, data.len()) {
            Some(r) => {
                data.copy_from_slice(&self.bytes[r]);
                true
            }
            None => false,
        }
    }

    /// Writes, honouring the write masks; false when out of range.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let Some(r) = range(offset, data.len()) else {
            return false;
        };
        for (i, b) in r.zip(data) {
            self.bytes[i] = (self.bytes[i] & !self.wmask[i]) | (b & self.wmask[i]);
        }
        self.fixup_bars();
        true
    }

    /// The address BAR `bar` is programmed at (64-bit BARs combine both registers).
    pub fn bar_address(&self, bar: u8) -> u64 {
        let bar = bar as usize;
        if bar >= NUM_BARS || self.bar_size[bar] == 0 {
            return 0;
        }
        let lo = (self.dword(cfg::BAR0 + 4 * bar) & !0xf) as u64;
        if self.bar_flags[bar] & pci::BAR_MEM64 != 0 && bar + 1 < NUM_BARS {
            lo | (self.dword(cfg::BAR0 + 4 * (bar + 1)) as u64) << 32
        } else {
            lo
        }
    }

    /// Size of BAR `bar` (0 when absent).
    pub fn bar_size(&self, bar: u8) -> u64 {
        self.bar_size.get(bar as usize).copied().unwrap_or(0)
    }

    /// Command register.
    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.bytes[cfg::COMMAND], self.bytes[cfg::COMMAND + 1]])
    }

    /// Resets the writable state (command, BARs, MSI-X control), as a function-level reset does.
    pub fn reset(&mut self) {
        let shm = self.bar_size[l::SHM_BAR as usize];
        *self = Self::with_msix(shm, self.msix_vectors);
    }
}

fn range(offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(len)?;
    (end <= cfg::SIZE).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd32(c: &PciConfig, off: usize) -> u32 {
        let mut b = [0; 4];
        assert!(c.read(off as u64, &mut b));
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_and_bar_sizing() {
        let mut c = PciConfig::new(1 << 21);
        assert_eq!(rd32(&c, 0), 0x1041_1af4);
        // Sizing: write all ones, read back the size mask.
        c.write(cfg::BAR0 as u64, &[0xff; 4]);
        assert_eq!(rd32(&c, cfg::BAR0), !(0x4000u32 - 1));
        c.write(cfg::BAR0 as u64 + 8, &[0xff; 4]);
        c.write(cfg::BAR0 as u64 + 12, &[0xff; 4]);
        assert_eq!(rd32(&c, cfg::BAR0 + 8), !((1u32 << 21) - 1) | 0xc);
        assert_eq!(rd32(&c, cfg::BAR0 + 12), 0xffff_ffff);
        // Program.
        c.write(cfg::BAR0 as u64 + 8, &0u32.to_le_bytes());
        c.write(cfg::BAR0 as u64 + 12, &0x40u32.to_le_bytes());
        assert_eq!(c.bar_address(2), 0x40_0000_0000);
        assert_eq!(rd32(&c, cfg::BAR0 + 16), 0, "BAR4 absent");
        // Read-only identity.
        c.write(0, &[0; 4]);
        assert_eq!(rd32(&c, 0), 0x1041_1af4);
        assert!(!c.read(255, &mut [0; 2]));
        assert!(!c.write(u64::MAX, &[0]));
    }

    #[test]
    fn capability_chain() {
        let c = PciConfig::new(1 << 21);
        let mut types = vec![];
        let mut p = c.bytes[cfg::CAP_PTR] as usize;
        while p != 0 {
            types.push((c.bytes[p], c.bytes[p + 3]));
            p = c.bytes[p + 1] as usize;
        }
        assert_eq!(
            types,
            vec![(9, 1), (9, 2), (9, 3), (9, 4), (9, 8), (0x11, 0)]
        );
    }
}
