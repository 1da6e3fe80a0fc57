//! Micro-benchmarks of the PMD's packet path (issue 5 part 1): the guest's
//! cost per packet of `alloc` + `tx_burst` (sender) and `rx_burst` + `free`
//! (receiver), and of a whole one-way round including the sender's own
//! `rx_burst` (transmit completions, gifts coming back, reposting).
//!
//! In-process, no sockets, no threads: two real [`Port`]s on the two sides
//! of a real device-model [`Pair`] through [`InProcessBus`]; the host switch
//! runs (untimed) between the timed calls. The host is marked as polling
//! (`USED_F_NO_NOTIFY`), as `host-pair` does, so no call kicks.
//!
//! Quick smoke run for CI (each benchmark once, no measurement):
//! `cargo bench -p sbnet-tests --bench pmd -- --test`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sbnet_abi::shm::SlotGeometry;
use sbnet_device::pair::{Pair, PairConfig, Shared};
use sbnet_device::switch::SwitchConfig;
use sbnet_pmd::{Mode, Pkt, Port, PortConfig};
use sbnet_tests::InProcessBus;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FRAME: usize = 64;

struct Rig {
    shared: Arc<Shared>,
    tx: Port<InProcessBus>,
    rx: Port<InProcessBus>,
    tx_burst: Vec<Option<Pkt>>,
    rx_burst: Vec<Option<Pkt>>,
}

impl Rig {
    fn new(classic: bool, burst: usize) -> Self {
        let shared = Shared::new(
            Pair::new(&PairConfig {
                geometry: SlotGeometry::new(2048, 512).unwrap(),
                max_queue_size: 1024,
                switch: SwitchConfig {
                    burst: 64,
                    tx_wait: Duration::from_secs(3600),
                },
                huge_pages: false,
                queue_pairs: 1,
            })
            .unwrap(),
        )
        .unwrap();
        let cfg = if classic {
            PortConfig::classic()
        } else {
            PortConfig::default()
        };
        let tx = Port::open(InProcessBus::new(shared.clone(), 0), cfg.clone()).unwrap();
        let rx = Port::open(InProcessBus::new(shared.clone(), 1), cfg).unwrap();
        let mut r = Self {
            shared,
            tx,
            rx,
            tx_burst: (0..burst).map(|_| None).collect(),
            rx_burst: (0..64).map(|_| None).collect(),
        };
        // Both sides adopt the last epoch (opening side 1 changed it).
        let want = if classic {
            Mode::Classic
        } else {
            Mode::ZeroCopy
        };
        for _ in 0..1000 {
            r.poll();
            r.tx.poll_epoch().unwrap();
            r.rx.poll_epoch().unwrap();
            r.drain_tx_side();
            r.drain_rx_side();
            if r.tx.mode() == want && r.rx.mode() == want && r.tx.epoch() == r.rx.epoch() {
                break;
            }
        }
        assert_eq!(r.tx.mode(), want, "sender did not reach {want:?}");
        assert_eq!(r.rx.mode(), want, "receiver did not reach {want:?}");
        // The host polls: no notifications from the PMDs.
        r.shared.lock().set_polling(true);
        // Warm the rings and the ledgers up.
        for _ in 0..256 {
            r.round(FRAME);
        }
        // Let everything in flight arrive, so the benchmark starts even.
        for _ in 0..64 {
            r.drain_rx_side();
            r.poll();
            r.drain_tx_side();
            r.poll();
        }
        r
    }

    fn poll(&self) {
        while self.shared.lock().poll() > 0 {}
    }

    fn drain_rx_side(&mut self) -> usize {
        let n = self.rx.rx_burst(&mut self.rx_burst).unwrap();
        for p in self.rx_burst[..n].iter_mut() {
            self.rx.free(p.take().unwrap());
        }
        n
    }

