//! One virtio-net function's registers: common configuration, ISR, device
//! configuration, notifications, MSI-X, feature negotiation and queue setup
//! (virtio 1.2 §4.1.4). The packet path lives in [`crate::switch`]; this
//! module turns register accesses into state and [`Event`]s.

use crate::counters::SideCounters;
use crate::mem::GuestMemory;
use crate::pci_config::PciConfig;
use crate::queue::{Queue, QueueError, QueueRegs};
use sbnet_abi::common_cfg::{self as cc, bit, off};
use sbnet_abi::layout as l;
use sbnet_abi::net::{self, cfg_off, NetConfig};
use sbnet_abi::shm::SlotGeometry;
use sbnet_vfio_user::server::{IrqDesc, RegionDesc};
use sbnet_vfio_user::wire::{IrqInfoFlags, IrqSetFlags, RegionFlags};
use std::os::fd::OwnedFd;

/// Features the function offers (`docs/abi.md` §2).
pub const DEVICE_FEATURES: u64 = bit(cc::VIRTIO_F_VERSION_1)
    | bit(cc::VIRTIO_F_ACCESS_PLATFORM)
    | bit(net::VIRTIO_NET_F_MAC)
    | bit(net::VIRTIO_NET_F_STATUS)
    | bit(net::VIRTIO_NET_F_MTU)
    | bit(net::VIRTIO_NET_F_SHARED_BUFFERS);

/// MTU advertised in the device configuration.
pub const MTU: u16 = 1500;

/// Something the pair must react to after a register access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The driver set DRIVER_OK, reset, failed or the device needs reset:
    /// the pair's shape may have changed.
    StatusChanged,
    /// The driver wrote `epoch_ack`.
    EpochAck(u32),
    /// The driver notified queue `q`.
    Kick(u16),
}

/// Why a register access is refused (becomes an errno for the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessError {
    /// Region index or offset out of range, or a bad access size.
    Invalid,
}

/// The per-queue part of common config before the queue is enabled.
#[derive(Debug, Default)]
struct QueueSlot {
    regs: QueueRegs,
    queue: Option<Queue>,
}

/// One virtio-net function.
#[derive(Debug)]
pub struct Function {
    side: u8,
    geometry: SlotGeometry,
    max_queue_size: u16,
    mac: [u8; 6],
    /// PCI configuration space.
    pub pci: PciConfig,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    config_msix_vector: u16,
    queues: [QueueSlot; 2],
    isr: u8,
    pairing_epoch: u32,
    peer_status: u32,
    epoch_ack: u32,
    msix_table: [u8; l::MSIX_VECTORS as usize * 16],
    msix_fds: [Option<OwnedFd>; l::MSIX_VECTORS as usize],
    msix_masked: [bool; l::MSIX_VECTORS as usize],
    msix_pending: [bool; l::MSIX_VECTORS as usize],
    intx_fd: Option<OwnedFd>,
    /// The client's DMA maps.
    pub mem: GuestMemory,
    /// Counters of this side.
    pub counters: SideCounters,
    events: Vec<Event>,
}

impl Function {
    /// A function for side `side` (0 or 1) of a pair with this slot geometry.
    pub fn new(side: u8, geometry: SlotGeometry, max_queue_size: u16) -> Self {
        Self {
            side,
            geometry,
            max_queue_size,
            mac: [0x52, 0x54, 0x00, 0x5b, 0x00, side],
            pci: PciConfig::new(geometry.region_size()),
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            config_msix_vector: cc::NO_VECTOR,
            queues: fresh_queues(max_queue_size),
            isr: 0,
            pairing_epoch: 0,
            peer_status: 0,
            epoch_ack: 0,
            msix_table: [0; l::MSIX_VECTORS as usize * 16],
            msix_fds: Default::default(),
            msix_masked: [false; l::MSIX_VECTORS as usize],
            msix_pending: [false; l::MSIX_VECTORS as usize],
            intx_fd: None,
            mem: GuestMemory::default(),
            counters: SideCounters::default(),
            events: Vec::with_capacity(8),
        }
    }

