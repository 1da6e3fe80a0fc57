//! One queue pair of a port: its receive and transmit queues, its share of
//! the slot ledger, its classic buffers, gifts, epoch resync and counters.
//! On a link of `Q` queue pairs, queue pair `q` uses the slots
//! `s % Q == q` only (`docs/abi.md`, multiqueue): an independent sub-pair
//! that shares no packet-path state with the other queue pairs.
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | building a queue pair, buffers and packet handles, accessors, stats |
//! | `rx.rs` | `rx_burst` and the receive completions |
//! | `tx.rs` | `tx_burst`, transmit completions, gifts, posting receive buffers |
//! | `resync.rs` | epochs: noticing a change, drain, acknowledge, new split |

mod resync;
mod rx;
mod tx;

use std::num::NonZeroU32;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sbnet_abi::net::{NetHdr, NET_HDR_LEN};
use sbnet_abi::shm::slot_pair;

use crate::bus::Bus;
use crate::classic::{ClassicPool, ClassicState};
use crate::config::PortConfig;
use crate::device::{QueuePair, SharedRegion};
use crate::error::{Failure, PmdError};
use crate::gift::GiftPolicy;
use crate::ledger::{Ledger, SlotState};
use crate::link::Link;
use crate::mode::Mode;
use crate::pkt::{Buf, Pkt, EARLY};
use crate::stats::Stats;
use crate::vq::{SplitQueue, VqError};

/// Header bytes in front of every frame.
pub(crate) const HDR: u32 = NET_HDR_LEN as u32;

/// Source of port ids (a handle names the port it came from).
static NEXT_PORT_ID: AtomicU32 = AtomicU32::new(1);

/// A burst function chosen once per epoch.
type RxFn<B> = fn(&mut PortQueue<B>, &mut [Option<Pkt>]) -> usize;
/// A burst function chosen once per epoch.
type TxFn<B> = fn(&mut PortQueue<B>, &mut [Option<Pkt>]) -> usize;

/// The Shared Buffers region as the packet path of one queue pair uses it
/// (all zero on a classic port). The pair's ledger counts its slots by
/// local index `i`: slot `i × stride + first` of the region.
#[derive(Clone, Copy)]
struct Slots {
    /// Slot `first` in this process.
    base: *mut u8,
    /// Slot `first`'s bus address.
    window: u64,
    size: u32,
    side: u8,
    /// The link's queue pairs `Q`: bytes from one local slot to the next
    /// are `stride × size`.
    stride: u32,
}

// SAFETY: `base` points into the BAR mapping of the port's bus, which the
// queue pair's `link` (an `Arc` it holds) keeps alive wherever the queue
// pair goes. Queue pairs of one port run on different threads but touch
// disjoint slots (`s % Q == q`, docs/abi.md §8), and only through volatile
// copies and the handle-checked slices of `data`/`data_mut`.
unsafe impl Send for Slots {}

impl Slots {
    /// Where local slot `s`'s header starts in this process (`s` below
    /// the pair's slot count for the pointer to be inside the mapping).
    #[inline(always)]
    fn ptr(self, s: u32) -> *mut u8 {
        self.base
            .wrapping_add(s as usize * self.stride as usize * self.size as usize)
    }

    /// The bus address a descriptor for local slot `s` carries.
    #[inline(always)]
    fn addr(self, s: u32) -> u64 {
        self.window + u64::from(s) * u64::from(self.stride) * u64::from(self.size)
    }
}

