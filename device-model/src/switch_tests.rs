//! Scenario tests of the switch, driven through the registers by the
//! stand-in driver of [`crate::testutil`].

use crate::pair::{Pair, PairConfig};
use crate::switch::{Mode, SwitchConfig, NOBODY};
use crate::testutil::{slot_frame, Drv, IOVA, WINDOW};
use sbnet_abi::common_cfg as cc;
use sbnet_abi::net::NET_HDR_LEN;
use sbnet_abi::ring::{Desc, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use sbnet_abi::shm::SlotGeometry;
use std::time::Duration;

pub(crate) fn pair(tx_wait: Duration) -> Pair {
    Pair::new(&PairConfig {
        geometry: SlotGeometry::new(2048, 16).unwrap(),
        max_queue_size: 256,
        switch: SwitchConfig { burst: 64, tx_wait },
        huge_pages: false,
        queue_pairs: 1,
    })
    .unwrap()
}

fn frame(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize * 31 + i * 7) as u8)
        .collect()
}

#[test]
fn classic_both_ways_byte_exact_across_index_wrap() {
    let mut p = pair(Duration::from_secs(3600));
    let mut d = [Drv::up(&mut p, 0, false), Drv::up(&mut p, 1, false)];
    assert_eq!(p.switch.mode(), Mode::Copy);
    for (k, drv) in d.iter_mut().enumerate() {
        for _ in 0..32 {
            drv.post_classic(2048);
        }
        assert!(p.fns[k].is_active());
    }
    // 70,000 rounds: the 16-bit ring indices wrap.
    for i in 0..70_000u32 {
        let from = (i % 2) as usize;
        let to = 1 - from;
        let f = frame(i, 1 + (i as usize * 13) % 1500);
        d[from].send_classic(&f);
        assert!(p.poll() > 0);
        let tx = d[from].used(1);
        assert_eq!(tx.len(), 1, "round {i}");
        let rx = d[to].used(0);
        assert_eq!(rx.len(), 1, "round {i}");
        let (h, len) = rx[0];
        assert_eq!(len as usize, NET_HDR_LEN + f.len());
        let got = d[to].rx_bytes(h, len as usize);
        assert_eq!(&got[NET_HDR_LEN..], &f[..], "round {i}");
        assert_eq!(got[10], 1, "num_buffers");
        d[to].post_classic(2048);
    }
    let c0 = p.fns[0].counters;
    assert_eq!(c0.tx_packets, 35_000);
    assert_eq!(c0.tx_copied, 35_000);
    assert_eq!(c0.rx_packets, 35_000);
    assert_eq!(c0.refusals(), 0);
}

fn zc_pair(tx_wait: Duration) -> (Pair, [Drv; 2]) {
    let mut p = pair(tx_wait);
    let d = [Drv::up(&mut p, 0, true), Drv::up(&mut p, 1, true)];
    // The second side's DRIVER_OK changed the epoch: both resync.
    d[0].ack(&mut p);
    d[1].ack(&mut p);
    assert_eq!(p.switch.mode(), Mode::ZeroCopy);
    assert!(!p.switch.resyncing(0) && !p.switch.resyncing(1));
    (p, d)
}

#[test]
fn zero_copy_send_moves_ownership_without_copies() {
    let (mut p, mut d) = zc_pair(Duration::from_secs(3600));
    // Rule 2: side k owns s % 2 == k. Each side posts what the peer owns.
    for s in 0..16 {
        d[1 - (s % 2) as usize].post_slot(&p, s);
    }
    p.poll();
    let f = frame(7, 1000);
    d[0].send_slot(&p, 4, &f, false);
    p.poll();
    assert_eq!(d[0].used(1).len(), 1);
    let rx = d[1].used(0);
    assert_eq!(rx.len(), 1);
    assert_eq!(rx[0].1 as usize, NET_HDR_LEN + 1000);
    assert_eq!(slot_frame(&p, 4, 1000), f);
    assert_eq!(p.switch.owners()[4], 1);
    // Side 1 sends it back (forwarding in place), after side 0 re-posted it.
    d[0].post_slot(&p, 4);
    d[1].send_slot(&p, 4, &f, false);
    p.poll();
    assert_eq!(d[0].used(0).len(), 1);
    assert_eq!(p.switch.owners()[4], 0);
    let (c0, c1) = (p.fns[0].counters, p.fns[1].counters);
    assert_eq!((c0.tx_zero_copy, c1.tx_zero_copy), (1, 1));
    assert_eq!(c0.copied_bytes + c1.copied_bytes, 0);
    assert_eq!(c0.refusals() + c1.refusals(), 0);
}

