//! Descriptor chains: walking and validating what a guest linked together
//! (virtio 1.2 §2.7.5-§2.7.7). No allocation: a chain is a fixed array.

use crate::queue::Queue;
use sbnet_abi::ring::{DESC_F_INDIRECT, DESC_F_KNOWN, DESC_F_NEXT, DESC_F_WRITE};
use thiserror::Error;

/// Longest chain the device accepts. Linux's virtio_net uses at most
/// `MAX_SKB_FRAGS + 2` (19); the spec's bound (the queue size) would make
/// the per-chain array needlessly large.
pub const MAX_SEGS: usize = 64;

/// Why a chain is refused. The chain is completed with used length 0 and
/// counted as `bad_chain`; the queue goes on.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// More than [`MAX_SEGS`] descriptors.
    #[error("chain longer than {MAX_SEGS} descriptors")]
    TooLong,
    /// `next` names a descriptor already in the chain (a cycle).
    #[error("descriptor {0} is already in the chain (loop)")]
    Loop(u16),
    /// `next` names a descriptor index >= queue size.
    #[error("next index {0} is outside the descriptor table")]
    NextOutOfRange(u16),
    /// A flag bit sbnet does not know.
    #[error("unknown descriptor flags {0:#x}")]
    UnknownFlags(u16),
    /// `INDIRECT` set: the feature is not offered.
    #[error("indirect descriptor, but VIRTIO_F_INDIRECT_DESC was not offered")]
    Indirect,
    /// A zero-length buffer.
    #[error("zero-length descriptor")]
    ZeroLength,
    /// A readable descriptor after a writable one.
    #[error("readable descriptor after a writable one")]
    ReadAfterWrite,
    /// A writable descriptor in a TX chain or a readable one in an RX chain.
    #[error("descriptor direction does not match the queue")]
    WrongDirection,
    /// The buffer address plus length wraps around.
    #[error("buffer at {0:#x} wraps the address space")]
    AddressOverflow(u64),
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seg {
    /// Bus address as the driver wrote it.
    pub addr: u64,
    /// Length.
    pub len: u32,
}

/// A validated chain: its head and its buffers, all readable (TX) or all
/// writable (RX) as the queue requires.
#[derive(Debug, Clone, Copy)]
pub struct Chain {
    /// Head index (what the used entry names).
    pub head: u16,
    segs: [Seg; MAX_SEGS],
    n: u8,
    /// Sum of the buffers' lengths.
    pub total: u64,
}

impl Chain {
    /// The buffers.
    #[inline]
    pub fn segs(&self) -> &[Seg] {
        &self.segs[..self.n as usize]
    }

    /// Walks the chain starting at `head`. `writable` says whether the queue
    /// is an RX queue (every buffer device-writable) or a TX queue (every
    /// buffer device-readable).
    #[inline]
    pub fn parse(q: &Queue, head: u16, writable: bool) -> Result<Self, ChainError> {
        Self::walk::<false>(q, head, writable).map(|(c, _)| c)
    }

    /// Walks a command chain (the control queue): readable buffers, then
    /// writable ones (virtio 1.2 §2.7.4.1). Returns the chain and how many
    /// of its first buffers are readable.
    pub fn parse_command(q: &Queue, head: u16) -> Result<(Self, usize), ChainError> {
        Self::walk::<true>(q, head, false)
    }

    /// The walk: with `MIXED`, readable buffers may be followed by writable
    /// ones (the count of readable ones is returned); otherwise every buffer
    /// has the direction `writable` says.
    #[inline(always)]
    fn walk<const MIXED: bool>(
        q: &Queue,
        head: u16,
        mut writable: bool,
    ) -> Result<(Self, usize), ChainError> {
        let mut chain = Chain {
            head,
            segs: [Seg::default(); MAX_SEGS],
            n: 0,
            total: 0,
        };
        // The indices walked so far: a `next` naming one of them is a loop
        // (virtio 1.2 §2.7.5.1: a chain is never longer than the queue).
        let mut seen = [0u16; MAX_SEGS];
        let mut idx = head;
        let mut readable = 0;
        loop {
            // `head` came from Queue::pop_head (< size) and every `next` is
            // checked below, so the read cannot fail; treat it as range error anyway.
            let d = q.read_desc(idx).ok_or(ChainError::NextOutOfRange(idx))?;
            if d.flags & !DESC_F_KNOWN != 0 {
                return Err(ChainError::UnknownFlags(d.flags));
            }
            if d.flags & DESC_F_INDIRECT != 0 {
                return Err(ChainError::Indirect);
            }
            let is_write = d.flags & DESC_F_WRITE != 0;
            if MIXED && is_write && !writable {
                // The first writable buffer: the readable part ends here.
                writable = true;
                readable = chain.n as usize;
            }
            if is_write != writable {
                // Spec: readable before writable. On a single-direction queue
                // a mismatch is either order or direction.
                return Err(if is_write || chain.n == 0 {
                    ChainError::WrongDirection
                } else {
                    ChainError::ReadAfterWrite
                });
            }
            if d.len == 0 {
                return Err(ChainError::ZeroLength);
            }
            if d.addr.checked_add(d.len as u64).is_none() {
                return Err(ChainError::AddressOverflow(d.addr));
            }
            if chain.n as usize == MAX_SEGS {
                return Err(ChainError::TooLong);
            }
            seen[chain.n as usize] = idx;
            chain.segs[chain.n as usize] = Seg {
                addr: d.addr,
                len: d.len,
            };
            chain.n += 1;
            // Cannot overflow: at most 64 lengths of at most 2^32 each.
            chain.total += d.len as u64;
            if d.flags & DESC_F_NEXT == 0 {
                if !writable {
                    readable = chain.n as usize;
                }
                return Ok((chain, readable));
            }
            if d.next >= q.size() {
                return Err(ChainError::NextOutOfRange(d.next));
            }
            if seen[..chain.n as usize].contains(&d.next) {
                return Err(ChainError::Loop(d.next));
            }
            idx = d.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::tests::{enable, TestRing};
    use crate::testutil::hostile_chains;

    #[test]
    fn malformed_chains() {
        let r = TestRing::new(8);
        let q = enable(r.regs, 256, &r.mem).unwrap();
        for (i, case) in hostile_chains(r.data_iova(0), 0x1000, 8)
            .into_iter()
            .enumerate()
        {
            for (j, x) in case.descs.iter().enumerate() {
                r.set_desc(j as u16, *x);
            }
            let got = Chain::parse(&q, 0, case.writable).map(|c| c.segs().len());
            assert_eq!(got, case.parse, "case {i} {}", case.name);
        }
    }
}