/// One queue pair of a [`crate::Port`], usable from its own thread.
///
/// Get them with [`crate::Port::queues_mut`] (e.g. one per thread of a
/// `std::thread::scope`) or use them through the port's `*_q` methods. Each
/// owns its receive and transmit virtqueues, its share of the slots, its
/// classic buffers, gift policy, epoch resync and counters: the packet
/// path (`alloc`, `free`, `data`, `data_mut`, `rx_burst`, `tx_burst`)
/// touches nothing another queue pair touches, allocates nothing, takes no
/// lock and makes no system call, except the queue notification a
/// non-polling host asks for. Packet handles belong to the queue pair
/// that made them: another queue pair refuses them as stale.
pub struct PortQueue<B: Bus> {
    id: NonZeroU32,
    link: Arc<Link<B>>,
    cfg: PortConfig,
    /// Queue pair index and its receive and transmit queue numbers.
    pair: u16,
    rx_index: u16,
    tx_index: u16,
    /// Shared buffers were negotiated.
    shared: bool,
    /// Sends and gifts in zero-copy mode post their slot in the same burst
    /// (`PortConfig::early_post`, the host's `SB_F_EARLY_POST`, queue
    /// pair 0).
    early: bool,
    slots: Slots,
    rxq: SplitQueue,
    txq: SplitQueue,
    ledger: Ledger,
    classic: ClassicPool,
    gift: GiftPolicy,
    /// The current epoch's mode and the burst functions chosen for it.
    mode: Mode,
    rx_fn: RxFn<B>,
    tx_fn: TxFn<B>,
    /// Bumped at every resync; slot handles carry it.
    generation: u32,
    /// The pairing epoch acknowledged.
    epoch: u32,
    peer_status: u32,
    /// Classic receive buffers to keep posted in this mode.
    classic_rx_target: u32,
    idle_polls: u32,
    /// When an idle port next reads the pairing epoch.
    next_epoch_poll: Instant,
    /// A resync started and has not finished (drain timed out).
    resync_pending: bool,
    /// Receive completions of length 0 seen in this burst.
    zero_len: u32,
    failed: Option<Failure>,
    st: Stats,
}

impl<B: Bus> PortQueue<B> {
    /// Queue pair `pair` of a port over `link`: its queues from `qp`, its
    /// classic buffers in `classic`, and — with shared buffers — the slots
    /// `s % stride == pair` of `shm`. It owns no slot until
    /// [`Self::start`] synchronises it to the epoch.
    pub(crate) fn new(
        link: Arc<Link<B>>,
        cfg: PortConfig,
        pair: u16,
        qp: QueuePair,
        classic: ClassicPool,
        shm: Option<SharedRegion>,
        stride: u32,
    ) -> Self {
        let slot_count = shm.map_or(0, |s| {
            // Slots `pair, pair + stride, …` below the count.
            s.geometry
                .slot_count()
                .saturating_sub(u32::from(pair))
                .div_ceil(stride)
        });
        let slots = shm.map_or(
            Slots {
                base: ptr::null_mut(),
                window: 0,
                size: 0,
                side: 0,
                stride: 1,
            },
            |s| {
                let size = s.geometry.slot_size();
                let first = u64::from(pair) * u64::from(size);
                Slots {
                    // Inside the mapping when the pair has a slot at all;
                    // never dereferenced otherwise.
                    base: s.ptr.wrapping_add(first as usize),
                    window: s.window + first,
                    size,
                    side: s.side,
                    stride,
                }
            },
        );
        let early = pair == 0 && cfg.early_post && shm.is_some_and(|s| s.early_post);
        let id = NonZeroU32::new(NEXT_PORT_ID.fetch_add(1, Ordering::Relaxed))
            .unwrap_or(NonZeroU32::MIN);
        Self {
            id,
            link,
            gift: GiftPolicy::new(slot_count, cfg.gift_hysteresis, cfg.gift_burst),
            cfg,
            pair,
            rx_index: qp.rx.index(),
            tx_index: qp.tx.index(),
            shared: shm.is_some(),
            early,
            slots,
            rxq: qp.rx,
            txq: qp.tx,
            ledger: Ledger::new(slot_count, |_| false),
            classic,
            mode: Mode::Classic,
            rx_fn: Self::rx_impl::<false>,
            tx_fn: Self::tx_impl::<false>,
            generation: 0,
            epoch: 0,
            peer_status: 0,
            classic_rx_target: 0,
            idle_polls: 0,
            next_epoch_poll: Instant::now(),
            resync_pending: false,
            zero_len: 0,
            failed: None,
            st: Stats::default(),
        }
    }

    /// Synchronises to the current pairing epoch and posts receive
    /// buffers.
    pub(crate) fn start(&mut self) -> Result<(), PmdError> {
        let room =
            u32::from(self.rxq.size()).saturating_sub(u32::from(self.cfg.classic_rx_buffers));
        if self.ledger.len() / 2 > room {
            tracing::warn!(
                queue_pair = self.pair,
                slot_count = self.ledger.len(),
                rx_queue = self.rxq.size(),
                "the receive queue cannot post all of the peer's slots; \
                 sends of unposted slots will wait in the host"
            );
        }
        self.sync_epoch()?;
        if !self.resync_pending {
            // Otherwise the first burst finishes the resync and posts.
            self.refill_rx();
        }
        Ok(())
    }