    fn drain_tx_side(&mut self) {
        let n = self.tx.rx_burst(&mut self.rx_burst).unwrap();
        for p in self.rx_burst[..n].iter_mut() {
            self.tx.free(p.take().unwrap());
        }
    }

    /// Sender: allocate a burst of frames (header only written) and send it.
    #[inline]
    fn send(&mut self, frame: usize) -> usize {
        for slot in self.tx_burst.iter_mut() {
            if slot.is_none() {
                let Some(mut p) = self.tx.alloc() else { break };
                p.set_len(frame).unwrap();
                // The application writes its Ethernet header only.
                self.tx.data_mut(&mut p)[..14].copy_from_slice(&[0x5a; 14]);
                *slot = Some(p);
            }
        }
        self.tx.tx_burst(&mut self.tx_burst).unwrap()
    }

    /// One untimed round: send, switch, receive, switch, sender housekeeping, switch.
    fn round(&mut self, frame: usize) {
        self.send(frame);
        self.poll();
        self.drain_rx_side();
        self.poll();
        self.drain_tx_side();
        self.poll();
    }
}

/// Which PMD calls a benchmark times.
#[derive(Clone, Copy)]
enum Part {
    /// `alloc` + `tx_burst` on the sender.
    Tx,
    /// `rx_burst` + `free` on the receiver.
    Rx,
    /// Everything the PMDs do for one burst: sender `alloc` + `tx_burst` +
    /// `rx_burst`, receiver `rx_burst` + `free`.
    Round,
}

fn bench_part(c: &mut Criterion, group: &str, classic: bool, part: Part, bursts: &[usize]) {
    let mut g = c.benchmark_group(group);
    for &burst in bursts {
        g.throughput(Throughput::Elements(burst as u64));
        g.bench_with_input(BenchmarkId::from_parameter(burst), &burst, |b, &burst| {
            let mut r = Rig::new(classic, burst);
            let (mut sent_total, mut recv_total) = (0u64, 0u64);
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let s = Instant::now();
                    let sent = r.send(FRAME);
                    let t_tx = s.elapsed();
                    assert_eq!(sent, burst, "sender could not send a full burst");
                    r.poll();
                    // A slot the receiver gifted back a moment ago may not be
                    // posted yet: its send waits in the host until the
                    // receiver's next burst posts it, so a burst can arrive
                    // in pieces. Every receive burst until everything sent
                    // so far has arrived is timed.
                    sent_total += sent as u64;
                    let mut t_rx = Duration::ZERO;
                    for _ in 0..16 {
                        let s = Instant::now();
                        recv_total += r.drain_rx_side() as u64;
                        t_rx += s.elapsed();
                        r.poll();
                        if recv_total == sent_total {
                            break;
                        }
                    }
                    let s = Instant::now();
                    r.drain_tx_side();
                    let t_house = s.elapsed();
                    r.poll();
                    t += match part {
                        Part::Tx => t_tx,
                        Part::Rx => t_rx,
                        Part::Round => t_tx + t_rx + t_house,
                    };
                }
                black_box(&r.tx_burst);
                assert!(
                    sent_total.abs_diff(recv_total) <= 2 * burst as u64,
                    "receiver fell behind: sent {sent_total}, received {recv_total}"
                );
                t
            });
            let st = r.tx.stats();
            if !classic {
                assert_eq!(st.tx_copied, 0, "zero-copy bench copied");
            }
        });
    }
    g.finish();
}

fn zero_copy(c: &mut Criterion) {
    bench_part(c, "pmd_zero_copy_tx", false, Part::Tx, &[1, 8, 32]);
    bench_part(c, "pmd_zero_copy_rx", false, Part::Rx, &[1, 8, 32]);
    bench_part(c, "pmd_zero_copy_round", false, Part::Round, &[1, 8, 32]);
}

fn classic(c: &mut Criterion) {
    bench_part(c, "pmd_classic_round", true, Part::Round, &[32]);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = zero_copy, classic
}
criterion_main!(benches);
