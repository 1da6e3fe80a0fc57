//! The PMD's used-ring validation (`SplitQueue::poll`/`pop`) against a
//! device that writes anything: random used entries and `used.idx` values
//! between the driver's pushes and publishes. The queue must never panic,
//! never hand back a buffer it does not have in flight, never hand one back
//! twice, never report more bytes than were posted, and each `VqError` must
//! describe what the device really wrote.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sbnet_abi::ring::{UsedElem, DESC_F_WRITE, RING_ENTRIES, RING_IDX};
use sbnet_pmd::bus::DmaRegion;
use sbnet_pmd::{SplitQueue, VqError, VqRingLayout};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashMap;

const IOVA: u64 = 0x2000_0000;

#[derive(Debug, Arbitrary)]
enum Op {
    /// The driver posts a buffer of `len` bytes.
    Push { len: u32 },
    /// The driver publishes what it pushed.
    Publish,
    /// The device writes used entry `pos` (taken modulo the size).
    Entry { pos: u16, id: u32, len: u32 },
    /// The device completes the oldest published descriptor honestly.
    Honest { short: u32 },
    /// The device stores `used.idx`.
    UsedIdx { idx: u16 },
    /// The device moves `used.idx` on by `n`.
    Advance { n: u8 },
    /// The driver polls and pops everything it was told about.
    Reap,
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Queue size is `1 << (size_log2 % 9)`: 1 to 256.
    size_log2: u8,
    ops: Vec<Op>,
}

/// The device's view of the rings: raw reads and writes at the offsets
/// `VqRingLayout` gives, as a device (another process) would do them.
struct Device {
    base: *mut u8,
    layout: VqRingLayout,
    size: u16,
    used_idx: u16,
}

impl Device {
    fn avail_entry(&self, pos: u16) -> u16 {
        let off = self.layout.avail + RING_ENTRIES as usize + 2 * (pos % self.size) as usize;
        // SAFETY: inside the avail ring of the allocation, 2-aligned.
        unsafe { self.base.add(off).cast::<u16>().read_volatile() }
    }
    fn write_entry(&self, pos: u16, e: UsedElem) {
        let off = self.layout.used + RING_ENTRIES as usize + 8 * (pos % self.size) as usize;
        // SAFETY: inside the used ring of the allocation, 4-aligned.
        unsafe { self.base.add(off).cast::<UsedElem>().write_volatile(e) }
    }
    fn read_entry(&self, pos: u16) -> UsedElem {
        let off = self.layout.used + RING_ENTRIES as usize + 8 * (pos % self.size) as usize;
        // SAFETY: as in write_entry.
        unsafe { self.base.add(off).cast::<UsedElem>().read_volatile() }
    }
    fn set_used_idx(&mut self, idx: u16) {
        self.used_idx = idx;
        let off = self.layout.used + RING_IDX as usize;
        // SAFETY: used.idx inside the allocation, 2-aligned; single thread.
        unsafe { self.base.add(off).cast::<u16>().write_volatile(idx) }
    }
}