    /// This queue pair's index.
    pub fn index(&self) -> u16 {
        self.pair
    }

    /// The current epoch's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The pairing epoch this queue pair is synchronised to (on a classic
    /// port: the last one seen).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The epoch's `peer_status` word (`PEER_PRESENT`,
    /// `PEER_SHARED_BUFFERS`).
    pub fn peer_status(&self) -> u32 {
        self.peer_status
    }

    /// This queue pair's epoch generation (see [`Pkt::generation`]).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Number of slots of this queue pair (0 on a classic port).
    pub fn slot_count(&self) -> u32 {
        self.ledger.len()
    }

    /// Receive and transmit queue sizes.
    pub fn queue_sizes(&self) -> (u16, u16) {
        (self.rxq.size(), self.txq.size())
    }

    /// The local index of region slot `s` if it is one of this queue
    /// pair's.
    fn local(&self, s: u32) -> Option<u32> {
        let stride = self.slots.stride;
        (slot_pair(s, stride as u16) == self.pair).then_some(s / stride)
    }

    /// Where region slot `s` is in this queue pair's ledger (None when it
    /// is not one of its slots).
    pub fn slot_state(&self, s: u32) -> Option<SlotState> {
        self.ledger.state(self.local(s)?)
    }

    /// Whether a send of region slot `s` that posted it in the same burst
    /// (an early post) is on the transmit queue, its completion not reaped
    /// yet. O(queue size): for tests and diagnostics.
    pub fn early_send_in_flight(&self, s: u32) -> bool {
        self.local(s)
            .is_some_and(|l| self.txq.has_in_flight(Buf::Slot(l).token() | EARLY))
    }

    /// Whether this side owns region slot `s` now through this queue pair
    /// (it is free, held by the application, or — in copy mode — on the
    /// transmit queue).
    pub fn owns_slot(&self, s: u32) -> bool {
        match self.slot_state(s) {
            Some(SlotState::Free | SlotState::Held) => true,
            Some(SlotState::InFlightTx) => self.mode == Mode::Copy,
            _ => false,
        }
    }

    /// Checks the slot ledger's invariants (O(slots); for tests and
    /// diagnostics).
    pub fn check_ledger(&self) -> Result<(), String> {
        self.ledger.check()
    }

    /// The failure that stopped this queue pair, if any.
    pub fn failure(&self) -> Option<PmdError> {
        self.failed.map(PmdError::from)
    }

    /// True while a resync waits for the host to give back the buffers
    /// this queue pair had posted (the drain timed out) or for the other
    /// queue pairs of the port to drain: bursts move nothing and
    /// [`Self::alloc`] hands out nothing until a later burst finishes it.
    pub fn resync_pending(&self) -> bool {
        self.resync_pending
    }

    /// Reads the link status bit of the device configuration (a bus
    /// access, under the port's device lock).
    pub fn link_up(&mut self) -> Result<bool, PmdError> {
        self.link.lock().dev.link_up()
    }

    /// This queue pair's counters, with a snapshot of its ledger.
    pub fn stats(&self) -> Stats {
        Stats {
            mode: self.mode,
            epoch: self.epoch,
            slots: self.ledger.counts(),
            classic: self.classic.counts(),
            rx_publishes: self.rxq.publishes(),
            tx_publishes: self.txq.publishes(),
            ..self.st
        }
    }

    /// Whether `pkt` is a current handle of this port for a buffer the
    /// application holds.
    #[inline]
    fn owns(&self, pkt: &Pkt) -> bool {
        if pkt.port() != self.id {
            return false;
        }
        match pkt.buf() {
            Buf::Slot(s) => {
                pkt.generation() == self.generation && self.ledger.state(s) == Some(SlotState::Held)
            }
            Buf::Classic(i) => self.classic.state(i) == Some(ClassicState::Held),
        }
    }

    /// Where buffer `b`'s header starts in this process. `b` must be a
    /// buffer of this port (a slot below the slot count or a classic index
    /// below the pool size), as every token and checked handle is.
    #[inline]
    fn buf_ptr(&self, b: Buf) -> *mut u8 {
        match b {
            Buf::Slot(s) => self.slots.ptr(s),
            Buf::Classic(i) => self.classic.ptr(i),
        }
    }

