//! Guest memory as the device sees it: the DMA maps a vfio-user client gave
//! (file descriptors the host maps), and the host's own mapping of the
//! Shared Buffers region.
//!
//! Guest memory is shared with a guest that may write it at any time, so it
//! is only ever reached through raw pointers with volatile or atomic
//! accessors (see [`crate::queue`]) or byte copies; no `&`/`&mut` to it is
//! ever formed.
//!
//! ## Memory that cannot vanish
//!
//! A client could hand over a file and then shrink it: every later access
//! to the part past the new end raises `SIGBUS` and kills the whole service,
//! the peer's network included. So every file the device maps, the client's
//! DMA maps and the host's own Shared Buffers region alike, is sealed against
//! shrinking first (`F_SEAL_SHRINK`), and only then checked to be long enough:
//! once the seal is on, the size can only grow, so the check cannot go stale.
//! A DMA map whose file already carries the seal (QEMU's
//! `memory-backend-memfd` seals its RAM by default) is taken as it is; a
//! memfd created with `MFD_ALLOW_SEALING` is sealed by the device; any other
//! file (a plain file, a hugetlbfs file that is not a memfd, a memfd already
//! sealed against sealing) is refused with [`MemError::Unsealable`].
//!
//! A map also keeps its protection: the device writes only through
//! [`GuestMemory::translate_writable`], which ignores read-only maps.
//!
//! ## Many small maps (guests behind a virtual IOMMU)
//!
//! Behind a vIOMMU the VMM sends one DMA map per IOMMU mapping, typically
//! one 4 KiB page, so a 16 KiB ring spans four maps and a busy guest holds
//! thousands. Almost all of them are slices of one file, the guest's RAM
//! memfd. So each distinct backing file (by device and inode) is mapped
//! into the host once, whole, and a DMA map is only a small table entry
//! (IOVA, length, protection, host address inside that file's mapping,
//! about 48 bytes): no `mmap` per map, and no limit from the file's page
//! size (4 KiB maps of a hugetlb memfd work). Maps that follow each other
//! in IOVA and in the same file are contiguous in the host too, so a ring
//! or buffer across them is one host pointer ([`GuestMemory::translate`]).
//! A buffer across maps that are not host-contiguous (other files, other
//! offsets) is reached piece by piece ([`GuestMemory::pieces`]); a ring
//! must be host-contiguous. Lookup is a binary search over the sorted
//! table, O(log n); a range inside one map takes the same path as ever.

use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use thiserror::Error;

mod shm;
mod stitch;
pub use shm::ShmRegion;
use stitch::Stitched;
pub use stitch::MAX_VIEWS;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;

bitflags::bitflags! {
    /// What a DMA map lets the device do (vfio-user `DMA_MAP` flags).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Prot: u32 {
        /// The device may read the range.
        const READ = 1 << 0;
        /// The device may write the range.
        const WRITE = 1 << 1;
    }
}

