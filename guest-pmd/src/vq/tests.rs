//! Tests of the split virtqueue's driver side.

use super::*;
use crate::testing::{DeviceRing, DmaArena};

const SIZE: u16 = 8;

fn queue(arena: &mut DmaArena, size: u16) -> (SplitQueue, DeviceRing) {
    let mem = arena.alloc(RingLayout::new(size).total);
    // SAFETY: the arena keeps `mem` alive and zeroed, page aligned, for
    // the test; nothing else uses it.
    let q = unsafe { SplitQueue::new(0, size, mem) };
    let (d, a, u) = q.iovas();
    let dev = arena.device_ring(size, d, a, u);
    (q, dev)
}

#[test]
fn sets_no_interrupt_and_layout() {
    let mut arena = DmaArena::new();
    let (q, dev) = queue(&mut arena, SIZE);
    assert_eq!(dev.avail_flags(), AVAIL_F_NO_INTERRUPT);
    let l = RingLayout::new(256);
    assert_eq!(l.avail, 4096);
    assert_eq!(l.used % 4096, 0);
    assert!(l.used >= l.avail + 518);
    assert_eq!(q.room(), SIZE);
}

#[test]
fn one_publish_per_burst() {
    let mut arena = DmaArena::new();
    let (mut q, mut dev) = queue(&mut arena, SIZE);
    for i in 0..5 {
        assert!(q.push(0x1000 * i, 100, 0, i as u32));
    }
    assert_eq!(dev.avail_idx(), 0, "nothing visible before publish");
    q.publish();
    q.publish(); // nothing new: no second store
    assert_eq!(q.publishes(), 1);
    assert_eq!(dev.avail_idx(), 5);
    let got: Vec<_> = std::iter::from_fn(|| dev.next_avail()).collect();
    assert_eq!(got.len(), 5);
    for (i, (id, d)) in got.iter().enumerate() {
        assert_eq!(d.addr, 0x1000 * i as u64);
        assert_eq!(d.len, 100);
        dev.push_used(*id as u32, 0);
    }
    dev.publish_used();
    assert_eq!(q.poll(), Ok(5));
    let tokens: Vec<u32> = std::iter::from_fn(|| q.pop().unwrap())
        .map(|u| u.token)
        .collect();
    assert_eq!(tokens, vec![0, 1, 2, 3, 4]);
    assert_eq!(q.room(), SIZE);
}

#[test]
fn indices_wrap_past_65535() {
    let mut arena = DmaArena::new();
    let (mut q, mut dev) = queue(&mut arena, SIZE);
    let mut next_token = 0u32;
    let mut expect = std::collections::VecDeque::new();
    // 70_000 buffers through an 8-entry queue: both 16-bit indices wrap.
    for round in 0..(70_000 / 5) {
        for _ in 0..5 {
            assert!(q.push(u64::from(next_token) * 64, 64, 0, next_token));
            expect.push_back(next_token);
            next_token += 1;
        }
        q.publish();
        while let Some((id, d)) = dev.next_avail() {
            dev.push_used(u32::from(id), d.len / 2);
        }
        dev.publish_used();
        let n = q.poll().unwrap();
        assert_eq!(n, 5, "round {round}");
        while let Some(u) = q.pop().unwrap() {
            assert_eq!(Some(u.token), expect.pop_front());
            assert_eq!(u.len, 32);
        }
    }
    assert_eq!(u32::from(dev.avail_idx()), 70_000 % 65_536);
    assert_eq!(q.room(), SIZE);
    assert!(q.broken().is_none());
}

#[test]
fn out_of_order_completion_frees_the_right_ids() {
    let mut arena = DmaArena::new();
    let (mut q, mut dev) = queue(&mut arena, SIZE);
    for t in 0..SIZE as u32 {
        assert!(q.push(u64::from(t), 10, 0, 100 + t));
    }
    assert!(!q.push(0, 1, 0, 999), "queue full");
    q.publish();
    let posted: Vec<_> = std::iter::from_fn(|| dev.next_avail()).collect();
    for (id, _) in posted.iter().rev() {
        dev.push_used(u32::from(*id), 3);
    }
    dev.publish_used();
    assert_eq!(q.poll(), Ok(SIZE));
    let mut tokens: Vec<u32> = std::iter::from_fn(|| q.pop().unwrap())
        .map(|u| u.token)
        .collect();
    assert_eq!(tokens.first(), Some(&107));
    tokens.sort();
    assert_eq!(tokens, (100..108).collect::<Vec<_>>());
}

