//! The driver side of a split virtqueue (virtio 1.2 §2.7) over DMA memory.
//!
//! The descriptor table and the avail ring are written only by the driver,
//! the used ring only by the device, but all three live in memory the device
//! maps, so they are touched through raw pointers with volatile or atomic
//! accesses, never through `&`/`&mut` to the rings themselves.
//!
//! sbnet uses one-descriptor chains only (a slot reference must be a single
//! descriptor, `docs/abi.md` §5, and classic buffers carry header and frame
//! in one buffer), so a chain's head is its only descriptor and a free
//! descriptor is simply an unused index.
//!
//! Per burst the caller does: [`SplitQueue::poll`] (one Acquire load of
//! `used.idx`), [`SplitQueue::take_each`] for the completed entries (or
//! [`SplitQueue::pop`] one at a time), [`SplitQueue::push_each`] for the new
//! buffers (or [`SplitQueue::push`]), then one [`SplitQueue::publish`] (one
//! Release store of `avail.idx`), one [`full_barrier`](sbnet_abi::ring::full_barrier) (which may serve
//! both queues of a pair) and one [`SplitQueue::wants_notify`] decision.
//!
//! Everything the device writes is validated before use: `used.idx` may not
//! run ahead of what is in flight, a used entry must name a descriptor that
//! is in range and in flight, and its length may not exceed what was
//! posted. A violation marks the queue broken (as Linux's `virtio_ring`
//! does) and is reported as a [`VqError`]; nothing panics or spins.

use core::ptr;
use core::sync::atomic::{AtomicU16, Ordering};

use sbnet_abi::ring::{
    self, Desc, UsedElem, AVAIL_F_NO_INTERRUPT, RING_ENTRIES, RING_FLAGS, RING_IDX,
    USED_F_NO_NOTIFY,
};
use thiserror::Error;

use crate::bus::DmaRegion;

/// Token value meaning "this descriptor is not in flight".
const NO_TOKEN: u32 = u32::MAX;

/// What the device did wrong in a used ring. Each makes the queue
/// untrustworthy; the port reports it as `PmdError::DeviceMisbehaved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum VqError {
    /// `used.idx` advanced by more entries than the driver has in flight
    /// (virtio 1.2 §2.7.8: the device adds at most one used entry per
    /// available chain).
    #[error("used.idx advanced by {advanced} but only {in_flight} buffers are in flight")]
    UsedIdxTooFar {
        /// How far `used.idx` moved past the last entry the driver consumed.
        advanced: u16,
        /// Buffers the driver had made available and not seen completed.
        in_flight: u16,
    },
    /// A used entry names a descriptor index outside the queue.
    #[error("used entry names descriptor {id}, outside a queue of {size}")]
    IdOutOfRange {
        /// The index the device wrote.
        id: u32,
        /// The queue size.
        size: u16,
    },
    /// A used entry names a descriptor that is not in flight (never made
    /// available, or already completed).
    #[error("used entry names descriptor {id}, which is not in flight")]
    IdNotInFlight {
        /// The index the device wrote.
        id: u32,
    },
    /// A used entry reports more bytes than the buffer holds (virtio 1.2
    /// §2.7.8.1: the device must not write more than the buffer's length).
    #[error("used entry for descriptor {id} reports {len} bytes, but {posted} were posted")]
    LenTooBig {
        /// The descriptor index.
        id: u32,
        /// The length the device wrote.
        len: u32,
        /// The length the driver posted.
        posted: u32,
    },
    /// The device kept a slot (`TX_USED_SLOT_KEPT`) that was posted with
    /// its send: a host that offers `SB_F_EARLY_POST` moves every slot
    /// sent on queue pair 0 in zero-copy mode (`docs/abi.md` §6).
    #[error("the device kept slot {slot}, which was posted with its send (early post)")]
    EarlyPostKept {
        /// The slot.
        slot: u32,
    },
}

/// One completed buffer: the caller's token and the device's used length
/// (already checked against the posted length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// The token given to [`SplitQueue::push`].
    pub token: u32,
    /// Bytes the device reports (written, for device-writable buffers).
    pub len: u32,
}

