//! Micro-benchmarks of the pairing switch (issue 5 part 1): the host's cost
//! per packet on the zero-copy and classic paths at bursts of 1, 8 and 32,
//! and, for reference, `memcpy` of each frame size (what zero-copy avoids).
//! In-process: no sockets, no threads; the stand-in driver of
//! `sbnet_device::testutil` makes descriptors available between timed polls.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sbnet_abi::shm::SlotGeometry;
use sbnet_device::pair::{Pair, PairConfig};
use sbnet_device::switch::SwitchConfig;
use sbnet_device::testutil::Drv;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn pair(slot_size: u32) -> Pair {
    Pair::new(&PairConfig {
        geometry: SlotGeometry::new(slot_size, 256).unwrap(),
        max_queue_size: 256,
        switch: SwitchConfig {
            burst: 64,
            tx_wait: Duration::from_secs(3600),
        },
        huge_pages: false,
        queue_pairs: 1,
    })
    .unwrap()
}

fn zero_copy(c: &mut Criterion) {
    let mut g = c.benchmark_group("switch_zero_copy");
    for burst in [1u32, 8, 32] {
        g.throughput(Throughput::Elements(burst as u64));
        g.bench_with_input(BenchmarkId::from_parameter(burst), &burst, |b, &burst| {
            let mut p = pair(2048);
            let mut d = [Drv::up(&mut p, 0, true), Drv::up(&mut p, 1, true)];
            d[0].ack(&mut p);
            d[1].ack(&mut p);
            // Slots 0, 2, 4...: side 0 owns them; side 1 posts them.
            let slots: Vec<u32> = (0..burst).map(|i| 2 * i).collect();
            for &s in &slots {
                d[1].post_slot(&p, s);
            }
            p.poll();
            let mut from = 0;
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    for &s in &slots {
                        d[from].send_slot_len(&p, s, 64 + 12);
                    }
                    let start = Instant::now();
                    black_box(p.poll());
                    t += start.elapsed();
                    let to = 1 - from;
                    assert_eq!(d[from].used(1).len(), burst as usize);
                    assert_eq!(d[to].used(0).len(), burst as usize);
                    // The sender posts them back: the receiver owns them now.
                    for &s in &slots {
                        d[from].post_slot(&p, s);
                    }
                    from = to;
                }
                t
            });
            assert_eq!(
                p.fns[0].counters.copied_bytes + p.fns[1].counters.copied_bytes,
                0
            );
        });
    }
    g.finish();
}

fn classic(c: &mut Criterion) {
    let mut g = c.benchmark_group("switch_classic");
    for (frame, burst) in [(64usize, 1u32), (64, 8), (64, 32), (1500, 32)] {
        g.throughput(Throughput::Elements(burst as u64));
        let id = BenchmarkId::new(format!("{frame}B"), burst);
        g.bench_with_input(id, &burst, |b, &burst| {
            let mut p = pair(2048);
            let mut d = [Drv::up(&mut p, 0, false), Drv::up(&mut p, 1, false)];
            let payload = vec![0x5au8; frame];
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..burst {
                        d[1].post_classic(2048);
                        d[0].send_classic(&payload);
                    }
                    let start = Instant::now();
                    black_box(p.poll());
                    t += start.elapsed();
                    assert_eq!(d[0].used(1).len(), burst as usize);
                    assert_eq!(d[1].used(0).len(), burst as usize);
                }
                t
            });
        });
    }
    g.finish();
}

fn memcpy(c: &mut Criterion) {
    let mut g = c.benchmark_group("memcpy");
    for size in [64usize, 256, 1500, 4096, 9000, 65536] {
        let src = vec![1u8; size];
        let mut dst = vec![0u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = zero_copy, classic, memcpy
}
criterion_main!(benches);
