//! One fake sbnet function with no host behind it: an in-memory register
//! file, heap DMA memory and a heap "Shared Buffers region". Nothing
//! completes the driver's buffers unless the test does, by hand, through
//! the device's side of the rings ([`FakeDevice::with_rings`]): the test
//! plays a device that misbehaves. Scenarios that need a working host run
//! against the real one (the tests crate's `pmd_port*` tests).

use std::sync::{Arc, Mutex, MutexGuard};

use bytemuck::bytes_of;
use sbnet_abi::common_cfg::{
    bit, off, COMMON_CFG_LEN, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_VERSION_1,
};
use sbnet_abi::layout::{
    COMMON_OFFSET, DEVICE_OFFSET, ISR_OFFSET, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER, SHM_BAR,
    VIRTIO_BAR,
};
use sbnet_abi::net::{
    cfg_off, NetConfig, NET_CONFIG_LEN, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_SHARED_BUFFERS, VIRTIO_NET_F_STATUS,
};
use sbnet_abi::pci::cfg;

use crate::bus::{BusError, DmaRegion, MappedBar};
use crate::caps::CONFIG_SPACE_LEN;

use super::config_space::{sbnet_config_space, ConfigSpaceOptions};
use super::fake_bus::FakeBus;
use super::mem::{Chunk, DmaArena};
use super::ring::DeviceRing;

/// Where the fake Shared Buffers BAR is programmed (the window `W`).
pub const SHM_WINDOW: u64 = 0x80_0000_0000;

/// How the fake function behaves.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Feature bits offered.
    pub features: u64,
    /// Clear `FEATURES_OK` whatever the driver accepts.
    pub refuse_features_ok: bool,
    /// Maximum queue size (0: queues unavailable).
    pub queue_size: u16,
    /// Slot size in the device configuration.
    pub slot_size: u32,
    /// Slot count in the device configuration.
    pub slot_count: u32,
    /// PCI device ID.
    pub device_id: u16,
    /// `max_virtqueue_pairs` (offer `VIRTIO_NET_F_MQ` and the control
    /// queue in `features` for it to matter). The function has
    /// `2 × this + 1` queues when it is above 1.
    pub max_pairs: u16,
    /// What the control queue answers a well-formed `VQ_PAIRS_SET`:
    /// `None` answers `VIRTIO_NET_OK` or `ERR` as the ABI says,
    /// `Some(None)` never answers, `Some(Some(b))` writes `b`.
    pub ctrl_answer: Option<Option<u8>>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            features: bit(VIRTIO_F_VERSION_1)
                | bit(VIRTIO_F_ACCESS_PLATFORM)
                | bit(VIRTIO_NET_F_MAC)
                | bit(VIRTIO_NET_F_STATUS)
                | bit(VIRTIO_NET_F_MTU)
                | bit(VIRTIO_NET_F_SHARED_BUFFERS),
            refuse_features_ok: false,
            queue_size: 256,
            slot_size: 2048,
            slot_count: 64,
            device_id: sbnet_abi::pci::DEVICE_ID_NET,
            max_pairs: 1,
            ctrl_answer: None,
        }
    }
}

/// One queue's registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueRegs {
    /// Maximum size.
    pub max: u16,
    /// Size the driver chose.
    pub size: u16,
    /// Descriptor table IOVA.
    pub desc: u64,
    /// Avail ring IOVA.
    pub driver: u64,
    /// Used ring IOVA.
    pub device: u64,
    /// `queue_enable`.
    pub enable: u16,
    /// `queue_msix_vector`.
    pub msix: u16,
}

/// One function's registers.
#[derive(Debug, Clone)]
pub struct SideRegs {
    /// PCI config space.
    pub config: [u8; CONFIG_SPACE_LEN],
    /// PCI command register.
    pub command: u16,
    /// `device_feature_select`.
    pub dfsel: u32,
    /// `driver_feature_select`.
    pub drfsel: u32,
    /// Accepted features.
    pub driver_features: u64,
    /// `device_status`.
    pub status: u8,
    /// `config_generation`.
    pub generation: u8,
    /// `queue_select`.
    pub queue_select: u16,
    /// Every queue (RX, TX, and with several pairs the others and the
    /// control queue).
    pub queues: Vec<QueueRegs>,
    /// `config_msix_vector`.
    pub config_msix: u16,
    /// Device configuration.
    pub net: NetConfig,
    /// Notifications per queue.
    pub notifies: Vec<u64>,
    /// The queue pairs the last `VQ_PAIRS_SET` the device took set.
    pub pairs_set: Option<u16>,
    /// Writes to read-only or unknown registers.
    pub bad_writes: u64,
}

