//! Property tests of the DMA map table against a page-level model: random
//! map sets from a few files, unmaps (including ones that split a map, and
//! ones that end at 2^64), then random ranges, inside maps and across their
//! edges, for reads and writes.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

const FILE_PAGES: u64 = 32;
/// Files 0 and 1 are mapped read-write, file 2 read-only.
const FILES: u64 = 3;

/// The byte at `offset` of file `f`: tells every page of every file apart.
fn pattern(f: u64, offset: u64) -> u8 {
    (f * 97 + (offset / PAGE) * 13 + offset % 251) as u8
}

fn files() -> Vec<File> {
    (0..FILES)
        .map(|f| {
            let file = sealed_memfd(c"prop", FILE_PAGES * PAGE).unwrap();
            let bytes: Vec<u8> = (0..FILE_PAGES * PAGE).map(|o| pattern(f, o)).collect();
            file.write_all_at(&bytes, 0).unwrap();
            file
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        page: u64,
        pages: u64,
        file: u64,
        fpage: u64,
    },
    Unmap {
        page: u64,
        pages: u64,
    },
    UnmapToTheEnd {
        page: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..64u64, 1..5u64, 0..FILES, 0..FILE_PAGES).prop_map(|(page, pages, file, fpage)| {
            Op::Map { page, pages, file, fpage: fpage.min(FILE_PAGES - pages) }
        }),
        2 => (0..64u64, 1..8u64).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        1 => (0..70u64).prop_map(|page| Op::UnmapToTheEnd { page }),
    ]
}

/// IOVA page -> (file, file page, writable, map start page).
type Model = BTreeMap<u64, (u64, u64, bool, u64)>;

fn model_map(m: &mut Model, page: u64, pages: u64, file: u64, fpage: u64) -> bool {
    if (page..page + pages).any(|p| m.contains_key(&p)) {
        return false;
    }
    for i in 0..pages {
        m.insert(page + i, (file, fpage + i, file != 2, page));
    }
    true
}

/// Pages `[lo, hi)`: refused when it cuts a map, else removes what it covers.
fn model_unmap(m: &mut Model, lo: u64, hi: u64) -> Option<usize> {
    let mut starts: Vec<u64> = m.range(lo..hi).map(|(_, v)| v.3).collect();
    starts.dedup();
    for &s in &starts {
        let pages: Vec<u64> = m
            .iter()
            .filter(|(_, v)| v.3 == s)
            .map(|(p, _)| *p)
            .collect();
        if pages.iter().any(|p| *p < lo || *p >= hi) {
            return None;
        }
    }
    m.retain(|_, v| !starts.contains(&v.3));
    Some(starts.len())
}

/// The model's answer for `[addr, addr + len)`: None when a page is
/// unmapped (or read-only for `write`), else the host-contiguous pieces as
/// (file, file offset, length).
fn model_pieces(
    m: &Model,
    base: u64,
    addr: u64,
    len: u64,
    write: bool,
) -> Option<Vec<(u64, u64, u64)>> {
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    let mut cur = addr;
    let end = addr + len;
    while cur < end {
        let page = (cur - base) / PAGE;
        let &(f, fp, w, _) = m.get(&page)?;
        if write && !w {
            return None;
        }
        let take = (base + (page + 1) * PAGE).min(end) - cur;
        let off = fp * PAGE + (cur - base) % PAGE;
        match out.last_mut() {
            Some(last) if last.0 == f && last.1 + last.2 == off => last.2 += take,
            _ => out.push((f, off, take)),
        }
        cur += take;
    }
    Some(out)
}

fn read(p: *mut u8, n: usize) -> Vec<u8> {
    (0..n)
        // SAFETY: p..p+n was returned by the table for a live map.
        .map(|i| unsafe { p.add(i).read_volatile() })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lookup_matches_the_model(
        high in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..60),
        queries in proptest::collection::vec((0..(66 * PAGE), 1..(5 * PAGE), any::<bool>()), 1..40),
    ) {
        // Low IOVAs, or the top of the address space (the 2^64 edge).
        let base = if high { 0u64.wrapping_sub(72 * PAGE) } else { 0x1000_0000 };
        let fs = files();
        let mut mem = GuestMemory::default();
        let mut model = Model::new();
        for op in &ops {
            match *op {
                Op::Map { page, pages, file, fpage } => {
                    let prot = if file == 2 { Prot::READ } else { Prot::READ | Prot::WRITE };
                    let got = mem.map_prot(base + page * PAGE, pages * PAGE,
                        Some(fs[file as usize].try_clone().unwrap()), fpage * PAGE, prot);
                    let want = model_map(&mut model, page, pages, file, fpage);
                    prop_assert_eq!(got.is_ok(), want, "{:?}: {:?}", op, got);
                }
                Op::Unmap { page, pages } => {
                    let got = mem.unmap(base + page * PAGE, pages * PAGE).ok();
                    prop_assert_eq!(got, model_unmap(&mut model, page, page + pages), "{:?}", op);
                }
                Op::UnmapToTheEnd { page } => {
                    let iova = base + page * PAGE;
                    let got = mem.unmap(iova, 0u64.wrapping_sub(iova)).ok();
                    prop_assert_eq!(got, model_unmap(&mut model, page, u64::MAX), "{:?}", op);
                }
            }
            prop_assert_eq!(mem.len(), {
                let mut s: Vec<u64> = model.values().map(|v| v.3).collect();
                s.dedup();
                s.len()
            });
        }
        let mut out = [(std::ptr::null_mut::<u8>(), 0usize); 8];
        for &(off, len, write) in &queries {
            let addr = base + off;
            let want = model_pieces(&model, base, addr, len, write);
            let one = if write { mem.translate_writable(addr, len) } else { mem.translate(addr, len) };
            prop_assert_eq!(one.is_some(), want.as_ref().is_some_and(|w| w.len() == 1),
                "translate {:#x}+{:#x} write {}: {:?}", addr, len, write, want);
            let got = mem.pieces(addr, len, write, &mut out);
            prop_assert_eq!(got, want.as_ref().map(Vec::len), "pieces {:#x}+{:#x}", addr, len);
            if let Some(want) = want {
                for (&(p, n), &(f, foff, flen)) in out.iter().zip(&want) {
                    prop_assert_eq!(n as u64, flen);
                    let expect: Vec<u8> = (foff..foff + flen).map(|o| pattern(f, o)).collect();
                    prop_assert_eq!(read(p, n), expect);
                }
                if let Some(p) = one {
                    prop_assert_eq!(p, out[0].0);
                }
            }
        }
        // Ranges that wrap, or are empty, are never valid.
        prop_assert!(mem.translate(u64::MAX - 10, 20).is_none());
        prop_assert!(mem.translate(base, 0).is_none());
        // Everything can go, in one unmap that ends at 2^64.
        let n = mem.len();
        prop_assert_eq!(mem.unmap(0, u64::MAX), Ok(n));
        prop_assert_eq!(mem.files(), 0);
    }
}