#[test]
fn gift_moves_a_slot_and_delivers_nothing() {
    let (mut p, mut d) = zc_pair(Duration::from_secs(3600));
    d[0].post_slot(&p, 1);
    d[1].send_slot(&p, 1, &[], true);
    p.poll();
    let rx = d[0].used(0);
    assert_eq!(rx, vec![(rx[0].0, NET_HDR_LEN as u32)]);
    assert_eq!(p.switch.owners()[1], 0);
    assert_eq!(p.fns[1].counters.gifts_sent, 1);
    assert_eq!(p.fns[0].counters.gifts_received, 1);
    assert_eq!(p.fns[0].counters.rx_packets, 0);
}

#[test]
fn tx_waits_for_the_post_then_is_deferred_not_dropped() {
    let (mut p, mut d) = zc_pair(Duration::from_secs(3600));
    d[0].send_slot(&p, 2, &frame(1, 64), false);
    d[0].send_slot(&p, 6, &frame(2, 64), false);
    p.poll();
    assert!(d[0].used(1).is_empty(), "TX waits in order");
    assert_eq!(p.fns[0].counters.tx_waits, 1);
    d[1].post_slot(&p, 6);
    d[1].post_slot(&p, 2);
    p.poll();
    assert_eq!(d[0].used(1).len(), 2);
    assert_eq!(d[1].used(0).len(), 2);

    // With no wait allowed, the TX completes at once and delivery happens on the post.
    let (mut p, mut d) = zc_pair(Duration::ZERO);
    d[0].send_slot(&p, 8, &frame(3, 100), false);
    p.poll();
    p.poll();
    assert_eq!(d[0].used(1).len(), 1);
    assert_eq!(p.fns[0].counters.tx_deferred, 1);
    assert_eq!(p.switch.owners()[8], 1);
    assert_eq!(p.switch.deferred(1).collect::<Vec<_>>(), vec![8]);
    d[1].post_slot(&p, 8);
    p.poll();
    assert_eq!(d[1].used(0)[0].1 as usize, NET_HDR_LEN + 100);
    assert_eq!(slot_frame(&p, 8, 100), frame(3, 100));
    assert_eq!(p.switch.deferred(1).count(), 0);
}

/// `SB_F_EARLY_POST`: a side posts the slot it sends in the same publish.
/// Side 1 is the sender here because a round harvests side 1's posts
/// before it forwards side 1's TX, so the switch sees the post of a slot
/// its poster still owns. The slot comes back into that post; so does one
/// whose TX had to wait for the peer's post, and one whose delivery was
/// deferred.
#[test]
fn an_early_post_takes_the_slot_back_when_the_peer_returns_it() {
    for tx_wait in [Duration::from_secs(3600), Duration::ZERO] {
        let (mut p, mut d) = zc_pair(tx_wait);
        // Slot 1 (side 1's) is posted by side 0 first; slot 3 is not.
        d[0].post_slot(&p, 1);
        p.poll();
        for s in [1, 3] {
            d[1].send_slot(&p, s, &frame(s, 80), false);
            d[1].post_slot(&p, s);
        }
        p.poll();
        p.poll();
        crate::testutil::check_ledger(&p);
        assert!(d[1].used(0).is_empty(), "both early posts stay posted");
        assert_eq!(p.fns[1].counters.refusals(), 0);
        assert_eq!(p.switch.owners()[1], 0, "slot 1 handed over");
        let done = d[1].used(1);
        if tx_wait.is_zero() {
            // Slot 3's TX completed and its delivery waits for side 0's post.
            assert_eq!(done.len(), 2);
            assert_eq!(p.switch.deferred(0).collect::<Vec<_>>(), vec![3]);
        } else {
            assert_eq!(done.len(), 1, "slot 3 waits for side 0's post");
            assert_eq!(p.fns[1].counters.tx_waits, 1);
        }
        d[0].post_slot(&p, 3);
        p.poll();
        assert_eq!(d[0].used(0).len(), 2);
        assert_eq!(d[1].used(1).len(), if tx_wait.is_zero() { 0 } else { 1 });
        assert_eq!(p.switch.owners()[3], 0);
        crate::testutil::check_ledger(&p);
        // Side 0 sends both back: each lands in side 1's early post.
        for s in [3, 1] {
            d[0].send_slot(&p, s, &frame(s + 10, 100 + s as usize), false);
        }
        p.poll();
        let back = d[1].used(0);
        assert_eq!(back.len(), 2);
        for (_, len) in &back {
            assert!(*len as usize >= NET_HDR_LEN + 100);
        }
        assert_eq!(slot_frame(&p, 1, 101), frame(11, 101));
        assert_eq!(slot_frame(&p, 3, 103), frame(13, 103));
        assert_eq!((p.switch.owners()[1], p.switch.owners()[3]), (1, 1));
        assert_eq!(
            p.fns[0].counters.refusals() + p.fns[1].counters.refusals(),
            0
        );
        assert_eq!(p.switch.posted(1).count(), 0);
        crate::testutil::check_ledger(&p);
    }
}

