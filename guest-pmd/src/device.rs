//! Bringing up the sbnet function as a virtio 1.x device (virtio 1.2
//! §3.1.1) and the register accesses the port needs later.
//!
//! Every access goes through the [`Bus`]; on vfio-user each one is a socket
//! round trip, so none of them is on the packet path except a queue
//! notification, which the port only writes when the device asks for it.

use std::time::Duration;

use sbnet_abi::common_cfg::{
    bit, off, NO_VECTOR, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER,
    STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_VERSION_1,
};
use sbnet_abi::net::{
    cfg_off, ctrl_queue, num_queues, rx_queue, tx_queue, valid_queue_pairs, NetConfig,
    MAX_QUEUE_PAIRS, NET_CONFIG_LEN, NUM_QUEUES, SB_F_EARLY_POST, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MTU, VIRTIO_NET_F_SHARED_BUFFERS,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use sbnet_abi::pci::{self, cfg, COMMAND_BUS_MASTER, COMMAND_MEMORY};
use sbnet_abi::shm::SlotGeometry;

use crate::bus::{Bus, BusError, DmaRegion};
use crate::caps::{self, VirtioCaps, CONFIG_SPACE_LEN};
use crate::config::PortConfig;
use crate::ctrl::{self, CtrlQueue};
use crate::error::PmdError;
use crate::vq::{RingLayout, SplitQueue};

/// Status reads while waiting for a reset to finish.
const RESET_POLLS: u32 = 1000;
/// Reads of a config pair before giving up on a stable `config_generation`.
const GENERATION_TRIES: u32 = 16;

/// The feature bits the PMD understands (docs/abi.md §2).
pub const DRIVER_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_F_ACCESS_PLATFORM)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MTU);

/// The mapped Shared Buffers region and this side's place in the pair.
#[derive(Debug, Clone, Copy)]
pub struct SharedRegion {
    /// `shared_buffers_offset`: this side's index, 0 or 1.
    pub side: u8,
    /// Slot size and count.
    pub geometry: SlotGeometry,
    /// Slot 0 in this process.
    pub ptr: *mut u8,
    /// Slot 0's bus address (the BAR window `W` plus the capability's
    /// offset): what slot descriptors carry.
    pub window: u64,
    /// The host accepts early posts (`sb_flags` has `SB_F_EARLY_POST`).
    pub early_post: bool,
}

// SAFETY: the pointer is into a BAR mapping the bus owns; the port owning
// the bus owns this value too and moves with it.
unsafe impl Send for SharedRegion {}

/// One queue pair's virtqueues.
pub struct QueuePair {
    /// `receiveq(q)`, queue `2q`.
    pub rx: SplitQueue,
    /// `transmitq(q)`, queue `2q + 1`.
    pub tx: SplitQueue,
}

/// What bring-up found out.
pub struct Setup {
    /// Negotiated feature bits.
    pub features: u64,
    /// MAC address from the device configuration.
    pub mac: [u8; 6],
    /// MTU from the device configuration (1500 if not offered).
    pub mtu: u16,
    /// The Shared Buffers region, when shared buffers were negotiated.
    pub shm: Option<SharedRegion>,
    /// The queue pairs opened.
    pub queues: Vec<QueuePair>,
    /// The link's queue pairs `Q` (`max_virtqueue_pairs` when the device
    /// offers `VIRTIO_NET_F_MQ`, else 1): queue pair `q` uses the slots
    /// `s % Q == q`.
    pub link_pairs: u16,
}

/// A virtio-net function behind a bus, with its structures located.
pub struct Device<B: Bus> {
    bus: B,
    caps: VirtioCaps,
    /// BAR offset of each queue's notify register.
    notify_at: [u64; num_queues(MAX_QUEUE_PAIRS) as usize],
}

