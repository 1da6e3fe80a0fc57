//! Classic buffers: packet buffers in the port's own DMA memory (not in the
//! Shared Buffers region), for the classic path (`docs/abi.md` §6 "Copy mode and the classic path"). The
//! host copies a frame into or out of them. They are always this side's,
//! whatever the epoch, so a handle to one never goes stale.
//!
//! Each buffer is `buf_size` bytes: the 12-byte header, then the frame.

use crate::bus::DmaRegion;
use crate::stats::ClassicCounts;

/// Where one classic buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClassicState {
    /// In the free pool.
    Free,
    /// Held by the application.
    Held,
    /// Posted on the receive queue.
    PostedRx,
    /// On the transmit queue.
    InFlightTx,
}

/// A fixed set of classic buffers carved from one DMA allocation.
pub struct ClassicPool {
    mem: DmaRegion,
    buf_size: u32,
    state: Box<[ClassicState]>,
    free: Box<[u32]>,
    nfree: u32,
    counts: [u32; 4],
}

impl ClassicPool {
    /// `count` buffers of `buf_size` bytes over `mem`, all free. `mem` must
    /// hold `count × buf_size` bytes (checked).
    pub fn new(mem: DmaRegion, count: u32, buf_size: u32) -> Option<Self> {
        if (mem.len as u64) < u64::from(count) * u64::from(buf_size) {
            return None;
        }
        Some(Self {
            mem,
            buf_size,
            state: vec![ClassicState::Free; count as usize].into_boxed_slice(),
            free: (0..count).rev().collect(),
            nfree: count,
            counts: [count, 0, 0, 0],
        })
    }

    /// Number of buffers.
    pub fn len(&self) -> u32 {
        self.state.len() as u32
    }

    /// Bytes per buffer, header included.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// DMA address of buffer `i` (its header).
    #[inline]
    pub fn iova(&self, i: u32) -> u64 {
        self.mem.iova + u64::from(i) * u64::from(self.buf_size)
    }

    /// Where buffer `i` (its header) is in this process. `i` must be below
    /// `len()`.
    #[inline]
    pub fn ptr(&self, i: u32) -> *mut u8 {
        debug_assert!(i < self.len());
        self.mem
            .ptr
            .wrapping_add(i as usize * self.buf_size as usize)
    }

    /// Where buffer `i` is.
    pub fn state(&self, i: u32) -> Option<ClassicState> {
        self.state.get(i as usize).copied()
    }

    /// Buffers in `st`.
    pub fn count(&self, st: ClassicState) -> u32 {
        self.counts[st as usize]
    }

    /// A snapshot of the counts.
    pub fn counts(&self) -> ClassicCounts {
        ClassicCounts {
            free: self.count(ClassicState::Free),
            held: self.count(ClassicState::Held),
            posted_rx: self.count(ClassicState::PostedRx),
            in_flight_tx: self.count(ClassicState::InFlightTx),
        }
    }

    #[inline]
    fn take_free(&mut self, to: ClassicState) -> Option<u32> {
        if self.nfree == 0 {
            return None;
        }
        self.nfree -= 1;
        let i = self.free[self.nfree as usize];
        self.set(i, ClassicState::Free, to);
        Some(i)
    }

    #[inline]
    fn set(&mut self, i: u32, from: ClassicState, to: ClassicState) {
        self.state[i as usize] = to;
        self.counts[from as usize] -= 1;
        self.counts[to as usize] += 1;
        if to == ClassicState::Free {
            self.free[self.nfree as usize] = i;
            self.nfree += 1;
        }
    }

    #[inline]
    fn move_if(&mut self, i: u32, from: ClassicState, to: ClassicState) -> bool {
        if self.state.get(i as usize) != Some(&from) {
            return false;
        }
        self.set(i, from, to);
        true
    }

    /// A free buffer for the application: `Free → Held`.
    #[inline]
    pub fn alloc(&mut self) -> Option<u32> {
        self.take_free(ClassicState::Held)
    }

    /// A free buffer to post for receive: `Free → PostedRx`.
    #[inline]
    pub fn take_for_rx(&mut self) -> Option<u32> {
        self.take_free(ClassicState::PostedRx)
    }

    /// The application gives a buffer back: `Held → Free`.
    #[inline]
    pub fn free(&mut self, i: u32) -> bool {
        self.move_if(i, ClassicState::Held, ClassicState::Free)
    }

    /// A frame arrived in it: `PostedRx → Held`.
    #[inline]
    pub fn rx_done(&mut self, i: u32) -> bool {
        self.move_if(i, ClassicState::PostedRx, ClassicState::Held)
    }

    /// It came back empty: `PostedRx → Free`.
    #[inline]
    pub fn rx_void(&mut self, i: u32) -> bool {
        self.move_if(i, ClassicState::PostedRx, ClassicState::Free)
    }

    /// It goes on the transmit queue: `Held → InFlightTx`.
    #[inline]
    pub fn send(&mut self, i: u32) -> bool {
        self.move_if(i, ClassicState::Held, ClassicState::InFlightTx)
    }

    /// Its transmit completed: `InFlightTx → Free`.
    #[inline]
    pub fn tx_done(&mut self, i: u32) -> bool {
        self.move_if(i, ClassicState::InFlightTx, ClassicState::Free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::DmaArena;

    #[test]
    fn buffers_cycle() {
        let mut arena = DmaArena::new();
        let mem = arena.alloc(4 * 2048);
        let mut p = ClassicPool::new(mem, 4, 2048).unwrap();
        assert!(ClassicPool::new(mem, 5, 2048).is_none());
        assert_eq!(p.iova(1), mem.iova + 2048);
        let a = p.take_for_rx().unwrap();
        let b = p.alloc().unwrap();
        assert_eq!((a, b), (0, 1));
        assert!(p.rx_done(a));
        assert!(!p.rx_done(a));
        assert!(p.send(b));
        assert!(p.tx_done(b));
        assert!(p.free(a));
        assert_eq!(p.counts().free, 4);
        let c = p.take_for_rx().unwrap();
        assert!(p.rx_void(c));
        assert_eq!(p.counts().free, 4);
    }
}
