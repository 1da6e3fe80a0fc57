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

use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use std::fs::File;
use std::os::fd::AsRawFd;
use thiserror::Error;

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
    /// Too many maps.
    #[error("more than {0} DMA maps")]
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
/// Most DMA maps one client may hold.
pub const MAX_MAPS: usize = 1024;

struct Mapping {
    iova: u64,
    len: u64,
    writable: bool,
    map: MmapRaw,
}

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

/// The DMA maps of one client, sorted by address.
#[derive(Default)]
pub struct GuestMemory {
    maps: Vec<Mapping>,
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
    /// later access can fault (see the module docs).
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
        {
            return Err(MemError::BadRange { iova, size, offset });
        }
        let len = usize::try_from(size).map_err(|_| MemError::BadRange { iova, size, offset })?;
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
        let file_len = file
            .metadata()
            .map_err(|e| MemError::Mmap(e.to_string()))?
            .len();
        if file_end.is_some_and(|e| e > file_len) {
            return Err(MemError::PastEnd {
                iova,
                size,
                offset,
                file_len,
            });
        }
        let mut opts = MmapOptions::new();
        opts.offset(offset).len(len);
        let writable = prot.contains(Prot::WRITE);
        let map = if writable {
            opts.map_raw(&file)
        } else {
            opts.map_raw_read_only(&file)
        }
        .map_err(|e| MemError::Mmap(e.to_string()))?;
        self.maps.insert(
            at,
            Mapping {
                iova,
                len: size,
                writable,
                map,
            },
        );
        self.generation += 1;
        Ok(())
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
        if self.maps.iter().any(|m| {
            let (ms, me) = span(m);
            ms < end && start < me && (ms < start || me > end)
        }) {
            return Err(MemError::BadUnmap { iova, size });
        }
        let before = self.maps.len();
        self.maps.retain(|m| {
            let (ms, me) = span(m);
            !(ms >= start && me <= end)
        });
        let removed = before - self.maps.len();
        if removed > 0 {
            self.generation += 1;
        }
        Ok(removed)
    }

    /// Drops every map.
    pub fn clear(&mut self) {
        if !self.maps.is_empty() {
            self.maps.clear();
            self.generation += 1;
        }
    }

    /// Changes whenever the set of maps changes; cached pointers into guest
    /// memory are valid only for the generation they were taken in.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The host address of `[addr, addr + len)` for reading, if the whole
    /// range lies in one map. `len` 0 is never valid.
    #[inline]
    pub fn translate(&self, addr: u64, len: u64) -> Option<*mut u8> {
        self.find(addr, len).map(|(_, p)| p)
    }

    /// The host address of `[addr, addr + len)` for writing: as
    /// [`Self::translate`], but only in a map the client made writable.
    #[inline]
    pub fn translate_writable(&self, addr: u64, len: u64) -> Option<*mut u8> {
        match self.find(addr, len) {
            Some((m, p)) if m.writable => Some(p),
            _ => None,
        }
    }

    #[inline]
    fn find(&self, addr: u64, len: u64) -> Option<(&Mapping, *mut u8)> {
        if len == 0 {
            return None;
        }
        let end = addr.checked_add(len)?;
        // Maps are sorted and disjoint: the candidate is the last one that
        // starts at or below `addr` (O(log n); one comparison with one map).
        let at = self.maps.partition_point(|m| m.iova <= addr);
        let m = self.maps.get(at.checked_sub(1)?)?;
        if end <= m.iova + m.len {
            // SAFETY: m.iova <= addr and addr + len <= m.iova + m.len, the
            // size of the live mapping `m.map`, so the result stays inside it.
            return Some((m, unsafe {
                m.map.as_mut_ptr().add((addr - m.iova) as usize)
            }));
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
}

/// The host's mapping of the Shared Buffers region (a sealed memfd, on
/// normal or huge pages), shared with every side's VMM through the region fd.
pub struct ShmRegion {
    file: File,
    map: MmapRaw,
    len: u64,
}

impl std::fmt::Debug for ShmRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmRegion").field("len", &self.len).finish()
    }
}

impl ShmRegion {
    /// Creates an anonymous memfd-backed region of `len` bytes, sealed
    /// against shrinking and growing before any client sees it (a client
    /// gets the fd read-write and could otherwise truncate it under the
    /// host).
    pub fn memfd(len: u64) -> std::io::Result<Self> {
        Self::sealed(len, nix::sys::memfd::MemFdCreateFlag::empty())
    }

