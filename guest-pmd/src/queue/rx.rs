//! Receiving: `rx_burst` and what each receive completion means.

use std::time::Instant;

use sbnet_abi::net::VIRTIO_NET_HDR_F_GIFT_BUFFER;

use super::{PortQueue, HDR};
use crate::bus::Bus;
use crate::error::PmdError;
use crate::mode::Mode;
use crate::pkt::{Buf, Pkt};

/// Idle bursts between two looks at the clock (reading it costs more than
/// an idle burst).
const IDLE_CLOCK_EVERY: u32 = 64;

impl<B: Bus> PortQueue<B> {
    /// Receives up to `out.len()` packets into `out[0..n]` and returns `n`.
    ///
    /// Pass a slice of `None`s: entries `0..n` are overwritten. Each burst
    /// also does the port's housekeeping: reaps transmit completions,
    /// gifts surplus slots, reposts receive buffers (one publish and at
    /// most one notification per queue) and, while the port is idle, reads
    /// the pairing epoch every [`crate::PortConfig::epoch_poll_interval`].
    /// Call it regularly even on a port that only sends: gifted slots come
    /// back through it.
    ///
    /// Errors: [`PmdError::DeviceMisbehaved`] and
    /// [`PmdError::DeviceNeedsReset`] stop the port (every later call
    /// returns them; packets already taken in the failing burst are
    /// returned first). While a resync waits for the device or the peer
    /// the burst returns 0 and the next call carries on.
    #[inline]
    pub fn rx_burst(&mut self, out: &mut [Option<Pkt>]) -> Result<usize, PmdError> {
        if !self.ready()? {
            return Ok(0);
        }
        let before = self.rxq.completions() + self.txq.completions();
        let n = (self.rx_fn)(self, out);
        if self.zero_len > 0 || self.failed.is_some() {
            return self.rx_events(out, n);
        }
        if self.rxq.completions() + self.txq.completions() == before {
            // Nothing completed: idle. Look at the clock now and then only.
            self.idle_polls = self.idle_polls.wrapping_add(1);
            if self.idle_polls.is_multiple_of(IDLE_CLOCK_EVERY) {
                self.idle_tick()?;
            }
        }
        Ok(n)
    }

    /// An idle moment: poll the epoch if the interval has passed.
    #[cold]
    fn idle_tick(&mut self) -> Result<(), PmdError> {
        let now = Instant::now();
        if now >= self.next_epoch_poll {
            self.next_epoch_poll = now + self.cfg.epoch_poll_interval;
            self.poll_epoch()?;
        }
        Ok(())
    }

    /// The receive path of one epoch's mode. `ZC`: zero-copy mode (slot
    /// completions, gifts); otherwise copy or classic mode. Completions
    /// first, then the chores, unless the burst hinted at an epoch change
    /// (nothing is posted while that is checked).
    pub(super) fn rx_impl<const ZC: bool>(&mut self, out: &mut [Option<Pkt>]) -> usize {
        let n = self.rx_take::<ZC>(out);
        if self.zero_len == 0 && self.failed.is_none() {
            self.housekeeping::<ZC>();
        }
        n
    }