/// The function's state.
pub(super) struct DeviceState {
    opts: FakeOptions,
    regs: SideRegs,
    arena: DmaArena,
    /// RX and TX rings, while the driver has `DRIVER_OK`.
    rings: Option<[DeviceRing; 2]>,
    shm: Arc<Chunk>,
    epoch: u32,
}

impl DeviceState {
    fn new(opts: FakeOptions) -> Self {
        let region = u64::from(opts.slot_size) * u64::from(opts.slot_count);
        let space = sbnet_config_space(&ConfigSpaceOptions {
            shm_len: region,
            device: opts.device_id,
            ..ConfigSpaceOptions::default()
        });
        let net = NetConfig {
            mac: [0x52, 0x54, 0x00, 0x5b, 0x00, 0x00],
            max_virtqueue_pairs: opts.max_pairs,
            mtu: 1500,
            shared_buffers_offset: 0,
            slot_size: opts.slot_size,
            slot_count: opts.slot_count,
            pairing_epoch: 1,
            ..NetConfig::default()
        };
        let n = if opts.max_pairs > 1 {
            2 * usize::from(opts.max_pairs) + 1
        } else {
            2
        };
        let q = QueueRegs {
            max: opts.queue_size,
            size: opts.queue_size,
            ..QueueRegs::default()
        };
        Self {
            regs: SideRegs {
                config: space,
                command: 0,
                dfsel: 0,
                drfsel: 0,
                driver_features: 0,
                status: 0,
                generation: 0,
                queue_select: 0,
                queues: vec![q; n],
                config_msix: 0,
                net,
                notifies: vec![0; n],
                pairs_set: None,
                bad_writes: 0,
            },
            arena: DmaArena::new(),
            rings: None,
            shm: Chunk::new(region.max(1) as usize),
            epoch: 1,
            opts,
        }
    }

    pub(super) fn config_read(&mut self, offset: u16, data: &mut [u8]) -> Result<(), BusError> {
        let o = offset as usize;
        let r = &self.regs;
        let mut space = r.config;
        space[cfg::COMMAND..cfg::COMMAND + 2].copy_from_slice(&r.command.to_le_bytes());
        let src = space
            .get(o..o + data.len())
            .ok_or_else(|| BusError::Transport("config read out of range".into()))?;
        data.copy_from_slice(src);
        Ok(())
    }