fuzz_target!(|input: Input| {
    let size = 1u16 << (input.size_log2 % 9);
    let layout = VqRingLayout::new(size);
    let alloc = Layout::from_size_align(layout.total, 4096).expect("layout");
    // SAFETY: a non-zero size (total > 0 for any queue).
    let base = unsafe { alloc_zeroed(alloc) };
    assert!(!base.is_null());
    let mem = DmaRegion {
        ptr: base,
        iova: IOVA,
        len: layout.total,
    };
    // SAFETY: `base` is valid, zeroed, page aligned and `layout.total` long
    // until the dealloc below, after the queue is dropped; nothing else in
    // this process writes it except the simulated device.
    let mut q = unsafe { SplitQueue::new(0, size, mem) };
    let mut dev = Device {
        base,
        layout,
        size,
        used_idx: 0,
    };
    // Driver-side model: descriptor -> (token, posted length).
    let mut in_flight: HashMap<u16, (u32, u32)> = HashMap::new();
    let mut pushed: u16 = 0;
    let mut published: u16 = 0;
    let mut consumed: u16 = 0;
    let mut next_token = 0u32;
    let mut honest_next: u16 = 0;
    let mut broken = false;
    for op in input.ops.iter().take(2048) {
        match *op {
            Op::Push { len } => {
                let ok = q.push(IOVA + 0x10_0000, len, DESC_F_WRITE, next_token);
                assert_eq!(
                    ok,
                    in_flight.len() < size as usize,
                    "push vs free descriptors"
                );
                if ok {
                    let id = dev.avail_entry(pushed);
                    assert!(id < size, "driver posted descriptor {id} of {size}");
                    let old = in_flight.insert(id, (next_token, len));
                    assert!(old.is_none(), "descriptor {id} posted while in flight");
                    pushed = pushed.wrapping_add(1);
                    next_token += 1;
                }
            }
            Op::Publish => {
                q.publish();
                published = pushed;
            }
            Op::Entry { pos, id, len } => dev.write_entry(pos, UsedElem { id, len }),
            Op::Honest { short } => {
                if honest_next != published {
                    let id = dev.avail_entry(honest_next);
                    let posted = in_flight.get(&id).map_or(0, |e| e.1);
                    let len = (u64::from(short) % (u64::from(posted) + 1)) as u32;
                    dev.write_entry(dev.used_idx, UsedElem { id: id.into(), len });
                    dev.set_used_idx(dev.used_idx.wrapping_add(1));
                    honest_next = honest_next.wrapping_add(1);
                }
            }
            Op::UsedIdx { idx } => dev.set_used_idx(idx),
            Op::Advance { n } => dev.set_used_idx(dev.used_idx.wrapping_add(n.into())),
            Op::Reap => {
                assert_eq!(usize::from(q.in_flight()), in_flight.len());
                let n = match q.poll() {
                    Ok(n) => {
                        assert!(!broken, "a broken queue polled fine");
                        let advanced = dev.used_idx.wrapping_sub(consumed);
                        assert_eq!(n, advanced);
                        assert!(usize::from(n) <= in_flight.len());
                        n
                    }
                    Err(VqError::UsedIdxTooFar {
                        advanced,
                        in_flight: f,
                    }) => {
                        if !broken {
                            assert_eq!(advanced, dev.used_idx.wrapping_sub(consumed));
                            assert_eq!(usize::from(f), in_flight.len());
                            assert!(advanced > f);
                        }
                        broken = true;
                        continue;
                    }
                    Err(e) => {
                        assert!(broken, "poll failed with {e:?} on a sound queue");
                        continue;
                    }
                };
                for _ in 0..n {
                    let e = dev.read_entry(consumed);
                    match q.pop() {
                        Ok(Some(u)) => {
                            let id = u16::try_from(e.id).expect("accepted an id out of range");
                            let (token, posted) = in_flight
                                .remove(&id)
                                .expect("accepted a descriptor not in flight");
                            assert_eq!(u.token, token, "wrong buffer handed back");
                            assert_eq!(u.len, e.len);
                            assert!(e.len <= posted, "accepted {} > posted {posted}", e.len);
                            consumed = consumed.wrapping_add(1);
                        }
                        Ok(None) => panic!("pop found nothing after poll said {n}"),
                        Err(err) => {
                            match err {
                                VqError::IdOutOfRange { id, size: s } => {
                                    assert_eq!((id, s), (e.id, size));
                                    assert!(id >= u32::from(size));
                                }
                                VqError::IdNotInFlight { id } => {
                                    assert_eq!(id, e.id);
                                    assert!(!in_flight.contains_key(&(id as u16)));
                                }
                                VqError::LenTooBig { id, len, posted } => {
                                    assert_eq!((id, len), (e.id, e.len));
                                    assert_eq!(
                                        Some(posted),
                                        in_flight.get(&(id as u16)).map(|x| x.1)
                                    );
                                    assert!(len > posted);
                                }
                                // Not the queue's: the port reports it.
                                VqError::UsedIdxTooFar { .. } | VqError::EarlyPostKept { .. } => {
                                    panic!("pop: {err:?}")
                                }
                            }
                            broken = true;
                            break;
                        }
                    }
                }
                if broken {
                    assert!(q.pop().is_err(), "a broken queue popped");
                }
            }
        }
    }
    drop(q);
    // SAFETY: allocated above with `alloc`; the queue that used it is gone.
    unsafe { dealloc(base, alloc) };
});
