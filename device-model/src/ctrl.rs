//! The control virtqueue (virtio 1.2 §5.1.6.5) of a link with more than one
//! queue pair: only `VIRTIO_NET_CTRL_MQ` / `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`
//! is carried out (`docs/abi.md` §8). Every chain is hostile input:
//!
//! - a chain that is not a command (chain errors, no readable header, no
//!   device-writable status byte, buffers outside the driver's maps or a
//!   status byte in a read-only map) is completed with length 0 and
//!   counted as `bad_chain`;
//! - a well-formed command with an unknown class or command, or an
//!   out-of-range pair count, is answered `VIRTIO_NET_ERR` and counted as
//!   `ctrl_err`; `VQ_PAIRS_SET` with data of the wrong length too (and
//!   counted as `bad_chain` as well);
//! - a ring that cannot be trusted (avail index, head) is a [`QueueError`]:
//!   the caller puts the function in `DEVICE_NEEDS_RESET`.
//!
//! Nothing here allocates; the control queue is not on the packet path.

use crate::chain::{Chain, Seg};
use crate::counters::SideCounters;
use crate::mem::GuestMemory;
use crate::queue::{Queue, QueueError};
use sbnet_abi::net::{
    CTRL_HDR_LEN, CTRL_MQ_PAIRS_LEN, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_ERR, VIRTIO_NET_OK,
};

/// Command bytes looked at: the header and the longest data understood.
/// A longer command is read only this far (its length is still checked).
const CMD_MAX: usize = 16;

/// Serves every command the driver made available on `q`. `enabled` is
/// the function's enabled-pairs count, set by `VQ_PAIRS_SET` to a value in
/// `1..=q_pairs`. Returns the commands completed.
pub fn serve(
    q: &mut Queue,
    mem: &GuestMemory,
    q_pairs: u16,
    enabled: &mut u16,
    c: &mut SideCounters,
) -> Result<usize, QueueError> {
    let n = q.avail_pending()?;
    for _ in 0..n {
        let head = q.pop_head()?;
        let used = match Chain::parse_command(q, head) {
            Ok((chain, readable)) => command(&chain, readable, mem, q_pairs, enabled, c),
            Err(e) => {
                tracing::debug!("control chain {head} refused: {e}");
                c.bad_chain += 1;
                0
            }
        };
        q.push_used(head, used);
    }
    Ok(n as usize)
}

/// Carries out one command chain; returns the used length (1 when the ack
/// byte was written, 0 when the chain is refused).
fn command(
    chain: &Chain,
    readable: usize,
    mem: &GuestMemory,
    q_pairs: u16,
    enabled: &mut u16,
    c: &mut SideCounters,
) -> u32 {
    let (out, ins) = chain.segs().split_at(readable);
    // The ack is the first byte of the last device-writable buffer.
    let status = ins.last().and_then(|s| mem.translate_writable(s.addr, 1));
    let mut cmd = [0u8; CMD_MAX];
    let (Some(status), Some(len)) = (status, read_out(out, mem, &mut cmd)) else {
        c.bad_chain += 1;
        return 0;
    };
    if len < CTRL_HDR_LEN {
        c.bad_chain += 1;
        return 0;
    }
    let data_len = len - CTRL_HDR_LEN;
    let ack = match (cmd[0], cmd[1]) {
        (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) if data_len != CTRL_MQ_PAIRS_LEN => {
            c.bad_chain += 1;
            VIRTIO_NET_ERR
        }
        (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) => {
            let pairs = u16::from_le_bytes([cmd[2], cmd[3]]);
            if (1..=q_pairs).contains(&pairs) {
                if *enabled != pairs {
                    tracing::info!(from = *enabled, to = pairs, "queue pairs in use changed");
                }
                *enabled = pairs;
                VIRTIO_NET_OK
            } else {
                VIRTIO_NET_ERR
            }
        }
        _ => VIRTIO_NET_ERR,
    };
    if ack == VIRTIO_NET_OK {
        c.ctrl_ok += 1;
    } else {
        c.ctrl_err += 1;
    }
    // SAFETY: `status` is a writable host byte of a live DMA map
    // (translate_writable checked one byte); a volatile store is fine
    // whatever the guest does with it concurrently.
    unsafe { status.write_volatile(ack) };
    1
}

/// Copies the first [`CMD_MAX`] readable bytes into `cmd` and returns the
/// readable length; None when a buffer is outside the driver's maps.
fn read_out(out: &[Seg], mem: &GuestMemory, cmd: &mut [u8; CMD_MAX]) -> Option<usize> {
    let mut total = 0usize;
    for s in out {
        let mut pieces = [(std::ptr::null_mut::<u8>(), 0usize); 4];
        let n = mem.pieces(s.addr, s.len as u64, false, &mut pieces)?;
        for &(p, l) in &pieces[..n] {
            let room = CMD_MAX.saturating_sub(total).min(l);
            // SAFETY: [p, p + l) is a mapped host range (pieces); room <= l
            // and total + room <= CMD_MAX. A byte copy of shared memory,
            // never a reference to it.
            unsafe {
                std::ptr::copy_nonoverlapping(p, cmd.as_mut_ptr().add(total.min(CMD_MAX)), room)
            };
            total = total.saturating_add(l);
        }
    }
    Some(total)
}
