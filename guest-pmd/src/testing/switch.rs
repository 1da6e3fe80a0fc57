//! The fake host's switch: takes what each side made available, matches
//! zero-copy sends with the peer's posts, copies classic frames, completes
//! everything with length 0 while a side resyncs, and refuses what
//! `docs/abi.md` §6 says the host refuses.

use std::collections::hash_map::Entry;

use sbnet_abi::net::NET_HDR_LEN;
use sbnet_abi::ring::{Desc, DESC_F_WRITE};

use super::pair::{PairState, NOBODY, SHM_WINDOW};

const RX: usize = 0;
const TX: usize = 1;

/// What a descriptor's address refers to.
enum Target {
    /// Slot `s`, the reference well formed for its use.
    Slot(u32),
    /// A classic buffer at this pointer in the side's own memory.
    Classic(*mut u8),
    /// Malformed (the counter to bump is returned by the classifier).
    Bad,
}

impl PairState {
    /// One pass over both sides. Returns descriptors completed.
    pub(super) fn step(&mut self) -> usize {
        let mut done = 0;
        for k in 0..2 {
            done += self.take_avail(k);
        }
        for k in 0..2 {
            if self.sides[k].resyncing() {
                done += self.flush_resyncing(k);
            }
        }
        for k in 0..2 {
            done += self.run_tx(k);
        }
        for side in &mut self.sides {
            if let Some(rings) = side.rings.as_mut() {
                rings[RX].publish_used();
                rings[TX].publish_used();
            }
        }
        done
    }

    fn slot_of(&self, d: &Desc, rx: bool) -> Option<Result<u32, ()>> {
        let size = u64::from(self.opts.slot_size);
        let region = size * u64::from(self.opts.slot_count);
        let end = d.addr.checked_add(u64::from(d.len))?;
        if end <= SHM_WINDOW || d.addr >= SHM_WINDOW + region {
            return None;
        }
        let off = d.addr.wrapping_sub(SHM_WINDOW);
        let ok_len = if rx {
            u64::from(d.len) == size
        } else {
            (NET_HDR_LEN as u64..=size).contains(&u64::from(d.len))
        };
        if d.addr < SHM_WINDOW || !off.is_multiple_of(size) || !ok_len {
            return Some(Err(()));
        }
        Some(Ok((off / size) as u32))
    }

    fn classify(&mut self, k: usize, d: &Desc, rx: bool) -> Target {
        let want = if rx { DESC_F_WRITE } else { 0 };
        if d.flags != want || d.len == 0 {
            self.counters.bad_chain += 1;
            return Target::Bad;
        }
        match self.slot_of(d, rx) {
            Some(Ok(s)) => Target::Slot(s),
            Some(Err(())) => {
                self.counters.bad_slot_ref += 1;
                Target::Bad
            }
            None => match self.sides[k].arena.translate(d.addr, u64::from(d.len)) {
                Some((_, p)) => Target::Classic(p),
                None => {
                    self.counters.bad_chain += 1;
                    Target::Bad
                }
            },
        }
    }

    fn complete(&mut self, k: usize, q: usize, id: u16, len: u32) {
        if let Some(r) = self.sides[k].rings.as_mut() {
            r[q].push_used(u32::from(id), len);
        }
    }

    /// Takes every new avail entry of side `k`: RX posts are checked and
    /// recorded, TX chains queued in order. A resyncing side's entries are
    /// not judged (they belong to an epoch that is over): they are
    /// completed with length 0 by `flush_resyncing`.
    fn take_avail(&mut self, k: usize) -> usize {
        let mut done = 0;
        if self.sides[k].resyncing() {
            while let Some((id, d)) = self.sides[k]
                .rings
                .as_mut()
                .and_then(|r| r[RX].next_avail())
            {
                self.sides[k].rx_classic.push_back((id, d));
            }
            while let Some(next) = self.sides[k]
                .rings
                .as_mut()
                .and_then(|r| r[TX].next_avail())
            {
                self.sides[k].tx.push_back(next);
            }
            return 0;
        }
        while let Some((id, d)) = self.sides[k]
            .rings
            .as_mut()
            .and_then(|r| r[RX].next_avail())
        {
            match self.classify(k, &d, true) {
                Target::Slot(s) => {
                    if self.owner[s as usize] == k as u8 || self.owner[s as usize] == NOBODY {
                        self.counters.rx_post_not_peer_owned += 1;
                        self.complete(k, RX, id, 0);
                        done += 1;
                    } else if let Entry::Vacant(v) = self.sides[k].rx_slots.entry(s) {
                        v.insert(id);
                    } else {
                        self.counters.rx_post_duplicate += 1;
                        self.complete(k, RX, id, 0);
                        done += 1;
                    }
                }
                Target::Classic(_) => self.sides[k].rx_classic.push_back((id, d)),
                Target::Bad => {
                    self.complete(k, RX, id, 0);
                    done += 1;
                }
            }
        }
        while let Some(next) = self.sides[k]
            .rings
            .as_mut()
            .and_then(|r| r[TX].next_avail())
        {
            self.sides[k].tx.push_back(next);
        }
        done
    }

