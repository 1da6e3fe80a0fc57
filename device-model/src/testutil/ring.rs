//! The one driver-side split ring of the tests: descriptor table, avail
//! ring and used ring at IOVAs inside one host mapping of driver memory.
//! The queue unit tests, [`super::Drv`] and the tests crate's raw driver all
//! drive the device through it.

use sbnet_abi::net::{NetHdr, NET_HDR_LEN};
use sbnet_abi::ring::{Desc, UsedElem, DESC_F_NEXT, RING_ENTRIES, RING_IDX};
use std::sync::atomic::{AtomicU16, Ordering};

/// Where a ring's three parts are (bus addresses) and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Descriptor table.
    pub desc: u64,
    /// Avail ring (`queue_driver`).
    pub avail: u64,
    /// Used ring (`queue_device`).
    pub used: u64,
    /// Queue size.
    pub size: u16,
}

/// The driver's side of one split virtqueue.
#[derive(Debug)]
pub struct DriverRing {
    base: *mut u8,
    iova: u64,
    len: u64,
    layout: RingLayout,
    next_avail: u16,
    last_used: u16,
}

// SAFETY: the ring only holds a pointer into driver memory that the caller
// of `new` keeps mapped (see its contract); it has no thread affinity.
unsafe impl Send for DriverRing {}

impl DriverRing {
    /// A ring whose bus addresses `[iova, iova + len)` are host bytes
    /// `[base, base + len)`.
    ///
    /// # Safety
    ///
    /// `base` must be valid for reads and writes of `len` bytes for as long
    /// as the ring is used, and the three parts of `layout` must lie inside
    /// `[iova, iova + len)` with virtio's alignment (checked with asserts on
    /// every access, so a test that breaks it panics instead of corrupting
    /// memory).
    pub unsafe fn new(base: *mut u8, iova: u64, len: u64, layout: RingLayout) -> Self {
        Self {
            base,
            iova,
            len,
            layout,
            next_avail: 0,
            last_used: 0,
        }
    }

    /// The ring's layout.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// The avail index the driver publishes next.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Host address of `n` bytes at bus address `iova`, inside the mapping.
    pub fn at(&self, iova: u64, n: u64) -> *mut u8 {
        assert!(
            iova >= self.iova && iova + n <= self.iova + self.len,
            "{iova:#x}+{n} is outside the driver's memory"
        );
        // SAFETY: checked to be inside [base, base + len), valid by `new`'s contract.
        unsafe { self.base.add((iova - self.iova) as usize) }
    }

    /// Copies `bytes` to bus address `iova` of the driver's memory.
    pub fn write(&self, iova: u64, bytes: &[u8]) {
        let dst = self.at(iova, bytes.len() as u64);
        // SAFETY: `at` checked that the range is inside the mapping; a byte
        // copy into memory the device may read concurrently.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
    }

    /// Copies `len` bytes out of bus address `iova` of the driver's memory.
    pub fn read(&self, iova: u64, len: usize) -> Vec<u8> {
        let src = self.at(iova, len as u64);
        let mut v = vec![0; len];
        // SAFETY: as in write, the other way round.
        unsafe { std::ptr::copy_nonoverlapping(src, v.as_mut_ptr(), len) };
        v
    }

    /// Sends `frame` as a two-descriptor TX chain and publishes it: a
    /// default header in buffer `hdr` (descriptor index, bus address), the
    /// frame in buffer `body`.
    pub fn send_hdr_and_frame(&mut self, hdr: (u16, u64), body: (u16, u64), frame: &[u8]) {
        self.write(hdr.1, &NetHdr::default().to_bytes());
        self.write(body.1, frame);
        let desc = |addr, len, flags, next| Desc {
            addr,
            len,
            flags,
            next,
        };
        self.set_desc(hdr.0, desc(hdr.1, NET_HDR_LEN as u32, DESC_F_NEXT, body.0));
        self.set_desc(body.0, desc(body.1, frame.len() as u32, 0, 0));
        self.make_avail(hdr.0);
    }

    fn idx(&self, ring: u64) -> &AtomicU16 {
        // SAFETY: inside the mapping (at), 2-aligned (new's contract); an
        // AtomicU16 over shared memory is how both sides touch ring indices.
        unsafe { AtomicU16::from_ptr(self.at(ring, 2) as *mut u16) }
    }

    /// Writes descriptor `i`.
    pub fn set_desc(&self, i: u16, d: Desc) {
        let p = self.at(self.layout.desc + 16 * u64::from(i), 16) as *mut Desc;
        // SAFETY: inside the mapping (at) and 16-aligned (new's contract).
        unsafe { p.write_volatile(d) }
    }

    /// Publishes `head` on the avail ring (one entry, then the index).
    pub fn make_avail(&mut self, head: u16) {
        let slot = self.next_avail % self.layout.size;
        let e = self.layout.avail + RING_ENTRIES + 2 * u64::from(slot);
        // SAFETY: inside the mapping (at), 2-aligned.
        unsafe { (self.at(e, 2) as *mut u16).write_volatile(head) };
        self.next_avail = self.next_avail.wrapping_add(1);
        // Release pairs with the device's Acquire load of avail.idx: the
        // entry and descriptors written before are visible with the index.
        self.idx(self.layout.avail + RING_IDX)
            .store(self.next_avail, Ordering::Release);
    }

    /// Sets the avail index to anything (malformed-input tests).
    pub fn set_avail_idx(&mut self, idx: u16) {
        // Release: as in make_avail.
        self.idx(self.layout.avail + RING_IDX)
            .store(idx, Ordering::Release);
        self.next_avail = idx;
    }

    /// Sets the avail flags (e.g. `AVAIL_F_NO_INTERRUPT`).
    pub fn set_avail_flags(&self, flags: u16) {
        // Release: a hint the device reads after publishing used.idx.
        self.idx(self.layout.avail).store(flags, Ordering::Release);
    }

    /// Reads the used entries published since the last call: (id, len).
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        // Acquire pairs with the device's Release store of used.idx: the
        // used elements (and packet data) written before are visible.
        let idx = self
            .idx(self.layout.used + RING_IDX)
            .load(Ordering::Acquire);
        let mut out = vec![];
        while self.last_used != idx {
            let slot = self.last_used % self.layout.size;
            let e = self.layout.used + RING_ENTRIES + 8 * u64::from(slot);
            // SAFETY: inside the mapping (at), 4-aligned.
            let e = unsafe { (self.at(e, 8) as *const UsedElem).read_volatile() };
            out.push((e.id as u16, e.len));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }
}
