//! The device side of a split virtqueue (virtio 1.2 §2.7), over guest memory
//! that the guest may change at any moment.
//!
//! Validated once, where it enters: [`Queue::enable`] checks size, alignment
//! and that every ring lies inside one DMA map, then caches host pointers
//! (valid for that memory generation). Per access: every index read from
//! the guest is checked against the queue size; descriptors are copied out
//! once and the copy is validated and used.

use crate::mem::GuestMemory;
use sbnet_abi::ring::{self, Desc, UsedElem};
use std::sync::atomic::{AtomicU16, Ordering};
use thiserror::Error;

/// Errors that make a queue untrustworthy: the function goes to
/// `DEVICE_NEEDS_RESET`.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// Queue size is zero, not a power of two, or above the device maximum.
    #[error("queue size {0} is not a power of two within the device maximum")]
    InvalidSize(u16),
    /// A ring address is not aligned as virtio requires.
    #[error("ring address {0:#x} is misaligned")]
    Misaligned(u64),
    /// A ring does not lie inside one DMA map.
    #[error("ring at {addr:#x} ({len} bytes) is outside guest memory")]
    RingNotMapped {
        /// Ring address.
        addr: u64,
        /// Ring length.
        len: u64,
    },
    /// More descriptors available than the queue holds (`avail.idx - last_avail > size`).
    #[error("avail index moved by {0}, more than the queue size")]
    InvalidAvailRingIndex(u16),
    /// An avail entry names a descriptor index >= queue size.
    #[error("avail entry names descriptor {0}, outside the table")]
    InvalidHead(u16),
    /// An avail entry names a head the device already holds.
    #[error("descriptor {0} made available twice while in flight")]
    HeadInFlight(u16),
    /// The DMA maps changed under an enabled queue and no longer cover it.
    #[error("guest memory changed under an enabled queue")]
    MemoryGone,
}

pub use sbnet_abi::ring::full_barrier;

/// Queue registers as the driver programmed them through common config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueRegs {
    /// `queue_size`.
    pub size: u16,
    /// `queue_desc`.
    pub desc: u64,
    /// `queue_driver` (avail ring).
    pub driver: u64,
    /// `queue_device` (used ring).
    pub device: u64,
    /// `queue_msix_vector`.
    pub msix_vector: u16,
}

impl QueueRegs {
    /// The three rings as (address, length, written by the device):
    /// descriptor table, avail ring, used ring.
    pub fn rings(&self) -> [(u64, u64, bool); 3] {
        [
            (self.desc, ring::desc_table_size(self.size), false),
            (self.driver, ring::avail_ring_size(self.size), false),
            (self.device, ring::used_ring_size(self.size), true),
        ]
    }
}

/// An enabled queue.
#[derive(Debug)]
pub struct Queue {
    size: u16,
    mask: u16,
    desc: *mut Desc,
    avail: *mut u8,
    used: *mut u8,
    mem_generation: u64,
    regs: QueueRegs,
    last_avail: u16,
    used_idx: u16,
    published_used: u16,
    in_flight: Vec<bool>,
}

// SAFETY: the raw pointers point into DMA maps owned by the GuestMemory the
// queue was enabled against; by `enable`'s contract the owner (the function)
// moves both together and drops the queue (or re-validates it) whenever that
// memory changes.
unsafe impl Send for Queue {}

