//! Two random drivers (`sbnet_device::testutil::Drv`) against a real `Pair`:
//! slot posts and sends, gifts, classic buffers, malformed chains, raw ring
//! writes, random register and config writes, resets and re-initialisations
//! (epoch changes), with `Pair::poll` in between. After every step the
//! host ledger must be whole (`testutil::check_ledger`: one owner per slot,
//! nothing posted twice, nothing lost) and nothing may panic.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sbnet_abi::common_cfg::off;
use sbnet_abi::layout::CONFIG_REGION;
use sbnet_abi::ring::Desc;
use sbnet_device::pair::Pair;
use sbnet_device::testutil::{check_ledger, Drv, IOVA, MEM, WINDOW};
use sbnet_fuzz::{geometry, pair};

const SLOTS: u32 = 16;

/// A descriptor address: mostly somewhere meaningful.
#[derive(Debug, Arbitrary)]
enum Addr {
    Slot(u8),
    Window(u16),
    Memory(u32),
    Raw(u64),
}

impl Addr {
    fn get(&self) -> u64 {
        let g = geometry();
        match *self {
            Addr::Slot(s) => WINDOW + g.slot_offset(u32::from(s) % (SLOTS + 1)),
            Addr::Window(o) => (WINDOW - 32).wrapping_add(u64::from(o) % (g.region_size() + 64)),
            Addr::Memory(o) => IOVA + u64::from(o) % MEM,
            Addr::Raw(a) => a,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    PostSlot {
        slot: u8,
    },
    PostClassic {
        len: u16,
    },
    SendSlot {
        slot: u8,
        frame: u16,
        gift: bool,
    },
    SendSlotLen {
        slot: u8,
        len: u32,
    },
    SendClassic {
        frame: u16,
    },
    /// A chain of up to four descriptors on TX (malformed more often than not).
    SendRaw {
        descs: Vec<(u8, Addr, u32, u8, u8)>,
        head: u8,
    },
    /// Raw ring writes on queue `q`, as a hostile driver does them.
    Desc {
        q: bool,
        i: u8,
        addr: Addr,
        len: u32,
        flags: u8,
        next: u8,
    },
    Avail {
        q: bool,
        head: u8,
    },
    AvailIdx {
        q: bool,
        idx: u16,
    },
    Reap {
        q: bool,
    },
    Ack,
    /// A BAR 0 write of 1, 2, 4 or 8 bytes (3 is refused by the device).
    Reg {
        off: u16,
        len: u8,
        v: u64,
    },
    Cfg {
        off: u16,
        v: u32,
    },
    /// Reset the function (status 0).
    Reset,
    /// A new driver instance brings the side up again.
    Up {
        shared_buffers: bool,
    },
    Poll,
}

#[derive(Debug, Arbitrary)]
struct Input {
    shared_buffers: [bool; 2],
    steps: Vec<(bool, Op)>,
}

fn step(p: &mut Pair, drv: &mut [Drv; 2], k: usize, op: &Op) {
    let d = &mut drv[k];
    let max_frame = (geometry().max_frame()).max(1);
    match *op {
        Op::PostSlot { slot } if d.room(0) > 0 => {
            d.post_slot(p, u32::from(slot) % SLOTS);
        }
        Op::PostClassic { len } if d.room(0) > 0 => {
            d.post_classic(u32::from(len) % 4097);
        }
        Op::SendSlot { slot, frame, gift } if d.room(1) > 0 => {
            let len = if gift {
                0
            } else {
                u32::from(frame) % max_frame
            };
            d.send_slot(p, u32::from(slot) % SLOTS, &vec![0x5a; len as usize], gift);
        }
        Op::SendSlotLen { slot, len } if d.room(1) > 0 => {
            d.send_slot_len(p, u32::from(slot) % SLOTS, len);
        }
        Op::SendClassic { frame } if d.room(1) > 1 => {
            d.send_classic(&vec![0xa5; usize::from(frame) % 4000]);
        }
        Op::SendRaw { ref descs, head } => {
            let descs: Vec<(u16, Desc)> = descs
                .iter()
                .take(4)
                .map(|(i, a, len, flags, next)| {
                    let d = Desc {
                        addr: a.get(),
                        len: *len,
                        flags: u16::from(*flags & 0xf),
                        next: u16::from(*next % 70),
                    };
                    (u16::from(*i % 64), d)
                })
                .collect();
            d.send_raw(&descs, u16::from(head % 70));
        }
        Op::Desc {
            q,
            i,
            ref addr,
            len,
            flags,
            next,
        } => d.set_desc(
            u16::from(q),
            u16::from(i % 64),
            Desc {
                addr: addr.get(),
                len,
                flags: u16::from(flags & 0xf),
                next: u16::from(next % 70),
            },
        ),
        Op::Avail { q, head } => d.avail(u16::from(q), u16::from(head % 70)),
        Op::AvailIdx { q, idx } => d.set_avail_idx(u16::from(q), idx),
        Op::Reap { q } => {
            d.used(u16::from(q));
        }
        Op::Ack => d.ack(p),
        Op::Reg { off, len, v } => {
            let len = [1, 2, 4, 8, 3][usize::from(len % 5)];
            let _ = p.fns[k].write(0, u64::from(off % 0x4100), &v.to_le_bytes()[..len]);
            p.handle_events(k);
        }
        Op::Cfg { off, v } => {
            let _ = p.fns[k].write(CONFIG_REGION, u64::from(off % 300), &v.to_le_bytes());
            p.handle_events(k);
        }
        Op::Reset => {
            let _ = p.fns[k].write(0, off::DEVICE_STATUS as u64, &[0]);
            p.handle_events(k);
        }
        Op::Up { shared_buffers } => {
            let _ = p.fns[k].write(0, off::DEVICE_STATUS as u64, &[0]);
            p.handle_events(k);
            drv[k] = Drv::up(p, k, shared_buffers);
        }
        Op::Poll => {
            p.poll();
        }
        // A post or send with no free descriptor: the driver would wait.
        _ => {}
    }
}

fuzz_target!(|input: Input| {
    let mut p = pair();
    let mut drv = [0, 1].map(|k| Drv::up(&mut p, k, input.shared_buffers[k]));
    for d in &drv {
        d.ack(&mut p);
    }
    check_ledger(&p);
    for (side, op) in input.steps.iter().take(256) {
        step(&mut p, &mut drv, usize::from(*side), op);
        check_ledger(&p);
    }
    for _ in 0..4 {
        p.poll();
        check_ledger(&p);
    }
});