/// Where the three parts of a queue of `size` entries sit in one DMA
/// allocation. The used ring starts on its own page so that the driver's
/// producer index (`avail.idx`) and the device's (`used.idx`) never share a
/// cache line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Offset of the descriptor table (16-byte aligned).
    pub desc: usize,
    /// Offset of the avail ring (2-byte aligned).
    pub avail: usize,
    /// Offset of the used ring (4-byte aligned, page aligned here).
    pub used: usize,
    /// Bytes needed in all.
    pub total: usize,
}

impl RingLayout {
    /// The layout for a queue of `size` entries.
    pub const fn new(size: u16) -> Self {
        let desc = 0;
        let avail = desc + ring::desc_table_size(size) as usize;
        let used = (avail + ring::avail_ring_size(size) as usize).next_multiple_of(4096);
        let total = used + ring::used_ring_size(size) as usize;
        Self {
            desc,
            avail,
            used,
            total,
        }
    }
}

/// What the driver remembers about one descriptor.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// The caller's token while in flight, else `NO_TOKEN`.
    token: u32,
    /// The length posted.
    len: u32,
}

/// Driver side of one split virtqueue.
///
/// Invariants the unchecked indexing below relies on: `free_ids`,
/// `slots` and `avail_shadow` have `size` entries; `nfree <= size`;
/// `free_ids[..nfree]` holds indices below `size`; exactly `size - nfree`
/// entries of `slots` hold a token other than `NO_TOKEN`.
pub struct SplitQueue {
    /// Queue number, for messages.
    index: u16,
    size: u16,
    mask: u16,
    desc: *mut Desc,
    avail: *mut u8,
    used: *mut u8,
    desc_iova: u64,
    avail_iova: u64,
    used_iova: u64,
    /// Next avail index to fill; entries up to it are written but maybe not
    /// published yet.
    next_avail: u16,
    /// The last value stored to `avail.idx`.
    published: u16,
    /// The next used entry to consume.
    last_used: u16,
    /// `used.idx` as the last [`Self::poll`] saw it: entries from
    /// `last_used` up to it are completed and not consumed yet.
    seen_used: u16,
    /// Free descriptor indices (a stack).
    free_ids: Box<[u16]>,
    nfree: u16,
    /// Per descriptor: the caller's token while in flight (else
    /// `NO_TOKEN`) and the length posted, side by side so that a
    /// completion reads one 8-byte entry.
    slots: Box<[InFlight]>,
    /// What the avail ring holds at each position (the driver's own copy,
    /// so a position is only rewritten when its value changes).
    avail_shadow: Box<[u16]>,
    /// Set once the device broke the ring protocol.
    broken: Option<VqError>,
    /// Stores to `avail.idx` so far (tests check one per burst).
    publishes: u64,
    /// Used entries consumed so far.
    completions: u64,
}

// SAFETY: the raw pointers point into DMA memory owned by the bus, which the
// queue pair owning this queue keeps alive (through the port's shared link);
// no other queue uses this memory, so moving the queue to another thread
// with its queue pair is sound.
unsafe impl Send for SplitQueue {}

