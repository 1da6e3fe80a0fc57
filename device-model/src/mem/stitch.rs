//! Host-contiguous views of rings whose DMA maps are contiguous in IOVA but
//! not in the host (a vIOMMU guest's `dma_alloc_coherent` hands out 4 KiB
//! pages from anywhere in its RAM). The queue engine reads rings through one
//! cached pointer, so such a ring gets one: an address range reserved in the
//! host, with each map's file pages mapped into it in IOVA order
//! (`mmap(MAP_FIXED)`). Built when a queue is enabled or re-validated, never
//! on the packet path; dropped with any map it shows.

use super::Mapping;
use nix::libc;
use std::os::fd::AsRawFd;

/// Most stitched views one client may hold: three rings per queue.
pub const MAX_VIEWS: usize = 32;

/// One stitched view: `len` bytes at `base` show IOVA `[iova, iova + len)`.
pub(super) struct Stitched {
    iova: u64,
    len: u64,
    writable: bool,
    base: *mut u8,
}

// SAFETY: `base` is a host mapping owned by this value alone (unmapped in
// Drop); nothing in it is tied to a thread.
unsafe impl Send for Stitched {}
// SAFETY: as for Send; `&Stitched` only reads the fields.
unsafe impl Sync for Stitched {}

impl Drop for Stitched {
    fn drop(&mut self) {
        // SAFETY: base..base + len is the reservation `build` made and only
        // this value owns; no pointer into it is used after the drop (queues
        // re-validate after every change of the maps).
        unsafe { libc::munmap(self.base.cast(), self.len as usize) };
    }
}

impl Stitched {
    /// Maps `maps` (sorted, contiguous in IOVA) one after the other into one
    /// new host range. None when the host refuses (e.g. 4 KiB pieces of a
    /// hugetlb file).
    pub(super) fn build(maps: &[Mapping]) -> Option<Self> {
        let (first, last) = (maps.first()?, maps.last()?);
        let len = last.iova + last.len - first.iova;
        let ulen = usize::try_from(len).ok()?;
        // SAFETY: a fresh anonymous reservation at an address the kernel
        // picks; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ulen,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        // From here on, Drop releases the reservation on every exit.
        let view = Self {
            iova: first.iova,
            len,
            writable: maps.iter().all(|m| m.writable),
            base: base.cast(),
        };
        for m in maps {
            let prot = if m.writable {
                libc::PROT_READ | libc::PROT_WRITE
            } else {
                libc::PROT_READ
            };
            let offset = m.host as usize - m.file.map.as_ptr() as usize;
            // SAFETY: the target, base + (m.iova - first.iova) .. + m.len,
            // lies inside the reservation `view` owns (the maps are
            // contiguous in IOVA from first to last), so MAP_FIXED replaces
            // only its own pages. The file is sealed against shrinking and
            // offset + m.len is within it (checked when the map was made); a
            // writable map has a writable file mapping, so the fd allows it.
            let p = unsafe {
                libc::mmap(
                    view.base.add((m.iova - first.iova) as usize).cast(),
                    m.len as usize,
                    prot,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    m.file.fd.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return None;
            }
        }
        Some(view)
    }

    /// The host address of `[addr, end)` if this view shows all of it.
    #[inline]
    pub(super) fn get(&self, addr: u64, end: u64, write: bool) -> Option<*mut u8> {
        if self.iova <= addr && end <= self.iova + self.len && (self.writable || !write) {
            // SAFETY: iova <= addr and end <= iova + len: inside the view.
            return Some(unsafe { self.base.add((addr - self.iova) as usize) });
        }
        None
    }

    /// True when the view shows any byte of `[start, end)`.
    pub(super) fn overlaps(&self, start: u128, end: u128) -> bool {
        let s = u128::from(self.iova);
        s < end && start < s + u128::from(self.len)
    }
}