/// Why a DMA map or unmap is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MemError {
    /// vfio-user `DMA_MAP` without a file descriptor: sbnet cannot reach
    /// such memory except through per-access messages.
    #[error("DMA map of {size:#x} bytes at {iova:#x} has no file descriptor: guest RAM must be fd-backed (QEMU: -object memory-backend-memfd,share=on)")]
    NoFd {
        /// Start of the refused range.
        iova: u64,
        /// Size of the refused range.
        size: u64,
    },
    /// Zero size, an unaligned start/size/offset, or a range that wraps.
    #[error("DMA map {iova:#x}+{size:#x} (file offset {offset:#x}) is empty, not page-aligned or wraps around")]
    BadRange {
        /// Start.
        iova: u64,
        /// Size.
        size: u64,
        /// File offset.
        offset: u64,
    },
    /// The range overlaps an existing map.
    #[error("DMA map {iova:#x}+{size:#x} overlaps an existing map")]
    Overlap {
        /// Start.
        iova: u64,
        /// Size.
        size: u64,
    },
    /// Too many maps ([`MAX_MAPS`]), or too many distinct backing files
    /// ([`MAX_FILES`]).
    #[error("more than {0} DMA maps or backing files")]
    TooMany(usize),
    /// The host could not mmap the file descriptor.
    #[error("mmap of the DMA map's file descriptor failed: {0}")]
    Mmap(String),
    /// A map that allows neither reads nor writes.
    #[error("DMA map {iova:#x}+{size:#x} allows neither reads nor writes")]
    NoAccess {
        /// Start.
        iova: u64,
        /// Size.
        size: u64,
    },
    /// The file cannot be sealed against shrinking (see the module docs).
    #[error("DMA map {iova:#x}+{size:#x}: its file cannot be sealed against shrinking ({why}); use a memfd (QEMU: -object memory-backend-memfd,share=on)")]
    Unsealable {
        /// Start.
        iova: u64,
        /// Size.
        size: u64,
        /// What the kernel said.
        why: String,
    },
    /// `offset + size` lies past the end of the file.
    #[error("DMA map {iova:#x}+{size:#x} at file offset {offset:#x} runs past the end of its {file_len:#x}-byte file")]
    PastEnd {
        /// Start.
        iova: u64,
        /// Size.
        size: u64,
        /// File offset.
        offset: u64,
        /// The file's size.
        file_len: u64,
    },
    /// An unmap that splits a map or wraps around.
    #[error("DMA unmap {iova:#x}+{size:#x} splits a map or wraps around")]
    BadUnmap {
        /// Start.
        iova: u64,
        /// Size.
        size: u64,
    },
}

const PAGE: u64 = 4096;

/// Most DMA maps one client may hold: 65535, the default `dma_entry_limit`
/// of the kernel's own VFIO driver (`vfio_iommu_type1`), which QEMU guests
/// behind a virtual IOMMU are already sized for. A map costs one table
/// entry (about 48 bytes) and no host mapping of its own.
pub const MAX_MAPS: usize = 65535;

/// Most distinct backing files (device, inode) one client's maps may use:
/// each is mapped whole into the host's address space. QEMU uses one per
/// RAM backend.
pub const MAX_FILES: usize = 64;

/// Most host address space the files of one client's maps may take
/// (1 TiB): each file is mapped whole, so without a bound a client could
/// exhaust the service's address space with huge sparse files, and starve
/// its peer.
pub const MAX_MAPPED_BYTES: u64 = 1 << 40;

/// Most maps one translated range may cross (1 MiB of 4 KiB maps: more
/// than the largest ring, 512 KiB of descriptors): it bounds the work a
/// guest can cause with one long descriptor.
pub const MAX_SPAN_MAPS: usize = 256;

/// One backing file, mapped whole into the host once and shared by every
/// DMA map of it.
struct Backing {
    /// Kept for stitched views of rings ([`GuestMemory::stitch`]).
    fd: File,
    dev: u64,
    ino: u64,
    len: u64,
    writable: bool,
    map: MmapRaw,
}

/// One DMA map: an entry in the table, pointing into its file's mapping.
struct Mapping {
    iova: u64,
    len: u64,
    writable: bool,
    /// Host address of `iova` inside `file.map`.
    host: *mut u8,
    file: Arc<Backing>,
}

impl Mapping {
    /// True when this map starts in the host where `prev` ends, in the same
    /// file mapping.
    #[inline]
    fn follows(&self, prev: &Mapping) -> bool {
        Arc::ptr_eq(&self.file, &prev.file)
            && self.host == prev.host.wrapping_add(prev.len as usize)
    }
}

// SAFETY: `host` points into `file.map`, a shared file mapping owned (through
// the Arc) by the same entry; nothing about it is tied to a thread, and the
// entry never hands out references to guest memory, only raw pointers.
unsafe impl Send for Mapping {}
// SAFETY: as for Send; `&Mapping` only allows reading the fields.
unsafe impl Sync for Mapping {}