impl Queue {
    /// Validates the registers against `mem` and caches the ring pointers.
    ///
    /// # Safety
    ///
    /// The queue keeps raw pointers into `mem`'s maps. The caller must make
    /// sure that, for as long as the queue is used, those maps stay mapped:
    /// after every change of `mem` (map, unmap, clear) and before any other
    /// use of the queue, it calls [`Self::revalidate`] with `mem` and drops
    /// the queue when that fails; and it drops the queue before `mem`.
    /// [`crate::function::Function`] does so by keeping its memory private
    /// behind methods that re-validate.
    pub unsafe fn enable(
        regs: QueueRegs,
        max_size: u16,
        mem: &GuestMemory,
    ) -> Result<Self, QueueError> {
        let size = regs.size;
        if size == 0 || !size.is_power_of_two() || size > max_size {
            return Err(QueueError::InvalidSize(size));
        }
        for (addr, align) in [
            (regs.desc, ring::DESC_ALIGN),
            (regs.driver, ring::AVAIL_ALIGN),
            (regs.device, ring::USED_ALIGN),
        ] {
            if !addr.is_multiple_of(align) {
                return Err(QueueError::Misaligned(addr));
            }
        }
        let map = |addr: u64, len: u64, write: bool| {
            if write {
                mem.translate_writable(addr, len)
            } else {
                mem.translate(addr, len)
            }
            .ok_or(QueueError::RingNotMapped { addr, len })
        };
        // The device writes the used ring: it must lie in writable maps.
        let [d, a, u] = regs.rings();
        let desc = map(d.0, d.1, d.2)? as *mut Desc;
        let avail = map(a.0, a.1, a.2)?;
        let used = map(u.0, u.1, u.2)?;
        let mut q = Self {
            size,
            mask: size - 1,
            desc,
            avail,
            used,
            mem_generation: mem.generation(),
            regs,
            last_avail: 0,
            used_idx: 0,
            published_used: 0,
            in_flight: vec![false; size as usize],
        };
        // The device starts where the driver's rings are (0 after reset).
        q.last_avail = q.avail_idx_relaxed();
        q.used_idx = q.used_idx_current();
        q.published_used = q.used_idx;
        Ok(q)
    }

