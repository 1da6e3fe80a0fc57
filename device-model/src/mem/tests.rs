//! Unit tests of the DMA map table.
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

#[test]
fn page_maps_of_one_file_share_one_mapping_and_one_range() {
    let mut m = GuestMemory::default();
    let f = memfd(0x10000);
    // A 16 KiB ring as a vIOMMU guest maps it: four pages, inserted out of
    // order, at consecutive file offsets.
    for i in [2u64, 0, 3, 1] {
        m.map(
            0xffff_8000 + i * 0x1000,
            0x1000,
            Some(f.try_clone().unwrap()),
            0x4000 + i * 0x1000,
        )
        .unwrap();
    }
    assert_eq!((m.len(), m.files()), (4, 1));
    let p = m.translate_writable(0xffff_8000, 0x4000).unwrap();
    assert_eq!(
        m.translate(0xffff_8800, 0x3000),
        Some(p.wrapping_add(0x800))
    );
    // A read-only page in the middle: readable across, not writable across.
    m.unmap(0xffff_a000, 0x1000).unwrap();
    assert!(m.translate(0xffff_8000, 0x4000).is_none());
    m.map_prot(
        0xffff_a000,
        0x1000,
        Some(f.try_clone().unwrap()),
        0x6000,
        Prot::READ,
    )
    .unwrap();
    assert_eq!(m.files(), 1, "a read-only map reuses the writable mapping");
    assert_eq!(m.translate(0xffff_8000, 0x4000), Some(p));
    assert!(m.translate_writable(0xffff_8000, 0x4000).is_none());
    assert!(m.translate_writable(0xffff_b000, 0x1000).is_some());
    // Everything gone: the file's mapping goes too.
    assert_eq!(m.unmap(0xffff_8000, 0x4000), Ok(4));
    assert_eq!(m.files(), 0);
}

#[test]
fn a_range_across_maps_that_are_not_host_contiguous_comes_in_pieces() {
    let mut m = GuestMemory::default();
    let (f, g) = (memfd(0x4000), memfd(0x4000));
    m.map(0x10000, 0x1000, Some(f.try_clone().unwrap()), 0x2000)
        .unwrap();
    // Same file, not the next offset; then another file.
    m.map(0x11000, 0x1000, Some(f.try_clone().unwrap()), 0x0)
        .unwrap();
    m.map(0x12000, 0x2000, Some(g), 0x0).unwrap();
    assert!(m.translate(0x10800, 0x1000).is_none());
    let mut out = [(std::ptr::null_mut::<u8>(), 0usize); 4];
    assert_eq!(m.pieces(0x10800, 0x3000, true, &mut out), Some(3));
    assert_eq!(
        out[..3].iter().map(|p| p.1).collect::<Vec<_>>(),
        [0x800, 0x1000, 0x1800]
    );
    // Too few pieces to hold it, a hole, an overflow: refused.
    assert_eq!(m.pieces(0x10800, 0x3000, true, &mut out[..2]), None);
    assert_eq!(m.pieces(0x12800, 0x2000, false, &mut out), None);
    assert_eq!(m.pieces(u64::MAX, 2, false, &mut out), None);
    assert_eq!(m.pieces(0x12000, 0x2000, false, &mut out), Some(1));
}

#[test]
fn the_map_limit_is_real_and_maps_come_back_after_unmaps() {
    let mut m = GuestMemory::default();
    let f = memfd(0x1000);
    for i in 0..MAX_MAPS as u64 {
        m.map(i * 0x2000, 0x1000, Some(f.try_clone().unwrap()), 0)
            .unwrap();
    }
    assert_eq!(m.files(), 1);
    let last = MAX_MAPS as u64 * 0x2000;
    assert_eq!(
        m.map(last, 0x1000, Some(f.try_clone().unwrap()), 0),
        Err(MemError::TooMany(MAX_MAPS))
    );
    // Lookups still hit the right map among all of them.
    assert!(m.translate(0x2000 * 40_000, 0x1000).is_some());
    assert!(m.translate(0x2000 * 40_000 + 0x1000, 1).is_none());
    assert_eq!(m.unmap(0, 0x2000), Ok(1));
    m.map(last, 0x1000, Some(f), 0).unwrap();
    // A guest reboot: everything unmapped without a disconnect.
    assert_eq!(m.unmap(0, u64::MAX), Ok(MAX_MAPS));
    assert_eq!((m.len(), m.files()), (0, 0));
}

#[test]
fn a_range_may_not_cross_more_than_max_span_maps() {
    let mut m = GuestMemory::default();
    let n = MAX_SPAN_MAPS as u64 + 1;
    let f = memfd(n * 0x1000);
    for i in 0..n {
        m.map(i * 0x1000, 0x1000, Some(f.try_clone().unwrap()), i * 0x1000)
            .unwrap();
    }
    assert!(m.translate(0, (n - 1) * 0x1000).is_some());
    assert!(m.translate(0, n * 0x1000).is_none());
}