/// Seals `file` against shrinking unless it already is. Idempotent.
pub fn seal_shrink(file: &File) -> Result<(), nix::errno::Errno> {
    let seals = SealFlag::from_bits_truncate(fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS)?);
    if seals.contains(SealFlag::F_SEAL_SHRINK) {
        return Ok(());
    }
    fcntl(
        file.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK),
    )
    .map(drop)
}

/// A sealable memfd of `len` bytes (`MFD_ALLOW_SEALING`), already sealed
/// against shrinking: memory the device model accepts in a DMA map. For
/// test drivers and host-process clients.
pub fn sealed_memfd(name: &std::ffi::CStr, len: u64) -> std::io::Result<File> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let fd = memfd_create(
        name,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let file = File::from(fd);
    file.set_len(len)?;
    seal_shrink(&file)?;
    Ok(file)
}

/// The DMA maps of one client, sorted by address, and the files behind
/// them.
#[derive(Default)]
pub struct GuestMemory {
    maps: Vec<Mapping>,
    files: Vec<Arc<Backing>>,
    views: Vec<Stitched>,
    generation: u64,
}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.maps.iter().map(|m| (m.iova, m.len)))
            .finish()
    }
}

impl GuestMemory {
    /// Maps `[iova, iova + size)` from `file` at `offset`, readable and
    /// writable.
    pub fn map(
        &mut self,
        iova: u64,
        size: u64,
        file: Option<File>,
        offset: u64,
    ) -> Result<(), MemError> {
        self.map_prot(iova, size, file, offset, Prot::READ | Prot::WRITE)
    }

    /// Maps `[iova, iova + size)` from `file` at `offset` with `prot`.
    ///
    /// The file is sealed against shrinking (or refused) and its size
    /// checked against `offset + size` before anything is mapped, so no
    /// later access can fault (see the module docs). A file already mapped
    /// for an earlier map is not mapped again.
    pub fn map_prot(
        &mut self,
        iova: u64,
        size: u64,
        file: Option<File>,
        offset: u64,
        prot: Prot,
    ) -> Result<(), MemError> {
        let Some(file) = file else {
            return Err(MemError::NoFd { iova, size });
        };
        if prot.is_empty() {
            return Err(MemError::NoAccess { iova, size });
        }
        let end = iova.checked_add(size);
        let file_end = offset.checked_add(size);
        if size == 0
            || !iova.is_multiple_of(PAGE)
            || !size.is_multiple_of(PAGE)
            || !offset.is_multiple_of(PAGE)
            || end.is_none()
            || file_end.is_none()
            || usize::try_from(size).is_err()
        {
            return Err(MemError::BadRange { iova, size, offset });
        }
        if self.maps.len() >= MAX_MAPS {
            return Err(MemError::TooMany(MAX_MAPS));
        }
        let at = self.maps.partition_point(|m| m.iova < iova);
        let hits_prev = at > 0 && self.maps[at - 1].iova + self.maps[at - 1].len > iova;
        let hits_next = self.maps.get(at).is_some_and(|m| m.iova < iova + size);
        if hits_prev || hits_next {
            return Err(MemError::Overlap { iova, size });
        }
        // Seal first, then measure: after the seal the file cannot shrink,
        // so a length that is enough now stays enough.
        seal_shrink(&file).map_err(|e| MemError::Unsealable {
            iova,
            size,
            why: e.desc().to_string(),
        })?;
        let meta = file.metadata().map_err(|e| MemError::Mmap(e.to_string()))?;
        let file_len = meta.len();
        if file_end.is_some_and(|e| e > file_len) {
            return Err(MemError::PastEnd {
                iova,
                size,
                offset,
                file_len,
            });
        }
        let writable = prot.contains(Prot::WRITE);
        let backing = self.backing(&file, meta.dev(), meta.ino(), offset + size, writable)?;
        // SAFETY: offset + size <= backing.len (checked by `backing`), the
        // size of the live mapping, so the address stays inside it.
        let host = unsafe { backing.map.as_mut_ptr().add(offset as usize) };
        self.maps.insert(
            at,
            Mapping {
                iova,
                len: size,
                writable,
                host,
                file: backing,
            },
        );
        self.generation += 1;
        Ok(())
    }