    /// Takes receive completions (one `used.idx` load) into `out`.
    #[inline]
    fn rx_take<const ZC: bool>(&mut self, out: &mut [Option<Pkt>]) -> usize {
        let pending = match self.rxq.poll() {
            Ok(p) => p,
            Err(e) => {
                self.misbehaved(self.rx_index, e);
                return 0;
            }
        };
        let mut n = 0;
        // Counted here, added to the stats once per burst.
        let (mut gifts, mut slot_pkts, mut bytes) = (0u32, 0u32, 0u64);
        let (id, generation, slots) = (self.id, self.generation, self.slots);
        let classic_cap = self.classic.buf_size().saturating_sub(HDR);
        let mut left = pending;
        while left > 0 && n < out.len() {
            // A short completion stops the batch; it is handled below.
            let mut short = None;
            let (ledger, classic) = (&mut self.ledger, &mut self.classic);
            let taken = self.rxq.take_each(left, |used| {
                let b = Buf::from_token(used.token);
                if used.len < HDR {
                    short = Some((b, used.len));
                    return false;
                }
                let frame = used.len - HDR;
                let cap = match b {
                    Buf::Slot(s) => {
                        // The header's flags are read once, by value: a
                        // peer cannot turn a gift into a packet after the
                        // decision.
                        // SAFETY: as in `Port::read_hdr_flags`: slot `s`
                        // (a token of ours) is below the slot count.
                        let flags = unsafe { std::ptr::read_volatile(slots.ptr(s)) };
                        let gift = flags & VIRTIO_NET_HDR_F_GIFT_BUFFER != 0;
                        let ok = ledger.rx_done(s, gift);
                        debug_assert!(ok, "slot {s} completed but not posted");
                        if gift {
                            gifts += 1;
                            return true;
                        }
                        slot_pkts += 1;
                        slots.size - HDR
                    }
                    Buf::Classic(i) => {
                        let ok = classic.rx_done(i);
                        debug_assert!(ok, "classic buffer {i} completed but not posted");
                        classic_cap
                    }
                };
                debug_assert!(out[n].is_none(), "rx_burst overwrites a packet");
                out[n] = Some(Pkt::new(id, generation, b, frame, cap));
                bytes += u64::from(frame);
                n += 1;
                n < out.len()
            });
            match taken {
                Ok(k) => left -= k,
                Err(e) => {
                    self.misbehaved(self.rx_index, e);
                    break;
                }
            }
            match short {
                Some((b, len)) => self.rx_short(b, len),
                None => break,
            }
        }
        let classic_pkts = n as u32 - slot_pkts;
        self.st.rx_copied += u64::from(classic_pkts);
        self.st.gifts_received += u64::from(gifts);
        if ZC {
            self.st.rx_zero_copy += u64::from(slot_pkts);
        } else {
            self.st.rx_copied += u64::from(slot_pkts);
        }
        self.st.rx_packets += n as u64;
        self.st.rx_bytes += bytes;
        n
    }

    /// A receive completion shorter than a header. Length 0 is the host
    /// handing a buffer back (a refusal, or an epoch change: `rx_events`
    /// tells which); 1..=11 cannot be a frame and is dropped.
    #[cold]
    fn rx_short(&mut self, b: Buf, len: u32) {
        if len == 0 {
            self.zero_len += 1;
        } else {
            self.st.rx_runts += 1;
        }
        let ok = match b {
            // Length 0: nothing was sent into the slot, it is still the
            // peer's. A runt did come from the peer: the slot is ours now,
            // and goes to the pool.
            Buf::Slot(s) if len == 0 => self.ledger.rx_void(s),
            Buf::Slot(s) => self.ledger.rx_done(s, true),
            Buf::Classic(i) => self.classic.rx_void(i),
        };
        debug_assert!(ok, "short completion of a buffer that was not posted");
    }

    /// After a burst that saw a length-0 completion or a failure.
    #[cold]
    fn rx_events(&mut self, out: &mut [Option<Pkt>], n: usize) -> Result<usize, PmdError> {
        let zero_len = std::mem::take(&mut self.zero_len);
        if zero_len > 0 {
            if self.mode == Mode::Classic {
                // No epochs on a classic port: the host refused posts.
                self.st.refused_completions += u64::from(zero_len);
            } else {
                let epoch = match self.link.lock().dev.epoch() {
                    Ok(e) => e,
                    // Hand out what was taken; the check is retried by the
                    // next burst.
                    Err(_) if n > 0 => {
                        self.zero_len = zero_len;
                        return Ok(n);
                    }
                    Err(e) => return Err(e),
                };
                if epoch == self.epoch {
                    self.st.refused_completions += u64::from(zero_len);
                } else {
                    let n = self.retract_slots(out, n);
                    let r = self.resync();
                    // Packets already taken (classic ones survive a resync)
                    // come first; a resync error is reported by the next
                    // call, which retries it.
                    return match r {
                        _ if n > 0 => Ok(n),
                        // Waiting for the device or the peer: the next burst goes on.
                        Ok(()) | Err(PmdError::ResyncTimeout { .. }) => Ok(0),
                        Err(e) => Err(e),
                    };
                }
            }
        }
        match self.failed {
            Some(f) if n == 0 => Err(f.into()),
            _ => Ok(n),
        }
    }

    /// Takes back the slot packets of `out[..n]` (their epoch ended in this
    /// burst) and compacts what is left. Returns the new count.
    fn retract_slots(&mut self, out: &mut [Option<Pkt>], n: usize) -> usize {
        let mut kept = 0;
        for i in 0..n {
            let Some(p) = out[i].take() else { continue };
            if p.is_slot() {
                // The ledger is reset by the resync; the slot needs no
                // transition here.
                self.st.rx_dropped_resync += 1;
                self.st.rx_zero_copy -= 1;
                self.st.rx_packets -= 1;
                self.st.rx_bytes -= p.len() as u64;
            } else {
                out[kept] = Some(p);
                kept += 1;
            }
        }
        kept
    }
}