impl SplitQueue {
    /// Builds the driver side of queue `index` of `size` entries over
    /// `mem`, laid out as [`RingLayout::new`] says, and sets
    /// `AVAIL_F_NO_INTERRUPT` (the PMD polls).
    ///
    /// # Safety
    ///
    /// `mem.ptr` must be valid for reads and writes of `mem.len` bytes for
    /// as long as the queue exists, at least 16-byte aligned, and used by
    /// nothing else in this process; `mem.len >= RingLayout::new(size).total`
    /// and `size` must be a power of two (both are checked and panic in
    /// debug builds only).
    pub unsafe fn new(index: u16, size: u16, mem: DmaRegion) -> Self {
        let layout = RingLayout::new(size);
        debug_assert!(size.is_power_of_two());
        debug_assert!(mem.len >= layout.total);
        debug_assert_eq!(mem.ptr as usize % 16, 0);
        let n = size as usize;
        // SAFETY: the layout's offsets are below `layout.total <= mem.len`
        // (caller's guarantee), so each pointer stays inside `mem`.
        let (desc, avail, used) = unsafe {
            (
                mem.ptr.add(layout.desc).cast::<Desc>(),
                mem.ptr.add(layout.avail),
                mem.ptr.add(layout.used),
            )
        };
        let q = Self {
            index,
            size,
            mask: size - 1,
            desc,
            avail,
            used,
            desc_iova: mem.iova + layout.desc as u64,
            avail_iova: mem.iova + layout.avail as u64,
            used_iova: mem.iova + layout.used as u64,
            next_avail: 0,
            published: 0,
            last_used: 0,
            seen_used: 0,
            free_ids: (0..size).rev().collect(),
            nfree: size,
            slots: vec![
                InFlight {
                    token: NO_TOKEN,
                    len: 0
                };
                n
            ]
            .into_boxed_slice(),
            avail_shadow: vec![0; n].into_boxed_slice(),
            broken: None,
            publishes: 0,
            completions: 0,
        };
        // SAFETY: `avail + RING_FLAGS` is the avail ring's flags field,
        // inside `mem`, 2-byte aligned; only the driver writes it.
        unsafe {
            ptr::write_volatile(
                q.avail.add(RING_FLAGS as usize).cast::<u16>(),
                AVAIL_F_NO_INTERRUPT,
            )
        };
        q
    }

    /// The queue's number on the device.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// DMA addresses of the descriptor table, avail ring and used ring, as
    /// the common configuration wants them.
    pub fn iovas(&self) -> (u64, u64, u64) {
        (self.desc_iova, self.avail_iova, self.used_iova)
    }

    /// Descriptors free for [`Self::push`].
    pub fn room(&self) -> u16 {
        self.nfree
    }

    /// Buffers made available (or about to be) and not yet completed.
    pub fn in_flight(&self) -> u16 {
        self.size - self.nfree
    }

    /// The error that broke the queue, if any.
    #[cfg(test)]
    pub fn broken(&self) -> Option<VqError> {
        self.broken
    }

    /// How many times `avail.idx` was stored.
    pub fn publishes(&self) -> u64 {
        self.publishes
    }

    /// Whether a buffer with `token` is in flight (made available, its
    /// completion not taken). O(queue size): for tests and diagnostics.
    pub fn has_in_flight(&self, token: u32) -> bool {
        self.slots.iter().any(|f| f.token == token)
    }

    /// How many used entries were consumed.
    pub fn completions(&self) -> u64 {
        self.completions
    }

    /// The device's `avail.idx` atomic.
    fn avail_idx(&self) -> &AtomicU16 {
        // SAFETY: `avail + RING_IDX` is inside the ring memory for the
        // queue's life (constructor contract), 2-byte aligned as AtomicU16
        // needs, and every access to it from this process goes through this
        // atomic view; the reference is to an atomic cell, not to plain data.
        unsafe { AtomicU16::from_ptr(self.avail.add(RING_IDX as usize).cast::<u16>()) }
    }

    /// The device's `used.idx` atomic.
    fn used_idx(&self) -> &AtomicU16 {
        // SAFETY: as for `avail_idx`: inside the used ring, 2-byte aligned,
        // accessed from here only atomically.
        unsafe { AtomicU16::from_ptr(self.used.add(RING_IDX as usize).cast::<u16>()) }
    }

    /// The used ring's `flags` atomic.
    fn used_flags(&self) -> &AtomicU16 {
        // SAFETY: as for `used_idx`, at offset RING_FLAGS.
        unsafe { AtomicU16::from_ptr(self.used.add(RING_FLAGS as usize).cast::<u16>()) }
    }

    /// Writes one descriptor for `addr`/`len` with `flags` and puts it in
    /// the next avail position, remembering `token` for its completion.
    /// Not visible to the device until [`Self::publish`]. Returns false when
    /// no descriptor is free.
    #[inline(always)]
    pub fn push(&mut self, addr: u64, len: u32, flags: u16, token: u32) -> bool {
        let mut one = Some((addr, len, token));
        self.push_each(1, flags, || one.take()) == 1
    }