#[test]
fn a_ring_across_scattered_pages_gets_a_stitched_view() {
    use std::os::unix::fs::FileExt;
    let mut m = GuestMemory::default();
    let f = memfd(0x8000);
    let bytes: Vec<u8> = (0..0x8000u32)
        .map(|i| (i / 0x1000 * 17 + i) as u8)
        .collect();
    f.write_all_at(&bytes, 0).unwrap();
    // Four IOVA pages backed by file pages 5, 1, 7, 2; one read-only.
    for (i, fp) in [5u64, 1, 7, 2].into_iter().enumerate() {
        let prot = if i == 3 {
            Prot::READ
        } else {
            Prot::READ | Prot::WRITE
        };
        m.map_prot(
            0xffff_8000 + i as u64 * 0x1000,
            0x1000,
            Some(f.try_clone().unwrap()),
            fp * 0x1000,
            prot,
        )
        .unwrap();
    }
    assert!(m.translate(0xffff_8800, 0x3000).is_none());
    assert!(!m.stitch(0xffff_8800, 0x3000, true), "page 3 is read-only");
    assert!(m.stitch(0xffff_8800, 0x3000, false));
    assert!(m.stitch(0xffff_8800, 0x3000, false), "idempotent");
    assert_eq!(m.views(), 1);
    let p = m.translate(0xffff_8800, 0x3000).unwrap();
    // SAFETY: p covers 0x3000 bytes of the live view.
    let got: Vec<u8> = (0..0x3000)
        .map(|i| unsafe { p.add(i).read_volatile() })
        .collect();
    let want: Vec<u8> = [
        (5u64, 0x800usize, 0x800usize),
        (1, 0, 0x1000),
        (7, 0, 0x1000),
        (2, 0, 0x800),
    ]
    .iter()
    .flat_map(|&(fp, o, n)| bytes[fp as usize * 0x1000 + o..][..n].to_vec())
    .collect();
    assert_eq!(got, want);
    // Writable inside the view's writable part only through a writable
    // view: the first three pages make one.
    assert!(m.stitch(0xffff_8000, 0x3000, true));
    assert!(m.translate_writable(0xffff_8000, 0x3000).is_some());
    // Holes, and too many views, are refused.
    assert!(!m.stitch(0xffff_7000, 0x2000, false));
    assert!(!m.stitch(0xffff_b000, 0x2000, false));
    // An unmap of a page a view shows drops that view; others stay.
    m.map(0x1_0000, 0x1000, Some(f.try_clone().unwrap()), 0x3000)
        .unwrap();
    m.map(0x1_1000, 0x1000, Some(f.try_clone().unwrap()), 0x0)
        .unwrap();
    assert!(m.stitch(0x1_0000, 0x2000, false));
    assert_eq!(m.views(), 3);
    assert_eq!(m.unmap(0xffff_b000, 0x1000), Ok(1));
    assert_eq!(m.views(), 2);
    assert!(m.translate(0xffff_8800, 0x3000).is_none());
    assert!(m.translate(0x1_0800, 0x1000).is_some());
    m.drop_views();
    assert!(m.translate(0x1_0800, 0x1000).is_none());
}

#[test]
fn stitched_views_are_bounded() {
    let mut m = GuestMemory::default();
    let f = memfd(0x2000);
    for i in 0..=MAX_VIEWS as u64 {
        m.map(i * 0x10000, 0x1000, Some(f.try_clone().unwrap()), 0x1000)
            .unwrap();
        m.map(
            i * 0x10000 + 0x1000,
            0x1000,
            Some(f.try_clone().unwrap()),
            0,
        )
        .unwrap();
        assert_eq!(
            m.stitch(i * 0x10000, 0x2000, true),
            i < MAX_VIEWS as u64,
            "view {i}"
        );
    }
    m.clear();
    assert_eq!(m.views(), 0);
}

#[test]
fn the_files_behind_maps_are_bounded_in_address_space() {
    let mut m = GuestMemory::default();
    // Sparse files: nothing is allocated, only address space.
    let half = MAX_MAPPED_BYTES / 2;
    m.map(0x10000, 0x1000, Some(memfd(half)), 0).unwrap();
    m.map(0x20000, 0x1000, Some(memfd(half)), 0).unwrap();
    assert!(matches!(
        m.map(0x30000, 0x1000, Some(memfd(0x1000)), 0),
        Err(MemError::Mmap(_))
    ));
    assert_eq!(m.unmap(0x10000, 0x1000), Ok(1));
    m.map(0x30000, 0x1000, Some(memfd(0x1000)), 0).unwrap();
}