/// A side that posts a slot it owns and never sends it holds its own
/// descriptor, nothing more: the peer still cannot send that slot, and an
/// epoch change hands the post back with length 0.
#[test]
fn an_early_post_of_a_slot_never_sent_moves_nothing() {
    let (mut p, mut d) = zc_pair(Duration::ZERO);
    d[0].post_slot(&p, 2);
    d[1].send_slot(&p, 2, &frame(1, 64), false);
    p.poll();
    p.poll();
    assert_eq!(p.fns[1].counters.tx_not_owner, 1);
    assert_eq!(p.switch.owners()[2], 0);
    assert!(d[0].used(0).is_empty());
    crate::testutil::check_ledger(&p);
    d[1].status(&mut p, 0);
    assert_eq!(d[0].used(0), vec![(0, 0)]);
}

/// Found by the `switch_ledger` fuzz target: a side that sends a slot
/// whose delivery to it is still deferred (it never posted the slot, so it
/// never took it) must be refused, or the slot ends up owned by the peer
/// while still deferred to the sender.
#[test]
fn a_slot_deferred_to_the_sender_cannot_be_sent_before_it_is_taken() {
    let (mut p, mut d) = zc_pair(Duration::ZERO);
    // Without a wait, the second poll defers the gift to side 1.
    d[0].send_slot(&p, 0, &[], true);
    p.poll();
    p.poll();
    assert_eq!(p.switch.deferred(1).collect::<Vec<_>>(), vec![0]);
    d[1].send_slot(&p, 0, &frame(4, 64), false);
    p.poll();
    p.poll();
    assert_eq!(p.fns[1].counters.tx_not_owner, 1);
    let tx = d[1].used(1);
    assert_eq!(
        (tx.len(), tx[0].1),
        (1, 0),
        "the refused TX completes with length 0"
    );
    crate::testutil::check_ledger(&p);
    assert_eq!(p.switch.owners()[0], 1);
    // Taking the delivery (posting the slot) makes it the side's to send.
    d[1].post_slot(&p, 0);
    p.poll();
    assert_eq!(d[1].used(0).len(), 1);
    d[0].post_slot(&p, 0);
    d[1].send_slot(&p, 0, &frame(5, 64), false);
    p.poll();
    assert_eq!(p.fns[1].counters.tx_not_owner, 1);
    assert_eq!(p.switch.owners()[0], 0);
    crate::testutil::check_ledger(&p);
}

