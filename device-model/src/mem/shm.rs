//! The host's own mapping of the Shared Buffers region.

use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use std::fs::File;
use std::os::fd::AsRawFd;

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