    /// Pushes up to `max` buffers with `flags`, as [`Self::push`] does one:
    /// `next` gives each one's address, length and token (`None` stops).
    /// Returns how many were pushed (never more than [`Self::room`]). The
    /// queue's indices stay in registers for the whole loop.
    #[inline(always)]
    pub fn push_each(
        &mut self,
        max: u16,
        flags: u16,
        mut next: impl FnMut() -> Option<(u64, u32, u32)>,
    ) -> u16 {
        let max = max.min(self.nfree);
        let (desc, avail, mask) = (self.desc, self.avail, self.mask);
        // Locals, written back once: the compiler cannot keep fields of
        // `self` in registers across the stores through `next`.
        let (slots, free_ids) = (self.slots.as_mut_ptr(), self.free_ids.as_mut_ptr());
        let shadows = self.avail_shadow.as_mut_ptr();
        let mut nfree = self.nfree;
        let mut next_avail = self.next_avail;
        let mut k = 0;
        while k < max {
            let Some((addr, len, token)) = next() else {
                break;
            };
            debug_assert_ne!(token, NO_TOKEN);
            nfree -= 1;
            // SAFETY: `nfree < self.nfree <= size` (at most `self.nfree`
            // iterations), and `free_ids` has `size` entries.
            let id = unsafe { *free_ids.add(nfree as usize) };
            // SAFETY: `id < size` (free_ids only holds indices below size),
            // so the descriptor lies inside the table; the table is written
            // only by the driver, and the device reads it only after the
            // Release store in `publish`. Field by field: a whole-struct
            // volatile write goes through a stack copy.
            unsafe {
                let d = desc.add(id as usize);
                ptr::addr_of_mut!((*d).addr).write_volatile(addr);
                ptr::addr_of_mut!((*d).len).write_volatile(len);
                ptr::addr_of_mut!((*d).flags).write_volatile(flags);
                ptr::addr_of_mut!((*d).next).write_volatile(0);
            }
            // SAFETY: `id < size` (as above) and `slots` has `size` entries;
            // the queue is borrowed mutably for the loop, so `next` cannot
            // reach these arrays and no reference to them is alive.
            unsafe { *slots.add(id as usize) = InFlight { token, len } };
            let pos = (next_avail & mask) as usize;
            // SAFETY: `pos <= mask < size` and `avail_shadow` has `size`
            // entries; as above, nothing else references it.
            let shadow = unsafe { &mut *shadows.add(pos) };
            if *shadow != id {
                *shadow = id;
                // SAFETY: `pos < size`, so entry `pos` is inside the avail
                // ring; only the driver writes the avail ring.
                unsafe {
                    ptr::write_volatile(
                        avail.add(RING_ENTRIES as usize + 2 * pos).cast::<u16>(),
                        id,
                    )
                };
            }
            next_avail = next_avail.wrapping_add(1);
            k += 1;
        }
        self.nfree = nfree;
        self.next_avail = next_avail;
        k
    }

    /// Makes every pushed entry visible to the device with one store of
    /// `avail.idx`. Does nothing (and returns false) when nothing was
    /// pushed.
    #[inline]
    pub fn publish(&mut self) -> bool {
        if self.next_avail == self.published {
            return false;
        }
        // Release: orders the descriptor and avail-entry writes above (and
        // the buffer contents written before them) before the index; pairs
        // with the device's Acquire load of avail.idx before it reads them.
        self.avail_idx().store(self.next_avail, Ordering::Release);
        self.published = self.next_avail;
        self.publishes += 1;
        true
    }

    /// Whether the device wants a notification for what was just
    /// published: true unless it set `USED_F_NO_NOTIFY` (it is polling).
    /// The caller runs [`full_barrier`](sbnet_abi::ring::full_barrier) between its last [`Self::publish`]
    /// and this (one barrier may serve both queues of a pair). The barrier
    /// orders the avail.idx store
    /// before the used.flags load; it pairs with the device's barrier
    /// between clearing `USED_F_NO_NOTIFY` and re-reading avail.idx before
    /// it sleeps (virtio 1.2 §2.7.10), so either we see the flag clear or
    /// it sees our index.
    #[inline]
    pub fn wants_notify(&self) -> bool {
        self.used_flags().load(Ordering::Relaxed) & USED_F_NO_NOTIFY == 0
    }

