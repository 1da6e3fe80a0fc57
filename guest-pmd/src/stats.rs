//! Per-queue-pair and per-port counters.

use crate::mode::Mode;

/// Where this port's slots are (a snapshot of the ledger).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCounts {
    /// Mine, in the free pool.
    pub free: u32,
    /// Mine, held by the application (allocated or received).
    pub held: u32,
    /// On my transmit queue.
    pub in_flight_tx: u32,
    /// The peer's, posted on my receive queue.
    pub peer_posted: u32,
    /// The peer's, not posted (waiting for receive-queue room).
    pub peer_unposted: u32,
}

/// Where this port's classic (non-slot) buffers are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassicCounts {
    /// In the free pool.
    pub free: u32,
    /// Held by the application.
    pub held: u32,
    /// Posted on the receive queue.
    pub posted_rx: u32,
    /// On the transmit queue.
    pub in_flight_tx: u32,
}

/// A port's counters since it was opened ([`crate::Port::stats`]).
///
/// Frame bytes exclude the 12-byte `virtio_net_hdr`. A packet is
/// *zero-copy* when it travelled as a slot in zero-copy mode and *copied*
/// when the host copied it (a classic buffer, or a slot in copy mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets delivered to the application.
    pub rx_packets: u64,
    /// Frame bytes delivered.
    pub rx_bytes: u64,
    /// Packets handed to the device.
    pub tx_packets: u64,
    /// Frame bytes handed to the device.
    pub tx_bytes: u64,
    /// Received packets that arrived in a slot without a copy.
    pub rx_zero_copy: u64,
    /// Received packets the host copied into a classic buffer.
    pub rx_copied: u64,
    /// Sent packets that left as slots without a copy.
    pub tx_zero_copy: u64,
    /// Sent packets the host copies.
    pub tx_copied: u64,
    /// Slots gifted to the peer.
    pub gifts_sent: u64,
    /// Slots the peer gifted (they went to the free pool).
    pub gifts_received: u64,
    /// `alloc` found no free buffer: the application waits for slots.
    pub alloc_failed: u64,
    /// Packets left unsent because the transmit queue was full.
    pub tx_ring_full: u64,
    /// Receive completions of length 0 outside an epoch change: the host
    /// refused a post (docs/abi.md §6, "What the host refuses").
    pub refused_completions: u64,
    /// Used entries that broke the ring protocol (the port then fails).
    pub device_misbehaved: u64,
    /// Epoch changes the port resynchronised to.
    pub resyncs: u64,
    /// Handles from an older epoch or another port given back or sent
    /// (ignored).
    pub stale_handles: u64,
    /// Packets completed during a resync and not delivered (their epoch is
    /// over).
    pub rx_dropped_resync: u64,
    /// Receive completions shorter than a header (1..=11 bytes), dropped.
    pub rx_runts: u64,
    /// Notifications written to the device (the host was not polling).
    pub notifies: u64,
    /// Stores of the receive queue's `avail.idx` (one per burst that
    /// posted buffers).
    pub rx_publishes: u64,
    /// Stores of the transmit queue's `avail.idx` (one per burst that sent).
    pub tx_publishes: u64,
    /// Reads of `pairing_epoch` done because the port was idle.
    pub epoch_polls: u64,
    /// The current epoch's mode.
    pub mode: Mode,
    /// The pairing epoch the port is synchronised to.
    pub epoch: u32,
    /// Slot ledger snapshot.
    pub slots: SlotCounts,
    /// Classic buffer snapshot.
    pub classic: ClassicCounts,
}

/// Adds the listed fields of `$b` to `$a`.
macro_rules! add_fields {
    ($a:expr, $b:expr, $($f:ident),+ $(,)?) => {
        $( $a.$f += $b.$f; )+
    };
}

impl SlotCounts {
    /// Adds `o`'s counts (another queue pair's ledger).
    pub fn add(&mut self, o: &Self) {
        add_fields!(
            self,
            o,
            free,
            held,
            in_flight_tx,
            peer_posted,
            peer_unposted
        );
    }
}

impl ClassicCounts {
    /// Adds `o`'s counts (another queue pair's pool).
    pub fn add(&mut self, o: &Self) {
        add_fields!(self, o, free, held, posted_rx, in_flight_tx);
    }
}

impl Stats {
    /// Adds another queue pair's counters and snapshots to these (mode
    /// and epoch stay these).
    pub fn add(&mut self, o: &Self) {
        add_fields!(
            self,
            o,
            rx_packets,
            rx_bytes,
            tx_packets,
            tx_bytes,
            rx_zero_copy,
            rx_copied,
            tx_zero_copy,
            tx_copied,
            gifts_sent,
            gifts_received,
            alloc_failed,
            tx_ring_full,
            refused_completions,
            device_misbehaved,
            resyncs,
            stale_handles,
            rx_dropped_resync,
            rx_runts,
            notifies,
            rx_publishes,
            tx_publishes,
            epoch_polls,
        );
        self.slots.add(&o.slots);
        self.classic.add(&o.classic);
    }

    /// The counters as a JSON object (for tools and benchmark logs).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "rx_zero_copy": self.rx_zero_copy,
            "rx_copied": self.rx_copied,
            "tx_zero_copy": self.tx_zero_copy,
            "tx_copied": self.tx_copied,
            "gifts_sent": self.gifts_sent,
            "gifts_received": self.gifts_received,
            "alloc_failed": self.alloc_failed,
            "tx_ring_full": self.tx_ring_full,
            "refused_completions": self.refused_completions,
            "device_misbehaved": self.device_misbehaved,
            "resyncs": self.resyncs,
            "stale_handles": self.stale_handles,
            "rx_dropped_resync": self.rx_dropped_resync,
            "rx_runts": self.rx_runts,
            "notifies": self.notifies,
            "rx_publishes": self.rx_publishes,
            "tx_publishes": self.tx_publishes,
            "epoch_polls": self.epoch_polls,
            "mode": self.mode.name(),
            "epoch": self.epoch,
            "slots": {
                "free": self.slots.free,
                "held": self.slots.held,
                "in_flight_tx": self.slots.in_flight_tx,
                "peer_posted": self.slots.peer_posted,
                "peer_unposted": self.slots.peer_unposted,
            },
            "classic": {
                "free": self.classic.free,
                "held": self.classic.held,
                "posted_rx": self.classic.posted_rx,
                "in_flight_tx": self.classic.in_flight_tx,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sums_counters_and_snapshots_and_keeps_mode_and_epoch() {
        let a = Stats {
            rx_packets: 3,
            tx_zero_copy: 5,
            epoch_polls: 1,
            mode: Mode::ZeroCopy,
            epoch: 7,
            slots: SlotCounts {
                free: 2,
                peer_unposted: 1,
                ..SlotCounts::default()
            },
            classic: ClassicCounts {
                posted_rx: 4,
                ..ClassicCounts::default()
            },
            ..Stats::default()
        };
        let mut sum = a;
        sum.add(&Stats {
            mode: Mode::Copy,
            epoch: 9,
            ..a
        });
        assert_eq!(
            (sum.rx_packets, sum.tx_zero_copy, sum.epoch_polls),
            (6, 10, 2)
        );
        assert_eq!((sum.slots.free, sum.slots.peer_unposted), (4, 2));
        assert_eq!(sum.classic.posted_rx, 8);
        assert_eq!((sum.mode, sum.epoch), (Mode::ZeroCopy, 7));
    }
}
