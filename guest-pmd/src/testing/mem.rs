//! Heap memory standing in for DMA memory and for the Shared Buffers BAR.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::Arc;

use crate::bus::DmaRegion;

use super::ring::DeviceRing;

/// Where fake IOVAs start (any value the tests can recognise).
pub const IOVA_BASE: u64 = 0x1_0000_0000;

/// One zeroed, page-aligned heap allocation, freed when the last holder
/// drops it.
pub struct Chunk {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: a Chunk only owns a heap allocation; the bytes in it are shared
// with the code under test through raw pointers and accessed with volatile
// or atomic operations, exactly as device memory would be.
unsafe impl Send for Chunk {}
// SAFETY: as above; `&Chunk` only hands out the raw pointer.
unsafe impl Sync for Chunk {}

impl Chunk {
    /// Allocates `len` zeroed bytes (rounded up to a page), page aligned.
    pub fn new(len: usize) -> Arc<Self> {
        let len = len.max(1).next_multiple_of(4096);
        let layout = Layout::from_size_align(len, 4096).expect("test allocation layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "test allocation of {len} bytes failed");
        Arc::new(Self { ptr, layout })
    }

    /// First byte.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this layout and is
        // freed once, here.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// A set of fake DMA allocations with made-up IOVAs, as a bus would hand
/// out, that a test playing the device can translate back.
#[derive(Default)]
pub struct DmaArena {
    chunks: Vec<(u64, Arc<Chunk>)>,
    next_iova: u64,
}

impl DmaArena {
    /// An empty arena.
    pub fn new() -> Self {
        Self {
            chunks: Vec::new(),
            next_iova: IOVA_BASE,
        }
    }

    /// Allocates `len` zeroed bytes at a fresh IOVA.
    pub fn alloc(&mut self, len: usize) -> DmaRegion {
        let chunk = Chunk::new(len);
        let iova = self.next_iova;
        // Leave a page gap so an off-by-one address is never valid.
        self.next_iova += chunk.len() as u64 + 4096;
        let r = DmaRegion {
            ptr: chunk.ptr(),
            iova,
            len: chunk.len(),
        };
        self.chunks.push((iova, chunk));
        r
    }

    /// The chunk holding `[iova, iova + len)` and the pointer to `iova`.
    pub fn translate(&self, iova: u64, len: u64) -> Option<(Arc<Chunk>, *mut u8)> {
        self.chunks.iter().find_map(|(base, c)| {
            let off = iova.checked_sub(*base)?;
            let end = off.checked_add(len)?;
            if end > c.len() as u64 {
                return None;
            }
            // SAFETY: `off + len <= c.len()`, inside the allocation.
            Some((c.clone(), unsafe { c.ptr().add(off as usize) }))
        })
    }

    /// The device's view of a queue whose parts the driver put at these
    /// IOVAs. Panics if they are not in the arena.
    pub fn device_ring(&self, size: u16, desc: u64, avail: u64, used: u64) -> DeviceRing {
        let d = self
            .translate(desc, sbnet_abi::ring::desc_table_size(size))
            .expect("descriptor table in the arena");
        let a = self
            .translate(avail, sbnet_abi::ring::avail_ring_size(size))
            .expect("avail ring in the arena");
        let u = self
            .translate(used, sbnet_abi::ring::used_ring_size(size))
            .expect("used ring in the arena");
        DeviceRing::new(size, d, a, u)
    }
}
