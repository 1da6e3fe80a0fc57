//! One virtio-net function's registers: the function core (status, events,
//! pairing fields, guest memory, BAR 0 dispatch) over `common_cfg`
//! (feature negotiation and queue setup, virtio 1.2 §4.1.4.3), `msix`
//! (interrupts, [`Interrupts`]) and `net_cfg` (the device configuration).
//! The packet path lives in [`crate::switch`], which sees a function only
//! through a [`SideView`]; the vfio-user front end is [`crate::backend`].
//! This module turns register accesses into state and [`Event`]s and knows
//! nothing of vfio-user.

mod common_cfg;
mod msix;
mod net_cfg;

pub use msix::Interrupts;
pub use net_cfg::MTU;

use crate::counters::{QueueCounters, SideCounters};
use crate::irq::IrqFd;
use crate::mem::{GuestMemory, MemError, Prot};
use crate::pci_config::PciConfig;
use crate::queue::{Queue, QueueError};
use crate::view::{IrqHook, SideView};
use common_cfg::{fresh_queues, QueueSlot};
use sbnet_abi::common_cfg::{self as cc, bit, DeviceStatus as Status};
use sbnet_abi::layout as l;
use sbnet_abi::net;
use sbnet_abi::shm::SlotGeometry;
use std::fs::File;

/// Features the function offers (`docs/abi.md` §2).
pub const DEVICE_FEATURES: u64 = bit(cc::VIRTIO_F_VERSION_1)
    | bit(cc::VIRTIO_F_ACCESS_PLATFORM)
    | bit(net::VIRTIO_NET_F_MAC)
    | bit(net::VIRTIO_NET_F_STATUS)
    | bit(net::VIRTIO_NET_F_MTU)
    | bit(net::VIRTIO_NET_F_SHARED_BUFFERS);

/// Features offered on top of [`DEVICE_FEATURES`] by a function of a link
/// with more than one queue pair (`docs/abi.md` §8).
pub const MQ_FEATURES: u64 = bit(net::VIRTIO_NET_F_MQ) | bit(net::VIRTIO_NET_F_CTRL_VQ);

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

/// Why a register access is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessError {
    /// Region index or offset out of range, or a bad access size.
    Invalid,
}

/// One virtio-net function.
#[derive(Debug)]
pub struct Function {
    side: u8,
    geometry: SlotGeometry,
    max_queue_size: u16,
    /// The link's queue pairs (`max_virtqueue_pairs`).
    q_pairs: u16,
    /// Queue pairs the driver enabled (`VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`);
    /// 1 after reset.
    enabled_pairs: u16,
    mac: [u8; 6],
    /// PCI configuration space.
    pub pci: PciConfig,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: Status,
    config_generation: u8,
    queue_select: u16,
    config_msix_vector: u16,
    /// Every queue the function has: receiveq/transmitq of each pair, then
    /// the control queue when there is more than one pair.
    queues: Vec<QueueSlot>,
    isr: u8,
    pairing_epoch: u32,
    peer_status: u32,
    epoch_ack: u32,
    irqs: Interrupts,
    /// The client's DMA maps. Private: every change goes through
    /// [`Self::map_dma`], [`Self::unmap_dma`] or [`Self::clear_dma`], which
    /// re-validate the enabled queues (the contract of [`Queue::enable`]).
    mem: GuestMemory,
    /// Counters of this side.
    pub counters: SideCounters,
    /// Per queue pair, on a multiqueue link (kept by `Pair::poll`; see
    /// [`Self::queue_counters`]).
    pair_counters: Vec<QueueCounters>,
    events: Vec<Event>,
}

impl Function {
    /// A function for side `side` (0 or 1) of a pair with this slot geometry.
    pub fn new(side: u8, geometry: SlotGeometry, max_queue_size: u16) -> Self {
        Self::with_queue_pairs(side, geometry, max_queue_size, 1)
    }

