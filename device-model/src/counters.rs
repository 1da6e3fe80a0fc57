//! Per-side counters of the device model and the switch. Plain integers:
//! they are only touched under the pair's lock.

use std::fmt;

macro_rules! counters {
    (
        $(#[$m:meta])* $name:ident {
            $($(#[$fm:meta])* $f:ident,)*
        }
        refusals {
            $($(#[$rm:meta])* $r:ident,)*
        }
        then {
            $($(#[$tm:meta])* $t:ident,)*
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fm])* pub $f: u64,)*
            $($(#[$rm])* pub $r: u64,)*
            $($(#[$tm])* pub $t: u64,)*
        }

        impl $name {
            /// The names of the refusal counters: a descriptor completed
            /// with length 0 because it broke a rule (docs/abi.md §6, "What
            /// the host refuses"). [`Self::refusals`] is their sum.
            pub const REFUSALS: &'static [&'static str] = &[$(stringify!($r),)*];

            /// Every counter as (name, value), in declaration order.
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [
                    $((stringify!($f), self.$f),)*
                    $((stringify!($r), self.$r),)*
                    $((stringify!($t), self.$t),)*
                ]
                .into_iter()
            }

            /// Sum of every refusal counter ([`Self::REFUSALS`]).
            pub fn refusals(&self) -> u64 {
                0 $(+ self.$r)*
            }
        }
    };
}

counters! {
    /// Counters of one side of a pair.
    SideCounters {
        /// Frames this side sent that reached the peer.
        tx_packets,
        /// Frame bytes (header excluded) this side sent that reached the peer.
        tx_bytes,
        /// Frames delivered to this side.
        rx_packets,
        /// Frame bytes delivered to this side.
        rx_bytes,
        /// Of `tx_packets`: handed over without a copy (slot to slot).
        tx_zero_copy,
        /// Of `tx_packets`: copied by the host.
        tx_copied,
        /// Bytes the host copied for this side's TX (header included).
        copied_bytes,
        /// Empty slots this side gifted to the peer.
        gifts_sent,
        /// Empty slots the peer gifted to this side.
        gifts_received,
        /// TX that had to wait for the peer to post a buffer.
        tx_waits,
        /// Zero-copy TX whose delivery was deferred until the peer posts the slot.
        tx_deferred,
        /// TX dropped: the peer had no RX buffer within the wait bound.
        rx_no_buffer,
        /// TX dropped: no driver on the peer side.
        tx_no_peer,
    }
    refusals {
        /// Refused: malformed descriptor chain.
        bad_chain,
        /// Refused: slot reference not slot-aligned, crossing a slot, wrong length or mixed.
        bad_slot_ref,
        /// Refused: TX of a slot the sender does not own.
        tx_not_owner,
        /// Refused: RX post of a slot of another queue pair's sub-pair, or of any slot
        /// in copy mode (a post of a slot the poster owns is an early post, taken).
        rx_post_not_peer_owned,
        /// Refused: RX post of a slot already posted.
        rx_post_duplicate,
        /// Refused: frame larger than the peer's RX buffer.
        frame_too_big,
        /// Refused: a slot TX marked `GIFT_BUFFER` in copy mode (a gift hands a slot to a
        /// zero-copy peer; in copy mode slots stay with their owner).
        bad_gift,
    }
    then {
        /// Descriptors completed with length 0 by an epoch resync.
        flushed,
        /// Times this side entered DEVICE_NEEDS_RESET.
        needs_reset,
        /// Driver resets (status 0, vfio-user reset, disconnect).
        resets,
        /// Notify writes (kicks) received.
        kicks,
        /// Interrupts signalled.
        interrupts,
        /// Writes to read-only registers, ignored.
        ignored_writes,
        /// vfio-user DMA maps refused.
        dma_refused,
        /// vfio-user DMA maps accepted.
        dma_maps,
        /// DMA maps removed by unmaps (a reset or disconnect not counted).
        dma_unmaps,
        /// Most DMA maps held at once (see `mem::MAX_MAPS`).
        dma_maps_peak,
        /// Control-queue commands carried out (`VIRTIO_NET_OK`).
        ctrl_ok,
        /// Control-queue commands answered `VIRTIO_NET_ERR`.
        ctrl_err,
    }
}

impl fmt::Display for SideCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in self.fields().filter(|(_, v)| *v != 0) {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        if first {
            f.write_str("(all zero)")?;
        }
        Ok(())
    }
}

/// Frames and bytes through one queue pair of one side: what its
/// transmitq sent that reached the peer and what its receiveq got.
/// On a one-pair link these equal the side's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Frames taken from this pair's transmitq that reached the peer.
    pub tx_packets: u64,
    /// Their frame bytes (header excluded).
    pub tx_bytes: u64,
    /// Frames delivered on this pair's receiveq.
    pub rx_packets: u64,
    /// Their frame bytes (header excluded).
    pub rx_bytes: u64,
}

impl QueueCounters {
    /// A side's totals as the counters of its only queue pair.
    pub fn of_side(c: &SideCounters) -> Self {
        Self {
            tx_packets: c.tx_packets,
            tx_bytes: c.tx_bytes,
            rx_packets: c.rx_packets,
            rx_bytes: c.rx_bytes,
        }
    }

    /// Every counter as (name, value).
    pub fn fields(&self) -> [(&'static str, u64); 4] {
        [
            ("tx_packets", self.tx_packets),
            ("tx_bytes", self.tx_bytes),
            ("rx_packets", self.rx_packets),
            ("rx_bytes", self.rx_bytes),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_lists_nonzero() {
        let mut c = SideCounters::default();
        assert_eq!(c.to_string(), "(all zero)");
        c.tx_packets = 3;
        c.bad_chain = 1;
        assert_eq!(c.to_string(), "tx_packets=3 bad_chain=1");
        assert_eq!(c.refusals(), 1);
    }

    #[test]
    fn refusals_sum_the_listed_counters() {
        // The seven rules of docs/abi.md §6, "What the host refuses", in
        // declaration order; each one is a counter.
        let r = SideCounters::REFUSALS;
        assert_eq!((r.len(), r[0], r[6]), (7, "bad_chain", "bad_gift"));
        let names: Vec<_> = SideCounters::default().fields().map(|(k, _)| k).collect();
        assert!(r.iter().all(|k| names.contains(k)), "{r:?}");
        let c = SideCounters {
            bad_gift: 2,
            frame_too_big: 3,
            needs_reset: 7,
            flushed: 5,
            ..SideCounters::default()
        };
        assert_eq!(c.refusals(), 5);
        let listed: u64 = c
            .fields()
            .filter(|(k, _)| SideCounters::REFUSALS.contains(k))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(listed, c.refusals());
    }
}