#[test]
fn refusals_are_counted_and_the_queue_goes_on() {
    let (mut p, mut d) = zc_pair(Duration::ZERO);
    let g = p.fns[0].net_geometry();
    let slot = |s: u32| WINDOW + g.slot_offset(s);
    let a = d[0].buf_iova(1, 40);
    type Case = (
        &'static str,
        Vec<(u16, Desc)>,
        fn(&crate::counters::SideCounters) -> u64,
    );
    let cases: Vec<Case> = vec![
        (
            "not owner",
            vec![(
                0,
                Desc {
                    addr: slot(1),
                    len: 100,
                    flags: 0,
                    next: 0,
                },
            )],
            |c| c.tx_not_owner,
        ),
        (
            "unaligned slot",
            vec![(
                0,
                Desc {
                    addr: slot(2) + 8,
                    len: 100,
                    flags: 0,
                    next: 0,
                },
            )],
            |c| c.bad_slot_ref,
        ),
        (
            "crosses slot",
            vec![(
                0,
                Desc {
                    addr: slot(2),
                    len: 4000,
                    flags: 0,
                    next: 0,
                },
            )],
            |c| c.bad_slot_ref,
        ),
        (
            "shorter than header",
            vec![(
                0,
                Desc {
                    addr: slot(2),
                    len: 4,
                    flags: 0,
                    next: 0,
                },
            )],
            |c| c.bad_slot_ref,
        ),
        (
            "straddles window start",
            vec![(
                0,
                Desc {
                    addr: WINDOW - 8,
                    len: 100,
                    flags: 0,
                    next: 0,
                },
            )],
            |c| c.bad_slot_ref,
        ),
        (
            "mixed chain",
            vec![
                (
                    0,
                    Desc {
                        addr: a,
                        len: 12,
                        flags: DESC_F_NEXT,
                        next: 1,
                    },
                ),
                (
                    1,
                    Desc {
                        addr: slot(2),
                        len: 100,
                        flags: 0,
                        next: 0,
                    },
                ),
            ],
            |c| c.bad_slot_ref,
        ),
        (
            "loop",
            vec![(
                0,
                Desc {
                    addr: a,
                    len: 12,
                    flags: DESC_F_NEXT,
                    next: 0,
                },
            )],
            |c| c.bad_chain,
        ),
        (
            "next out of range",
            vec![(
                0,
                Desc {
                    addr: a,
                    len: 12,
                    flags: DESC_F_NEXT,
                    next: 999,
                },
            )],
            |c| c.bad_chain,
        ),
        (
            "zero length",
            vec![(
                0,
                Desc {
                    addr: a,
                    len: 0,
                    flags: 0,
                    next: 0,
                },
            )],
            |c| c.bad_chain,
        ),
        (
            "indirect",
            vec![(
                0,
                Desc {
                    addr: a,
                    len: 16,
                    flags: DESC_F_INDIRECT,
                    next: 0,
                },
            )],
            |c| c.bad_chain,
        ),
        (
            "writable in TX",
            vec![(
                0,
                Desc {
                    addr: a,
                    len: 16,
                    flags: DESC_F_WRITE,
                    next: 0,
                },
            )],
            |c| c.bad_chain,
        ),
        (
            "unmapped",
            vec![(
                0,
                Desc {
                    addr: 0x10,
                    len: 64,
                    flags: 0,
                    next: 0,
                },
            )],
            |c| c.bad_chain,
        ),
        (
            "length overflow",
            vec![(
                0,
                Desc {
                    addr: u64::MAX - 8,
                    len: 64,
                    flags: 0,
                    next: 0,
                },
            )],
            |c| c.bad_chain,
        ),
    ];
    for (name, descs, counter) in cases {
        let before = counter(&p.fns[0].counters);
        d[0].send_raw(&descs, descs[0].0);
        p.poll();
        assert_eq!(d[0].used(1).len(), 1, "{name}: completed");
        assert_eq!(counter(&p.fns[0].counters), before + 1, "{name}: counted");
        assert!(p.fns[0].is_active(), "{name}: the queue goes on");
    }
    // RX posts: a slot the poster owns is taken and stays posted (an
    // early post, abi.md §6); a duplicate is refused.
    d[0].post_slot(&p, 0);
    p.poll();
    assert!(d[0].used(0).is_empty(), "an early post stays posted");
    assert_eq!(p.fns[0].counters.rx_post_not_peer_owned, 0);
    d[0].post_slot(&p, 0);
    p.poll();
    assert_eq!(d[0].used(0).len(), 1);
    assert_eq!(p.fns[0].counters.rx_post_duplicate, 1);
    d[0].post_slot(&p, 3);
    d[0].post_slot(&p, 3);
    p.poll();
    assert_eq!(d[0].used(0).len(), 1);
    assert_eq!(p.fns[0].counters.rx_post_duplicate, 2);
    // The ledger never moved and the other side still works.
    assert_eq!(p.switch.owners().iter().filter(|o| **o == 0).count(), 8);
    d[0].post_slot(&p, 5);
    d[1].send_slot(&p, 5, &frame(9, 60), false);
    p.poll();
    assert_eq!(d[1].used(1).len(), 1);
    assert_eq!(p.fns[1].counters.refusals(), 0);
}