    /// As [`Self::new`], on a link with `q_pairs` queue pairs (a power of
    /// two up to [`net::MAX_QUEUE_PAIRS`]; anything else is taken as 1).
    pub fn with_queue_pairs(
        side: u8,
        geometry: SlotGeometry,
        max_queue_size: u16,
        q_pairs: u16,
    ) -> Self {
        let q_pairs = if net::valid_queue_pairs(q_pairs) {
            q_pairs
        } else {
            1
        };
        Self {
            side,
            geometry,
            max_queue_size,
            q_pairs,
            enabled_pairs: 1,
            mac: [0x52, 0x54, 0x00, 0x5b, 0x00, side],
            pci: PciConfig::with_msix(geometry.region_size(), l::msix_vectors(q_pairs)),
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: Status::empty(),
            config_generation: 0,
            queue_select: 0,
            config_msix_vector: cc::NO_VECTOR,
            queues: fresh_queues(max_queue_size, net::num_queues(q_pairs)),
            isr: 0,
            pairing_epoch: 0,
            peer_status: 0,
            epoch_ack: 0,
            irqs: Interrupts::with_vectors(l::msix_vectors(q_pairs)),
            mem: GuestMemory::default(),
            counters: SideCounters::default(),
            pair_counters: vec![QueueCounters::default(); q_pairs as usize],
            events: Vec::with_capacity(8),
        }
    }

    /// This side's index.
    pub fn side(&self) -> u8 {
        self.side
    }

    /// The counters of each queue pair, pair 0 first. On a one-pair link
    /// they are the side's totals.
    pub fn queue_counters(&self) -> Vec<QueueCounters> {
        if self.q_pairs == 1 {
            vec![QueueCounters::of_side(&self.counters)]
        } else {
            self.pair_counters.clone()
        }
    }

    /// Adds what moved through this side's pair `tx_pair` (sent) and
    /// `rx_pair` (received) since `before` (the side's counters then).
    #[inline]
    pub(crate) fn count_pairs(&mut self, before: &QueueCounters, tx_pair: u16, rx_pair: u16) {
        let now = QueueCounters::of_side(&self.counters);
        if let Some(t) = self.pair_counters.get_mut(tx_pair as usize) {
            t.tx_packets += now.tx_packets - before.tx_packets;
            t.tx_bytes += now.tx_bytes - before.tx_bytes;
        }
        if let Some(r) = self.pair_counters.get_mut(rx_pair as usize) {
            r.rx_packets += now.rx_packets - before.rx_packets;
            r.rx_bytes += now.rx_bytes - before.rx_bytes;
        }
    }

    /// The slot geometry this function advertises.
    pub fn net_geometry(&self) -> SlotGeometry {
        self.geometry
    }

    /// The link's queue pairs (`max_virtqueue_pairs`).
    pub fn queue_pairs(&self) -> u16 {
        self.q_pairs
    }

    /// MSI-X vectors of the function (config plus one per queue).
    pub fn msix_vectors(&self) -> u16 {
        self.irqs.vectors()
    }

    /// Features the function offers: [`DEVICE_FEATURES`], plus
    /// [`MQ_FEATURES`] on a link with more than one queue pair.
    pub fn device_features(&self) -> u64 {
        if self.q_pairs > 1 {
            DEVICE_FEATURES | MQ_FEATURES
        } else {
            DEVICE_FEATURES
        }
    }

    /// True when the driver negotiated `VIRTIO_NET_F_MQ`.
    pub fn is_mq(&self) -> bool {
        self.driver_features & bit(net::VIRTIO_NET_F_MQ) != 0
    }

    /// Queue pairs in use: those the driver enabled with
    /// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` (1 until then), or 1 for a driver
    /// without `VIRTIO_NET_F_MQ`.
    #[inline]
    pub fn active_pairs(&self) -> u16 {
        if self.is_mq() {
            self.enabled_pairs
        } else {
            1
        }
    }

    /// Index of the control queue for the negotiated features (virtio 1.2
    /// §5.1.2: `2N`, N = 1 without MQ), or None without `VIRTIO_NET_F_CTRL_VQ`.
    pub fn ctrl_queue(&self) -> Option<u16> {
        if self.driver_features & bit(net::VIRTIO_NET_F_CTRL_VQ) == 0 {
            return None;
        }
        Some(net::ctrl_queue(if self.is_mq() { self.q_pairs } else { 1 }))
    }

    /// True when the driver may use queue `q` with the features it
    /// negotiated: the first pair always, every pair with MQ, and the
    /// control queue with CTRL_VQ.
    fn queue_usable(&self, q: u16) -> bool {
        q < net::NUM_QUEUES
            || (self.is_mq() && q < 2 * self.q_pairs)
            || self.ctrl_queue() == Some(q)
    }

    /// Device status register.
    pub fn status(&self) -> u8 {
        self.status.bits()
    }