    /// Re-validates the cached pointers after the DMA maps changed.
    pub fn revalidate(&mut self, mem: &GuestMemory) -> Result<(), QueueError> {
        if mem.generation() == self.mem_generation {
            return Ok(());
        }
        let [d, a, u] = self.regs.rings();
        let ok = mem.translate(d.0, d.1) == Some(self.desc as *mut u8)
            && mem.translate(a.0, a.1) == Some(self.avail)
            && mem.translate_writable(u.0, u.1) == Some(self.used);
        if ok {
            self.mem_generation = mem.generation();
            Ok(())
        } else {
            Err(QueueError::MemoryGone)
        }
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The registers it was enabled with.
    pub fn regs(&self) -> &QueueRegs {
        &self.regs
    }

    /// Heads the device holds (made available, not yet used).
    pub fn in_flight(&self) -> u16 {
        // Counted when asked (reports, tests), not kept per descriptor.
        self.in_flight.iter().filter(|f| **f).count() as u16
    }

    fn avail_idx_relaxed(&self) -> u16 {
        // SAFETY: `avail` points at a mapped, 2-aligned avail ring of this
        // queue's size (checked in enable); idx is at offset 2.
        unsafe { AtomicU16::from_ptr(self.avail.add(ring::RING_IDX as usize) as *mut u16) }
            .load(Ordering::Relaxed)
    }

    fn used_idx_current(&self) -> u16 {
        // SAFETY: `used` points at a mapped, 4-aligned used ring (enable).
        unsafe { AtomicU16::from_ptr(self.used.add(ring::RING_IDX as usize) as *mut u16) }
            .load(Ordering::Relaxed)
    }

    /// Number of new avail entries, checked against the queue size.
    #[inline]
    pub fn avail_pending(&self) -> Result<u16, QueueError> {
        // SAFETY: see avail_idx_relaxed.
        let idx =
            unsafe { AtomicU16::from_ptr(self.avail.add(ring::RING_IDX as usize) as *mut u16) }
                // Acquire pairs with the driver's Release store of avail.idx: the
                // ring entries and descriptors it published before are visible.
                .load(Ordering::Acquire);
        let n = idx.wrapping_sub(self.last_avail);
        if n > self.size {
            return Err(QueueError::InvalidAvailRingIndex(n));
        }
        Ok(n)
    }

    /// Takes the next avail head (the caller checked [`Self::avail_pending`]).
    #[inline]
    pub fn pop_head(&mut self) -> Result<u16, QueueError> {
        let slot = (self.last_avail & self.mask) as usize;
        // SAFETY: slot < size, so the u16 at 4 + 2*slot is inside the mapped avail ring.
        let head = unsafe {
            (self.avail.add(ring::RING_ENTRIES as usize + 2 * slot) as *const u16).read_volatile()
        };
        if head >= self.size {
            return Err(QueueError::InvalidHead(head));
        }
        // in_flight has `size` entries (enable) and head < size.
        let Some(f) = self.in_flight.get_mut(head as usize) else {
            return Err(QueueError::InvalidHead(head));
        };
        if *f {
            return Err(QueueError::HeadInFlight(head));
        }
        *f = true;
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(head)
    }

    /// Takes the next avail head and copies its descriptor out of guest
    /// memory (the caller checked [`Self::avail_pending`]): [`Self::pop_head`]
    /// and [`Self::read_desc`] in one, without checking the head twice.
    #[inline(always)]
    pub fn pop(&mut self) -> Result<(u16, Desc), QueueError> {
        let head = self.pop_head()?;
        // SAFETY: pop_head returned head < size, and the table of `size`
        // descriptors is mapped and 16-aligned (enable).
        Ok((head, unsafe {
            self.desc.add(head as usize).read_volatile()
        }))
    }

    /// Copies descriptor `idx` out of guest memory (the copy is what gets validated).
    #[inline]
    pub fn read_desc(&self, idx: u16) -> Option<Desc> {
        if idx >= self.size {
            return None;
        }
        // SAFETY: idx < size and the table of `size` descriptors is mapped
        // and 16-aligned (enable).
        Some(unsafe { self.desc.add(idx as usize).read_volatile() })
    }

    /// Completes in-flight head `head` with `len` bytes written. Not visible to
    /// the driver until [`Self::publish`].
    #[inline]
    pub fn push_used(&mut self, head: u16, len: u32) {
        let f = self.in_flight.get_mut(head as usize);
        debug_assert!(
            f.as_deref() == Some(&true),
            "completing a head that is not in flight"
        );
        let Some(f) = f.filter(|f| **f) else {
            return;
        };
        *f = false;
        let slot = (self.used_idx & self.mask) as usize;
        let elem = UsedElem {
            id: head as u32,
            len,
        };
        // SAFETY: slot < size: the 8-byte element at 4 + 8*slot is inside the
        // mapped, 4-aligned used ring.
        unsafe {
            (self.used.add(ring::RING_ENTRIES as usize + 8 * slot) as *mut UsedElem)
                .write_volatile(elem)
        };
        self.used_idx = self.used_idx.wrapping_add(1);
    }

    /// Makes every pushed entry visible. Returns true when entries were
    /// published and the driver wants an interrupt for them.
    #[inline]
    pub fn publish(&mut self) -> bool {
        if !self.publish_idx() {
            return false;
        }
        full_barrier();
        self.wants_interrupt()
    }

    /// Stores `used.idx` when entries were pushed since the last publish;
    /// whether it did. The caller then runs [`full_barrier`] before asking
    /// [`Self::wants_interrupt`] (one barrier may serve several queues).
    #[inline]
    pub fn publish_idx(&mut self) -> bool {
        if self.used_idx == self.published_used {
            return false;
        }
        // SAFETY: see used_idx_current.
        unsafe { AtomicU16::from_ptr(self.used.add(ring::RING_IDX as usize) as *mut u16) }
            // Release pairs with the driver's Acquire load of used.idx: the
            // used elements (and packet data) written before are visible.
            .store(self.used_idx, Ordering::Release);
        self.published_used = self.used_idx;
        true
    }

    /// Whether the driver wants an interrupt (`avail.flags`), read after
    /// [`Self::publish_idx`] and a [`full_barrier`].
    ///
    /// Store-buffering case of virtio 1.2 §2.7.10: the driver stores
    /// avail.flags (re-enabling interrupts), fences, then loads used.idx;
    /// we store used.idx, then load avail.flags. Without a full barrier on
    /// both sides each load can miss the other's store (x86 lets a load
    /// pass an earlier store) and an interrupt is lost. Pairs with the
    /// driver's virtio_mb() after its flags store.
    #[inline]
    pub fn wants_interrupt(&self) -> bool {
        // SAFETY: see avail_idx_relaxed (flags at offset 0).
        let flags = unsafe { AtomicU16::from_ptr(self.avail as *mut u16) }.load(Ordering::Relaxed);
        flags & ring::AVAIL_F_NO_INTERRUPT == 0
    }

    /// Sets or clears `USED_F_NO_NOTIFY` (the device is polling).
    pub fn set_no_notify(&mut self, on: bool) {
        let v = if on { ring::USED_F_NO_NOTIFY } else { 0 };
        // SAFETY: see used_idx_current (flags at offset 0).
        let flags = unsafe { AtomicU16::from_ptr(self.used as *mut u16) };
        if flags.load(Ordering::Relaxed) != v {
            flags.store(v, Ordering::Relaxed);
        }
        if !on {
            // About to sleep: the caller re-reads avail.idx next. The fence
            // orders our flag store before that load; it pairs with the
            // driver's full barrier between its avail.idx store and its
            // used.flags load (the same store-buffering case as `publish`).
            full_barrier();
        }
    }

    /// Heads currently in flight, for a flush.
    pub fn in_flight_heads(&self) -> impl Iterator<Item = u16> + '_ {
        self.in_flight
            .iter()
            .enumerate()
            .filter(|(_, f)| **f)
            .map(|(i, _)| i as u16)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::{DriverRing, RingLayout};

    /// The queue tests' driver: one DMA map holding a queue's rings, driven
    /// through the shared [`DriverRing`].
    pub(crate) struct TestRing {
        pub mem: GuestMemory,
        pub regs: QueueRegs,
        ring: DriverRing,
    }

    pub(crate) const RING_IOVA: u64 = 0x100000;

    /// [`Queue::enable`] for the tests: each test keeps its [`TestRing`]
    /// (and so the memory) alive while it uses the queue, and the one that
    /// unmaps the memory only calls `revalidate` afterwards.
    pub(crate) fn enable(
        regs: QueueRegs,
        max_size: u16,
        mem: &GuestMemory,
    ) -> Result<Queue, QueueError> {
        // SAFETY: see above; the queue never outlives the test's memory.
        unsafe { Queue::enable(regs, max_size, mem) }
    }
    const RING_LEN: u64 = 0x40000;

    impl TestRing {
        pub fn new(size: u16) -> Self {
            let f = crate::mem::sealed_memfd(c"ring", RING_LEN).unwrap();
            f.set_len(RING_LEN).unwrap();
            let mut mem = GuestMemory::default();
            mem.map(RING_IOVA, RING_LEN, Some(f), 0).unwrap();
            let base = mem.translate(RING_IOVA, RING_LEN).unwrap();
            let regs = QueueRegs {
                size,
                desc: RING_IOVA,
                driver: RING_IOVA + 0x10000,
                device: RING_IOVA + 0x20000,
                msix_vector: 0,
            };
            let layout = RingLayout {
                desc: regs.desc,
                avail: regs.driver,
                used: regs.device,
                size,
            };
            // SAFETY: `base` maps RING_LEN bytes at RING_IOVA for as long as
            // `mem` keeps the map; the one test that unmaps it no longer
            // touches the ring.
            let ring = unsafe { DriverRing::new(base, RING_IOVA, RING_LEN, layout) };
            Self { mem, regs, ring }
        }
        pub fn data_iova(&self, i: u64) -> u64 {
            RING_IOVA + 0x30000 + i * 256
        }
    }

    impl std::ops::Deref for TestRing {
        type Target = DriverRing;
        fn deref(&self) -> &DriverRing {
            &self.ring
        }
    }

    impl std::ops::DerefMut for TestRing {
        fn deref_mut(&mut self) -> &mut DriverRing {
            &mut self.ring
        }
    }

    #[test]
    fn enable_checks() {
        let r = TestRing::new(8);
        assert!(enable(r.regs, 256, &r.mem).is_ok());
        assert_eq!(
            enable(QueueRegs { size: 6, ..r.regs }, 256, &r.mem).unwrap_err(),
            QueueError::InvalidSize(6)
        );
        assert_eq!(
            enable(
                QueueRegs {
                    size: 512,
                    ..r.regs
                },
                256,
                &r.mem
            )
            .unwrap_err(),
            QueueError::InvalidSize(512)
        );
        assert_eq!(
            enable(
                QueueRegs {
                    desc: r.regs.desc + 8,
                    ..r.regs
                },
                256,
                &r.mem
            )
            .unwrap_err(),
            QueueError::Misaligned(r.regs.desc + 8)
        );
        assert!(matches!(
            enable(
                QueueRegs {
                    device: 0x0,
                    ..r.regs
                },
                256,
                &r.mem
            ),
            Err(QueueError::RingNotMapped { .. })
        ));
        assert!(matches!(
            enable(
                QueueRegs {
                    device: RING_IOVA + 0x40000 - 8,
                    ..r.regs
                },
                256,
                &r.mem
            ),
            Err(QueueError::RingNotMapped { .. })
        ));
    }

    #[test]
    fn avail_and_used_wrap_around() {
        let mut r = TestRing::new(4);
        let mut q = enable(r.regs, 256, &r.mem).unwrap();
        for round in 0..70_000u32 {
            let head = (round % 4) as u16;
            r.make_avail(head);
            assert_eq!(q.avail_pending().unwrap(), 1);
            assert_eq!(q.pop_head().unwrap(), head);
            q.push_used(head, round);
            q.publish();
            assert_eq!(r.used(), vec![(head, round)]);
        }
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn hostile_avail() {
        let mut r = TestRing::new(4);
        let q = enable(r.regs, 256, &r.mem).unwrap();
        r.set_avail_idx(5);
        assert_eq!(q.avail_pending(), Err(QueueError::InvalidAvailRingIndex(5)));
        let mut r = TestRing::new(4);
        let mut q2 = enable(r.regs, 256, &r.mem).unwrap();
        r.make_avail(9);
        assert_eq!(q2.pop_head(), Err(QueueError::InvalidHead(9)));
        r.make_avail(1);
        r.make_avail(1);
        // The bad entry was not consumed; skip it as a reset would.
        q2.last_avail = 1;
        assert_eq!(q2.pop_head(), Ok(1));
        assert_eq!(q2.pop_head(), Err(QueueError::HeadInFlight(1)));
        drop(q);
    }

    #[test]
    fn memory_change_is_detected() {
        let mut r = TestRing::new(4);
        let mut q = enable(r.regs, 256, &r.mem).unwrap();
        r.mem.unmap(RING_IOVA, 0x40000).unwrap();
        assert_eq!(q.revalidate(&r.mem), Err(QueueError::MemoryGone));
    }

    /// A vIOMMU guest's rings: every 4 KiB page its own DMA map, the
    /// 16 KiB descriptor table at 0xffff8000 across four of them (issue 10).
    #[test]
    fn rings_across_page_maps() {
        const BASE: u64 = 0xffff_0000;
        let f = crate::mem::sealed_memfd(c"pages", 0x10000).unwrap();
        let page = |mem: &mut GuestMemory, i: u64, off: u64| {
            mem.map(BASE + i * 0x1000, 0x1000, Some(f.try_clone().unwrap()), off)
        };
        let mut mem = GuestMemory::default();
        for i in (0..16).rev() {
            page(&mut mem, i, i * 0x1000).unwrap();
        }
        let regs = QueueRegs {
            size: 1024,
            desc: BASE + 0x8000,
            driver: BASE + 0x4800,
            device: BASE + 0x1000,
            msix_vector: 0,
        };
        let mut q = enable(regs, 1024, &mem).unwrap();
        let base = mem.translate(BASE, 0x10000).unwrap();
        let layout = RingLayout {
            desc: regs.desc,
            avail: regs.driver,
            used: regs.device,
            size: 1024,
        };
        // SAFETY: `base` maps the 16 pages at BASE, one file mapping kept
        // alive by `mem` until the end of the test.
        let mut ring = unsafe { DriverRing::new(base, BASE, 0x10000, layout) };
        for head in [1023u16, 0, 700] {
            ring.make_avail(head);
            assert_eq!(q.pop_head(), Ok(head));
            q.push_used(head, 60);
            q.publish();
            assert_eq!(ring.used(), vec![(head, 60)]);
        }
        // Another map elsewhere: the rings' pointers stay as they are.
        mem.map(0x1000, 0x1000, Some(f.try_clone().unwrap()), 0)
            .unwrap();
        assert_eq!(q.revalidate(&mem), Ok(()));
        // A page in the middle of the descriptor table goes: the queue
        // must stop; mapped back elsewhere in the file the table is no
        // longer contiguous in the host: it takes a stitched view.
        mem.unmap(BASE + 0x9000, 0x1000).unwrap();
        assert_eq!(q.revalidate(&mem), Err(QueueError::MemoryGone));
        page(&mut mem, 9, 0x0).unwrap();
        assert!(matches!(
            enable(regs, 1024, &mem),
            Err(QueueError::RingNotMapped { .. })
        ));
        for (addr, len, write) in regs.rings() {
            assert!(mem.stitch(addr, len, write));
        }
        assert_eq!(mem.views(), 1);
        let q = enable(regs, 1024, &mem).unwrap();
        // Descriptor 256 is the first of IOVA page 9, file page 0, which
        // the driver also reaches at IOVA BASE.
        let d = Desc {
            addr: 0x1234_5000,
            len: 77,
            flags: 0,
            next: 3,
        };
        ring.write(BASE, bytemuck::bytes_of(&d));
        assert_eq!(
            q.read_desc(256).map(|x| (x.addr, x.len)),
            Some((d.addr, 77))
        );
        // Another map: the view stays, and so do the queue's pointers.
        page(&mut mem, 15, 0xf000).unwrap_err();
        mem.map(0x2000, 0x1000, Some(f.try_clone().unwrap()), 0)
            .unwrap();
        let mut q = q;
        assert_eq!(q.revalidate(&mem), Ok(()));
        // Back at its own offset: the queue can be enabled again.
        mem.unmap(BASE + 0x9000, 0x1000).unwrap();
        assert_eq!(
            (mem.views(), q.revalidate(&mem)),
            (0, Err(QueueError::MemoryGone))
        );
        page(&mut mem, 9, 0x9000).unwrap();
        assert!(enable(regs, 1024, &mem).is_ok());
        // The used ring must be writable in every page it crosses.
        mem.unmap(BASE + 0x2000, 0x1000).unwrap();
        mem.map_prot(
            BASE + 0x2000,
            0x1000,
            Some(f.try_clone().unwrap()),
            0x2000,
            crate::mem::Prot::READ,
        )
        .unwrap();
        assert!(matches!(
            enable(regs, 1024, &mem),
            Err(QueueError::RingNotMapped { .. })
        ));
    }
}
