//! The device side of a split virtqueue, for tests that play the device.

use core::ptr;
use core::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use sbnet_abi::ring::{Desc, UsedElem, RING_ENTRIES, RING_FLAGS, RING_IDX};

use super::mem::Chunk;

/// A device's view of one queue: reads the avail ring and descriptors,
/// writes the used ring. Holds the memory alive.
pub struct DeviceRing {
    size: u16,
    desc: (Arc<Chunk>, *mut u8),
    avail: (Arc<Chunk>, *mut u8),
    used: (Arc<Chunk>, *mut u8),
    last_avail: u16,
    used_idx: u16,
}

// SAFETY: the pointers point into chunks this value keeps alive; they are
// used with volatile/atomic accesses only.
unsafe impl Send for DeviceRing {}

impl DeviceRing {
    /// Builds the view; each pointer must cover its part of a queue of
    /// `size` (the arena's `translate` checked that).
    pub(super) fn new(
        size: u16,
        desc: (Arc<Chunk>, *mut u8),
        avail: (Arc<Chunk>, *mut u8),
        used: (Arc<Chunk>, *mut u8),
    ) -> Self {
        Self {
            size,
            desc,
            avail,
            used,
            last_avail: 0,
            used_idx: 0,
        }
    }

    fn atomic(&self, p: *mut u8) -> &AtomicU16 {
        // SAFETY: callers pass a 2-byte aligned index/flags field inside a
        // chunk this ring keeps alive (so for as long as `&self`); those
        // fields are only accessed atomically.
        unsafe { AtomicU16::from_ptr(p.cast::<u16>()) }
    }

    /// The driver's `avail.flags`.
    pub fn avail_flags(&self) -> u16 {
        // SAFETY: RING_FLAGS is inside the avail ring.
        self.atomic(unsafe { self.avail.1.add(RING_FLAGS as usize) })
            .load(Ordering::Relaxed)
    }

    /// The driver's `avail.idx` (Acquire: pairs with the driver's Release
    /// store in `SplitQueue::publish`).
    pub fn avail_idx(&self) -> u16 {
        // SAFETY: RING_IDX is inside the avail ring.
        self.atomic(unsafe { self.avail.1.add(RING_IDX as usize) })
            .load(Ordering::Acquire)
    }

    /// The next available descriptor (head index and a copy of it), if the
    /// driver published one the device has not taken yet.
    pub fn next_avail(&mut self) -> Option<(u16, Desc)> {
        if self.avail_idx() == self.last_avail {
            return None;
        }
        let pos = (self.last_avail % self.size) as usize;
        // SAFETY: `pos < size`: the entry is inside the avail ring.
        let id: u16 = unsafe {
            ptr::read_volatile(
                self.avail
                    .1
                    .add(RING_ENTRIES as usize + 2 * pos)
                    .cast::<u16>(),
            )
        };
        self.last_avail = self.last_avail.wrapping_add(1);
        let d = self.desc(id)?;
        Some((id, d))
    }

    /// A copy of descriptor `id` (None when out of range).
    pub fn desc(&self, id: u16) -> Option<Desc> {
        if id >= self.size {
            return None;
        }
        // SAFETY: `id < size`: inside the table.
        Some(unsafe { ptr::read_volatile(self.desc.1.cast::<Desc>().add(id as usize)) })
    }

    /// Writes a used entry (not visible until [`Self::publish_used`]).
    pub fn push_used(&mut self, id: u32, len: u32) {
        let pos = (self.used_idx % self.size) as usize;
        // SAFETY: `pos < size`: inside the used ring.
        unsafe {
            ptr::write_volatile(
                self.used
                    .1
                    .add(RING_ENTRIES as usize + pos * core::mem::size_of::<UsedElem>())
                    .cast::<UsedElem>(),
                UsedElem { id, len },
            )
        };
        self.used_idx = self.used_idx.wrapping_add(1);
    }

    /// Publishes the used entries written so far (Release: pairs with the
    /// driver's Acquire load in `SplitQueue::poll`).
    pub fn publish_used(&mut self) {
        // SAFETY: RING_IDX is inside the used ring.
        self.atomic(unsafe { self.used.1.add(RING_IDX as usize) })
            .store(self.used_idx, Ordering::Release);
    }

    /// Stores an arbitrary `used.idx` (to misbehave).
    pub fn set_used_idx(&mut self, idx: u16) {
        self.used_idx = idx;
        self.publish_used();
    }

    /// Stores `used.flags`.
    pub fn set_used_flags(&mut self, flags: u16) {
        // SAFETY: RING_FLAGS is inside the used ring.
        self.atomic(unsafe { self.used.1.add(RING_FLAGS as usize) })
            .store(flags, Ordering::SeqCst);
    }
}
