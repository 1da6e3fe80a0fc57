//! Guests behind a virtual IOMMU (issue 10): the driver's memory reaches the
//! device as one DMA map per 4 KiB page, buffers cross maps (contiguous in
//! the host or not), and maps come and go while traffic flows.

use crate::pair::Pair;
use crate::switch_tests::pair;
use crate::testutil::{Drv, IOVA};
use sbnet_abi::common_cfg as cc;
use sbnet_abi::net::{NetHdr, NET_HDR_LEN};
use sbnet_abi::ring::{Desc, DESC_F_NEXT, DESC_F_WRITE};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

const PAGE: u64 = 0x1000;
/// Memory of the stand-in driver that its own rings and buffers leave alone.
const SCRATCH: u64 = IOVA + 0x10_0000;

fn paged_pair(tx_wait: Duration) -> (Pair, [Drv; 2]) {
    let mut p = pair(tx_wait);
    let d = [
        Drv::up_paged(&mut p, 0, false, PAGE),
        Drv::up_paged(&mut p, 1, false, PAGE),
    ];
    for k in 0..2 {
        assert_eq!(p.fns[k].mem().len(), (crate::testutil::MEM / PAGE) as usize);
        assert_eq!(p.fns[k].mem().files(), 1);
        assert!(p.fns[k].is_active());
    }
    (p, d)
}

fn frame(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31) ^ (i * 7) as u8)
        .collect()
}

fn hdr() -> Vec<u8> {
    NetHdr::default().to_bytes().to_vec()
}

/// Sends a two-descriptor TX chain: the header at `h`, the frame at `f`
/// (the frame bytes are written by the caller).
fn send_at(d: &mut Drv, h: u64, f: u64, len: u32) {
    d.write(h, &hdr());
    d.send_raw(
        &[
            (
                60,
                Desc {
                    addr: h,
                    len: NET_HDR_LEN as u32,
                    flags: DESC_F_NEXT,
                    next: 61,
                },
            ),
            (
                61,
                Desc {
                    addr: f,
                    len,
                    flags: 0,
                    next: 0,
                },
            ),
        ],
        60,
    );
}

fn rx_at(d: &mut Drv, addr: u64, len: u32) -> u16 {
    d.post_raw(Desc {
        addr,
        len,
        flags: DESC_F_WRITE,
        next: 0,
    })
}

/// Replaces the map of page `iova` of side `k` with page `offset` of `file`.
fn remap(p: &mut Pair, k: usize, iova: u64, file: &File, offset: u64) {
    assert_eq!(p.fns[k].unmap_dma(iova, PAGE), Ok(1));
    p.fns[k]
        .map_dma(
            iova,
            PAGE,
            Some(file.try_clone().unwrap()),
            offset,
            crate::mem::Prot::READ | crate::mem::Prot::WRITE,
        )
        .unwrap();
}

#[test]
fn buffers_across_page_maps_byte_exact() {
    let (mut p, mut d) = paged_pair(Duration::from_secs(3600));
    // Header across a page edge, frame across the next one; the RX buffer
    // across a page edge too. The maps are contiguous in the host.
    let f1 = frame(1, 1400);
    d[0].write(SCRATCH + 0x1c00, &f1);
    send_at(&mut d[0], SCRATCH + 0xffa, SCRATCH + 0x1c00, 1400);
    let h = rx_at(&mut d[1], SCRATCH + 0x1c00, 2048);
    p.poll();
    assert_eq!(d[0].used(1), vec![(60, 0)]);
    let need = NET_HDR_LEN + f1.len();
    assert_eq!(d[1].used(0), vec![(h, need as u32)]);
    let got = d[1].read(SCRATCH + 0x1c00, need);
    assert_eq!(&got[NET_HDR_LEN..], &f1[..]);

    // Now the page after the edge comes from other memory on both sides:
    // contiguous in IOVA only. The frame is copied piece by piece.
    let (ga, gb) = (
        crate::mem::sealed_memfd(c"a", 4 * PAGE).unwrap(),
        crate::mem::sealed_memfd(c"b", 4 * PAGE).unwrap(),
    );
    remap(&mut p, 0, SCRATCH + 0x2000, &ga, PAGE);
    remap(&mut p, 1, SCRATCH + 0x2000, &gb, 3 * PAGE);
    assert!(p.fns[0].is_active() && p.fns[1].is_active());
    assert_eq!(p.fns[0].mem().files(), 2);
    let f2 = frame(2, 1400);
    d[0].write(SCRATCH + 0x1c00, &f2[..0x400]);
    ga.write_all_at(&f2[0x400..], PAGE).unwrap();
    send_at(&mut d[0], SCRATCH + 0xffa, SCRATCH + 0x1c00, 1400);
    let h = rx_at(&mut d[1], SCRATCH + 0x1c00, 2048);
    p.poll();
    assert_eq!(d[1].used(0), vec![(h, need as u32)]);
    let mut got = d[1].read(SCRATCH + 0x1c00, 0x400);
    let mut tail = vec![0; need - 0x400];
    gb.read_exact_at(&mut tail, 3 * PAGE).unwrap();
    got.extend_from_slice(&tail);
    assert_eq!(&got[NET_HDR_LEN..], &f2[..]);
    for k in 0..2 {
        assert_eq!(p.fns[k].counters.refusals(), 0, "side {k}");
    }
    assert_eq!(p.fns[0].counters.tx_copied, 2);
}