    /// The bus address a descriptor for buffer `b` carries.
    #[inline]
    fn buf_addr(&self, b: Buf) -> u64 {
        match b {
            Buf::Slot(s) => self.slots.addr(s),
            Buf::Classic(i) => self.classic.iova(i),
        }
    }

    /// Bytes in buffer `b`, header included.
    #[inline]
    fn buf_size(&self, b: Buf) -> u32 {
        match b {
            Buf::Slot(_) => self.slots.size,
            Buf::Classic(_) => self.classic.buf_size(),
        }
    }

    /// Writes a header with `flags` (others zero) in front of buffer `b`.
    #[inline]
    fn write_hdr(&self, b: Buf, flags: u8) {
        // SAFETY: `b` is this port's buffer (see `buf_ptr`), at least
        // 64 bytes long, so its 12 header bytes are inside mapped memory;
        // the port owns it (rule 1), so nobody else writes it.
        unsafe { put_hdr(self.buf_ptr(b), flags) };
    }

    /// Reads buffer `b`'s header, once.
    #[inline]
    fn read_hdr(&self, b: Buf) -> NetHdr {
        // SAFETY: as in `write_hdr`; a volatile read of plain bytes, copied
        // out before use, so a peer that rewrites it cannot change what we
        // decide on.
        let bytes = unsafe { ptr::read_volatile(self.buf_ptr(b).cast::<[u8; NET_HDR_LEN]>()) };
        NetHdr::from_bytes(&bytes)
    }

    /// A free buffer to build a packet in, its header zeroed and its length
    /// 0 (use [`Pkt::set_len`], then [`crate::Port::data_mut`]). A slot in
    /// zero-copy and copy modes, a classic buffer on a classic port. `None`
    /// when none is free (counted in [`Stats::alloc_failed`]): receive or
    /// wait for transmit completions and try again.
    #[inline]
    pub fn alloc(&mut self) -> Option<Pkt> {
        if self.failed.is_some() || self.resync_pending {
            return None;
        }
        let b = match self.take_free() {
            Some(b) => b,
            None => self.alloc_slow()?,
        };
        self.write_hdr(b, 0);
        Some(Pkt::new(self.id, self.generation, b, 0, self.buf_size(b) - HDR).with_clean_hdr())
    }

    #[inline]
    fn take_free(&mut self) -> Option<Buf> {
        if self.mode != Mode::Classic {
            return self.ledger.alloc().map(Buf::Slot);
        }
        // Leave what the receive queue is missing for the next refill.
        let deficit = self
            .classic_rx_target
            .saturating_sub(self.classic.count(ClassicState::PostedRx));
        if self.classic.count(ClassicState::Free) <= deficit {
            return None;
        }
        self.classic.alloc().map(Buf::Classic)
    }

    /// The pool is empty: reap transmit completions (a copy-mode or classic
    /// send returns its buffer) and try once more.
    #[cold]
    fn alloc_slow(&mut self) -> Option<Buf> {
        if self.mode == Mode::ZeroCopy {
            self.reap_tx::<true>();
        } else {
            self.reap_tx::<false>();
        }
        let b = self.take_free();
        if b.is_none() {
            self.st.alloc_failed += 1;
        }
        b
    }

    /// Gives a packet back to the pool. A stale handle (older epoch or
    /// another port) is ignored and counted.
    #[inline]
    pub fn free(&mut self, pkt: Pkt) {
        // The ownership check and the transition are one step: the ledger
        // (or pool) refuses a buffer that is not held, changing nothing.
        let freed = pkt.port() == self.id
            && match pkt.buf() {
                Buf::Slot(s) => pkt.generation() == self.generation && self.ledger.free(s),
                Buf::Classic(i) => self.classic.free(i),
            };
        if !freed {
            self.stale();
        }
    }

    #[cold]
    fn stale(&mut self) {
        self.st.stale_handles += 1;
    }