    /// This side's index.
    pub fn side(&self) -> u8 {
        self.side
    }

    /// The slot geometry this function advertises.
    pub fn net_geometry(&self) -> SlotGeometry {
        self.geometry
    }

    /// Device status register.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Features the driver accepted (valid once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// DRIVER_OK set and neither FAILED nor DEVICE_NEEDS_RESET.
    pub fn is_active(&self) -> bool {
        self.status & cc::STATUS_DRIVER_OK != 0
            && self.status & (cc::STATUS_FAILED | cc::STATUS_DEVICE_NEEDS_RESET) == 0
    }

    /// Active and negotiated shared buffers.
    pub fn is_shared_buffers(&self) -> bool {
        self.is_active() && self.driver_features & bit(net::VIRTIO_NET_F_SHARED_BUFFERS) != 0
    }

    /// The epoch the driver acknowledged.
    pub fn epoch_ack(&self) -> u32 {
        self.epoch_ack
    }

    /// The Shared Buffers window: the BAR address this side's driver programmed.
    pub fn shm_window(&self) -> u64 {
        self.pci.bar_address(l::SHM_BAR)
    }

    /// True when events wait for [`Self::take_events`].
    #[inline]
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Takes the events raised since the last call.
    pub fn take_events(&mut self) -> impl Iterator<Item = Event> + '_ {
        self.events.drain(..)
    }

    /// The enabled queue `q`, if any.
    #[inline]
    pub fn queue_mut(&mut self, q: u16) -> Option<&mut Queue> {
        self.queues.get_mut(q as usize)?.queue.as_mut()
    }

    /// Both queues (RX, TX) when enabled.
    #[inline]
    pub fn queues_mut(&mut self) -> (Option<&mut Queue>, Option<&mut Queue>) {
        let [rx, tx] = &mut self.queues;
        (rx.queue.as_mut(), tx.queue.as_mut())
    }

    /// Queue `q`, guest memory and counters, borrowed apart for the switch.
    #[inline]
    pub fn parts(&mut self, q: u16) -> (Option<&mut Queue>, &GuestMemory, &mut SideCounters) {
        let queue = self
            .queues
            .get_mut(q as usize)
            .and_then(|s| s.queue.as_mut());
        (queue, &self.mem, &mut self.counters)
    }

    /// Updates the pairing fields; raises a config interrupt when they changed.
    pub fn set_pairing(&mut self, epoch: u32, peer_status: u32) {
        if (epoch, peer_status) == (self.pairing_epoch, self.peer_status) {
            return;
        }
        self.pairing_epoch = epoch;
        self.peer_status = peer_status;
        self.config_changed();
    }

    fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & cc::STATUS_DRIVER_OK != 0 {
            self.isr |= cc::ISR_CONFIG;
            self.signal(self.config_msix_vector);
        }
    }

    /// Marks the device broken (`DEVICE_NEEDS_RESET`) after a ring could not
    /// be trusted, and tells the driver.
    #[cold]
    pub fn needs_reset(&mut self, why: QueueError) {
        if self.status & cc::STATUS_DEVICE_NEEDS_RESET != 0 {
            return;
        }
        tracing::warn!(side = self.side, "device needs reset: {why}");
        self.counters.needs_reset += 1;
        self.status |= cc::STATUS_DEVICE_NEEDS_RESET;
        for q in &mut self.queues {
            q.queue = None;
        }
        self.config_changed();
        self.events.push(Event::StatusChanged);
    }

    /// Resets the virtio state (status 0, vfio-user reset). DMA maps and
    /// interrupt fds stay: they belong to the VMM, not to the driver.
    pub fn reset(&mut self) {
        let was = self.status;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
        self.config_msix_vector = cc::NO_VECTOR;
        // virtio 1.2 §4.1.4.3: queue_size reads the maximum after reset.
        self.queues = fresh_queues(self.max_queue_size);
        self.isr = 0;
        self.epoch_ack = 0;
        self.counters.resets += 1;
        if was != 0 {
            self.events.push(Event::StatusChanged);
        }
    }

    /// The VMM went away: drop its memory and interrupt fds too.
    pub fn disconnect(&mut self) {
        self.reset();
        self.pci.reset();
        self.mem.clear();
        self.msix_fds = Default::default();
        self.intx_fd = None;
        self.msix_masked = [false; l::MSIX_VECTORS as usize];
        self.msix_pending = [false; l::MSIX_VECTORS as usize];
        self.events.push(Event::StatusChanged);
    }

    /// DMA maps changed: re-validate enabled queues.
    pub fn memory_changed(&mut self) {
        let mut bad = None;
        for q in self.queues.iter_mut().filter_map(|q| q.queue.as_mut()) {
            if let Err(e) = q.revalidate(&self.mem) {
                bad = Some(e);
            }
        }
        if let Some(e) = bad {
            self.needs_reset(e);
        }
    }

    /// Signals MSI-X vector `v` (or INTx when the VMM set no MSI-X fds).
    pub fn signal(&mut self, v: u16) {
        let any_msix = self.msix_fds.iter().any(Option::is_some);
        if any_msix {
            let i = v as usize;
            if i >= self.msix_fds.len() {
                return;
            }
            if self.msix_masked[i] {
                self.msix_pending[i] = true;
                return;
            }
            if let Some(fd) = &self.msix_fds[i] {
                write_eventfd(fd);
                self.counters.interrupts += 1;
            }
        } else if let Some(fd) = &self.intx_fd {
            write_eventfd(fd);
            self.counters.interrupts += 1;
        }
    }

    /// Signals queue `q`'s interrupt.
    #[inline]
    pub fn signal_queue(&mut self, q: u16) {
        let v = self.queues[q as usize].regs.msix_vector;
        self.isr |= cc::ISR_QUEUE;
        self.signal(v);
    }

    /// `DEVICE_SET_IRQS`. Returns false for a request it cannot honour.
    pub fn set_irqs(
        &mut self,
        index: u32,
        flags: IrqSetFlags,
        start: u32,
        count: u32,
        mut fds: Vec<OwnedFd>,
    ) -> bool {
        let n = match index {
            l::IRQ_MSIX => l::MSIX_VECTORS as u32,
            l::IRQ_INTX => 1,
            _ => return count == 0,
        };
        let Some(end) = start.checked_add(count).filter(|e| *e <= n) else {
            return false;
        };
        let action = flags.action();
        let data = flags.data();
        match (index, action, data) {
            (l::IRQ_MSIX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_EVENTFD)
                if fds.is_empty() =>
            {
                // QEMU enables MSI-X with eventfd data but no fds: "no
                // eventfd for these vectors yet" (the kernel's -1 entries).
                for v in start..end {
                    self.msix_fds[v as usize] = None;
                }
            }
            (l::IRQ_MSIX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_EVENTFD) => {
                if fds.len() != count as usize {
                    return false;
                }
                for (v, fd) in (start..end).zip(fds.drain(..)) {
                    self.msix_fds[v as usize] = Some(fd);
                }
            }
            (l::IRQ_MSIX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_NONE) if count == 0 => {
                self.msix_fds = Default::default();
            }
            (l::IRQ_MSIX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_NONE) => {
                for v in start..end {
                    self.signal(v as u16);
                }
            }
            (
                l::IRQ_MSIX,
                IrqSetFlags::ACTION_MASK | IrqSetFlags::ACTION_UNMASK,
                IrqSetFlags::DATA_NONE,
            ) => {
                let mask = action == IrqSetFlags::ACTION_MASK;
                for v in start..end {
                    self.msix_masked[v as usize] = mask;
                    if !mask && std::mem::take(&mut self.msix_pending[v as usize]) {
                        self.signal(v as u16);
                    }
                }
            }
            (l::IRQ_INTX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_EVENTFD)
                if fds.is_empty() =>
            {
                self.intx_fd = None
            }
            (l::IRQ_INTX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_EVENTFD) => {
                if fds.len() != count as usize {
                    return false;
                }
                self.intx_fd = fds.pop();
            }
            (l::IRQ_INTX, IrqSetFlags::ACTION_TRIGGER, IrqSetFlags::DATA_NONE) if count == 0 => {
                self.intx_fd = None
            }
            // INTx mask/unmask (and QEMU's resample eventfd on unmask): level
            // semantics are not emulated; edge eventfds need nothing more.
            (l::IRQ_INTX, IrqSetFlags::ACTION_MASK | IrqSetFlags::ACTION_UNMASK, _) => {}
            _ => return false,
        }
        true
    }

    /// Reads a region (vfio-user `REGION_READ`). `shm` reads go through the caller.
    pub fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        match region {
            l::CONFIG_REGION => self
                .pci
                .read(offset, data)
                .then_some(())
                .ok_or(AccessError::Invalid),
            0 => self.bar0_read(offset, data),
            1 => self.msix_read(offset, data),
            _ => Err(AccessError::Invalid),
        }
    }

    /// Writes a region (vfio-user `REGION_WRITE`).
    pub fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        match region {
            l::CONFIG_REGION => self
                .pci
                .write(offset, data)
                .then_some(())
                .ok_or(AccessError::Invalid),
            0 => self.bar0_write(offset, data),
            1 => self.msix_write(offset, data),
            _ => Err(AccessError::Invalid),
        }
    }

    fn net_config(&self) -> NetConfig {
        NetConfig {
            mac: self.mac,
            // The link is up while a driver runs on the other side.
            status: if self.peer_status & net::PEER_PRESENT != 0 {
                net::VIRTIO_NET_S_LINK_UP
            } else {
                0
            },
            max_virtqueue_pairs: 1,
            mtu: MTU,
            shared_buffers_offset: self.side,
            slot_size: self.geometry.slot_size(),
            slot_count: self.geometry.slot_count(),
            pairing_epoch: self.pairing_epoch,
            peer_status: self.peer_status,
            epoch_ack: self.epoch_ack,
            ..Default::default()
        }
    }

    fn bar0_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        let (area, off) = bar0_area(offset, data.len())?;
        match area {
            Area::Common => {
                let v = self.common_read(off, data.len())?;
                data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
            }
            Area::Isr => {
                data.fill(0);
                if off == 0 {
                    data[0] = std::mem::take(&mut self.isr);
                }
            }
            Area::Device => {
                let cfg = self.net_config();
                let bytes = bytemuck::bytes_of(&cfg);
                data.fill(0);
                if let Some(src) = bytes.get(off..) {
                    let n = src.len().min(data.len());
                    data[..n].copy_from_slice(&src[..n]);
                }
            }
            Area::Notify => data.fill(0),
        }
        Ok(())
    }

    fn bar0_write(&mut self, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        let (area, off) = bar0_area(offset, data.len())?;
        let mut raw = [0u8; 8];
        raw[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(raw);
        match area {
            Area::Common => self.common_write(off, data.len(), v)?,
            Area::Isr => self.counters.ignored_writes += 1,
            Area::Device => {
                if off == cfg_off::EPOCH_ACK && data.len() == 4 {
                    self.epoch_ack = v as u32;
                    self.events.push(Event::EpochAck(v as u32));
                } else {
                    self.counters.ignored_writes += 1;
                }
            }
            Area::Notify => {
                let q = (off / l::NOTIFY_OFF_MULTIPLIER as usize) as u16;
                if q < net::NUM_QUEUES {
                    self.counters.kicks += 1;
                    self.events.push(Event::Kick(q));
                } else {
                    self.counters.ignored_writes += 1;
                }
            }
        }
        Ok(())
    }

    fn selected(&mut self) -> Option<&mut QueueSlot> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn common_read(&mut self, off: usize, len: usize) -> Result<u64, AccessError> {
        let sel_regs = self.selected().map(|q| (q.regs, q.queue.is_some()));
        let v: u64 = match (off, len) {
            (off::DEVICE_FEATURE_SELECT, 4) => self.device_feature_select as u64,
            (off::DEVICE_FEATURE, 4) => match self.device_feature_select {
                0 => DEVICE_FEATURES & 0xffff_ffff,
                1 => DEVICE_FEATURES >> 32,
                _ => 0,
            },
            (off::DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select as u64,
            (off::DRIVER_FEATURE, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (off::CONFIG_MSIX_VECTOR, 2) => self.config_msix_vector as u64,
            (off::NUM_QUEUES, 2) => net::NUM_QUEUES as u64,
            (off::DEVICE_STATUS, 1) => self.status as u64,
            (off::CONFIG_GENERATION, 1) => self.config_generation as u64,
            (off::QUEUE_SELECT, 2) => self.queue_select as u64,
            (off::QUEUE_SIZE, 2) => sel_regs.map_or(0, |(r, _)| r.size as u64),
            (off::QUEUE_MSIX_VECTOR, 2) => {
                sel_regs.map_or(cc::NO_VECTOR as u64, |(r, _)| r.msix_vector as u64)
            }
            (off::QUEUE_ENABLE, 2) => sel_regs.map_or(0, |(_, e)| e as u64),
            (off::QUEUE_NOTIFY_OFF, 2) => self.queue_select as u64,
            (o, 4 | 8) if (off::QUEUE_DESC..off::QUEUE_DEVICE + 8).contains(&o) => {
                let Some((r, _)) = sel_regs else { return Ok(0) };
                let (base, full) = queue_addr_field(o, &r).ok_or(AccessError::Invalid)?;
                let shift = 8 * (o - base) as u32;
                if len == 8 && o != base {
                    return Err(AccessError::Invalid);
                }
                full >> shift
            }
            (o, _) if o >= sbnet_abi::common_cfg::COMMON_CFG_LEN => 0,
            _ => return Err(AccessError::Invalid),
        };
        Ok(v)
    }

    fn common_write(&mut self, off: usize, len: usize, v: u64) -> Result<(), AccessError> {
        let driver_ok = self.status & cc::STATUS_FEATURES_OK != 0;
        match (off, len) {
            (off::DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v as u32,
            (off::DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v as u32,
            (off::DRIVER_FEATURE, 4) if !driver_ok => {
                let v = v & 0xffff_ffff;
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => self.counters.ignored_writes += 1,
                }
            }
            (off::CONFIG_MSIX_VECTOR, 2) => self.config_msix_vector = v as u16,
            (off::DEVICE_STATUS, 1) => self.write_status(v as u8),
            (off::QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (off::QUEUE_SIZE, 2) | (off::QUEUE_MSIX_VECTOR, 2) | (off::QUEUE_ENABLE, 2) => {
                self.queue_reg_write(off, v as u16);
            }
            (o, 4 | 8) if (off::QUEUE_DESC..off::QUEUE_DEVICE + 8).contains(&o) => {
                let Some(q) = self.selected() else {
                    return Ok(());
                };
                if q.queue.is_some() {
                    self.counters.ignored_writes += 1;
                    return Ok(());
                }
                let (base, _) = queue_addr_field(o, &q.regs).ok_or(AccessError::Invalid)?;
                if len == 8 && o != base {
                    return Err(AccessError::Invalid);
                }
                let field = match base {
                    off::QUEUE_DESC => &mut q.regs.desc,
                    off::QUEUE_DRIVER => &mut q.regs.driver,
                    _ => &mut q.regs.device,
                };
                if len == 8 {
                    *field = v;
                } else if o == base {
                    *field = (*field & !0xffff_ffff) | (v & 0xffff_ffff);
                } else {
                    *field = (*field & 0xffff_ffff) | (v << 32);
                }
            }
            (o, _) if o >= sbnet_abi::common_cfg::COMMON_CFG_LEN => {
                self.counters.ignored_writes += 1
            }
            (
                off::DEVICE_FEATURE
                | off::DRIVER_FEATURE
                | off::NUM_QUEUES
                | off::CONFIG_GENERATION
                | off::QUEUE_NOTIFY_OFF,
                _,
            ) => self.counters.ignored_writes += 1,
            _ => return Err(AccessError::Invalid),
        }
        Ok(())
    }

    fn queue_reg_write(&mut self, off: usize, v: u16) {
        let max = self.max_queue_size;
        let Some(slot) = self.queues.get_mut(self.queue_select as usize) else {
            self.counters.ignored_writes += 1;
            return;
        };
        match off {
            off::QUEUE_MSIX_VECTOR => {
                // Spec: NO_VECTOR when the vector cannot be used.
                slot.regs.msix_vector = if v < l::MSIX_VECTORS {
                    v
                } else {
                    cc::NO_VECTOR
                };
            }
            _ if slot.queue.is_some() => self.counters.ignored_writes += 1,
            off::QUEUE_SIZE => slot.regs.size = v,
            _ if v == 1 => match Queue::enable(slot.regs, max, &self.mem) {
                Ok(q) => slot.queue = Some(q),
                Err(e) => self.needs_reset(e),
            },
            _ => self.counters.ignored_writes += 1,
        }
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // The driver may only add bits; NEEDS_RESET is the device's own.
        let mut new =
            (old | v) & !cc::STATUS_DEVICE_NEEDS_RESET | (old & cc::STATUS_DEVICE_NEEDS_RESET);
        if new & cc::STATUS_FEATURES_OK != 0 && old & cc::STATUS_FEATURES_OK == 0 {
            let ok = self.driver_features & !DEVICE_FEATURES == 0
                && self.driver_features & bit(cc::VIRTIO_F_VERSION_1) != 0;
            if !ok {
                tracing::warn!(
                    side = self.side,
                    "driver features {:#x} refused (offered {:#x}, VERSION_1 required)",
                    self.driver_features,
                    DEVICE_FEATURES
                );
                new &= !cc::STATUS_FEATURES_OK;
            }
        }
        if new & cc::STATUS_DRIVER_OK != 0 && new & cc::STATUS_FEATURES_OK == 0 {
            // DRIVER_OK without FEATURES_OK: the driver skipped negotiation.
            new &= !cc::STATUS_DRIVER_OK;
            new |= cc::STATUS_DEVICE_NEEDS_RESET;
            self.counters.needs_reset += 1;
        }
        self.status = new;
        let active_bits = cc::STATUS_DRIVER_OK | cc::STATUS_FAILED | cc::STATUS_DEVICE_NEEDS_RESET;
        if (old ^ new) & active_bits != 0 {
            self.events.push(Event::StatusChanged);
        }
    }

    fn msix_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        let off = usize::try_from(offset).map_err(|_| AccessError::Invalid)?;
        let end = off.checked_add(data.len()).ok_or(AccessError::Invalid)?;
        if end as u64 > l::MSIX_BAR_SIZE {
            return Err(AccessError::Invalid);
        }
        data.fill(0);
        let t = l::MSIX_TABLE_OFFSET as usize;
        let p = l::MSIX_PBA_OFFSET as usize;
        if let Some(src) = self
            .msix_table
            .get(off.wrapping_sub(t)..end.wrapping_sub(t))
        {
            data.copy_from_slice(src);
        } else if off >= p && end <= p + 8 {
            let bits: u64 = self
                .msix_pending
                .iter()
                .enumerate()
                .map(|(i, b)| (*b as u64) << i)
                .sum();
            data.copy_from_slice(&bits.to_le_bytes()[off - p..end - p]);
        }
        Ok(())
    }

    fn msix_write(&mut self, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        let off = usize::try_from(offset).map_err(|_| AccessError::Invalid)?;
        let end = off.checked_add(data.len()).ok_or(AccessError::Invalid)?;
        if end as u64 > l::MSIX_BAR_SIZE {
            return Err(AccessError::Invalid);
        }
        let t = l::MSIX_TABLE_OFFSET as usize;
        match self
            .msix_table
            .get_mut(off.wrapping_sub(t)..end.wrapping_sub(t))
        {
            Some(dst) => dst.copy_from_slice(data),
            None => self.counters.ignored_writes += 1,
        }
        Ok(())
    }

    /// Region descriptions for the vfio-user front end.
    pub fn regions(&self, shm_fd: std::os::fd::RawFd) -> Vec<RegionDesc> {
        let rw = RegionFlags::READ | RegionFlags::WRITE;
        (0..l::NUM_REGIONS)
            .map(|index| {
                let (size, mmap) = match index {
                    0..=5 => (
                        self.pci.bar_size(index as u8),
                        (index == l::SHM_BAR as u32).then_some((shm_fd, 0)),
                    ),
                    l::CONFIG_REGION => (sbnet_abi::pci::cfg::SIZE as u64, None),
                    _ => (0, None),
                };
                RegionDesc {
                    index,
                    size,
                    flags: if size > 0 { rw } else { RegionFlags::empty() },
                    mmap,
                }
            })
            .collect()
    }

    /// IRQ descriptions for the vfio-user front end.
    pub fn irqs(&self) -> Vec<IrqDesc> {
        (0..l::NUM_IRQS)
            .map(|index| {
                let count = match index {
                    l::IRQ_INTX => 1,
                    l::IRQ_MSIX => l::MSIX_VECTORS as u32,
                    _ => 0,
                };
                IrqDesc {
                    index,
                    count,
                    flags: if count > 0 {
                        IrqInfoFlags::EVENTFD | IrqInfoFlags::NORESIZE
                    } else {
                        IrqInfoFlags::empty()
                    },
                }
            })
            .collect()
    }
}

fn fresh_queues(max: u16) -> [QueueSlot; 2] {
    [0, 1].map(|_| QueueSlot {
        regs: QueueRegs {
            size: max,
            msix_vector: cc::NO_VECTOR,
            ..Default::default()
        },
        queue: None,
    })
}

fn queue_addr_field(o: usize, r: &QueueRegs) -> Option<(usize, u64)> {
    [
        (off::QUEUE_DESC, r.desc),
        (off::QUEUE_DRIVER, r.driver),
        (off::QUEUE_DEVICE, r.device),
    ]
    .into_iter()
    .find(|(base, _)| (*base..*base + 8).contains(&o) && (o - base).is_multiple_of(4))
}

enum Area {
    Common,
    Isr,
    Device,
    Notify,
}

fn bar0_area(offset: u64, len: usize) -> Result<(Area, usize), AccessError> {
    if !matches!(len, 1 | 2 | 4 | 8) {
        return Err(AccessError::Invalid);
    }
    let off = usize::try_from(offset).map_err(|_| AccessError::Invalid)?;
    let end = off.checked_add(len).ok_or(AccessError::Invalid)?;
    let areas = [
        (Area::Common, l::COMMON_OFFSET, l::COMMON_LEN),
        (Area::Isr, l::ISR_OFFSET, l::ISR_LEN),
        (Area::Device, l::DEVICE_OFFSET, l::DEVICE_LEN),
        (Area::Notify, l::NOTIFY_OFFSET, l::NOTIFY_LEN),
    ];
    for (a, start, size) in areas {
        let (start, size) = (start as usize, size as usize);
        if off >= start && end <= start + size {
            return Ok((a, off - start));
        }
    }
    Err(AccessError::Invalid)
}

fn write_eventfd(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // An eventfd write only fails when the counter would overflow (the
    // reader is gone for 2^64 events) or the fd is not an eventfd (the VMM's
    // mistake): the interrupt is then lost, which is the VMM's own problem.
    let _ = nix::unistd::write(fd, &one);
}
