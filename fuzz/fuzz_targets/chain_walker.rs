//! Random descriptor tables and avail rings against the device's chain
//! walker (`Queue::pop_head` + `Chain::parse`), over a sealed memfd mapped
//! as guest memory. Whatever the driver wrote, the walker must not panic,
//! every refusal must be the one a straightforward reference walk of the
//! same table gives, and an accepted chain must be the descriptors the
//! driver linked: at most queue-size (and `MAX_SEGS`) of them, each in
//! range, with the queue's direction and a non-zero length.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sbnet_abi::ring::{Desc, DESC_F_INDIRECT, DESC_F_KNOWN, DESC_F_NEXT, DESC_F_WRITE};
use sbnet_device::chain::{Chain, ChainError, MAX_SEGS};
use sbnet_device::mem::{sealed_memfd, GuestMemory};
use sbnet_device::queue::{Queue, QueueError, QueueRegs};
use sbnet_device::testutil::{DriverRing, RingLayout};

const IOVA: u64 = 0x10_0000;
const LEN: u64 = 0x4000;

#[derive(Debug, Arbitrary)]
struct RawDesc {
    index: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Queue size is `1 << (size_log2 % 9)`: 1 to 256.
    size_log2: u8,
    writable: bool,
    descs: Vec<RawDesc>,
    heads: Vec<u16>,
    /// Overrides avail.idx after the heads were made available.
    avail_idx: Option<u16>,
}

/// What is wrong with descriptor `d`, the `nth` of its chain, if anything
/// (virtio 1.2 §2.7.5: known flags only, no indirect table, readable before
/// writable, non-empty, no wrap).
fn problem(d: &Desc, nth: usize, writable: bool) -> Option<ChainError> {
    let write = d.flags & DESC_F_WRITE != 0;
    match () {
        _ if d.flags & !DESC_F_KNOWN != 0 => Some(ChainError::UnknownFlags(d.flags)),
        _ if d.flags & DESC_F_INDIRECT != 0 => Some(ChainError::Indirect),
        _ if write != writable && (write || nth == 0) => Some(ChainError::WrongDirection),
        _ if write != writable => Some(ChainError::ReadAfterWrite),
        _ if d.len == 0 => Some(ChainError::ZeroLength),
        _ if u64::MAX - d.addr < u64::from(d.len) => Some(ChainError::AddressOverflow(d.addr)),
        _ => None,
    }
}

/// The expected outcome of `Chain::parse`, found another way: follow the
/// links over distinct descriptors; a link back to one already in the chain
/// is a `Loop` (checked after the descriptor's own checks, as the walker
/// does), a path past `MAX_SEGS` is `TooLong`.
fn reference(table: &[Desc], head: u16, writable: bool) -> Result<Vec<(u64, u32)>, ChainError> {
    let mut visited = vec![false; table.len()];
    let mut path = Vec::new();
    let mut at = usize::from(head);
    loop {
        let d = &table[at];
        if let Some(e) = problem(d, path.len(), writable) {
            return Err(e);
        }
        if path.len() == MAX_SEGS {
            return Err(ChainError::TooLong);
        }
        visited[at] = true;
        path.push((d.addr, d.len));
        match (d.flags & DESC_F_NEXT != 0, table.get(usize::from(d.next))) {
            (false, _) => return Ok(path),
            (true, None) => return Err(ChainError::NextOutOfRange(d.next)),
            // A link back to a descriptor already in the chain is a loop,
            // refused as soon as it is seen.
            (true, Some(_)) if visited[usize::from(d.next)] => {
                return Err(ChainError::Loop(d.next))
            }
            (true, Some(_)) => at = usize::from(d.next),
        }
    }
}

fuzz_target!(|input: Input| {
    let size = 1u16 << (input.size_log2 % 9);
    let file = sealed_memfd(c"fuzz-ring", LEN).expect("memfd");
    let mut mem = GuestMemory::default();
    mem.map(IOVA, LEN, Some(file), 0).expect("map");
    let base = mem.translate(IOVA, LEN).expect("mapped");
    let layout = RingLayout {
        desc: IOVA,
        avail: IOVA + 0x1000,
        used: IOVA + 0x2000,
        size,
    };
    // SAFETY: `base` maps LEN bytes at IOVA for as long as `mem` lives,
    // which outlives the ring; the three parts lie inside, aligned.
    let mut ring = unsafe { DriverRing::new(base, IOVA, LEN, layout) };
    let mut table = vec![Desc::default(); size as usize];
    for d in input.descs.iter().take(512) {
        let i = d.index % size;
        let desc = Desc {
            addr: d.addr,
            len: d.len,
            flags: d.flags,
            next: d.next,
        };
        ring.set_desc(i, desc);
        table[i as usize] = desc;
    }
    let regs = QueueRegs {
        size,
        desc: layout.desc,
        driver: layout.avail,
        device: layout.used,
        msix_vector: 0,
    };
    // SAFETY: the queue is dropped before `mem`, which is never changed.
    let mut q = unsafe { Queue::enable(regs, 256, &mem) }.expect("valid registers");
    for &h in input.heads.iter().take(512) {
        ring.make_avail(h);
    }
    if let Some(idx) = input.avail_idx {
        ring.set_avail_idx(idx);
    }
    let pending = match q.avail_pending() {
        Ok(n) => n,
        Err(QueueError::InvalidAvailRingIndex(n)) => {
            assert!(n > size, "avail index refused with only {n} pending");
            return;
        }
        Err(e) => panic!("avail_pending: undocumented error {e:?}"),
    };
    assert!(pending <= size);
    let mut seen = vec![false; size as usize];
    for _ in 0..pending {
        let head = match q.pop_head() {
            Ok(h) => h,
            Err(QueueError::InvalidHead(h)) => {
                assert!(h >= size);
                break;
            }
            Err(QueueError::HeadInFlight(h)) => {
                assert!(
                    seen[h as usize],
                    "head {h} refused as in flight but never popped"
                );
                break;
            }
            Err(e) => panic!("pop_head: undocumented error {e:?}"),
        };
        assert!(head < size, "head {head} out of range");
        assert!(!seen[head as usize], "head {head} handed out twice");
        seen[head as usize] = true;
        let got = Chain::parse(&q, head, input.writable);
        let want = reference(&table, head, input.writable);
        match (&got, &want) {
            (Ok(c), Ok(w)) => {
                assert_eq!(c.head, head);
                let segs: Vec<(u64, u32)> = c.segs().iter().map(|s| (s.addr, s.len)).collect();
                assert_eq!(&segs, w, "chain differs from the driver's links");
                assert!(segs.len() <= size as usize && segs.len() <= MAX_SEGS);
                assert!(segs.iter().all(|s| s.1 > 0));
                let total: u64 = segs.iter().map(|s| u64::from(s.1)).sum();
                assert_eq!(c.total, total);
            }
            (Err(g), Err(w)) => assert_eq!(g, w),
            _ => panic!("parse gave {got:?}, the reference walk {want:?}"),
        }
    }
    drop(q);
    drop(mem);
});