#[test]
fn unmaps_under_traffic_refuse_buffers_and_stop_rings_never_touch_freed_memory() {
    let (mut p, mut d) = paged_pair(Duration::from_secs(3600));
    let f = frame(3, 200);
    // B posts two buffers; the first one's page goes away before A sends.
    let gone = rx_at(&mut d[1], SCRATCH + 0x4000, 2048);
    let kept = rx_at(&mut d[1], SCRATCH + 0x6000, 2048);
    assert_eq!(p.fns[1].unmap_dma(SCRATCH + 0x4000, PAGE), Ok(1));
    d[0].write(SCRATCH, &f);
    send_at(&mut d[0], SCRATCH + 0x800, SCRATCH, 200);
    p.poll();
    let need = (NET_HDR_LEN + f.len()) as u32;
    assert_eq!(d[1].used(0), vec![(gone, 0), (kept, need)]);
    assert_eq!(p.fns[1].counters.bad_chain, 1);
    assert_eq!(
        &d[1].read(SCRATCH + 0x6000, need as usize)[NET_HDR_LEN..],
        &f[..]
    );
    d[0].used(1);

    // A TX waits for an RX buffer; its page goes meanwhile: when B posts,
    // the TX is translated again and refused, and B's buffer stays posted.
    send_at(&mut d[0], SCRATCH + 0x800, SCRATCH, 200);
    assert_eq!(p.poll(), 0);
    assert_eq!(p.fns[0].unmap_dma(SCRATCH, PAGE), Ok(1));
    let h = rx_at(&mut d[1], SCRATCH + 0x6000, 2048);
    p.poll();
    assert_eq!(d[0].used(1), vec![(60, 0)]);
    assert_eq!(p.fns[0].counters.bad_chain, 1, "{}", p.fns[0].counters);
    assert!(d[1].used(0).is_empty());
    // The page comes back: traffic flows again, into the buffer B posted.
    remap(&mut p, 0, SCRATCH + 0x1000, d[0].file(), 0x10_1000);
    p.fns[0]
        .map_dma(
            SCRATCH,
            PAGE,
            Some(d[0].file().try_clone().unwrap()),
            0x10_0000,
            crate::mem::Prot::READ | crate::mem::Prot::WRITE,
        )
        .unwrap();
    send_at(&mut d[0], SCRATCH + 0x800, SCRATCH, 200);
    p.poll();
    assert_eq!(d[1].used(0), vec![(h, need)]);

    // A page of B's RX ring goes: B needs a reset; A's side is untouched.
    assert_eq!(p.fns[1].unmap_dma(IOVA, PAGE), Ok(1));
    assert_ne!(p.fns[1].status() & cc::STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(p.fns[0].status() & cc::STATUS_DEVICE_NEEDS_RESET, 0);
    send_at(&mut d[0], SCRATCH + 0x800, SCRATCH, 200);
    p.poll();
    // A guest reboot: everything unmapped without a disconnect (QEMU's
    // power-off unmap ends at 2^64), then a fresh driver on both sides.
    for k in 0..2 {
        assert!(p.fns[k]
            .unmap_dma(0xfef0_0000, 0xffff_ffff_0110_0000)
            .is_ok());
        assert!(p.fns[k].unmap_dma(0, 0xfef0_0000).is_ok());
        assert!(p.fns[k].mem().is_empty());
        assert_eq!(p.fns[k].mem().files(), 0);
    }
    p.poll();
    for dr in &mut d {
        dr.status(&mut p, 0);
    }
    let mut d = [
        Drv::up_paged(&mut p, 0, false, PAGE),
        Drv::up_paged(&mut p, 1, false, PAGE),
    ];
    let f = frame(4, 1000);
    d[0].write(SCRATCH, &f);
    send_at(&mut d[0], SCRATCH + 0x800, SCRATCH, 1000);
    let h = rx_at(&mut d[1], SCRATCH + 0x6000, 2048);
    p.poll();
    let need = (NET_HDR_LEN + f.len()) as u32;
    assert_eq!(d[1].used(0), vec![(h, need)]);
    assert_eq!(
        &d[1].read(SCRATCH + 0x6000, need as usize)[NET_HDR_LEN..],
        &f[..]
    );
}