    /// The host mapping of `file` that reaches `needed` bytes (writable if
    /// `writable`): an existing one, or the whole file, newly mapped.
    fn backing(
        &mut self,
        file: &File,
        dev: u64,
        ino: u64,
        needed: u64,
        writable: bool,
    ) -> Result<Arc<Backing>, MemError> {
        // A writable mapping serves read-only maps too (the device writes
        // only through `translate_writable`), so prefer it: maps of one file
        // then share one mapping and stay host-contiguous.
        let fits = |b: &&Arc<Backing>| {
            b.dev == dev && b.ino == ino && b.len >= needed && (b.writable || !writable)
        };
        if let Some(b) = (self.files.iter().filter(|b| b.writable).find(fits))
            .or_else(|| self.files.iter().find(fits))
        {
            return Ok(b.clone());
        }
        self.files.retain(|b| Arc::strong_count(b) > 1);
        if self.files.len() >= MAX_FILES {
            return Err(MemError::TooMany(MAX_FILES));
        }
        // The whole file, as long as it is now (it may only grow: sealed).
        let len = file
            .metadata()
            .map_err(|e| MemError::Mmap(e.to_string()))?
            .len();
        let mapped: u64 = self.files.iter().map(|b| b.len).sum();
        if mapped.saturating_add(len) > MAX_MAPPED_BYTES {
            return Err(MemError::Mmap(format!(
                "the client's files would take more than {MAX_MAPPED_BYTES:#x} bytes of host address space"
            )));
        }
        let ulen = usize::try_from(len).map_err(|_| MemError::Mmap("file too large".into()))?;
        let mut opts = MmapOptions::new();
        opts.len(ulen);
        let map = if writable {
            opts.map_raw(file)
        } else {
            opts.map_raw_read_only(file)
        }
        .map_err(|e| MemError::Mmap(e.to_string()))?;
        let fd = file
            .try_clone()
            .map_err(|e| MemError::Mmap(e.to_string()))?;
        let b = Arc::new(Backing {
            fd,
            dev,
            ino,
            len,
            writable,
            map,
        });
        self.files.push(b.clone());
        Ok(b)
    }

    /// Unmaps every map that lies inside `[iova, iova + size)` and returns
    /// how many. A range that cuts a map in two is refused; a range that
    /// covers no map unmaps nothing and succeeds, as the kernel's VFIO does
    /// (QEMU behind a virtual IOMMU unmaps ranges it never mapped).
    ///
    /// The range may end exactly at 2^64: QEMU unmaps
    /// `0xfef00000 + 0xffffffff01100000` when a guest with a virtual IOMMU
    /// powers off.
    pub fn unmap(&mut self, iova: u64, size: u64) -> Result<usize, MemError> {
        // u128: `iova + size` may be 2^64, and no further.
        let end = u128::from(iova) + u128::from(size);
        if end > 1u128 << 64 {
            return Err(MemError::BadUnmap { iova, size });
        }
        let start = u128::from(iova);
        let span = |m: &Mapping| (u128::from(m.iova), u128::from(m.iova) + u128::from(m.len));
        // Sorted and disjoint: the maps the range touches are a run starting
        // at the last one that begins at or below `iova` (O(log n + k)).
        let first = self
            .maps
            .partition_point(|m| m.iova <= iova)
            .saturating_sub(1);
        let touched = self.maps[first..]
            .iter()
            .take_while(|m| u128::from(m.iova) < end)
            .filter(|m| span(m).1 > start)
            .count();
        let lo = first + usize::from(self.maps.get(first).is_some_and(|m| span(m).1 <= start));
        let hit = &self.maps[lo..lo + touched];
        if hit.iter().any(|m| {
            let (ms, me) = span(m);
            ms < start || me > end
        }) {
            return Err(MemError::BadUnmap { iova, size });
        }
        self.maps.drain(lo..lo + touched);
        if touched > 0 {
            self.views.retain(|v| !v.overlaps(start, end));
            self.files.retain(|b| Arc::strong_count(b) > 1);
            self.generation += 1;
        }
        Ok(touched)
    }

