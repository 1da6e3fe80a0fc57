//! Two fake sbnet functions: their register files, the pairing epoch and
//! the host's slot ledger. The ring side of the switch is in
//! [`super::switch`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytemuck::bytes_of;
use sbnet_abi::common_cfg::{
    bit, off, COMMON_CFG_LEN, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1,
};
use sbnet_abi::layout::{
    COMMON_OFFSET, DEVICE_OFFSET, ISR_OFFSET, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER, SHM_BAR,
    VIRTIO_BAR,
};
use sbnet_abi::net::{
    cfg_off, NetConfig, NET_CONFIG_LEN, PEER_PRESENT, PEER_SHARED_BUFFERS, PEER_SYNCED,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_SHARED_BUFFERS, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use sbnet_abi::pci::cfg;
use sbnet_abi::ring::Desc;

use crate::bus::{BusError, DmaRegion, MappedBar};
use crate::caps::CONFIG_SPACE_LEN;

use super::config_space::{sbnet_config_space, ConfigSpaceOptions};
use super::fake_bus::FakeBus;
use super::mem::{Chunk, DmaArena};
use super::ring::DeviceRing;

/// Where the fake Shared Buffers BAR is programmed (the window `W`).
pub const SHM_WINDOW: u64 = 0x80_0000_0000;

/// Host ledger value: nobody owns the slot (no side with shared buffers).
pub(super) const NOBODY: u8 = 2;

/// How the fake functions behave.
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
    /// Set `USED_F_NO_NOTIFY` (the fake host "polls").
    pub no_notify: bool,
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
            no_notify: true,
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
    /// Both queues.
    pub queues: [QueueRegs; 2],
    /// `config_msix_vector`.
    pub config_msix: u16,
    /// Device configuration.
    pub net: NetConfig,
    /// Notifications per queue.
    pub notifies: [u64; 2],
    /// Writes to read-only or unknown registers.
    pub bad_writes: u64,
}

/// What the fake host counted (the names of `docs/abi.md` §6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeCounters {
    /// Slots passed without a copy (packets and gifts).
    pub zero_copy: u64,
    /// Frames copied (classic path, copy mode).
    pub copied: u64,
    /// Descriptors completed with length 0 because their side resyncs.
    pub resync_completions: u64,
    /// Malformed chains.
    pub bad_chain: u64,
    /// Malformed slot references.
    pub bad_slot_ref: u64,
    /// TX of a slot the sender does not own.
    pub tx_not_owner: u64,
    /// RX post of a slot the poster owns.
    pub rx_post_not_peer_owned: u64,
    /// RX post of a slot already posted.
    pub rx_post_duplicate: u64,
    /// Classic frame larger than the peer's buffer.
    pub frame_too_big: u64,
    /// TX while the peer has no `DRIVER_OK`.
    pub tx_no_peer: u64,
}

impl FakeCounters {
    /// Sum of every refusal counter.
    pub fn refusals(&self) -> u64 {
        self.bad_chain
            + self.bad_slot_ref
            + self.tx_not_owner
            + self.rx_post_not_peer_owned
            + self.rx_post_duplicate
            + self.frame_too_big
    }
}

/// One side: registers, DMA memory and the switch's view of its queues.
pub(super) struct Side {
    pub(super) regs: SideRegs,
    pub(super) arena: DmaArena,
    /// RX and TX rings, while the driver has `DRIVER_OK`.
    pub(super) rings: Option<[DeviceRing; 2]>,
    /// Slot → descriptor id of its RX post.
    pub(super) rx_slots: HashMap<u32, u16>,
    /// Classic RX posts in order.
    pub(super) rx_classic: VecDeque<(u16, Desc)>,
    /// TX chains in order.
    pub(super) tx: VecDeque<(u16, Desc)>,
}

impl Side {
    pub(super) fn driver_ok(&self) -> bool {
        self.regs.status & STATUS_DRIVER_OK != 0
    }

    /// `DRIVER_OK` with shared buffers negotiated.
    pub(super) fn zero_copy_capable(&self) -> bool {
        self.driver_ok() && self.regs.driver_features & bit(VIRTIO_NET_F_SHARED_BUFFERS) != 0
    }

