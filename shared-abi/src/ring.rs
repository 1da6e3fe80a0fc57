//! Split virtqueue layouts (virtio 1.2 §2.7).
//!
//! The driver area (avail ring) is `flags: u16, idx: u16, ring: [u16; size],
//! used_event: u16`; the device area (used ring) is `flags: u16, idx: u16,
//! ring: [UsedElem; size], avail_event: u16`. Both live in driver memory and
//! are shared with the other side, so they are described by offsets, not by
//! Rust structs that could be referenced.

use core::mem::size_of;

/// `struct virtq_desc` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Desc {
    /// Guest-physical (DMA) address of the buffer, or a Shared Buffers slot address.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// `DESC_F_*`.
    pub flags: u16,
    /// Next descriptor in the chain when `DESC_F_NEXT` is set.
    pub next: u16,
}

/// `struct virtq_used_elem` (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct UsedElem {
    /// Head index of the completed chain (u32 for padding reasons).
    pub id: u32,
    /// Bytes written into the chain's writable buffers.
    pub len: u32,
}

/// A full memory barrier (store-load ordering) between a driver and a
/// device in other processes or VMs: `virtio_mb()`. Each side stores its
/// ring index, then this, then reads the other side's notification flags
/// (virtio 1.2 §2.7.10), so that either it sees the flags cleared or the
/// other side sees its index. On x86-64 a locked read-modify-write of a
/// stack word, as Linux's `smp_mb()`: the same ordering as `mfence` for
/// ordinary write-back memory, at a fraction of its cost; elsewhere a
/// sequentially consistent fence.
#[inline(always)]
pub fn full_barrier() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: ORs 0 into a word in the red zone below the stack pointer
    // (no `nostack`: the compiler keeps nothing there across the asm),
    // which changes no value; a locked instruction orders every earlier
    // load and store before every later one. Without `nomem` the asm is
    // also a compiler barrier.
    unsafe {
        core::arch::asm!("lock or dword ptr [rsp - 8], 0");
    }
    #[cfg(not(target_arch = "x86_64"))]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect descriptor table.
pub const DESC_F_INDIRECT: u16 = 4;
/// Every descriptor flag sbnet knows; others make the chain malformed.
pub const DESC_F_KNOWN: u16 = DESC_F_NEXT | DESC_F_WRITE | DESC_F_INDIRECT;

/// Avail-ring flag: the driver does not want interrupts.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used-ring flag: the device does not want notifications (it is polling).
pub const USED_F_NO_NOTIFY: u16 = 1;

/// Largest queue size virtio allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Required alignment of the descriptor table.
pub const DESC_ALIGN: u64 = 16;
/// Required alignment of the avail ring.
pub const AVAIL_ALIGN: u64 = 2;
/// Required alignment of the used ring.
pub const USED_ALIGN: u64 = 4;

/// Byte size of a descriptor table of `size` entries.
pub const fn desc_table_size(size: u16) -> u64 {
    size as u64 * size_of::<Desc>() as u64
}

/// Byte size of an avail ring of `size` entries, including `used_event`.
pub const fn avail_ring_size(size: u16) -> u64 {
    4 + 2 * size as u64 + 2
}

/// Byte size of a used ring of `size` entries, including `avail_event`.
pub const fn used_ring_size(size: u16) -> u64 {
    4 + size_of::<UsedElem>() as u64 * size as u64 + 2
}

/// Offset of the `flags` field in either ring.
pub const RING_FLAGS: u64 = 0;
/// Offset of the `idx` field in either ring.
pub const RING_IDX: u64 = 2;
/// Offset of entry 0 in either ring.
pub const RING_ENTRIES: u64 = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn ring_layouts() {
        assert_eq!(size_of::<Desc>(), 16);
        assert_eq!(offset_of!(Desc, len), 8);
        assert_eq!(offset_of!(Desc, flags), 12);
        assert_eq!(offset_of!(Desc, next), 14);
        assert_eq!(size_of::<UsedElem>(), 8);
        assert_eq!(desc_table_size(256), 4096);
        assert_eq!(avail_ring_size(256), 518);
        assert_eq!(used_ring_size(256), 2054);
    }
}
