//! Guest memory as the device sees it: the DMA maps a vfio-user client gave
//! (file descriptors the host maps), and the host's own mapping of the
//! Shared Buffers region.
//!
//! Guest memory is shared with a guest that may write it at any time, so it
//! is only ever reached through raw pointers with volatile or atomic
//! accessors (see [`crate::queue`]) or byte copies; no `&`/`&mut` to it is
//! ever formed.

use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use thiserror::Error;

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
    map: MmapRaw,
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
    /// Maps `[iova, iova + size)` from `file` at `offset`.
    pub fn map(
        &mut self,
        iova: u64,
        size: u64,
        file: Option<File>,
        offset: u64,
    ) -> Result<(), MemError> {
        let Some(file) = file else {
            return Err(MemError::NoFd { iova, size });
        };
        let end = iova.checked_add(size);
        if size == 0
            || !iova.is_multiple_of(PAGE)
            || !size.is_multiple_of(PAGE)
            || !offset.is_multiple_of(PAGE)
            || end.is_none()
        {
            return Err(MemError::BadRange { iova, size, offset });
        }
        let len = usize::try_from(size).map_err(|_| MemError::BadRange { iova, size, offset })?;
        if self.maps.len() >= MAX_MAPS {
            return Err(MemError::TooMany(MAX_MAPS));
        }
        if self
            .maps
            .iter()
            .any(|m| iova < m.iova + m.len && m.iova < iova + size)
        {
            return Err(MemError::Overlap { iova, size });
        }
        let map = MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_raw(&file)
            .map_err(|e| MemError::Mmap(e.to_string()))?;
        let at = self.maps.partition_point(|m| m.iova < iova);
        self.maps.insert(
            at,
            Mapping {
                iova,
                len: size,
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
    pub fn unmap(&mut self, iova: u64, size: u64) -> Result<usize, MemError> {
        let end = iova
            .checked_add(size)
            .ok_or(MemError::BadUnmap { iova, size })?;
        if self.maps.iter().any(|m| {
            m.iova < end && iova < m.iova + m.len && (m.iova < iova || m.iova + m.len > end)
        }) {
            return Err(MemError::BadUnmap { iova, size });
        }
        let before = self.maps.len();
        self.maps
            .retain(|m| !(m.iova >= iova && m.iova + m.len <= end));
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

    /// The host address of `[addr, addr + len)` if the whole range lies in
    /// one map. `len` 0 is never valid.
    #[inline]
    pub fn translate(&self, addr: u64, len: u64) -> Option<*mut u8> {
        if len == 0 {
            return None;
        }
        let end = addr.checked_add(len)?;
        // Few maps (QEMU gives one per RAM block): a linear scan beats a search.
        for m in &self.maps {
            if addr >= m.iova && end <= m.iova + m.len {
                // SAFETY: addr - m.iova < m.len, the size of the live mapping
                // `m.map`, so the result stays inside it.
                return Some(unsafe { m.map.as_mut_ptr().add((addr - m.iova) as usize) });
            }
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

/// The host's mapping of the Shared Buffers region (a memfd, or a file on
/// hugetlbfs), shared with every side's VMM through the region fd.
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
    /// Creates an anonymous memfd-backed region of `len` bytes.
    pub fn memfd(len: u64) -> std::io::Result<Self> {
        let fd = nix::sys::memfd::memfd_create(
            c"sbnet-shared-buffers",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )?;
        Self::from_file(File::from(fd), len)
    }

    /// Creates the region as a new file inside `dir` (e.g. a hugetlbfs
    /// mount); the file is unlinked at once so it disappears with the process.
    pub fn in_dir(dir: &std::path::Path, len: u64) -> std::io::Result<Self> {
        let path = dir.join(format!("sbnet-shared-buffers-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Self::from_file(file, len)
    }

    fn from_file(file: File, len: u64) -> std::io::Result<Self> {
        file.set_len(len)?;
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
        let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
            .unwrap();
        let f = File::from(fd);
        f.set_len(len).unwrap();
        f
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
        assert!(r.ptr(0, 8192).is_some());
        assert!(r.ptr(1, 8192).is_none());
        assert!(r.ptr(u64::MAX, 2).is_none());
    }
}
