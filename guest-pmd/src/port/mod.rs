//! The port: one sbnet function driven as a poll-mode Ethernet port, with
//! one or more queue pairs ([`PortQueue`]).
//!
//! The single-queue calls (`alloc`, `rx_burst`, `tx_burst`, …) act on
//! queue pair 0; `rx_burst_q`/`tx_burst_q` and [`Port::queue_mut`] reach
//! the others from one thread, and [`Port::queues_mut`] hands out every
//! queue pair at once, e.g. one per thread of a `std::thread::scope`.

use std::sync::Arc;

use crate::bus::Bus;
use crate::classic::ClassicPool;
use crate::config::PortConfig;
use crate::device::{Device, SharedRegion};
use crate::error::PmdError;
use crate::ledger::SlotState;
use crate::link::Link;
use crate::mode::Mode;
use crate::pkt::Pkt;
use crate::queue::PortQueue;
use crate::stats::Stats;
use sbnet_abi::net::{valid_queue_pairs, NetHdr};

/// A poll-mode port over one sbnet function.
///
/// Open it with [`Port::open`]; then call [`Port::rx_burst`] regularly (it
/// also reaps transmit completions, reposts receive buffers, gifts surplus
/// slots and notices epoch changes), [`Port::alloc`] and
/// [`Port::tx_burst`] to send, and [`Port::free`] for received packets the
/// application does not forward. With several queue pairs
/// ([`Port::open_queue_pairs`]) each [`PortQueue`] is such a port of its
/// own, over its share of the slots. Dropping the port resets the device,
/// so the host stops using its memory before the bus unmaps it.
///
/// The packet path (`alloc`, `free`, `data`, `data_mut`, `rx_burst`,
/// `tx_burst`) allocates nothing, takes no lock and makes no system call,
/// except the queue notification a non-polling host asks for.
pub struct Port<B: Bus> {
    link: Arc<Link<B>>,
    features: u64,
    mac: [u8; 6],
    mtu: u16,
    shm: Option<SharedRegion>,
    /// The link's queue pairs `Q` (the slot stride).
    link_pairs: u16,
    queues: Vec<PortQueue<B>>,
}

impl<B: Bus> Port<B> {
    /// Brings the function up (virtio 1.x initialisation, feature
    /// negotiation, queues), synchronises to the current pairing epoch
    /// and posts receive buffers. One queue pair: no multiqueue is
    /// negotiated (on a multiqueue link the port uses sub-pair 0's slots).
    pub fn open(bus: B, cfg: PortConfig) -> Result<Self, PmdError> {
        Self::open_queue_pairs(bus, cfg, 1)
    }

    /// [`Port::open`] with `pairs` queue pairs: a power of two, at most the
    /// link's `max_virtqueue_pairs`. Above 1 the port negotiates
    /// `VIRTIO_NET_F_MQ` with the control queue, sends
    /// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET pairs` after `DRIVER_OK` and waits
    /// (bounded) for `VIRTIO_NET_OK`; a device that does not offer it, has
    /// fewer pairs or refuses is a [`PmdError::MultiQueue`].
    pub fn open_queue_pairs(bus: B, cfg: PortConfig, pairs: u16) -> Result<Self, PmdError> {
        cfg.validate()?;
        if !valid_queue_pairs(pairs) {
            return Err(PmdError::Config(
                "queue pairs must be a power of two between 1 and 16",
            ));
        }
        let (mut dev, setup) = Device::init(bus, &cfg, pairs)?;
        let mut pools = Vec::with_capacity(setup.queues.len());
        for qp in &setup.queues {
            match classic_pool(&mut dev, &cfg, qp.rx.size(), qp.tx.size(), setup.shm) {
                Ok(p) => pools.push(p),
                Err(e) => {
                    dev.fail();
                    return Err(e);
                }
            }
        }
        let link = Arc::new(Link::new(dev, pairs));
        let mut port = Self {
            link: Arc::clone(&link),
            features: setup.features,
            mac: setup.mac,
            mtu: setup.mtu,
            shm: setup.shm,
            link_pairs: setup.link_pairs,
            queues: Vec::with_capacity(setup.queues.len()),
        };
        for (q, (qp, pool)) in setup.queues.into_iter().zip(pools).enumerate() {
            port.queues.push(PortQueue::new(
                Arc::clone(&link),
                cfg.clone(),
                q as u16,
                qp,
                pool,
                setup.shm,
                u32::from(setup.link_pairs),
            ));
        }
        // From here on, dropping `port` resets the device.
        for q in &mut port.queues {
            q.start()?;
        }
        Ok(port)
    }