    /// Drops every map.
    pub fn clear(&mut self) {
        if !self.maps.is_empty() {
            self.views.clear();
            self.maps.clear();
            self.files.clear();
            self.generation += 1;
        }
    }

    /// Changes whenever the set of maps changes; cached pointers into guest
    /// memory are valid only for the generation they were taken in.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The host address of `[addr, addr + len)` for reading, if the whole
    /// range is mapped and contiguous in the host: inside one map, or
    /// across maps that follow each other both in IOVA and in one file.
    /// `len` 0 is never valid.
    #[inline]
    pub fn translate(&self, addr: u64, len: u64) -> Option<*mut u8> {
        self.find(addr, len, false)
    }

    /// The host address of `[addr, addr + len)` for writing: as
    /// [`Self::translate`], but only through maps the client made writable.
    #[inline]
    pub fn translate_writable(&self, addr: u64, len: u64) -> Option<*mut u8> {
        self.find(addr, len, true)
    }

    /// Splits `[addr, addr + len)` into host-contiguous pieces written to
    /// `out`, and returns how many: one when [`Self::translate`] would
    /// succeed, more when the range crosses maps that are contiguous in
    /// IOVA but not in the host. None when part of the range is unmapped
    /// (or, with `write`, not writable), when it crosses more than
    /// [`MAX_SPAN_MAPS`] maps, or when `out` is too short.
    #[inline]
    pub fn pieces(
        &self,
        addr: u64,
        len: u64,
        write: bool,
        out: &mut [(*mut u8, usize)],
    ) -> Option<usize> {
        if let Some(p) = self.find(addr, len, write) {
            *out.first_mut()? = (p, len as usize);
            return Some(1);
        }
        self.split(addr, len, write, out)
    }

    /// The index of the map `[addr, addr + len)` starts in (or the last
    /// one before it), and the range's end; None for an empty or wrapping
    /// range, or one below every map.
    #[inline(always)]
    fn first(&self, addr: u64, len: u64) -> Option<(usize, u64)> {
        if len == 0 {
            return None;
        }
        let end = addr.checked_add(len)?;
        // Maps are sorted and disjoint: the candidate is the last one that
        // starts at or below `addr` (O(log n); one comparison with one map).
        let at = self
            .maps
            .partition_point(|m| m.iova <= addr)
            .checked_sub(1)?;
        Some((at, end))
    }

    #[inline]
    fn find(&self, addr: u64, len: u64, write: bool) -> Option<*mut u8> {
        let (at, end) = self.first(addr, len)?;
        let m = &self.maps[at];
        if end <= m.iova + m.len && (m.writable || !write) {
            // SAFETY: m.iova <= addr and addr + len <= m.iova + m.len; `host`
            // maps m.iova and m.len bytes after it in the live `m.file.map`.
            return Some(unsafe { m.host.add((addr - m.iova) as usize) });
        }
        if end <= m.iova + m.len || addr >= m.iova + m.len {
            return None;
        }
        self.find_across(at, addr, end, write)
    }

