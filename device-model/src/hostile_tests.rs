//! A hostile guest, generated: random descriptor tables, avail entries,
//! avail indices and register writes from side 0, while side 1 behaves.
//! Whatever side 0 writes, the device model must not panic, must keep the
//! host ledger consistent, and side 1's traffic must keep completing.

use crate::pair::{Pair, PairConfig};
use crate::switch::SwitchConfig;
use crate::testutil::{check_ledger, Drv, IOVA, MEM, WINDOW};
use proptest::prelude::*;
use sbnet_abi::ring::Desc;
use sbnet_abi::shm::SlotGeometry;
use std::time::Duration;

#[derive(Debug, Clone)]
enum Act {
    /// Write descriptor `i` of queue `q`.
    Desc { q: u16, i: u16, d: Desc },
    /// Make head `h` available on queue `q`.
    Avail { q: u16, h: u16 },
    /// Set queue `q`'s avail index.
    AvailIdx { q: u16, idx: u16 },
    /// A BAR 0 write of `len` bytes at `off`.
    Reg { off: u64, len: usize, v: u64 },
    /// A config-space write.
    Cfg { off: u64, v: u32 },
    /// Write bytes at the start of the driver's first classic buffer.
    Bytes([u8; 4]),
    /// Run the switch.
    Poll,
}

fn addr() -> impl Strategy<Value = u64> {
    let g = SlotGeometry::new(2048, 16).unwrap();
    prop_oneof![
        (0..16u64).prop_map(move |s| WINDOW + s * g.slot_size() as u64),
        (0..g.region_size() + 64).prop_map(|o| WINDOW - 32 + o),
        (0..MEM).prop_map(|o| IOVA + o),
        any::<u64>(),
        Just(u64::MAX - 3),
        Just(0u64),
    ]
}

/// Actions on a driver with `nq` queues.
fn act_on(nq: u16) -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => (0..nq, 0..70u16, addr(), prop_oneof![0..5000u32, any::<u32>()], 0..8u16, 0..70u16)
            .prop_map(|(q, i, addr, len, flags, next)| Act::Desc { q, i: i % 64, d: Desc { addr, len, flags, next } }),
        4 => (0..nq, 0..80u16).prop_map(|(q, h)| Act::Avail { q, h }),
        1 => (0..nq, any::<u16>()).prop_map(|(q, idx)| Act::AvailIdx { q, idx }),
        1 => (0..0x4100u64, prop_oneof![Just(1usize), Just(2), Just(4), Just(8), Just(3)], any::<u64>())
            .prop_map(|(off, len, v)| Act::Reg { off, len, v }),
        1 => (0..300u64, any::<u32>()).prop_map(|(off, v)| Act::Cfg { off, v }),
        3 => Just(Act::Poll),
    ]
}

fn act() -> impl Strategy<Value = Act> {
    act_on(2)
}

/// A control-command header and data, written into the driver's memory
/// where hostile descriptors may point (`IOVA + 0x10000`, the first
/// classic buffer).
fn ctrl_bytes() -> impl Strategy<Value = Act> {
    (0..8u8, 0..3u8, any::<u16>()).prop_map(|(class, cmd, v)| {
        let b = v.to_le_bytes();
        Act::Bytes([class, cmd, b[0], b[1]])
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_hostile_side_cannot_break_the_device_or_its_peer(acts in proptest::collection::vec(act(), 1..120), sb in any::<bool>()) {
        hostile_run(1, acts, sb)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The same on a link of two queue pairs: the hostile side has both
    /// pairs and the control queue (queue 4), and writes command bytes.
    #[test]
    fn a_hostile_multiqueue_side_cannot_break_the_device_or_its_peer(
        acts in proptest::collection::vec(prop_oneof![6 => act_on(5), 1 => ctrl_bytes()], 1..120),
        sb in any::<bool>(),
    ) {
        hostile_run(2, acts, sb)?;
    }
}

fn hostile_run(queue_pairs: u16, acts: Vec<Act>, sb: bool) -> Result<(), TestCaseError> {
    {
        let mut p = Pair::new(&PairConfig {
            geometry: SlotGeometry::new(2048, 16).unwrap(),
            max_queue_size: 256,
            switch: SwitchConfig {
                burst: 16,
                tx_wait: Duration::ZERO,
            },
            huge_pages: false,
            queue_pairs,
        })
        .unwrap();
        let mut bad = Drv::up_mq(&mut p, 0, sb, queue_pairs);
        let mut good = Drv::up(&mut p, 1, true);
        bad.ack(&mut p);
        good.ack(&mut p);
        for a in acts {
            match a {
                Act::Desc { q, i, d } => bad.set_desc(q, i, d),
                Act::Avail { q, h } => bad.avail(q, h),
                Act::AvailIdx { q, idx } => bad.set_avail_idx(q, idx),
                Act::Reg { off, len, v } => {
                    let _ = p.fns[0].write(0, off, &v.to_le_bytes()[..len.min(8)]);
                    p.handle_events(0);
                }
                Act::Cfg { off, v } => {
                    let _ = p.fns[0].write(sbnet_abi::layout::CONFIG_REGION, off, &v.to_le_bytes());
                    p.handle_events(0);
                }
                Act::Bytes(b) => bad.write(IOVA + 0x1_0000, &b),
                Act::Poll => {
                    p.poll();
                    check_ledger(&p);
                }
            }
        }
        for _ in 0..4 {
            p.poll();
        }
        check_ledger(&p);
        // The well-behaved side still gets its frames out: delivered,
        // dropped or deferred, but completed.
        good.ack(&mut p);
        let _ = good.used(1);
        good.send_classic(&[0x42; 60]);
        for _ in 0..4 {
            p.poll();
        }
        prop_assert_eq!(good.used(1).len(), 1, "the good side's TX did not complete");
        prop_assert!(p.fns[1].is_active());
    }
    Ok(())
}