    /// The MAC address the device reports.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The MTU the device reports.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The queue pairs opened.
    pub fn queue_pairs(&self) -> u16 {
        self.queues.len() as u16
    }

    /// The link's queue pairs (`max_virtqueue_pairs`, 1 without
    /// multiqueue): queue pair `q` uses the slots `s % link_pairs == q`.
    pub fn link_pairs(&self) -> u16 {
        self.link_pairs
    }

    /// Queue pair `q` (panics if `q >= queue_pairs()`).
    pub fn queue_mut(&mut self, q: u16) -> &mut PortQueue<B> {
        &mut self.queues[usize::from(q)]
    }

    /// Queue pair `q`, read-only (panics if `q >= queue_pairs()`).
    pub fn queue(&self, q: u16) -> &PortQueue<B> {
        &self.queues[usize::from(q)]
    }

    /// Every queue pair, to drive each from its own thread (a
    /// `&mut PortQueue` is `Send`): the port stays borrowed, and open,
    /// until they are given back.
    pub fn queues_mut(&mut self) -> &mut [PortQueue<B>] {
        &mut self.queues
    }

    /// `rx_burst` on queue pair `q` (see [`Port::rx_burst`]).
    #[inline]
    pub fn rx_burst_q(&mut self, q: u16, out: &mut [Option<Pkt>]) -> Result<usize, PmdError> {
        self.queue_mut(q).rx_burst(out)
    }

    /// `tx_burst` on queue pair `q` (see [`Port::tx_burst`]).
    #[inline]
    pub fn tx_burst_q(&mut self, q: u16, pkts: &mut [Option<Pkt>]) -> Result<usize, PmdError> {
        self.queue_mut(q).tx_burst(pkts)
    }

    /// Queue pair 0.
    #[inline(always)]
    fn q0(&self) -> &PortQueue<B> {
        &self.queues[0]
    }

    /// Queue pair 0.
    #[inline(always)]
    fn q0_mut(&mut self) -> &mut PortQueue<B> {
        &mut self.queues[0]
    }

    /// The current epoch's mode (of queue pair 0).
    pub fn mode(&self) -> Mode {
        self.q0().mode()
    }

    /// The pairing epoch queue pair 0 is synchronised to (on a classic
    /// port: the last one seen).
    pub fn epoch(&self) -> u32 {
        self.q0().epoch()
    }

    /// The epoch's `peer_status` word (`PEER_PRESENT`,
    /// `PEER_SHARED_BUFFERS`).
    pub fn peer_status(&self) -> u32 {
        self.q0().peer_status()
    }

    /// Queue pair 0's epoch generation (see [`Pkt::generation`]).
    pub fn generation(&self) -> u32 {
        self.q0().generation()
    }

    /// This side's index in the pair, when shared buffers were negotiated.
    pub fn side(&self) -> Option<u8> {
        self.shm.map(|s| s.side)
    }

    /// Slot size, when shared buffers were negotiated.
    pub fn slot_size(&self) -> Option<u32> {
        self.shm.map(|s| s.geometry.slot_size())
    }

    /// Number of slots in the region (0 on a classic port).
    pub fn slot_count(&self) -> u32 {
        self.shm.map_or(0, |s| s.geometry.slot_count())
    }

    /// Receive and transmit queue sizes (every queue pair has the same).
    pub fn queue_sizes(&self) -> (u16, u16) {
        self.q0().queue_sizes()
    }

    /// Where slot `s` is in this side's ledger (None out of range, or when
    /// its queue pair `s % link_pairs` is not open).
    pub fn slot_state(&self, s: u32) -> Option<SlotState> {
        let q = s % u32::from(self.link_pairs);
        self.queues.get(q as usize)?.slot_state(s)
    }

    /// Whether a send of slot `s` that posted it in the same burst (an
    /// early post, [`crate::PortConfig::early_post`]) is on a transmit
    /// queue, its completion not reaped yet. O(queue size): for tests and
    /// diagnostics.
    pub fn early_send_in_flight(&self, s: u32) -> bool {
        let q = s % u32::from(self.link_pairs);
        self.queues
            .get(q as usize)
            .is_some_and(|p| p.early_send_in_flight(s))
    }

    /// Whether this side owns slot `s` now (it is free, held by the
    /// application, or — in copy mode — on the transmit queue).
    pub fn owns_slot(&self, s: u32) -> bool {
        let q = s % u32::from(self.link_pairs);
        self.queues.get(q as usize).is_some_and(|p| p.owns_slot(s))
    }

