//! The copy helpers of the classic path (gathering a chain into host
//! pieces, scattering a frame into an RX chain) and the per-packet counters.

use crate::chain::Seg;
use crate::counters::SideCounters;
use crate::mem::GuestMemory;
use sbnet_abi::net::NET_HDR_LEN;

/// Host pieces a chain's buffers may come in: one per buffer, more for a
/// buffer across DMA maps that are not contiguous in the host (a vIOMMU
/// guest's 4 KiB maps); a chain needing more is refused. Stack arrays, no
/// allocation per packet; no larger than one per descriptor, so the
/// single-map path pays nothing more than before.
pub(super) const MAX_PIECES: usize = crate::chain::MAX_SEGS;

/// Translates every buffer of a chain into host pieces (one per buffer,
/// more for a buffer across maps); None when one is outside guest memory,
/// or, for the buffers the device writes (`write`), outside maps the
/// client made writable, or when the pieces do not fit in `out`. The
/// pointers are valid only until the DMA maps change: they are taken anew
/// for every packet and never kept across polls.
#[inline(always)]
pub(super) fn gather(
    segs: &[Seg],
    mem: &GuestMemory,
    write: bool,
    out: &mut [(*mut u8, usize)],
) -> Option<usize> {
    // One piece per buffer: the usual case, as cheap as ever.
    for (i, (o, s)) in out.iter_mut().zip(segs).enumerate() {
        let p = if write {
            mem.translate_writable(s.addr, s.len as u64)
        } else {
            mem.translate(s.addr, s.len as u64)
        };
        match p {
            Some(p) => *o = (p, s.len as usize),
            None => return gather_pieces(segs, mem, write, out, i),
        }
    }
    Some(segs.len())
}

/// [`gather`] from buffer `from` on, when that one is not one host range.
#[cold]
fn gather_pieces(
    segs: &[Seg],
    mem: &GuestMemory,
    write: bool,
    out: &mut [(*mut u8, usize)],
    from: usize,
) -> Option<usize> {
    let mut n = from;
    for s in &segs[from..] {
        n += mem.pieces(s.addr, s.len as u64, write, out.get_mut(n..)?)?;
    }
    Some(n)
}

/// Writes `hdr` then the source bytes (after skipping `skip`) across `dst`.
/// The caller checked that `dst` holds `hdr.len() + source bytes - skip`.
pub(super) fn scatter(
    dst: &[(*mut u8, usize)],
    hdr: &[u8],
    src: &[(*mut u8, usize)],
    mut skip: usize,
) {
    let mut di = 0;
    let mut doff = 0;
    let mut put = |mut p: *const u8, mut n: usize| {
        while n > 0 {
            let Some(&(d, dl)) = dst.get(di) else { return };
            let k = n.min(dl - doff);
            // SAFETY: d..d+dl is a translated RX buffer inside a live DMA map
            // (gather); p..p+n lies in a translated TX buffer, the host's own
            // header or the region; doff + k <= dl. Guest memory may change
            // concurrently: this is a byte copy of shared memory, never a
            // reference to it.
            unsafe { std::ptr::copy_nonoverlapping(p, d.add(doff), k) };
            // SAFETY: k <= n, so p stays within its buffer.
            p = unsafe { p.add(k) };
            n -= k;
            doff += k;
            if doff == dl {
                di += 1;
                doff = 0;
            }
        }
    };
    put(hdr.as_ptr(), hdr.len());
    for &(p, l) in src {
        if skip >= l {
            skip -= l;
            continue;
        }
        // SAFETY: skip < l: the pointer stays inside the buffer.
        put(unsafe { p.add(skip) }, l - skip);
        skip = 0;
    }
}

#[inline]
pub(super) fn count_tx(c: &mut SideCounters, frame: u64, gift: bool, zero_copy: bool) {
    if gift {
        c.gifts_sent += 1;
    } else {
        c.tx_packets += 1;
        c.tx_bytes += frame;
        if zero_copy {
            c.tx_zero_copy += 1;
        } else {
            c.tx_copied += 1;
        }
    }
}

#[inline]
pub(super) fn count_rx(c: &mut SideCounters, len: u32, gift: bool) {
    if gift {
        c.gifts_received += 1;
    } else {
        c.rx_packets += 1;
        c.rx_bytes += (len as u64).saturating_sub(NET_HDR_LEN as u64);
    }
}