#[test]
fn avail_index_jump_needs_reset_and_the_peer_keeps_running() {
    let mut p = pair(Duration::ZERO);
    let mut d = [Drv::up(&mut p, 0, false), Drv::up(&mut p, 1, false)];
    d[1].post_classic(2048);
    let e = p.epoch();
    d[0].set_avail_idx(1, 1000);
    p.poll();
    assert_ne!(p.fns[0].status() & cc::STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(p.epoch(), e + 1, "the peer is told at once");
    assert_eq!(p.fns[0].counters.needs_reset, 1);
    assert!(!p.fns[0].is_active());
    // Side 1 is alone now: its TX is dropped (no peer), never stuck.
    d[1].send_classic(&frame(1, 60));
    p.poll();
    assert_eq!(d[1].used(1).len(), 1);
    assert_eq!(p.fns[1].counters.tx_no_peer, 1);
}

#[test]
fn bad_queue_setup_needs_reset() {
    let mut p = pair(Duration::ZERO);
    let _d0 = Drv::up(&mut p, 0, false);
    let mut d = Drv::up(&mut p, 1, false);
    // Reset side 1, then enable a queue whose ring is not mapped.
    d.status(&mut p, 0);
    d.status(&mut p, cc::STATUS_ACKNOWLEDGE);
    use sbnet_abi::common_cfg::off;
    d.common_w(&mut p, off::QUEUE_SELECT, 2, 0);
    d.common_w(&mut p, off::QUEUE_SIZE, 2, 64);
    d.common_w(&mut p, off::QUEUE_DESC, 8, 0x10);
    d.common_w(&mut p, off::QUEUE_ENABLE, 2, 1);
    assert_ne!(p.fns[1].status() & cc::STATUS_DEVICE_NEEDS_RESET, 0);
    d.status(&mut p, 0);
    d.common_w(&mut p, off::QUEUE_SIZE, 2, 100);
    d.common_w(&mut p, off::QUEUE_DESC, 8, IOVA);
    d.common_w(&mut p, off::QUEUE_ENABLE, 2, 1);
    assert_ne!(
        p.fns[1].status() & cc::STATUS_DEVICE_NEEDS_RESET,
        0,
        "size 100 is not a power of two"
    );
}

#[test]
fn mixed_pair_copies_and_the_slot_stays_with_its_sender() {
    let mut p = pair(Duration::from_secs(3600));
    let mut d = [Drv::up(&mut p, 0, true), Drv::up(&mut p, 1, false)];
    d[0].ack(&mut p);
    assert_eq!(p.switch.mode(), Mode::Copy);
    assert!(
        p.switch.owners().iter().all(|o| *o == 0),
        "the shared-buffers side owns every slot"
    );
    d[1].post_classic(2048);
    d[0].post_classic(2048);
    p.poll();
    let f = frame(5, 1200);
    d[0].send_slot(&p, 3, &f, false);
    p.poll();
    assert_eq!(d[0].used(1).len(), 1);
    let (h, len) = d[1].used(0)[0];
    assert_eq!(&d[1].rx_bytes(h, len as usize)[NET_HDR_LEN..], &f[..]);
    assert_eq!(p.switch.owners()[3], 0);
    let g = frame(6, 300);
    d[1].send_classic(&g);
    p.poll();
    let (h, len) = d[0].used(0)[0];
    assert_eq!(&d[0].rx_bytes(h, len as usize)[NET_HDR_LEN..], &g[..]);
    assert_eq!(p.fns[0].counters.tx_copied, 1);
    assert_eq!(p.fns[1].counters.tx_copied, 1);
    // A gift makes no sense towards a peer without shared buffers.
    d[0].send_slot(&p, 5, &[], true);
    p.poll();
    assert_eq!(p.fns[0].counters.bad_gift, 1);
}

#[test]
fn epoch_change_flushes_the_survivor_and_restarts_the_split() {
    let (mut p, mut d) = zc_pair(Duration::from_secs(3600));
    let e0 = p.epoch();
    for s in (1..16).step_by(2) {
        d[0].post_slot(&p, s);
    }
    d[0].post_classic(2048);
    p.poll();
    // Side 0 gives slot 0 away, then side 1 resets.
    d[1].post_slot(&p, 0);
    d[0].send_slot(&p, 0, &frame(1, 64), false);
    p.poll();
    assert_eq!(p.switch.owners()[0], 1);
    d[1].status(&mut p, 0);
    assert_eq!(p.epoch(), e0 + 1);
    assert_eq!(p.switch.mode(), Mode::Copy);
    assert!(p.switch.resyncing(0));
    // Everything side 0 had posted comes back with length 0.
    let flushed = d[0].used(0);
    assert_eq!(flushed.len(), 9);
    assert!(flushed.iter().all(|(_, l)| *l == 0));
    // Until it acknowledges, what it posts or sends comes back with 0 too.
    d[0].post_classic(2048);
    p.poll();
    let back = d[0].used(0);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].1, 0);
    d[0].ack(&mut p);
    assert!(!p.switch.resyncing(0));
    assert!(
        p.switch.owners().iter().all(|o| *o == 0),
        "alone with shared buffers: owns all"
    );
    // Side 1 comes back: a new epoch, both resync, rule 2 again.
    let mut d1 = Drv::up(&mut p, 1, true);
    assert_eq!(p.epoch(), e0 + 2);
    d[0].ack(&mut p);
    d1.ack(&mut p);
    assert_eq!(p.switch.mode(), Mode::ZeroCopy);
    for (s, o) in p.switch.owners().iter().enumerate() {
        assert_eq!(*o as usize, s % 2);
    }
    assert!(!p.switch.owners().contains(&NOBODY));
    let _ = d1.used(0);
}