    /// The frame bytes of `pkt` (after the header, `pkt.len()` of them).
    /// Empty for a stale handle.
    #[inline]
    pub fn data<'a>(&'a self, pkt: &'a Pkt) -> &'a [u8] {
        if !self.owns(pkt) {
            return &[];
        }
        let p = self.buf_ptr(pkt.buf()).wrapping_add(NET_HDR_LEN);
        // SAFETY: `owns` checked that the buffer is this port's and held by
        // the application through this very handle (there is one handle
        // per held buffer), so `p .. p + len` lies inside mapped memory
        // (`len <= capacity = buffer size - header`) that stays mapped
        // while `self` lives. Rule 1 makes this side the only writer of a
        // buffer it owns; the host writes a receive buffer only before
        // completing it, which the Acquire in `SplitQueue::poll` ordered
        // before the handle existed. The slice borrows `self`, so no resync
        // can reassign the buffer while it lives. A peer that breaks rule 1
        // and writes anyway can only change these plain bytes (every value
        // is a valid u8), never the port's own state: the PMD itself reads
        // shared memory only through volatile copies.
        unsafe { std::slice::from_raw_parts(p, pkt.len()) }
    }

    /// The frame bytes of `pkt`, writable. Empty for a stale handle.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub fn data_mut<'a>(&'a self, pkt: &'a mut Pkt) -> &'a mut [u8] {
        if !self.owns(pkt) {
            return &mut [];
        }
        let p = self.buf_ptr(pkt.buf()).wrapping_add(NET_HDR_LEN);
        // SAFETY: as in `data`; in addition the slice is unique: it borrows
        // `pkt` mutably and `pkt` is the only handle of its buffer, and the
        // port never touches the frame bytes of a held buffer, so no other
        // reference to these bytes exists while it lives.
        unsafe { std::slice::from_raw_parts_mut(p, pkt.len()) }
    }

    /// A copy of `pkt`'s `virtio_net_hdr` (None for a stale handle).
    pub fn header(&self, pkt: &Pkt) -> Option<NetHdr> {
        self.owns(pkt).then(|| self.read_hdr(pkt.buf()))
    }

    /// Returns the error that stopped the port, or finishes a resync left
    /// pending. Called first by every burst.
    /// Whether the port can move packets now: `Ok(false)` while a resync
    /// waits for the device or the peer (a `ResyncTimeout`: the burst
    /// moves nothing and the next one tries again); `Err` once it failed.
    #[inline]
    fn ready(&mut self) -> Result<bool, PmdError> {
        if let Some(f) = self.failed {
            return Err(f.into());
        }
        if self.resync_pending {
            return self.retry_resync();
        }
        Ok(true)
    }

    /// A pending resync, tried again. While the peer has not synchronised
    /// each try costs a few bus reads; that lasts until the peer's next
    /// burst.
    #[cold]
    fn retry_resync(&mut self) -> Result<bool, PmdError> {
        match self.resync() {
            Ok(()) => Ok(true),
            Err(PmdError::ResyncTimeout { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The device broke the ring protocol on queue `q`: the port stops.
    #[cold]
    fn misbehaved(&mut self, q: u16, e: VqError) {
        self.st.device_misbehaved += 1;
        if self.failed.is_none() {
            self.failed = Some(Failure::Misbehaved(q, e));
        }
    }

    /// Notifies queue `q` (the device is not polling it).
    #[cold]
    fn kick(&mut self, q: u16) {
        self.st.notifies += 1;
        let notified = self.link.lock().dev.notify(q);
        if let Err(e) = notified {
            tracing::error!(queue = q, error = %e, "queue notification failed");
            self.failed.get_or_insert(Failure::Notify);
        }
    }
}

/// Writes a header with `flags` (others zero) at `p`:
/// `NetHdr { flags, ..NetHdr::default() }.to_bytes()`, built in place. The
/// write is volatile because the memory is shared.
///
/// # Safety
///
/// `p` must be valid for a write of `NET_HDR_LEN` bytes: the header of a
/// buffer of this port that this side owns (rule 1: nobody else writes it).
#[inline(always)]
unsafe fn put_hdr(p: *mut u8, flags: u8) {
    let mut h = [0u8; NET_HDR_LEN];
    h[0] = flags;
    // SAFETY: the caller's contract.
    unsafe { ptr::write_volatile(p.cast::<[u8; NET_HDR_LEN]>(), h) };
}

/// `write_hdr` and the receive path's gift check put the flags in the
/// header's first byte.
const _: () = assert!(std::mem::offset_of!(NetHdr, flags) == 0);