impl<B: Bus> Device<B> {
    /// Brings the function up to `DRIVER_OK` (virtio 1.2 §3.1.1): checks
    /// its identity, finds its structures, resets it, negotiates features,
    /// maps the Shared Buffers region if negotiated, sets up both queues.
    /// On an error after the reset the device is left `FAILED`.
    /// With `pairs` above 1 it negotiates multiqueue and, after
    /// `DRIVER_OK`, sets the device to `pairs` queue pairs.
    pub fn init(bus: B, cfg: &PortConfig, pairs: u16) -> Result<(Self, Setup), PmdError> {
        let mut dev = Self::probe(bus)?;
        match dev.init_after_probe(cfg, pairs) {
            Ok(setup) => Ok((dev, setup)),
            Err(e) => {
                dev.fail();
                Err(e)
            }
        }
    }

    /// Reads config space, checks the IDs, walks the capabilities and
    /// enables memory decoding and bus mastering.
    pub fn probe(mut bus: B) -> Result<Self, PmdError> {
        let mut space = [0u8; CONFIG_SPACE_LEN];
        bus.config_read(0, &mut space)?;
        let vendor = u16::from_le_bytes([space[cfg::VENDOR_ID], space[cfg::VENDOR_ID + 1]]);
        let device = u16::from_le_bytes([space[cfg::DEVICE_ID], space[cfg::DEVICE_ID + 1]]);
        if vendor != pci::VENDOR_ID || device != pci::DEVICE_ID_NET {
            return Err(PmdError::NotVirtioNet { vendor, device });
        }
        let caps = caps::walk(&space)?;
        let command = u16::from_le_bytes([space[cfg::COMMAND], space[cfg::COMMAND + 1]]);
        let want = command | COMMAND_MEMORY | COMMAND_BUS_MASTER;
        if want != command {
            bus.config_write(cfg::COMMAND as u16, &want.to_le_bytes())?;
        }
        Ok(Self {
            bus,
            caps,
            notify_at: [0; num_queues(MAX_QUEUE_PAIRS) as usize],
        })
    }