#[test]
fn interrupts_only_when_asked() {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use sbnet_vfio_user::wire::IrqSetFlags;
    use std::os::fd::{AsFd, OwnedFd};
    let mut p = pair(Duration::ZERO);
    let mut d = [Drv::up(&mut p, 0, false), Drv::up(&mut p, 1, false)];
    let efds: Vec<EventFd> = (0..3)
        .map(|_| EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap())
        .collect();
    let fds: Vec<OwnedFd> = efds
        .iter()
        .map(|e| e.as_fd().try_clone_to_owned().unwrap())
        .collect();
    assert!(crate::backend::set_irqs(
        &mut p.fns[1],
        sbnet_abi::layout::IRQ_MSIX,
        IrqSetFlags::DATA_EVENTFD | IrqSetFlags::ACTION_TRIGGER,
        0,
        3,
        fds
    ));
    d[1].post_classic(2048);
    d[0].send_classic(&frame(1, 100));
    p.poll();
    // Queue 0 (RX) uses vector 1 in the stand-in driver.
    assert_eq!(efds[1].read().unwrap(), 1);
    d[1].set_avail_flags(0, sbnet_abi::ring::AVAIL_F_NO_INTERRUPT);
    d[1].post_classic(2048);
    d[0].send_classic(&frame(2, 100));
    p.poll();
    assert!(
        efds[1].read().is_err(),
        "no interrupt when the driver polls"
    );
    let _ = d[1].used(0);
}

#[test]
fn queue_size_reads_the_maximum_after_reset() {
    use sbnet_abi::common_cfg::off;
    let mut p = pair(Duration::ZERO);
    let mut d = Drv::up(&mut p, 0, false);
    d.status(&mut p, 0);
    for q in 0..2u16 {
        d.common_w(&mut p, off::QUEUE_SELECT, 2, q as u64);
        let mut b = [0u8; 2];
        p.fns[0].read(0, off::QUEUE_SIZE as u64, &mut b).unwrap();
        assert_eq!(u16::from_le_bytes(b), 256, "queue {q}");
        p.fns[0]
            .read(0, off::QUEUE_MSIX_VECTOR as u64, &mut b)
            .unwrap();
        assert_eq!(u16::from_le_bytes(b), cc::NO_VECTOR);
    }
}

#[test]
fn msix_enable_without_fds_clears_vectors() {
    use sbnet_vfio_user::wire::IrqSetFlags;
    let mut p = pair(Duration::ZERO);
    let f = IrqSetFlags::DATA_EVENTFD | IrqSetFlags::ACTION_TRIGGER;
    assert!(crate::backend::set_irqs(
        &mut p.fns[0],
        sbnet_abi::layout::IRQ_MSIX,
        f,
        0,
        1,
        vec![]
    ));
    assert!(
        !crate::backend::set_irqs(&mut p.fns[0], sbnet_abi::layout::IRQ_MSIX, f, 2, 5, vec![]),
        "out of range"
    );
}