    /// Checks every queue pair's slot ledger (O(slots); for tests and
    /// diagnostics).
    pub fn check_ledger(&self) -> Result<(), String> {
        for q in &self.queues {
            q.check_ledger()
                .map_err(|e| format!("queue pair {}: {e}", q.index()))?;
        }
        Ok(())
    }

    /// The failure that stopped a queue pair, if any.
    pub fn failure(&self) -> Option<PmdError> {
        self.queues.iter().find_map(PortQueue::failure)
    }

    /// True while queue pair 0's resync waits for the host (see
    /// [`PortQueue::resync_pending`]).
    pub fn resync_pending(&self) -> bool {
        self.q0().resync_pending()
    }

    /// Reads the link status bit of the device configuration (a bus access).
    pub fn link_up(&mut self) -> Result<bool, PmdError> {
        self.q0_mut().link_up()
    }

    /// The counters of every queue pair added up, with their ledgers'
    /// snapshots (mode and epoch: queue pair 0's).
    pub fn stats(&self) -> Stats {
        let mut st = self.q0().stats();
        for q in &self.queues[1..] {
            st.add(&q.stats());
        }
        st
    }

    /// Queue pair `q`'s counters (None if it is not open).
    pub fn queue_stats(&self, q: u16) -> Option<Stats> {
        self.queues.get(usize::from(q)).map(PortQueue::stats)
    }

    /// Reads the pairing epoch now on every queue pair (see
    /// [`PortQueue::poll_epoch`]). Returns whether any resynchronised.
    pub fn poll_epoch(&mut self) -> Result<bool, PmdError> {
        let mut any = false;
        for q in &mut self.queues {
            any |= q.poll_epoch()?;
        }
        Ok(any)
    }

    /// A free buffer of queue pair 0 (see [`PortQueue::alloc`]).
    #[inline]
    pub fn alloc(&mut self) -> Option<Pkt> {
        self.q0_mut().alloc()
    }

    /// Gives a packet of queue pair 0 back (see [`PortQueue::free`]).
    #[inline]
    pub fn free(&mut self, pkt: Pkt) {
        self.q0_mut().free(pkt)
    }

    /// The frame bytes of a packet of queue pair 0 (see
    /// [`PortQueue::data`]).
    #[inline]
    pub fn data<'a>(&'a self, pkt: &'a Pkt) -> &'a [u8] {
        self.q0().data(pkt)
    }

    /// The frame bytes of a packet of queue pair 0, writable (see
    /// [`PortQueue::data_mut`]).
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub fn data_mut<'a>(&'a self, pkt: &'a mut Pkt) -> &'a mut [u8] {
        self.q0().data_mut(pkt)
    }

    /// A copy of the `virtio_net_hdr` of a packet of queue pair 0.
    pub fn header(&self, pkt: &Pkt) -> Option<NetHdr> {
        self.q0().header(pkt)
    }

    /// Receives on queue pair 0 (see [`PortQueue::rx_burst`]).
    #[inline]
    pub fn rx_burst(&mut self, out: &mut [Option<Pkt>]) -> Result<usize, PmdError> {
        self.q0_mut().rx_burst(out)
    }

    /// Sends on queue pair 0 (see [`PortQueue::tx_burst`]).
    #[inline]
    pub fn tx_burst(&mut self, pkts: &mut [Option<Pkt>]) -> Result<usize, PmdError> {
        self.q0_mut().tx_burst(pkts)
    }
}

impl<B: Bus> Drop for Port<B> {
    fn drop(&mut self) {
        // Stop the device before the bus (and with it the DMA memory and
        // the BAR mapping) goes away. The queue pairs hold the link too,
        // but they are fields of the port and cannot outlive it.
        if let Err(e) = self.link.lock().dev.reset() {
            tracing::warn!(error = %e, "resetting the device on close failed");
        }
    }
}

/// One queue pair's classic buffers: a receive queue's worth, plus a
/// transmit queue's on a port without shared buffers.
fn classic_pool<B: Bus>(
    dev: &mut Device<B>,
    cfg: &PortConfig,
    rx_size: u16,
    tx_size: u16,
    shm: Option<SharedRegion>,
) -> Result<ClassicPool, PmdError> {
    let count = u32::from(rx_size) + if shm.is_none() { u32::from(tx_size) } else { 0 };
    let buf_size = cfg.classic_buf_size.next_multiple_of(64);
    let mem = dev
        .bus_mut()
        .dma_alloc(count as usize * buf_size as usize)?;
    ClassicPool::new(mem, count, buf_size)
        .ok_or(PmdError::BadDma("classic pool shorter than asked"))
}

#[cfg(test)]
mod tests;