#[test]
fn batches_push_and_take_and_stop_where_asked() {
    let mut arena = DmaArena::new();
    let (mut q, mut dev) = queue(&mut arena, SIZE);
    let mut next = 0u32;
    // Asked for more than the room: only `SIZE` go.
    let pushed = q.push_each(SIZE + 3, 0, || {
        next += 1;
        Some((0x1000 * u64::from(next), 64, next))
    });
    assert_eq!(pushed, SIZE);
    assert_eq!(q.room(), 0);
    assert!(!q.push(0, 64, 0, 99));
    q.publish();
    let got: Vec<_> = std::iter::from_fn(|| dev.next_avail()).collect();
    assert_eq!(got.len(), usize::from(SIZE));
    for (id, d) in &got {
        dev.push_used(u32::from(*id), d.len);
    }
    dev.publish_used();
    assert_eq!(q.poll(), Ok(SIZE));
    // `f` returning false stops after that entry.
    let mut seen = Vec::new();
    let taken = q.take_each(SIZE, |u| {
        seen.push(u.token);
        seen.len() < 3
    });
    assert_eq!(taken, Ok(3));
    assert_eq!(seen, vec![1, 2, 3]);
    // `max` bounds the rest; what is left is still there.
    assert_eq!(q.take_each(2, |_| true), Ok(2));
    assert_eq!(q.take_each(SIZE, |_| true), Ok(SIZE - 5));
    assert_eq!(q.completions(), u64::from(SIZE));
    assert_eq!(q.room(), SIZE);
}

#[test]
fn a_bad_entry_mid_batch_keeps_the_good_ones_before_it() {
    let mut arena = DmaArena::new();
    let (mut q, mut dev) = queue(&mut arena, SIZE);
    for t in 0..2 {
        assert!(q.push(0x1000, 64, 0, t));
    }
    q.publish();
    let (id, _) = dev.next_avail().unwrap();
    dev.push_used(u32::from(id), 0);
    dev.push_used(u32::from(SIZE) + 1, 0);
    dev.publish_used();
    assert_eq!(q.poll(), Ok(2));
    let mut seen = Vec::new();
    let r = q.take_each(2, |u| {
        seen.push(u.token);
        true
    });
    assert_eq!(
        r,
        Err(VqError::IdOutOfRange {
            id: u32::from(SIZE) + 1,
            size: SIZE
        })
    );
    assert_eq!(seen, vec![0]);
    assert_eq!(q.completions(), 1);
    assert_eq!(q.room(), SIZE - 1);
    assert!(q.broken().is_some());
}

fn one_in_flight() -> (DmaArena, SplitQueue, DeviceRing, u16) {
    let mut arena = DmaArena::new();
    let (mut q, mut dev) = queue(&mut arena, SIZE);
    assert!(q.push(0x1000, 64, 0, 7));
    q.publish();
    let (id, _) = dev.next_avail().unwrap();
    (arena, q, dev, id)
}

#[test]
fn used_id_out_of_range_is_an_error() {
    let (_a, mut q, mut dev, _) = one_in_flight();
    dev.push_used(u32::from(SIZE) + 3, 0);
    dev.publish_used();
    assert_eq!(q.poll(), Ok(1));
    assert_eq!(q.pop(), Err(VqError::IdOutOfRange { id: 11, size: SIZE }));
    // Sticky: the queue is broken from now on.
    assert!(q.poll().is_err());
    assert!(q.pop().is_err());
}

#[test]
fn used_id_not_in_flight_is_an_error() {
    let (_a, mut q, mut dev, id) = one_in_flight();
    let other = (id + 1) % SIZE;
    dev.push_used(u32::from(other), 0);
    dev.publish_used();
    assert_eq!(q.poll(), Ok(1));
    assert_eq!(
        q.pop(),
        Err(VqError::IdNotInFlight {
            id: u32::from(other)
        })
    );
}

#[test]
fn completing_twice_is_an_error() {
    let (_a, mut q, mut dev, id) = one_in_flight();
    dev.push_used(u32::from(id), 0);
    dev.publish_used();
    assert_eq!(q.poll(), Ok(1));
    assert!(q.pop().unwrap().is_some());
    // The same id again: used.idx now runs ahead of what is in flight.
    dev.push_used(u32::from(id), 0);
    dev.publish_used();
    assert_eq!(
        q.poll(),
        Err(VqError::UsedIdxTooFar {
            advanced: 1,
            in_flight: 0
        })
    );
}

#[test]
fn used_len_too_big_is_an_error() {
    let (_a, mut q, mut dev, id) = one_in_flight();
    dev.push_used(u32::from(id), 65);
    dev.publish_used();
    assert_eq!(q.poll(), Ok(1));
    assert_eq!(
        q.pop(),
        Err(VqError::LenTooBig {
            id: u32::from(id),
            len: 65,
            posted: 64
        })
    );
}

#[test]
fn used_idx_jump_is_an_error() {
    let (_a, mut q, mut dev, _) = one_in_flight();
    dev.set_used_idx(40_000);
    assert!(matches!(
        q.poll(),
        Err(VqError::UsedIdxTooFar {
            advanced: 40_000,
            ..
        })
    ));
}

#[test]
fn notify_follows_used_flags() {
    let (_a, q, mut dev, _) = one_in_flight();
    sbnet_abi::ring::full_barrier();
    assert!(q.wants_notify());
    dev.set_used_flags(USED_F_NO_NOTIFY);
    assert!(!q.wants_notify());
}