    fn init_after_probe(&mut self, cfg: &PortConfig, pairs: u16) -> Result<Setup, PmdError> {
        self.reset()?;
        self.set_status(STATUS_ACKNOWLEDGE)?;
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)?;
        let (features, link_pairs) = self.negotiate(cfg, pairs)?;
        // With multiqueue: 2Q data queues and the control queue.
        let need = if pairs > 1 {
            num_queues(link_pairs)
        } else {
            NUM_QUEUES
        };
        let have = self.common_read16(off::NUM_QUEUES)?;
        if have < need {
            return Err(PmdError::Queue {
                queue: have,
                reason: "device has fewer queues than its queue pairs need",
            });
        }
        let mac = if features & bit(VIRTIO_NET_F_MAC) != 0 {
            let mut mac = [0u8; 6];
            for (i, b) in mac.iter_mut().enumerate() {
                *b = self.device_read8(cfg_off::MAC + i)?;
            }
            mac
        } else {
            [0; 6]
        };
        let mtu = if features & bit(VIRTIO_NET_F_MTU) != 0 {
            self.device_read16(cfg_off::MTU)?
        } else {
            1500
        };
        let shm = if features & bit(VIRTIO_NET_F_SHARED_BUFFERS) != 0 {
            Some(self.map_shared()?)
        } else {
            None
        };
        let mut queues = Vec::with_capacity(usize::from(pairs));
        for q in 0..pairs {
            queues.push(QueuePair {
                rx: self.setup_queue(rx_queue(q), cfg.rx_queue_size)?,
                tx: self.setup_queue(tx_queue(q), cfg.tx_queue_size)?,
            });
        }
        let ctrl = if pairs > 1 {
            let q = ctrl_queue(link_pairs);
            let (size, mem) = self.program_queue(q, 2, CtrlQueue::EXTRA)?;
            let c = CtrlQueue::new(q, size, mem);
            let (desc, driver, device) = c.iovas();
            self.enable_queue(q, desc, driver, device)?;
            Some(c)
        } else {
            None
        };
        self.common_write16(off::CONFIG_MSIX_VECTOR, NO_VECTOR)?;
        let status = self.status()?;
        if status & STATUS_DEVICE_NEEDS_RESET != 0 {
            // The device refused the queue setup (e.g. rings outside the
            // DMA maps): say so now rather than run a dead port.
            return Err(PmdError::DeviceNeedsReset { status });
        }
        self.set_status(status | STATUS_DRIVER_OK)?;
        if let Some(c) = ctrl {
            ctrl::set_queue_pairs(self, c, pairs)?;
        }
        tracing::info!(
            features = format_args!("{features:#x}"),
            mtu,
            shared_buffers = shm.is_some(),
            queue_pairs = pairs,
            link_pairs,
            rx_queue = queues[0].rx.size(),
            tx_queue = queues[0].tx.size(),
            "sbnet device is up"
        );
        Ok(Setup {
            features,
            mac,
            mtu,
            shm,
            queues,
            link_pairs,
        })
    }

    /// Writes 0 to `device_status` and waits until it reads 0 (virtio 1.2
    /// §4.1.4.3.2). The device then forgets queues and features.
    pub fn reset(&mut self) -> Result<(), PmdError> {
        self.set_status(0)?;
        let mut status = 0;
        for i in 0..RESET_POLLS {
            status = self.status()?;
            if status == 0 {
                return Ok(());
            }
            if i >= 8 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Err(PmdError::ResetTimeout { status })
    }

    /// Best effort: tells the device the driver gave up.
    #[cold]
    pub fn fail(&mut self) {
        if let Ok(s) = self.status() {
            let _ = self.set_status(s | STATUS_FAILED);
        }
    }

    /// Negotiates features; returns them and the link's queue pairs.
    fn negotiate(&mut self, cfg: &PortConfig, pairs: u16) -> Result<(u64, u16), PmdError> {
        self.common_write32(off::DEVICE_FEATURE_SELECT, 0)?;
        let lo = self.common_read32(off::DEVICE_FEATURE)?;
        self.common_write32(off::DEVICE_FEATURE_SELECT, 1)?;
        let hi = self.common_read32(off::DEVICE_FEATURE)?;
        let offered = u64::from(hi) << 32 | u64::from(lo);
        if offered & bit(VIRTIO_F_VERSION_1) == 0 {
            return Err(PmdError::NoVersion1 { offered });
        }
        let mut wanted = DRIVER_FEATURES;
        if !cfg.classic_only {
            wanted |= bit(VIRTIO_NET_F_SHARED_BUFFERS);
        }
        let link_pairs = self.link_pairs(offered, pairs)?;
        if pairs > 1 {
            wanted |= bit(VIRTIO_NET_F_MQ) | bit(VIRTIO_NET_F_CTRL_VQ);
        }
        let accepted = offered & wanted;
        self.common_write32(off::DRIVER_FEATURE_SELECT, 0)?;
        self.common_write32(off::DRIVER_FEATURE, accepted as u32)?;
        self.common_write32(off::DRIVER_FEATURE_SELECT, 1)?;
        self.common_write32(off::DRIVER_FEATURE, (accepted >> 32) as u32)?;
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.set_status(status)?;
        // virtio 1.2 §3.1.1 step 6: re-read status to make sure
        // FEATURES_OK is still set, otherwise the device does not support
        // our subset of features.
        if self.status()? & STATUS_FEATURES_OK == 0 {
            return Err(PmdError::FeaturesRefused { offered, accepted });
        }
        Ok((accepted, link_pairs))
    }

    /// The link's queue pairs `Q` (virtio 1.2 §5.1.4: the driver may read
    /// the device configuration before accepting features), checked
    /// against the `pairs` the port wants.
    fn link_pairs(&mut self, offered: u64, pairs: u16) -> Result<u16, PmdError> {
        let mq = offered & bit(VIRTIO_NET_F_MQ) != 0;
        let link_pairs = if mq {
            self.device_read16(std::mem::offset_of!(NetConfig, max_virtqueue_pairs))?
        } else {
            1
        };
        if !valid_queue_pairs(link_pairs) {
            return Err(PmdError::MultiQueue(format!(
                "the device reports max_virtqueue_pairs {link_pairs}, not a power of two \
                 in 1..={MAX_QUEUE_PAIRS}"
            )));
        }
        if pairs > 1 && (!mq || offered & bit(VIRTIO_NET_F_CTRL_VQ) == 0) {
            return Err(PmdError::MultiQueue(format!(
                "{pairs} queue pairs asked, but the device does not offer VIRTIO_NET_F_MQ \
                 with a control queue (start host-pair with more queue pairs)"
            )));
        }
        if pairs > link_pairs {
            return Err(PmdError::MultiQueue(format!(
                "{pairs} queue pairs asked, the link has {link_pairs}"
            )));
        }
        Ok(link_pairs)
    }

    fn map_shared(&mut self) -> Result<SharedRegion, PmdError> {
        let loc = self.caps.shm.ok_or_else(|| {
            PmdError::SharedRegion(
                "the device offers shared buffers but has no shared-memory capability".into(),
            )
        })?;
        if (self.caps.device.length as usize) < NET_CONFIG_LEN {
            return Err(PmdError::SharedRegion(format!(
                "device configuration window is {} bytes, the sbnet fields need {NET_CONFIG_LEN}",
                self.caps.device.length
            )));
        }
        let side = self.device_read8(cfg_off::SHARED_BUFFERS_OFFSET)?;
        if side > 1 {
            return Err(PmdError::SharedRegion(format!(
                "shared_buffers_offset is {side}, not 0 or 1"
            )));
        }
        let early_post = self.device_read8(cfg_off::SB_FLAGS)? & SB_F_EARLY_POST != 0;
        let slot_size = self.device_read32(cfg_off::SLOT_SIZE)?;
        let slot_count = self.device_read32(cfg_off::SLOT_COUNT)?;
        let geometry = SlotGeometry::new(slot_size, slot_count).map_err(PmdError::Geometry)?;
        let need = geometry.region_size();
        if loc.length < need {
            return Err(PmdError::SharedRegion(format!(
                "the capability describes {} bytes, {slot_count} slots of {slot_size} need {need}",
                loc.length
            )));
        }
        let bar = self.bus.map_bar(loc.bar)?;
        if loc
            .offset
            .checked_add(need)
            .is_none_or(|end| end > bar.len as u64)
        {
            return Err(PmdError::SharedRegion(format!(
                "BAR {} maps {} bytes, the region needs {need} at offset {}",
                loc.bar, bar.len, loc.offset
            )));
        }
        Ok(SharedRegion {
            side,
            geometry,
            // The check above keeps `offset` inside the mapping.
            ptr: bar.ptr.wrapping_add(loc.offset as usize),
            window: bar.bus_addr + loc.offset,
            early_post,
        })
    }

    fn setup_queue(&mut self, q: u16, requested: u16) -> Result<SplitQueue, PmdError> {
        let (size, mem) = self.program_queue(q, requested, 0)?;
        // SAFETY: the bus contract makes `mem` valid, zeroed DMA memory for
        // as long as the bus lives, and the port that will own this queue
        // owns the bus; `program_queue` checked the length and alignment; the
        // memory is fresh, so nothing else in this process uses it.
        let vq = unsafe { SplitQueue::new(q, size, mem) };
        let (desc, driver, device) = vq.iovas();
        self.enable_queue(q, desc, driver, device)?;
        Ok(vq)
    }

    /// Selects queue `q`, sets its size (`requested`, bounded by the
    /// device's maximum, rounded down to a power of two) and allocates
    /// zeroed, 16-byte aligned DMA memory for its rings plus `extra` bytes.
    pub(crate) fn program_queue(
        &mut self,
        q: u16,
        requested: u16,
        extra: usize,
    ) -> Result<(u16, DmaRegion), PmdError> {
        let err = |reason| PmdError::Queue { queue: q, reason };
        self.common_write16(off::QUEUE_SELECT, q)?;
        let max = self.common_read16(off::QUEUE_SIZE)?;
        if max == 0 {
            return Err(err("not available (size 0)"));
        }
        let want = max.min(requested).min(sbnet_abi::ring::MAX_QUEUE_SIZE);
        // Round down to a power of two (the ABI's queues are).
        let size = 1u16 << (15 - want.leading_zeros());
        if size < 2 {
            return Err(err("fewer than two entries"));
        }
        self.common_write16(off::QUEUE_SIZE, size)?;
        let len = RingLayout::new(size).total + extra;
        let mem = self.bus.dma_alloc(len)?;
        if mem.len < len {
            return Err(PmdError::BadDma("shorter than asked"));
        }
        if !(mem.ptr as usize).is_multiple_of(16) || !mem.iova.is_multiple_of(16) {
            return Err(PmdError::BadDma("not 16-byte aligned"));
        }
        Ok((size, mem))
    }

    /// Gives the selected queue `q` its ring addresses, finds its notify
    /// register and enables it.
    pub(crate) fn enable_queue(
        &mut self,
        q: u16,
        desc: u64,
        driver: u64,
        device: u64,
    ) -> Result<(), PmdError> {
        let err = |reason| PmdError::Queue { queue: q, reason };
        if usize::from(q) >= self.notify_at.len() {
            return Err(err("beyond the queues a driver of 16 queue pairs uses"));
        }
        self.common_write64(off::QUEUE_DESC, desc)?;
        self.common_write64(off::QUEUE_DRIVER, driver)?;
        self.common_write64(off::QUEUE_DEVICE, device)?;
        self.common_write16(off::QUEUE_MSIX_VECTOR, NO_VECTOR)?;
        let notify_off = self.common_read16(off::QUEUE_NOTIFY_OFF)?;
        let at = u64::from(notify_off) * u64::from(self.caps.notify_off_multiplier);
        if at + 2 > u64::from(self.caps.notify.length) {
            return Err(err("notify offset outside the notify window"));
        }
        self.notify_at[q as usize] = u64::from(self.caps.notify.offset) + at;
        self.common_write16(off::QUEUE_ENABLE, 1)?;
        Ok(())
    }

    /// Tells the device that queue `q` has new buffers.
    pub fn notify(&mut self, q: u16) -> Result<(), BusError> {
        let at = self.notify_at.get(usize::from(q)).copied().unwrap_or(0);
        self.bus
            .bar_write(self.caps.notify.bar, at, &q.to_le_bytes())
    }

    /// `device_status`.
    pub fn status(&mut self) -> Result<u8, PmdError> {
        self.common_read8(off::DEVICE_STATUS)
    }

    fn set_status(&mut self, s: u8) -> Result<(), PmdError> {
        self.common_write8(off::DEVICE_STATUS, s)
    }

    /// `pairing_epoch` alone (one read).
    pub fn epoch(&mut self) -> Result<u32, PmdError> {
        self.device_read32(cfg_off::PAIRING_EPOCH)
    }

    /// `pairing_epoch` and `peer_status`, read consistently (the
    /// `config_generation` protocol of virtio 1.2 §4.1.4.3.1).
    pub fn epoch_and_peer(&mut self) -> Result<(u32, u32), PmdError> {
        for _ in 0..GENERATION_TRIES {
            let g1 = self.common_read8(off::CONFIG_GENERATION)?;
            let epoch = self.device_read32(cfg_off::PAIRING_EPOCH)?;
            let peer = self.device_read32(cfg_off::PEER_STATUS)?;
            if self.common_read8(off::CONFIG_GENERATION)? == g1 {
                return Ok((epoch, peer));
            }
        }
        Err(PmdError::EpochUnstable {
            tries: GENERATION_TRIES,
        })
    }

    /// Writes `epoch_ack`.
    pub fn ack_epoch(&mut self, epoch: u32) -> Result<(), PmdError> {
        self.device_write32(cfg_off::EPOCH_ACK, epoch)
    }

    /// `status & LINK_UP` of the device configuration.
    pub fn link_up(&mut self) -> Result<bool, PmdError> {
        Ok(self.device_read16(cfg_off::STATUS)? & VIRTIO_NET_S_LINK_UP != 0)
    }

    /// The bus, for tests and tools.
    pub fn bus_mut(&mut self) -> &mut B {
        &mut self.bus
    }

    fn read<const N: usize>(&mut self, bar: u8, at: u64) -> Result<[u8; N], PmdError> {
        let mut b = [0u8; N];
        self.bus.bar_read(bar, at, &mut b)?;
        Ok(b)
    }

    fn common_at(&self, o: usize) -> (u8, u64) {
        (
            self.caps.common.bar,
            u64::from(self.caps.common.offset) + o as u64,
        )
    }

    fn device_at(&self, o: usize) -> (u8, u64) {
        (
            self.caps.device.bar,
            u64::from(self.caps.device.offset) + o as u64,
        )
    }

    fn common_read8(&mut self, o: usize) -> Result<u8, PmdError> {
        let (bar, at) = self.common_at(o);
        Ok(self.read::<1>(bar, at)?[0])
    }

    fn common_read16(&mut self, o: usize) -> Result<u16, PmdError> {
        let (bar, at) = self.common_at(o);
        Ok(u16::from_le_bytes(self.read(bar, at)?))
    }

    fn common_read32(&mut self, o: usize) -> Result<u32, PmdError> {
        let (bar, at) = self.common_at(o);
        Ok(u32::from_le_bytes(self.read(bar, at)?))
    }

    fn common_write8(&mut self, o: usize, v: u8) -> Result<(), PmdError> {
        let (bar, at) = self.common_at(o);
        Ok(self.bus.bar_write(bar, at, &[v])?)
    }

    fn common_write16(&mut self, o: usize, v: u16) -> Result<(), PmdError> {
        let (bar, at) = self.common_at(o);
        Ok(self.bus.bar_write(bar, at, &v.to_le_bytes())?)
    }

    fn common_write32(&mut self, o: usize, v: u32) -> Result<(), PmdError> {
        let (bar, at) = self.common_at(o);
        Ok(self.bus.bar_write(bar, at, &v.to_le_bytes())?)
    }

    /// A 64-bit register as two 32-bit halves, low first (virtio 1.2
    /// §4.1.3.1 lets the driver do this).
    fn common_write64(&mut self, o: usize, v: u64) -> Result<(), PmdError> {
        self.common_write32(o, v as u32)?;
        self.common_write32(o + 4, (v >> 32) as u32)
    }

    fn device_read8(&mut self, o: usize) -> Result<u8, PmdError> {
        let (bar, at) = self.device_at(o);
        Ok(self.read::<1>(bar, at)?[0])
    }

    fn device_read16(&mut self, o: usize) -> Result<u16, PmdError> {
        let (bar, at) = self.device_at(o);
        Ok(u16::from_le_bytes(self.read(bar, at)?))
    }

    fn device_read32(&mut self, o: usize) -> Result<u32, PmdError> {
        let (bar, at) = self.device_at(o);
        Ok(u32::from_le_bytes(self.read(bar, at)?))
    }

    fn device_write32(&mut self, o: usize, v: u32) -> Result<(), PmdError> {
        let (bar, at) = self.device_at(o);
        Ok(self.bus.bar_write(bar, at, &v.to_le_bytes())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeBus, FakeDevice, FakeOptions};
    use sbnet_abi::common_cfg::STATUS_FEATURES_OK;

    fn init(dev: &FakeDevice, cfg: &PortConfig) -> Result<(Device<FakeBus>, Setup), PmdError> {
        Device::init(dev.bus(), cfg, 1)
    }

    #[test]
    fn brings_up_a_zero_copy_device() {
        let fake = FakeDevice::new(FakeOptions::default());
        let (_dev, setup) = init(&fake, &PortConfig::default()).unwrap();
        assert_eq!(
            setup.features,
            DRIVER_FEATURES | bit(VIRTIO_NET_F_SHARED_BUFFERS)
        );
        assert_eq!(setup.mtu, 1500);
        assert_eq!(setup.mac, [0x52, 0x54, 0x00, 0x5b, 0x00, 0x00]);
        let shm = setup.shm.unwrap();
        assert_eq!(shm.side, 0);
        assert_eq!(shm.geometry.slot_count(), FakeOptions::default().slot_count);
        assert_eq!(setup.queues[0].rx.size(), FakeOptions::default().queue_size);
        let side = fake.regs();
        assert_eq!(side.status & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
        assert!(side
            .queues
            .iter()
            .all(|q| q.enable == 1 && q.msix == NO_VECTOR));
        assert_eq!(side.queues[0].desc, setup.queues[0].rx.iovas().0);
        assert_eq!(side.queues[1].device, setup.queues[0].tx.iovas().2);
        assert_eq!(side.command & (COMMAND_MEMORY | COMMAND_BUS_MASTER), 6);
    }

    #[test]
    fn classic_only_does_not_ask_for_shared_buffers() {
        let fake = FakeDevice::new(FakeOptions::default());
        let (_dev, setup) = init(&fake, &PortConfig::classic()).unwrap();
        assert_eq!(setup.features & bit(VIRTIO_NET_F_SHARED_BUFFERS), 0);
        assert!(setup.shm.is_none());
    }

    #[test]
    fn shared_buffers_only_when_offered() {
        let fake = FakeDevice::new(FakeOptions {
            features: DRIVER_FEATURES,
            ..FakeOptions::default()
        });
        let (_dev, setup) = init(&fake, &PortConfig::default()).unwrap();
        assert!(setup.shm.is_none());
    }

    #[test]
    fn queue_size_is_the_smaller_power_of_two() {
        let fake = FakeDevice::new(FakeOptions {
            queue_size: 256,
            ..FakeOptions::default()
        });
        let cfg = PortConfig {
            rx_queue_size: 1024,
            tx_queue_size: 100,
            ..PortConfig::default()
        };
        let (_dev, setup) = init(&fake, &cfg).unwrap();
        assert_eq!(setup.queues[0].rx.size(), 256);
        assert_eq!(setup.queues[0].tx.size(), 64);
    }

    #[test]
    fn refused_features_ok_is_a_clear_error() {
        let fake = FakeDevice::new(FakeOptions {
            refuse_features_ok: true,
            ..FakeOptions::default()
        });
        let err = init(&fake, &PortConfig::default()).err().unwrap();
        assert!(
            matches!(err, PmdError::FeaturesRefused { accepted, .. } if accepted & bit(VIRTIO_F_VERSION_1) != 0),
            "{err}"
        );
        assert!(err.to_string().contains("refused FEATURES_OK"));
        let s = fake.regs().status;
        assert_eq!(s & STATUS_FEATURES_OK, 0);
        assert_eq!(s & STATUS_FAILED, STATUS_FAILED);
    }

    #[test]
    fn missing_version_1_is_refused() {
        let fake = FakeDevice::new(FakeOptions {
            features: bit(VIRTIO_NET_F_MAC),
            ..FakeOptions::default()
        });
        let err = init(&fake, &PortConfig::default()).err().unwrap();
        assert!(matches!(err, PmdError::NoVersion1 { .. }), "{err}");
    }

    #[test]
    fn wrong_device_id_is_refused() {
        let fake = FakeDevice::new(FakeOptions {
            device_id: 0x1000,
            ..FakeOptions::default()
        });
        let err = init(&fake, &PortConfig::default()).err().unwrap();
        assert!(
            matches!(err, PmdError::NotVirtioNet { device: 0x1000, .. }),
            "{err}"
        );
    }

    #[test]
    fn bad_geometry_is_refused() {
        let fake = FakeDevice::new(FakeOptions {
            slot_size: 3000,
            ..FakeOptions::default()
        });
        let err = init(&fake, &PortConfig::default()).err().unwrap();
        assert!(matches!(err, PmdError::Geometry(_)), "{err}");
    }

    #[test]
    fn absent_queue_is_refused() {
        let fake = FakeDevice::new(FakeOptions {
            queue_size: 0,
            ..FakeOptions::default()
        });
        let err = init(&fake, &PortConfig::default()).err().unwrap();
        assert!(matches!(err, PmdError::Queue { queue: 0, .. }), "{err}");
    }
}