    /// Features the driver accepted (valid once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// DRIVER_OK set and neither FAILED nor DEVICE_NEEDS_RESET.
    pub fn is_active(&self) -> bool {
        self.status.contains(Status::DRIVER_OK)
            && !self
                .status
                .intersects(Status::FAILED | Status::DEVICE_NEEDS_RESET)
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

    /// The switch's view of this side for one polling round: queues, guest
    /// memory, counters, window, flags and the interrupt hook, borrowed
    /// apart. Apply [`SideView::broken`] with [`Self::needs_reset`] after it.
    #[inline]
    pub fn view(&mut self) -> SideView<'_> {
        self.view_pair(0)
    }

    /// As [`Self::view`], for queue pair `pair` (its receiveq and
    /// transmitq); a pair past the link's has no queues.
    #[inline]
    pub fn view_pair(&mut self, pair: u16) -> SideView<'_> {
        let active = self.is_active();
        let shared_buffers = self.is_shared_buffers();
        // The window is inert (0: every address is an ordinary DMA address)
        // for a driver that did not negotiate shared buffers, and while BAR
        // 2/3 is unprogrammed (address 0): abi.md §5.
        let window = if shared_buffers { self.shm_window() } else { 0 };
        let (rx, tx, vectors) = match self.queues.get_mut(2 * pair as usize..) {
            Some([rx, tx, ..]) => (
                rx.queue.as_mut(),
                tx.queue.as_mut(),
                [rx.regs.msix_vector, tx.regs.msix_vector],
            ),
            _ => (None, None, [cc::NO_VECTOR; 2]),
        };
        SideView::new(
            rx,
            tx,
            &self.mem,
            &mut self.counters,
            window,
            active,
            shared_buffers,
            IrqHook::new(&mut self.isr, vectors, &mut self.irqs),
        )
    }

    /// Serves the control queue, when the driver negotiated one: carries
    /// out its commands ([`crate::ctrl`]) and signals the queue. A ring
    /// that cannot be trusted puts the function in `DEVICE_NEEDS_RESET`.
    /// Returns the commands completed.
    pub fn serve_ctrl(&mut self) -> usize {
        let Some(ci) = self.ctrl_queue() else {
            return 0;
        };
        let Some(slot) = self.queues.get_mut(ci as usize) else {
            return 0;
        };
        let vector = slot.regs.msix_vector;
        let Some(q) = slot.queue.as_mut() else {
            return 0;
        };
        let r = crate::ctrl::serve(
            q,
            &self.mem,
            self.q_pairs,
            &mut self.enabled_pairs,
            &mut self.counters,
        );
        match r {
            Ok(n) => {
                if q.publish() {
                    self.isr |= cc::ISR_QUEUE;
                    self.signal(vector);
                }
                n
            }
            Err(e) => {
                self.needs_reset(e);
                0
            }
        }
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
        if self.status.contains(Status::DRIVER_OK) {
            self.isr |= cc::ISR_CONFIG;
            self.signal(self.config_msix_vector);
        }
    }

    /// Marks the device broken (`DEVICE_NEEDS_RESET`) after a ring could not
    /// be trusted, and tells the driver.
    #[cold]
    pub fn needs_reset(&mut self, why: QueueError) {
        if self.status.contains(Status::DEVICE_NEEDS_RESET) {
            return;
        }
        self.counters.needs_reset += 1;
        // A guest can break its rings in a loop: log the 1st, 2nd, 4th,
        // 8th... time, with the count, so the log grows only logarithmically.
        let n = self.counters.needs_reset;
        if n.is_power_of_two() {
            tracing::warn!(side = self.side, times = n, "device needs reset: {why}");
        } else {
            tracing::debug!(side = self.side, times = n, "device needs reset: {why}");
        }
        self.status.insert(Status::DEVICE_NEEDS_RESET);
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
        self.status = Status::empty();
        self.queue_select = 0;
        self.config_msix_vector = cc::NO_VECTOR;
        self.enabled_pairs = 1;
        // virtio 1.2 §4.1.4.3: queue_size reads the maximum after reset.
        self.queues = fresh_queues(self.max_queue_size, net::num_queues(self.q_pairs));
        // No queue is left to point into a stitched ring view.
        self.mem.drop_views();
        self.isr = 0;
        self.epoch_ack = 0;
        self.counters.resets += 1;
        if !was.is_empty() {
            self.events.push(Event::StatusChanged);
        }
    }

    /// The VMM went away: drop its memory and interrupt fds too.
    pub fn disconnect(&mut self) {
        self.reset();
        self.pci.reset();
        self.clear_dma();
        self.irqs.disconnect();
        self.events.push(Event::StatusChanged);
    }

    /// The guest memory the function reaches (read-only: changes go
    /// through the `*_dma` methods).
    pub fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    /// Adds a DMA map (see [`GuestMemory::map`]), then re-validates the
    /// enabled queues.
    pub fn map_dma(
        &mut self,
        iova: u64,
        size: u64,
        file: Option<File>,
        offset: u64,
        prot: Prot,
    ) -> Result<(), MemError> {
        let r = self.mem.map_prot(iova, size, file, offset, prot);
        if r.is_ok() {
            self.counters.dma_maps += 1;
            let held = self.mem.len() as u64;
            self.counters.dma_maps_peak = self.counters.dma_maps_peak.max(held);
        }
        self.revalidate_queues();
        r
    }

    /// Removes the DMA maps inside a range (see [`GuestMemory::unmap`]),
    /// then re-validates the enabled queues: one whose rings lost their
    /// memory puts the side in `DEVICE_NEEDS_RESET`.
    pub fn unmap_dma(&mut self, iova: u64, size: u64) -> Result<usize, MemError> {
        let r = self.mem.unmap(iova, size);
        if let Ok(n) = r {
            self.counters.dma_unmaps += n as u64;
        }
        self.revalidate_queues();
        r
    }

    /// Drops every DMA map, then re-validates the enabled queues.
    pub fn clear_dma(&mut self) {
        self.mem.clear();
        self.revalidate_queues();
    }

    /// Re-validates enabled queues against the current DMA maps.
    fn revalidate_queues(&mut self) {
        let mut bad = None;
        for q in self.queues.iter_mut().filter_map(|q| q.queue.as_mut()) {
            // A stitched view an unmap dropped cannot come back at the same
            // address: re-stitching only keeps what still stands.
            for (addr, len, write) in q.regs().rings() {
                self.mem.stitch(addr, len, write);
            }
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
        if self.irqs.signal(v) {
            self.counters.interrupts += 1;
        }
    }

    /// Sets (`Some`) or clears (`None`) the eventfd of MSI-X vector `v`.
    /// False when `v` is not a vector of the function.
    pub fn set_msix_fd(&mut self, v: u16, fd: Option<IrqFd>) -> bool {
        self.irqs.set_vector_fd(v, fd)
    }

    /// Clears the eventfds of every MSI-X vector.
    pub fn clear_msix_fds(&mut self) {
        self.irqs.clear_vector_fds();
    }

    /// Masks or unmasks MSI-X vector `v`; unmasking delivers an interrupt
    /// that was pending.
    pub fn set_msix_masked(&mut self, v: u16, masked: bool) {
        if self.irqs.set_masked(v, masked) {
            self.signal(v);
        }
    }

    /// Sets (`Some`) or clears (`None`) the INTx eventfd.
    pub fn set_intx_fd(&mut self, fd: Option<IrqFd>) {
        self.irqs.set_intx_fd(fd);
    }

    /// Reads a region: PCI config space, BAR 0 or BAR 1 (the Shared
    /// Buffers BAR is the caller's: it is the region mapping).
    pub fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        match region {
            l::CONFIG_REGION => self
                .pci
                .read(offset, data)
                .then_some(())
                .ok_or(AccessError::Invalid),
            0 => self.bar0_read(offset, data),
            1 => self.irqs.bar_read(offset, data),
            _ => Err(AccessError::Invalid),
        }
    }

    /// Writes a region (as [`Self::read`]).
    pub fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        match region {
            l::CONFIG_REGION => self
                .pci
                .write(offset, data)
                .then_some(())
                .ok_or(AccessError::Invalid),
            0 => self.bar0_write(offset, data),
            1 => {
                if !self.irqs.bar_write(offset, data)? {
                    self.counters.ignored_writes += 1;
                }
                Ok(())
            }
            _ => Err(AccessError::Invalid),
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
            Area::Device => self.device_cfg_read(off, data),
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
            Area::Device => self.device_cfg_write(off, data.len(), v),
            Area::Notify => {
                let q = (off / l::NOTIFY_OFF_MULTIPLIER as usize) as u16;
                if q < net::num_queues(self.q_pairs) {
                    self.counters.kicks += 1;
                    self.events.push(Event::Kick(q));
                } else {
                    self.counters.ignored_writes += 1;
                }
            }
        }
        Ok(())
    }
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