    /// Completes everything side `k` has outstanding with length 0.
    fn flush_resyncing(&mut self, k: usize) -> usize {
        let side = &mut self.sides[k];
        let mut rx: Vec<u16> = side.rx_slots.drain().map(|(_, id)| id).collect();
        rx.extend(side.rx_classic.drain(..).map(|(id, _)| id));
        let tx: Vec<u16> = side.tx.drain(..).map(|(id, _)| id).collect();
        let n = rx.len() + tx.len();
        for id in rx {
            self.complete(k, RX, id, 0);
        }
        for id in tx {
            self.complete(k, TX, id, 0);
        }
        self.counters.resync_completions += n as u64;
        n
    }

    /// Runs side `k`'s TX queue in order until it has to wait.
    fn run_tx(&mut self, k: usize) -> usize {
        let p = 1 - k;
        let mut done = 0;
        while let Some(&(id, d)) = self.sides[k].tx.front() {
            if self.sides[k].resyncing() {
                break;
            }
            let finished = match self.classify(k, &d, false) {
                Target::Bad => true,
                Target::Slot(s) if self.owner[s as usize] != k as u8 => {
                    self.counters.tx_not_owner += 1;
                    true
                }
                Target::Slot(s) => {
                    let zero_copy =
                        self.sides[k].zero_copy_capable() && self.sides[p].zero_copy_capable();
                    if zero_copy {
                        if self.sides[p].resyncing() {
                            false
                        } else if let Some(rx_id) = self.sides[p].rx_slots.remove(&s) {
                            self.owner[s as usize] = p as u8;
                            self.complete(p, RX, rx_id, d.len);
                            self.counters.zero_copy += 1;
                            true
                        } else {
                            false // wait for the peer to post s
                        }
                    } else {
                        let src = self
                            .shm
                            .ptr()
                            .wrapping_add(s as usize * self.opts.slot_size as usize);
                        self.copy_to_peer(p, src, d.len)
                    }
                }
                Target::Classic(src) => self.copy_to_peer(p, src, d.len),
            };
            if !finished {
                break;
            }
            self.sides[k].tx.pop_front();
            self.complete(k, TX, id, 0);
            done += 1;
        }
        done
    }

    /// Copies `len` bytes (header and frame) from `src` into the peer's next
    /// classic RX buffer. False when the TX has to wait for one.
    fn copy_to_peer(&mut self, p: usize, src: *mut u8, len: u32) -> bool {
        if !self.sides[p].driver_ok() {
            self.counters.tx_no_peer += 1;
            return true;
        }
        if self.sides[p].resyncing() {
            return false;
        }
        if (len as usize) < NET_HDR_LEN {
            self.counters.bad_chain += 1;
            return true;
        }
        let Some(&(rx_id, rd)) = self.sides[p].rx_classic.front() else {
            return false;
        };
        if len > rd.len {
            // Refuse the sender's chain; the peer keeps its buffer.
            self.counters.frame_too_big += 1;
            return true;
        }
        self.sides[p].rx_classic.pop_front();
        let Some((_, dst)) = self.sides[p].arena.translate(rd.addr, u64::from(rd.len)) else {
            self.counters.bad_chain += 1;
            self.complete(p, RX, rx_id, 0);
            return true;
        };
        let hdr = sbnet_abi::net::NetHdr {
            num_buffers: 1,
            ..Default::default()
        }
        .to_bytes();
        // SAFETY: `src` covers `len` bytes (a checked slot reference or a
        // translated classic buffer of the sender) and `dst` covers
        // `rd.len >= len` bytes of the peer's own memory; they never overlap
        // (a classic buffer is never in the region, and a slot is never a
        // classic RX buffer). The header is written zeroed, as the ABI says.
        unsafe {
            core::ptr::copy_nonoverlapping(
                src.add(NET_HDR_LEN),
                dst.add(NET_HDR_LEN),
                len as usize - NET_HDR_LEN,
            );
            core::ptr::copy_nonoverlapping(hdr.as_ptr(), dst, NET_HDR_LEN);
        }
        self.counters.copied += 1;
        self.complete(p, RX, rx_id, len);
        true
    }
}