    /// Resyncing: shared buffers, `DRIVER_OK`, epoch not acknowledged.
    pub(super) fn resyncing(&self) -> bool {
        self.zero_copy_capable() && self.regs.net.epoch_ack != self.regs.net.pairing_epoch
    }
}

/// Both sides and the host's state.
pub(super) struct PairState {
    pub(super) opts: FakeOptions,
    pub(super) sides: [Side; 2],
    pub(super) shm: Arc<Chunk>,
    pub(super) epoch: u32,
    /// Host ledger: owner side of each slot, or [`NOBODY`].
    pub(super) owner: Vec<u8>,
    pub(super) counters: FakeCounters,
}

impl PairState {
    fn new(opts: FakeOptions) -> Self {
        let region = u64::from(opts.slot_size) * u64::from(opts.slot_count);
        let space = sbnet_config_space(&ConfigSpaceOptions {
            shm_len: region,
            device: opts.device_id,
            ..ConfigSpaceOptions::default()
        });
        let side = |k: u8| {
            let net = NetConfig {
                mac: [0x52, 0x54, 0x00, 0x5b, 0x00, k],
                max_virtqueue_pairs: 1,
                mtu: 1500,
                shared_buffers_offset: k,
                slot_size: opts.slot_size,
                slot_count: opts.slot_count,
                pairing_epoch: 1,
                ..NetConfig::default()
            };
            let q = QueueRegs {
                max: opts.queue_size,
                size: opts.queue_size,
                ..QueueRegs::default()
            };
            Side {
                regs: SideRegs {
                    config: space,
                    command: 0,
                    dfsel: 0,
                    drfsel: 0,
                    driver_features: 0,
                    status: 0,
                    generation: 0,
                    queue_select: 0,
                    queues: [q; 2],
                    config_msix: 0,
                    net,
                    notifies: [0; 2],
                    bad_writes: 0,
                },
                arena: DmaArena::new(),
                rings: None,
                rx_slots: HashMap::new(),
                rx_classic: VecDeque::new(),
                tx: VecDeque::new(),
            }
        };
        Self {
            shm: Chunk::new(region.max(1) as usize),
            sides: [side(0), side(1)],
            epoch: 1,
            owner: vec![NOBODY; opts.slot_count as usize],
            counters: FakeCounters::default(),
            opts,
        }
    }

    pub(super) fn config_read(
        &mut self,
        k: usize,
        offset: u16,
        data: &mut [u8],
    ) -> Result<(), BusError> {
        let o = offset as usize;
        let r = &self.sides[k].regs;
        let mut space = r.config;
        space[cfg::COMMAND..cfg::COMMAND + 2].copy_from_slice(&r.command.to_le_bytes());
        let src = space
            .get(o..o + data.len())
            .ok_or_else(|| BusError::Transport("config read out of range".into()))?;
        data.copy_from_slice(src);
        Ok(())
    }