    /// A range that starts in map `at` and runs past it: one pointer if the
    /// following maps continue it in IOVA and in the same file mapping.
    #[cold]
    fn find_across(&self, at: usize, addr: u64, end: u64, write: bool) -> Option<*mut u8> {
        let first = &self.maps[at];
        let mut prev = first;
        for m in self.maps[at..].iter().take(MAX_SPAN_MAPS) {
            let continues =
                std::ptr::eq(m, first) || (m.iova == prev.iova + prev.len && m.follows(prev));
            if !continues || (write && !m.writable) {
                break;
            }
            if end <= m.iova + m.len {
                // SAFETY: maps first..=m follow each other without a gap in
                // IOVA and in the host inside one live file mapping, so the
                // addresses first.host .. first.host + (end - first.iova)
                // all lie in it; addr >= first.iova.
                return Some(unsafe { first.host.add((addr - first.iova) as usize) });
            }
            prev = m;
        }
        // Not one host range through the maps: perhaps a stitched ring.
        self.views.iter().find_map(|v| v.get(addr, end, write))
    }

    /// Makes sure [`Self::translate`] (or, with `write`,
    /// [`Self::translate_writable`]) finds `[addr, addr + len)` as one
    /// host range: when the range is covered by maps contiguous in IOVA
    /// but not in the host, builds a stitched view of them (see
    /// [`stitch`](self::stitch)). For rings, when a queue is enabled or
    /// re-validated; a view lasts until a map it shows is unmapped. False
    /// when part of the range is unmapped (or not writable), it crosses
    /// more than [`MAX_SPAN_MAPS`] maps, [`MAX_VIEWS`] views exist, or the
    /// host refuses the view.
    pub fn stitch(&mut self, addr: u64, len: u64, write: bool) -> bool {
        if self.find(addr, len, write).is_some() {
            return true;
        }
        let Some((at, end)) = self.first(addr, len) else {
            return false;
        };
        let mut last = None;
        let mut prev: Option<&Mapping> = None;
        for (i, m) in self.maps[at..].iter().enumerate().take(MAX_SPAN_MAPS) {
            let joins = match prev {
                None => addr < m.iova + m.len,
                Some(q) => m.iova == q.iova + q.len,
            };
            if !joins || (write && !m.writable) {
                return false;
            }
            if end <= m.iova + m.len {
                last = Some(at + i);
                break;
            }
            prev = Some(m);
        }
        let Some(last) = last else { return false };
        if self.views.len() >= MAX_VIEWS {
            return false;
        }
        match Stitched::build(&self.maps[at..=last]) {
            Some(v) => {
                self.views.push(v);
                true
            }
            None => false,
        }
    }

    /// Number of stitched views.
    pub fn views(&self) -> usize {
        self.views.len()
    }

    /// Drops every stitched view: for a reset, when no queue is left that
    /// could point into one.
    pub fn drop_views(&mut self) {
        self.views.clear();
    }

    /// The slow path of [`Self::pieces`]: one piece per host-contiguous run.
    #[cold]
    fn split(
        &self,
        addr: u64,
        len: u64,
        write: bool,
        out: &mut [(*mut u8, usize)],
    ) -> Option<usize> {
        let (at, end) = self.first(addr, len)?;
        let mut n = 0usize;
        let mut cur = addr;
        let mut prev: Option<&Mapping> = None;
        for m in self.maps[at..].iter().take(MAX_SPAN_MAPS) {
            if cur < m.iova || cur >= m.iova + m.len || (write && !m.writable) {
                return None;
            }
            let take = (end.min(m.iova + m.len) - cur) as usize;
            // SAFETY: m.iova <= cur < m.iova + m.len: inside the live map.
            let p = unsafe { m.host.add((cur - m.iova) as usize) };
            let joins = prev.is_some_and(|q| m.follows(q));
            if joins {
                out[n - 1].1 += take;
            } else {
                *out.get_mut(n)? = (p, take);
                n += 1;
            }
            cur += take as u64;
            if cur == end {
                return Some(n);
            }
            prev = Some(m);
        }
        None
    }

    /// Number of maps.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// True when nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Number of distinct backing file mappings the maps use.
    pub fn files(&self) -> usize {
        self.files.len()
    }
}