    /// As [`Self::memfd`], on huge pages (`MFD_HUGETLB`, the system's
    /// default huge page size): `len` must be a multiple of it and enough
    /// pages must be reserved (`vm.nr_hugepages`).
    pub fn memfd_huge(len: u64) -> std::io::Result<Self> {
        Self::sealed(len, nix::sys::memfd::MemFdCreateFlag::MFD_HUGETLB)
    }

    fn sealed(len: u64, extra: nix::sys::memfd::MemFdCreateFlag) -> std::io::Result<Self> {
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag as F};
        let fd = memfd_create(
            c"sbnet-shared-buffers",
            F::MFD_CLOEXEC | F::MFD_ALLOW_SEALING | extra,
        )?;
        let file = File::from(fd);
        file.set_len(len)?;
        fcntl(
            file.as_raw_fd(),
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        Self::from_file(file, len)
    }

    fn from_file(file: File, len: u64) -> std::io::Result<Self> {
        if file.metadata()?.len() != len {
            file.set_len(len)?;
        }
        let map = MmapOptions::new()
            .len(
                usize::try_from(len)
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?,
            )
            .map_raw(&file)?;
        Ok(Self { file, map, len })
    }

    /// The file descriptor VMMs map.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Region size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never empty; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host address of byte `offset` when `[offset, offset + len)` fits.
    #[inline]
    pub fn ptr(&self, offset: u64, len: u64) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset + len <= self.len, the size of the live mapping.
        Some(unsafe { self.map.as_mut_ptr().add(offset as usize) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64) -> File {
        sealed_memfd(c"t", len).unwrap()
    }

    fn plain_memfd(len: u64, flags: nix::sys::memfd::MemFdCreateFlag) -> File {
        let fd = nix::sys::memfd::memfd_create(c"t", flags).unwrap();
        let f = File::from(fd);
        f.set_len(len).unwrap();
        f
    }

    #[test]
    fn a_map_past_the_end_of_its_file_is_refused() {
        let mut m = GuestMemory::default();
        assert!(matches!(
            m.map(0x10000, 0x4000, Some(memfd(0x2000)), 0),
            Err(MemError::PastEnd {
                file_len: 0x2000,
                ..
            })
        ));
        assert!(matches!(
            m.map(0x10000, 0x2000, Some(memfd(0x2000)), 0x1000),
            Err(MemError::PastEnd { .. })
        ));
        assert!(matches!(
            m.map(0x10000, 0x1000, Some(memfd(0x2000)), u64::MAX - 0xfff),
            Err(MemError::BadRange { .. })
        ));
        assert!(m.is_empty());
        m.map(0x10000, 0x1000, Some(memfd(0x2000)), 0x1000).unwrap();
    }

    #[test]
    fn a_mapped_file_can_no_longer_shrink() {
        use nix::sys::memfd::MemFdCreateFlag as F;
        let mut m = GuestMemory::default();
        // Sealable but unsealed: the device seals it.
        let f = plain_memfd(0x4000, F::MFD_CLOEXEC | F::MFD_ALLOW_SEALING);
        let client = f.try_clone().unwrap();
        m.map(0x10000, 0x4000, Some(f), 0).unwrap();
        assert!(
            client.set_len(0).is_err(),
            "ftruncate after the map must fail"
        );
        let p = m.translate_writable(0x13000, 0x1000).unwrap();
        // SAFETY: p covers 0x1000 bytes of the live map; the file cannot shrink.
        unsafe { p.write_volatile(7) };
        // A memfd that cannot take seals, and a regular file: refused.
        let f = plain_memfd(0x4000, F::MFD_CLOEXEC);
        assert!(matches!(
            m.map(0x20000, 0x4000, Some(f), 0),
            Err(MemError::Unsealable { .. })
        ));
        let t = std::env::temp_dir().join(format!("sbnet-mem-test-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&t)
            .unwrap();
        std::fs::remove_file(&t).unwrap();
        f.set_len(0x4000).unwrap();
        assert!(matches!(
            m.map(0x20000, 0x4000, Some(f), 0),
            Err(MemError::Unsealable { .. })
        ));
    }

    #[test]
    fn protection_is_kept() {
        let mut m = GuestMemory::default();
        assert!(matches!(
            m.map_prot(0x10000, 0x1000, Some(memfd(0x1000)), 0, Prot::empty()),
            Err(MemError::NoAccess { .. })
        ));
        m.map_prot(0x10000, 0x1000, Some(memfd(0x1000)), 0, Prot::READ)
            .unwrap();
        assert!(m.translate(0x10000, 0x1000).is_some());
        assert!(m.translate_writable(0x10000, 0x1000).is_none());
        m.map_prot(
            0x20000,
            0x1000,
            Some(memfd(0x1000)),
            0,
            Prot::READ | Prot::WRITE,
        )
        .unwrap();
        assert!(m.translate_writable(0x20000, 0x1000).is_some());
    }

    #[test]
    fn an_unmap_may_end_at_2_pow_64() {
        let mut m = GuestMemory::default();
        m.map(0xfff0_0000, 0x1000, Some(memfd(0x1000)), 0).unwrap();
        m.map(0x1_0000_0000, 0x1000, Some(memfd(0x1000)), 0)
            .unwrap();
        m.map(0x1000, 0x1000, Some(memfd(0x1000)), 0).unwrap();
        // QEMU's power-off unmap of a vIOMMU guest.
        assert_eq!(m.unmap(0xfef0_0000, 0xffff_ffff_0110_0000), Ok(2));
        assert_eq!(m.len(), 1);
        assert!(matches!(
            m.unmap(0xfef0_0000, 0xffff_ffff_0110_1000),
            Err(MemError::BadUnmap { .. })
        ));
        assert_eq!(m.unmap(0, u64::MAX), Ok(1));
    }

    #[test]
    fn lookup_among_many_maps() {
        let mut m = GuestMemory::default();
        let f = memfd(0x1000 * 64);
        // Odd i only (pages 2, 6, 10, ...), inserted in reverse order.
        for i in (0..64u64).rev().step_by(2) {
            m.map(i * 0x2000, 0x1000, Some(f.try_clone().unwrap()), i * 0x1000)
                .unwrap();
        }
        for i in 0..128u64 {
            let hit = m.translate(i * 0x1000, 0x1000).is_some();
            assert_eq!(hit, i % 4 == 2, "page {i}");
            assert!(
                m.translate(i * 0x1000 + 0xfff, 2).is_none(),
                "page {i} edge"
            );
        }
    }

    #[test]
    fn map_translate_unmap() {
        let mut m = GuestMemory::default();
        assert_eq!(
            m.map(0x1000, 0x1000, None, 0),
            Err(MemError::NoFd {
                iova: 0x1000,
                size: 0x1000
            })
        );
        m.map(0x10000, 0x4000, Some(memfd(0x4000)), 0).unwrap();
        assert!(matches!(
            m.map(0x12000, 0x4000, Some(memfd(0x4000)), 0),
            Err(MemError::Overlap { .. })
        ));
        assert!(matches!(
            m.map(0x1001, 0x1000, Some(memfd(0x4000)), 0),
            Err(MemError::BadRange { .. })
        ));
        assert!(matches!(
            m.map(u64::MAX - 0xfff, 0x2000, Some(memfd(0x4000)), 0),
            Err(MemError::BadRange { .. })
        ));
        assert!(m.translate(0x10000, 0x4000).is_some());
        assert!(m.translate(0x13fff, 2).is_none());
        assert!(m.translate(0xffff, 1).is_none());
        assert!(m.translate(u64::MAX, 2).is_none());
        assert!(m.translate(0x10000, 0).is_none());
        let g = m.generation();
        assert!(matches!(
            m.unmap(0x11000, 0x1000),
            Err(MemError::BadUnmap { .. })
        ));
        assert_eq!(m.unmap(0x10000, 0x4000), Ok(1));
        assert!(m.generation() > g);
        assert!(m.translate(0x10000, 1).is_none());
    }

    #[test]
    fn shm_bounds() {
        let r = ShmRegion::memfd(8192).unwrap();
        // Sealed before anyone sees it: a client cannot shrink or grow it.
        assert!(r.file().set_len(0).is_err());
        assert!(r.file().set_len(16384).is_err());
        assert!(r.ptr(0, 8192).is_some());
        assert!(r.ptr(1, 8192).is_none());
        assert!(r.ptr(u64::MAX, 2).is_none());
    }
}