    pub(super) fn config_write(
        &mut self,
        k: usize,
        offset: u16,
        data: &[u8],
    ) -> Result<(), BusError> {
        if offset as usize == cfg::COMMAND && data.len() == 2 {
            self.sides[k].regs.command = u16::from_le_bytes([data[0], data[1]]);
        } else {
            self.sides[k].regs.bad_writes += 1;
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

    pub(super) fn dma_alloc(&mut self, k: usize, len: usize) -> DmaRegion {
        self.sides[k].arena.alloc(len)
    }

    pub(super) fn bar_read(
        &mut self,
        k: usize,
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
            let v = self.common_read(k, o - common.start);
            let b = v.to_le_bytes();
            let n = data.len().min(8);
            data[..n].copy_from_slice(&b[..n]);
        } else if device.contains(&o) {
            let bytes = bytes_of(&self.sides[k].regs.net);
            let start = o - device.start;
            let end = (start + data.len()).min(NET_CONFIG_LEN);
            data[..end - start].copy_from_slice(&bytes[start..end]);
        } else if o == ISR_OFFSET as usize {
            // ISR: nothing pending (the PMD never takes interrupts).
        }
        Ok(())
    }

    fn common_read(&self, k: usize, o: usize) -> u64 {
        let r = &self.sides[k].regs;
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
            off::NUM_QUEUES => 2,
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

    pub(super) fn bar_write(
        &mut self,
        k: usize,
        bar: u8,
        offset: u64,
        data: &[u8],
    ) -> Result<(), BusError> {
        if bar != VIRTIO_BAR || data.is_empty() || data.len() > 8 {
            return Err(BusError::Transport(format!("write of BAR {bar}")));
        }
        let o = offset as usize;
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        let common = COMMON_OFFSET as usize..COMMON_OFFSET as usize + COMMON_CFG_LEN;
        let notify = NOTIFY_OFFSET as usize..NOTIFY_OFFSET as usize + 8;
        if common.contains(&o) {
            self.common_write(k, o - common.start, v, data.len());
        } else if o == DEVICE_OFFSET as usize + cfg_off::EPOCH_ACK && data.len() == 4 {
            self.sides[k].regs.net.epoch_ack = v as u32;
            self.refresh_synced();
        } else if notify.contains(&o) {
            let q = (o - notify.start) / NOTIFY_OFF_MULTIPLIER as usize;
            self.sides[k].regs.notifies[q] += 1;
        } else {
            self.sides[k].regs.bad_writes += 1;
        }
        Ok(())
    }

    fn common_write(&mut self, k: usize, o: usize, v: u64, width: usize) {
        if o == off::DEVICE_STATUS {
            self.write_status(k, v as u8);
            return;
        }
        let r = &mut self.sides[k].regs;
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
    pub(super) fn write_status(&mut self, k: usize, mut s: u8) {
        let was_ok = self.sides[k].driver_ok();
        if s == 0 {
            let side = &mut self.sides[k];
            let max = self.opts.queue_size;
            side.regs.status = 0;
            side.regs.driver_features = 0;
            side.regs.net.epoch_ack = 0;
            for q in &mut side.regs.queues {
                *q = QueueRegs {
                    max,
                    size: max,
                    ..QueueRegs::default()
                };
            }
            side.rings = None;
            side.rx_slots.clear();
            side.rx_classic.clear();
            side.tx.clear();
            if was_ok {
                self.new_epoch();
            }
            return;
        }
        if self.opts.refuse_features_ok {
            s &= !STATUS_FEATURES_OK;
        }
        self.sides[k].regs.status = s;
        if !was_ok && s & STATUS_DRIVER_OK != 0 {
            self.attach_rings(k);
            self.new_epoch();
        }
    }

    fn attach_rings(&mut self, k: usize) {
        let side = &mut self.sides[k];
        let ring = |q: &QueueRegs| side.arena.device_ring(q.size, q.desc, q.driver, q.device);
        let mut rings = [ring(&side.regs.queues[0]), ring(&side.regs.queues[1])];
        if self.opts.no_notify {
            for r in &mut rings {
                r.set_used_flags(sbnet_abi::ring::USED_F_NO_NOTIFY);
            }
        }
        side.rings = Some(rings);
    }

    /// The pair's shape changed: next epoch, new peer status, initial
    /// ownership of its mode (`docs/abi.md` §6).
    pub(super) fn new_epoch(&mut self) {
        self.epoch += 1;
        let zc = [
            self.sides[0].zero_copy_capable(),
            self.sides[1].zero_copy_capable(),
        ];
        for (s, o) in self.owner.iter_mut().enumerate() {
            *o = match zc {
                [true, true] => (s % 2) as u8,
                [true, false] => 0,
                [false, true] => 1,
                [false, false] => NOBODY,
            };
        }
        for k in 0..2 {
            let peer = &self.sides[1 - k];
            let mut peer_status = 0;
            if peer.driver_ok() {
                peer_status |= PEER_PRESENT;
            }
            if peer.zero_copy_capable() {
                peer_status |= PEER_SHARED_BUFFERS;
            }
            let net = &mut self.sides[k].regs.net;
            net.pairing_epoch = self.epoch;
            net.peer_status = peer_status;
            net.status = if peer_status & PEER_PRESENT != 0 {
                VIRTIO_NET_S_LINK_UP
            } else {
                0
            };
            self.sides[k].regs.generation = self.sides[k].regs.generation.wrapping_add(1);
        }
        self.refresh_synced();
    }

    /// `PEER_SYNCED`: the peer is up and has acknowledged the epoch (or
    /// needs no resync), as the real host publishes it.
    pub(super) fn refresh_synced(&mut self) {
        for k in 0..2 {
            let peer = &self.sides[1 - k];
            let synced = peer.driver_ok() && !peer.resyncing();
            let net = &mut self.sides[k].regs.net;
            let before = net.peer_status;
            if synced {
                net.peer_status |= PEER_SYNCED;
            } else {
                net.peer_status &= !PEER_SYNCED;
            }
            if net.peer_status != before {
                self.sides[k].regs.generation = self.sides[k].regs.generation.wrapping_add(1);
            }
        }
    }
}

/// Two fake functions and their host. Cheap to clone (a shared handle).
#[derive(Clone)]
pub struct FakePair {
    pub(super) state: Arc<Mutex<PairState>>,
}

impl FakePair {
    /// Two functions with these options, both without a driver, epoch 1.
    pub fn new(opts: FakeOptions) -> Self {
        Self {
            state: Arc::new(Mutex::new(PairState::new(opts))),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, PairState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bus of side `k` (0 or 1).
    pub fn bus(&self, k: usize) -> FakeBus {
        assert!(k < 2);
        FakeBus {
            pair: self.state.clone(),
            side: k,
        }
    }

    /// A copy of side `k`'s registers.
    pub fn side_regs(&self, k: usize) -> SideRegs {
        self.lock().sides[k].regs.clone()
    }

    /// The host's counters.
    pub fn counters(&self) -> FakeCounters {
        self.lock().counters
    }

    /// The current pairing epoch.
    pub fn epoch(&self) -> u32 {
        self.lock().epoch
    }

    /// The host's owner of slot `s`: 0, 1, or None when nobody owns it.
    pub fn owner(&self, s: u32) -> Option<u8> {
        let st = self.lock();
        st.owner.get(s as usize).copied().filter(|o| *o != NOBODY)
    }

    /// Forces an epoch change (as if the pair's shape changed).
    pub fn bump_epoch(&self) {
        self.lock().new_epoch();
    }

    /// Sets `DEVICE_NEEDS_RESET` in side `k`'s status and, as the host
    /// does, moves the epoch.
    pub fn set_needs_reset(&self, k: usize) {
        let mut st = self.lock();
        st.sides[k].regs.status |= STATUS_DEVICE_NEEDS_RESET;
        st.new_epoch();
    }

    /// Runs `f` on side `k`'s device rings (RX, TX), if it has
    /// `DRIVER_OK`, to misbehave by hand.
    pub fn with_rings<R>(&self, k: usize, f: impl FnOnce(&mut [DeviceRing; 2]) -> R) -> Option<R> {
        self.lock().sides[k].rings.as_mut().map(f)
    }

    /// Writes `bytes` at byte `offset` of the Shared Buffers region (to
    /// play a peer that breaks rule 1, or to inspect).
    pub fn shm_write(&self, offset: usize, bytes: &[u8]) {
        let st = self.lock();
        assert!(offset + bytes.len() <= st.shm.len());
        // SAFETY: in bounds of the chunk (checked above), which lives as
        // long as the state; bytes are plain data.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), st.shm.ptr().add(offset), bytes.len())
        };
    }

    /// Reads `len` bytes at `offset` of the Shared Buffers region.
    pub fn shm_read(&self, offset: usize, len: usize) -> Vec<u8> {
        let st = self.lock();
        assert!(offset + len <= st.shm.len());
        let mut v = vec![0u8; len];
        // SAFETY: in bounds (checked above); the chunk lives with the state.
        unsafe { core::ptr::copy_nonoverlapping(st.shm.ptr().add(offset), v.as_mut_ptr(), len) };
        v
    }

    /// One pass of the host switch over both sides' rings. Returns how many
    /// descriptors it completed.
    pub fn step(&self) -> usize {
        self.lock().step()
    }

    /// Runs the switch on its own thread until the handle drops.
    pub fn spawn_switch(&self) -> SwitchThread {
        let stop = Arc::new(AtomicBool::new(false));
        let pair = self.clone();
        let flag = stop.clone();
        let join = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if pair.step() == 0 {
                    std::thread::sleep(Duration::from_micros(20));
                } else {
                    std::thread::yield_now();
                }
            }
        });
        SwitchThread {
            stop,
            join: Some(join),
        }
    }

    /// Net config of side `k` as the driver sees it.
    pub fn net_config(&self, k: usize) -> NetConfig {
        self.lock().sides[k].regs.net
    }
}

/// A running switch thread; stops and joins when dropped.
pub struct SwitchThread {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl Drop for SwitchThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}
