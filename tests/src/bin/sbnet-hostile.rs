//! `sbnet-hostile`: a misbehaving vfio-user client for soak runs
//! (`scripts/soak.sh`). It connects to one side of `host-pair`, brings the
//! function up with the raw driver and, in random order, passes classic
//! traffic, sends and posts malformed chains (the hostile-chain table),
//! writes and reads random BAR 0 / BAR 1 / config space locations, breaks
//! its own rings, asks for bad DMA maps and unmaps, and sets bad interrupt
//! fds. It reconnects whenever the connection or the function breaks, and
//! runs for `--duration` seconds or until killed.
//!
//! Usage: `sbnet-hostile --socket PATH [--duration SECS] [--seed N]`.
//! At exit it prints one JSON line of what it did to stdout.

use nix::sys::eventfd::{EfdFlags, EventFd};
use sbnet_abi::common_cfg::bit;
use sbnet_abi::layout as l;
use sbnet_abi::net;
use sbnet_abi::ring::DESC_F_WRITE;
use sbnet_device::testutil::hostile_chains;
use sbnet_pmd::bus::vfio_user::VfioUserBus;
use sbnet_pmd::bus::{Bus, BusError};
use sbnet_tests::raw::{RawDriver, QSIZE};
use sbnet_vfio_user::wire::{Command, DmaMapFlags, IrqSetFlags};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A small xorshift generator (no dependency; reproducible with `--seed`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the client did, printed at exit.
#[derive(Default)]
struct Tally {
    connections: u64,
    bring_ups: u64,
    frames_sent: u64,
    frames_received: u64,
    hostile_tx: u64,
    hostile_rx: u64,
    broken_rings: u64,
    register_writes: u64,
    register_reads: u64,
    bad_dma: u64,
    bad_irqs: u64,
    refused: u64,
    errors: u64,
}

/// One of the operations a round picks from.
type Op = fn(&mut RawDriver<VfioUserBus>, &mut Rng, &mut Tally) -> Result<(), BusError>;

fn main() {
    let mut socket = None;
    let mut duration = 0.0f64;
    let mut seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v) {
            ("--socket", Some(v)) => socket = Some(PathBuf::from(v)),
            ("--duration", Some(v)) => duration = v.parse().unwrap_or_else(|_| usage()),
            ("--seed", Some(v)) => seed = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let Some(socket) = socket else { usage() };
    let mut rng = Rng(seed | 1);
    let mut t = Tally::default();
    let end = (duration > 0.0).then(|| Instant::now() + Duration::from_secs_f64(duration));
    let over = || end.is_some_and(|e| Instant::now() >= e);
    while !over() {
        match VfioUserBus::connect_with_timeout(&socket, Duration::from_secs(2)) {
            Ok(bus) => {
                t.connections += 1;
                if let Err(e) = session(bus, &mut rng, &mut t, &over) {
                    t.errors += 1;
                    eprintln!("sbnet-hostile: session ended: {e}");
                }
            }
            Err(e) => {
                t.errors += 1;
                eprintln!("sbnet-hostile: cannot connect: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    println!(
        "{{\"connections\":{},\"bring_ups\":{},\"frames_sent\":{},\"frames_received\":{},\"hostile_tx\":{},\"hostile_rx\":{},\"broken_rings\":{},\"register_writes\":{},\"register_reads\":{},\"bad_dma\":{},\"bad_irqs\":{},\"refused\":{},\"errors\":{}}}",
        t.connections, t.bring_ups, t.frames_sent, t.frames_received, t.hostile_tx, t.hostile_rx,
        t.broken_rings, t.register_writes, t.register_reads, t.bad_dma, t.bad_irqs, t.refused, t.errors
    );
}

fn usage() -> ! {
    eprintln!("usage: sbnet-hostile --socket PATH [--duration SECS] [--seed N]");
    std::process::exit(2)
}

/// One connection: bring-ups and rounds of operations until the transport
/// breaks, enough rounds passed (then it disconnects on purpose) or time is up.
fn session(
    bus: VfioUserBus,
    rng: &mut Rng,
    t: &mut Tally,
    over: &dyn Fn() -> bool,
) -> Result<(), BusError> {
    let mut d = bring_up(bus, rng, t)?;
    let ops: [Op; 7] = [
        traffic,
        |d, r, t| hostile_chain(d, r, t, 1),
        |d, r, t| hostile_chain(d, r, t, 0),
        register_abuse,
        bad_dma,
        bad_irqs,
        traffic,
    ];
    for _ in 0..rng.below(40) + 5 {
        if over() {
            break;
        }
        let op = ops[rng.below(ops.len() as u64) as usize];
        // Refusals are what a hostile client expects; a broken transport ends the session.
        match op(&mut d, rng, t) {
            Ok(()) => {}
            Err(BusError::Refused { .. }) => t.refused += 1,
            Err(e) => return Err(e),
        }
        if rng.chance(5) {
            // Claim far more entries than the ring holds: the device marks
            // the function DEVICE_NEEDS_RESET; bring it up again.
            d.set_avail_idx(1, rng.next() as u16);
            let _ = d.kick(1);
            t.broken_rings += 1;
            std::thread::sleep(Duration::from_millis(5));
            d = bring_up(d.bus, rng, t)?;
        } else if rng.chance(4) {
            d = bring_up(d.bus, rng, t)?;
        }
    }
    Ok(())
}

fn bring_up(
    bus: VfioUserBus,
    rng: &mut Rng,
    t: &mut Tally,
) -> Result<RawDriver<VfioUserBus>, BusError> {
    let mut f = 0;
    for b in [
        net::VIRTIO_NET_F_SHARED_BUFFERS,
        net::VIRTIO_NET_F_STATUS,
        net::VIRTIO_NET_F_MAC,
    ] {
        if rng.chance(50) {
            f |= bit(b);
        }
    }
    let mut d = RawDriver::up(bus, f)?;
    t.bring_ups += 1;
    if f & bit(net::VIRTIO_NET_F_SHARED_BUFFERS) != 0 && rng.chance(70) {
        d.ack_epoch()?;
    }
    // Classic receive buffers in descriptors 16..48 (0..16 take hostile chains).
    for i in 16..48 {
        d.post_rx(i);
    }
    d.kick(0)?;
    Ok(d)
}

/// Classic frames out and in.
fn traffic(d: &mut RawDriver<VfioUserBus>, rng: &mut Rng, t: &mut Tally) -> Result<(), BusError> {
    let n = rng.below(16) + 1;
    for i in 0..n {
        let len = 60 + rng.below(1400) as usize;
        let frame: Vec<u8> = (0..len).map(|j| (j as u8) ^ (i as u8)).collect();
        d.send(8 + i as u16, &frame);
    }
    d.kick(1)?;
    t.frames_sent += d.wait_used(1, n as usize, Duration::from_millis(60)).len() as u64;
    let rx = d.used(0);
    t.frames_received += rx.len() as u64;
    for (head, _) in rx {
        if (16..48).contains(&head) {
            d.post_rx(head);
        }
    }
    d.kick(0)
}

/// One chain of the hostile-chain table on queue `q`: a case the switch
/// refuses as a TX on the transmit queue, any case (device-writable or not)
/// as a receive post.
fn hostile_chain(
    d: &mut RawDriver<VfioUserBus>,
    rng: &mut Rng,
    t: &mut Tally,
    q: u16,
) -> Result<(), BusError> {
    let cases = hostile_chains(d.buf(q, 60), 0x1000, QSIZE);
    let pick: Vec<_> = cases.iter().filter(|c| q == 0 || c.refused_as_tx).collect();
    let case = pick[rng.below(pick.len() as u64) as usize];
    for (i, desc) in case.descs.iter().enumerate() {
        let mut desc = *desc;
        if q == 0 && rng.chance(50) {
            desc.flags |= DESC_F_WRITE;
        }
        d.set_desc(q, i as u16, desc);
    }
    d.avail(q, 0);
    d.kick(q)?;
    if q == 1 {
        t.hostile_tx += 1;
        d.wait_used(1, 1, Duration::from_millis(30));
    } else {
        t.hostile_rx += 1;
    }
    Ok(())
}

/// Random writes and reads of BAR 0, BAR 1 and config space.
fn register_abuse(
    d: &mut RawDriver<VfioUserBus>,
    rng: &mut Rng,
    t: &mut Tally,
) -> Result<(), BusError> {
    for _ in 0..rng.below(8) + 1 {
        let size = [1usize, 2, 4, 8, 3][rng.below(5) as usize];
        let v = rng.next().to_le_bytes();
        let mut buf = [0u8; 8];
        let write = rng.chance(60);
        // None: config space.
        let (what, bar, len) = match rng.below(3) {
            0 => ("bar0", Some(l::VIRTIO_BAR), l::VIRTIO_BAR_SIZE),
            1 => ("bar1", Some(l::MSIX_BAR), l::MSIX_BAR_SIZE),
            _ => ("config", None, 256),
        };
        let off = rng.below(len + 64);
        let bus = &mut d.bus;
        let res = match (bar, write) {
            (Some(b), true) => bus.bar_write(b, off, &v[..size]),
            (Some(b), false) => bus.bar_read(b, off, &mut buf[..size]),
            (None, true) => bus.config_write(off as u16, &v[..size]),
            (None, false) => bus.config_read(off as u16, &mut buf[..size]),
        };
        if write {
            t.register_writes += 1;
        } else {
            t.register_reads += 1;
        }
        match res {
            Err(BusError::Refused { .. }) => t.refused += 1,
            Err(e) => {
                eprintln!("sbnet-hostile: {what}: {e}");
                return Err(e);
            }
            Ok(()) => {}
        }
    }
    Ok(())
}

/// A `DMA_MAP` body (`struct vfio_user_dma_map`).
fn dma_map_body(flags: u32, offset: u64, address: u64, size: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&32u32.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&address.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b
}

/// Bad `DMA_MAP`s and `DMA_UNMAP`s: past the end of the file, unsealed
/// memory, no protection, no fd, overlapping, wrapping; and unmaps of
/// random ranges (sometimes the driver's own rings).
fn bad_dma(d: &mut RawDriver<VfioUserBus>, rng: &mut Rng, t: &mut Tally) -> Result<(), BusError> {
    let rw = (DmaMapFlags::READ | DmaMapFlags::WRITE).bits();
    let free_iova = 0x7000_0000_0000 + (rng.below(1 << 20) << 12);
    let sealed = sbnet_device::mem::sealed_memfd(c"sbnet-hostile", 4096)
        .map_err(|e| BusError::Map(format!("memfd: {e}")))?;
    let unsealed = nix::sys::memfd::memfd_create(
        c"sbnet-hostile-unsealed",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| BusError::Map(format!("memfd: {e}")))?;
    nix::unistd::ftruncate(&unsealed, 4096)
        .map_err(|e| BusError::Map(format!("ftruncate: {e}")))?;
    let s = sealed.as_raw_fd();
    let (body, fds): (Vec<u8>, Vec<RawFd>) = match rng.below(8) {
        0 => (dma_map_body(rw, 0, free_iova, 8192), vec![s]),
        1 => (dma_map_body(rw, 1 << 20, free_iova, 4096), vec![s]),
        2 => (
            dma_map_body(rw, 0, free_iova, 4096),
            vec![unsealed.as_raw_fd()],
        ),
        3 => (dma_map_body(0, 0, free_iova, 4096), vec![s]),
        4 => (dma_map_body(rw, 0, free_iova, 4096), vec![]),
        5 => (dma_map_body(rw, 0, d.buf(0, 0) & !0xfff, 4096), vec![s]),
        6 => (dma_map_body(rw, 0, u64::MAX - 4095, 8192), vec![s]),
        _ => {
            // DMA_UNMAP (no flags) of a random page, sometimes one the rings use.
            let addr = if rng.chance(30) {
                d.buf(0, 0) & !0xfff
            } else {
                free_iova
            };
            let mut b = Vec::with_capacity(24);
            b.extend_from_slice(&24u32.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&addr.to_le_bytes());
            b.extend_from_slice(&4096u64.to_le_bytes());
            t.bad_dma += 1;
            return d.bus.request(Command::DmaUnmap, &b, &[]).map(drop);
        }
    };
    t.bad_dma += 1;
    d.bus.request(Command::DmaMap, &body, &fds).map(drop)
}

/// Bad `DEVICE_SET_IRQS`: a pipe instead of an eventfd (nobody reads it),
/// an index or vectors out of range, a data type sbnet does not take, an fd
/// count that does not match; sometimes a good eventfd.
fn bad_irqs(d: &mut RawDriver<VfioUserBus>, rng: &mut Rng, t: &mut Tally) -> Result<(), BusError> {
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| BusError::Map(format!("eventfd: {e}")))?;
    let (_r, w) = nix::unistd::pipe().map_err(|e| BusError::Map(format!("pipe: {e}")))?;
    let (e, p) = (efd.as_raw_fd(), w.as_raw_fd());
    let trig = IrqSetFlags::DATA_EVENTFD | IrqSetFlags::ACTION_TRIGGER;
    let (index, flags, start, count, fds): (u32, IrqSetFlags, u32, u32, Vec<RawFd>) =
        match rng.below(7) {
            0 => (l::IRQ_MSIX, trig, 0, 1, vec![p]),
            1 => (99, trig, 0, 1, vec![e]),
            2 => (l::IRQ_MSIX, trig, 1000, 1, vec![e]),
            3 => (
                l::IRQ_MSIX,
                IrqSetFlags::DATA_BOOL | IrqSetFlags::ACTION_TRIGGER,
                0,
                1,
                vec![],
            ),
            4 => (l::IRQ_MSIX, trig, 0, 2, vec![e]),
            5 => (
                l::IRQ_MSIX,
                IrqSetFlags::from_bits_retain(rng.next() as u32),
                0,
                1,
                vec![e],
            ),
            _ => (l::IRQ_MSIX, trig, rng.below(3) as u32, 1, vec![e]),
        };
    let mut b = Vec::with_capacity(20);
    for v in [20u32, flags.bits(), index, start, count] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    t.bad_irqs += 1;
    d.bus.request(Command::DeviceSetIrqs, &b, &fds).map(drop)
}