    /// Loads `used.idx` once and returns how many completed entries wait to
    /// be popped.
    #[inline]
    pub fn poll(&mut self) -> Result<u16, VqError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        // Acquire: pairs with the device's Release store of used.idx after
        // it wrote the used entries (and the buffers they describe), so the
        // reads in `pop` and of the buffers see them.
        let idx = self.used_idx().load(Ordering::Acquire);
        let advanced = idx.wrapping_sub(self.last_used);
        let in_flight = self.in_flight();
        if advanced > in_flight {
            return Err(self.break_with(VqError::UsedIdxTooFar {
                advanced,
                in_flight,
            }));
        }
        self.seen_used = idx;
        Ok(advanced)
    }

    /// Takes the next completed entry found by the last [`Self::poll`],
    /// validated.
    #[inline(always)]
    pub fn pop(&mut self) -> Result<Option<Used>, VqError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let mut got = None;
        self.take_each(1, |u| {
            got = Some(u);
            true
        })?;
        Ok(got)
    }

    /// Takes up to `max` of the entries the last [`Self::poll`] found, each
    /// validated, and hands each to `f`; stops early when `f` returns
    /// false. Returns how many were taken, or the first error (the queue
    /// is broken from then on). The queue's indices stay in registers for
    /// the whole loop.
    #[inline(always)]
    pub fn take_each(&mut self, max: u16, mut f: impl FnMut(Used) -> bool) -> Result<u16, VqError> {
        debug_assert!(self.broken.is_none());
        let max = max.min(self.seen_used.wrapping_sub(self.last_used));
        let (used, mask, size) = (self.used, self.mask, self.size);
        // Locals, written back once: the compiler cannot keep fields of
        // `self` in registers across the stores through `f`.
        let (slots, free_ids) = (self.slots.as_mut_ptr(), self.free_ids.as_mut_ptr());
        let (mut last_used, mut nfree) = (self.last_used, self.nfree);
        let mut k = 0;
        let mut err = None;
        while k < max {
            let pos = (last_used & mask) as usize;
            // SAFETY: `pos < size`, so the element lies inside the used
            // ring; it is read by value once (the device may rewrite it
            // later) after the Acquire load in `poll` that covers it.
            let e: UsedElem = unsafe {
                ptr::read_volatile(
                    used.add(RING_ENTRIES as usize + pos * core::mem::size_of::<UsedElem>())
                        .cast::<UsedElem>(),
                )
            };
            if e.id >= u32::from(size) {
                err = Some(VqError::IdOutOfRange { id: e.id, size });
                break;
            }
            // SAFETY: `e.id < size` was checked above and `slots` has
            // `size` entries; nothing else references them during the loop
            // (`f` cannot reach the queue).
            let slot = unsafe { &mut *slots.add(e.id as usize) };
            let InFlight { token, len: posted } = *slot;
            if token == NO_TOKEN {
                err = Some(VqError::IdNotInFlight { id: e.id });
                break;
            }
            if e.len > posted {
                err = Some(VqError::LenTooBig {
                    id: e.id,
                    len: e.len,
                    posted,
                });
                break;
            }
            slot.token = NO_TOKEN;
            // SAFETY: descriptor `e.id` was in flight, so not every
            // descriptor is free: `nfree < size`, and `free_ids` has
            // `size` entries.
            unsafe { *free_ids.add(nfree as usize) = e.id as u16 };
            nfree += 1;
            last_used = last_used.wrapping_add(1);
            k += 1;
            if !f(Used { token, len: e.len }) {
                break;
            }
        }
        self.last_used = last_used;
        self.nfree = nfree;
        self.completions += u64::from(k);
        match err {
            Some(e) => Err(self.break_with(e)),
            None => Ok(k),
        }
    }

    #[cold]
    fn break_with(&mut self, e: VqError) -> VqError {
        tracing::warn!(queue = self.index, error = %e, "device broke the ring protocol");
        self.broken = Some(e);
        e
    }
}

#[cfg(test)]
mod tests;