    pub(super) fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), BusError> {
        if offset as usize == cfg::COMMAND && data.len() == 2 {
            self.regs.command = u16::from_le_bytes([data[0], data[1]]);
        } else {
            self.regs.bad_writes += 1;
        }
        Ok(())
    }

    pub(super) fn map_bar(&mut self, bar: u8) -> Result<MappedBar, BusError> {
        if bar != SHM_BAR {
            return Err(BusError::Map(format!("BAR {bar} is not mmap-able")));
        }
        Ok(MappedBar {
            ptr: self.shm.ptr(),
            bus_addr: SHM_WINDOW,
            len: self.shm.len(),
        })
    }

    pub(super) fn dma_alloc(&mut self, len: usize) -> DmaRegion {
        self.arena.alloc(len)
    }

    pub(super) fn bar_read(
        &mut self,
        bar: u8,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), BusError> {
        if bar != VIRTIO_BAR {
            return Err(BusError::Transport(format!("read of BAR {bar}")));
        }
        let o = offset as usize;
        data.fill(0);
        let common = COMMON_OFFSET as usize..COMMON_OFFSET as usize + COMMON_CFG_LEN;
        let device = DEVICE_OFFSET as usize..DEVICE_OFFSET as usize + NET_CONFIG_LEN;
        if common.contains(&o) {
            let v = self.common_read(o - common.start);
            let b = v.to_le_bytes();
            let n = data.len().min(8);
            data[..n].copy_from_slice(&b[..n]);
        } else if device.contains(&o) {
            let bytes = bytes_of(&self.regs.net);
            let start = o - device.start;
            let end = (start + data.len()).min(NET_CONFIG_LEN);
            data[..end - start].copy_from_slice(&bytes[start..end]);
        } else if o == ISR_OFFSET as usize {
            // ISR: nothing pending (the PMD never takes interrupts).
        }
        Ok(())
    }

    fn common_read(&self, o: usize) -> u64 {
        let r = &self.regs;
        let q = r
            .queues
            .get(r.queue_select as usize)
            .copied()
            .unwrap_or_default();
        match o {
            off::DEVICE_FEATURE => match r.dfsel {
                0 => self.opts.features & 0xffff_ffff,
                1 => self.opts.features >> 32,
                _ => 0,
            },
            off::DRIVER_FEATURE => match r.drfsel {
                0 => r.driver_features & 0xffff_ffff,
                1 => r.driver_features >> 32,
                _ => 0,
            },
            off::DEVICE_FEATURE_SELECT => u64::from(r.dfsel),
            off::DRIVER_FEATURE_SELECT => u64::from(r.drfsel),
            off::CONFIG_MSIX_VECTOR => u64::from(r.config_msix),
            off::NUM_QUEUES => r.queues.len() as u64,
            off::DEVICE_STATUS => u64::from(r.status),
            off::CONFIG_GENERATION => u64::from(r.generation),
            off::QUEUE_SELECT => u64::from(r.queue_select),
            off::QUEUE_SIZE => u64::from(q.size),
            off::QUEUE_MSIX_VECTOR => u64::from(q.msix),
            off::QUEUE_ENABLE => u64::from(q.enable),
            off::QUEUE_NOTIFY_OFF => u64::from(r.queue_select),
            off::QUEUE_DESC => q.desc,
            off::QUEUE_DRIVER => q.driver,
            off::QUEUE_DEVICE => q.device,
            _ => 0,
        }
    }

    pub(super) fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), BusError> {
        if bar != VIRTIO_BAR || data.is_empty() || data.len() > 8 {
            return Err(BusError::Transport(format!("write of BAR {bar}")));
        }
        let o = offset as usize;
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        let common = COMMON_OFFSET as usize..COMMON_OFFSET as usize + COMMON_CFG_LEN;
        let notify = NOTIFY_OFFSET as usize
            ..NOTIFY_OFFSET as usize + self.regs.queues.len() * NOTIFY_OFF_MULTIPLIER as usize;
        if common.contains(&o) {
            self.common_write(o - common.start, v, data.len());
        } else if o == DEVICE_OFFSET as usize + cfg_off::EPOCH_ACK && data.len() == 4 {
            self.regs.net.epoch_ack = v as u32;
        } else if notify.contains(&o) {
            let q = (o - notify.start) / NOTIFY_OFF_MULTIPLIER as usize;
            match self.regs.notifies.get_mut(q) {
                Some(n) => *n += 1,
                None => self.regs.bad_writes += 1,
            }
            if q == 2 * usize::from(self.opts.max_pairs) && self.opts.max_pairs > 1 {
                self.control();
            }
        } else {
            self.regs.bad_writes += 1;
        }
        Ok(())
    }

    fn common_write(&mut self, o: usize, v: u64, width: usize) {
        if o == off::DEVICE_STATUS {
            self.write_status(v as u8);
            return;
        }
        let r = &mut self.regs;
        let sel = r.queue_select as usize;
        let set64 = |field: &mut u64| {
            // Whole, or one 32-bit half (o is the low half's offset here).
            if width == 8 {
                *field = v;
            } else {
                *field = (*field & !0xffff_ffff) | (v & 0xffff_ffff);
            }
        };
        let set_hi = |field: &mut u64| *field = (*field & 0xffff_ffff) | (v << 32);
        match (o, r.queues.get_mut(sel)) {
            (off::DEVICE_FEATURE_SELECT, _) => r.dfsel = v as u32,
            (off::DRIVER_FEATURE_SELECT, _) => r.drfsel = v as u32,
            (off::DRIVER_FEATURE, _) => match r.drfsel {
                0 => r.driver_features = (r.driver_features & !0xffff_ffff) | v,
                1 => r.driver_features = (r.driver_features & 0xffff_ffff) | v << 32,
                _ => r.bad_writes += 1,
            },
            (off::CONFIG_MSIX_VECTOR, _) => r.config_msix = v as u16,
            (off::QUEUE_SELECT, _) => r.queue_select = v as u16,
            (off::QUEUE_SIZE, Some(q)) => q.size = v as u16,
            (off::QUEUE_MSIX_VECTOR, Some(q)) => q.msix = v as u16,
            (off::QUEUE_ENABLE, Some(q)) => q.enable = v as u16,
            (off::QUEUE_DESC, Some(q)) => set64(&mut q.desc),
            (o, Some(q)) if o == off::QUEUE_DESC + 4 => set_hi(&mut q.desc),
            (off::QUEUE_DRIVER, Some(q)) => set64(&mut q.driver),
            (o, Some(q)) if o == off::QUEUE_DRIVER + 4 => set_hi(&mut q.driver),
            (off::QUEUE_DEVICE, Some(q)) => set64(&mut q.device),
            (o, Some(q)) if o == off::QUEUE_DEVICE + 4 => set_hi(&mut q.device),
            _ => r.bad_writes += 1,
        }
    }

    /// A `device_status` write (or a transport reset with 0).
    pub(super) fn write_status(&mut self, mut s: u8) {
        let was_ok = self.regs.status & STATUS_DRIVER_OK != 0;
        if s == 0 {
            let max = self.opts.queue_size;
            self.regs.status = 0;
            self.regs.driver_features = 0;
            self.regs.net.epoch_ack = 0;
            for q in &mut self.regs.queues {
                *q = QueueRegs {
                    max,
                    size: max,
                    ..QueueRegs::default()
                };
            }
            self.rings = None;
            if was_ok {
                self.new_epoch();
            }
            return;
        }
        if self.opts.refuse_features_ok {
            s &= !STATUS_FEATURES_OK;
        }
        self.regs.status = s;
        if !was_ok && s & STATUS_DRIVER_OK != 0 {
            let ring = |q: &QueueRegs| self.arena.device_ring(q.size, q.desc, q.driver, q.device);
            self.rings = Some([ring(&self.regs.queues[0]), ring(&self.regs.queues[1])]);
            self.new_epoch();
        }
    }

    /// Answers the control queue's chains: `[class, command, le16]` then
    /// the ack byte (`FakeOptions::ctrl_answer`).
    fn control(&mut self) {
        let Some(q) = self.regs.queues.last().copied() else {
            return;
        };
        if self.regs.status & STATUS_DRIVER_OK == 0 || q.enable == 0 {
            return;
        }
        let mut ring = self.arena.device_ring(q.size, q.desc, q.driver, q.device);
        while let Some((id, d)) = ring.next_avail() {
            let Some(ack) = ring.desc(d.next) else { return };
            let (Some((_c, cmd)), Some((_a, at))) = (
                self.arena.translate(d.addr, 4),
                self.arena.translate(ack.addr, 1),
            ) else {
                return;
            };
            // SAFETY: `translate` checked both ranges lie in arena memory.
            let c = unsafe { std::ptr::read_volatile(cmd.cast::<[u8; 4]>()) };
            let pairs = u16::from_le_bytes([c[2], c[3]]);
            let ok = c[..2] == [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET]
                && (1..=self.opts.max_pairs).contains(&pairs);
            let answer = match self.opts.ctrl_answer {
                None => u8::from(!ok),
                Some(None) => return,
                Some(Some(b)) => b,
            };
            if answer == 0 {
                self.regs.pairs_set = Some(pairs);
            }
            // SAFETY: as above.
            unsafe { std::ptr::write_volatile(at, answer) };
            ring.push_used(u32::from(id), 1);
            ring.publish_used();
        }
    }

    /// The function's shape changed: next epoch. No peer is ever present,
    /// so the peer status stays 0 and the link down.
    fn new_epoch(&mut self) {
        self.epoch += 1;
        self.regs.net.pairing_epoch = self.epoch;
        self.regs.generation = self.regs.generation.wrapping_add(1);
    }
}

/// One fake function. Cheap to clone (a shared handle).
#[derive(Clone)]
pub struct FakeDevice {
    state: Arc<Mutex<DeviceState>>,
}

impl FakeDevice {
    /// A function with these options, without a driver, epoch 1.
    pub fn new(opts: FakeOptions) -> Self {
        Self {
            state: Arc::new(Mutex::new(DeviceState::new(opts))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DeviceState> {
        // A test that panicked while holding the lock poisons it; the state
        // is still usable for the remaining assertions.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The function's bus.
    pub fn bus(&self) -> FakeBus {
        FakeBus {
            dev: self.state.clone(),
        }
    }

    /// A copy of the registers.
    pub fn regs(&self) -> SideRegs {
        self.lock().regs.clone()
    }

    /// Runs `f` on the device's rings (RX, TX), if the driver has
    /// `DRIVER_OK`, to misbehave by hand.
    pub fn with_rings<R>(&self, f: impl FnOnce(&mut [DeviceRing; 2]) -> R) -> Option<R> {
        self.lock().rings.as_mut().map(f)
    }
}
