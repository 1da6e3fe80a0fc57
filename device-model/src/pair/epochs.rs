//! The epoch rules (`docs/abi.md` §6 "Ownership": epochs): when the pair's
//! shape (which sides are active, which negotiated shared buffers) changes,
//! the epoch moves on, the switch restarts ownership from rule 2 and every
//! shared-buffers side resynchronises until it acknowledges; the peer-status
//! word each side reads tells it who is there and who is synchronised.

use super::Pair;
use crate::function::Event;
use sbnet_abi::net::{PEER_PRESENT, PEER_SHARED_BUFFERS, PEER_SYNCED};

impl Pair {
    /// Applies the events side `k`'s registers raised. Returns true when
    /// the driver kicked a queue.
    pub fn handle_events(&mut self, k: usize) -> bool {
        let mut kicked = false;
        let mut shape_may_change = false;
        let events: Vec<Event> = self.fns[k].take_events().collect();
        for e in events {
            match e {
                Event::StatusChanged => shape_may_change = true,
                Event::Kick(_) => kicked = true,
                Event::EpochAck(e) => {
                    if e == self.epoch && self.switch.resyncing(k) {
                        tracing::info!(side = k, epoch = e, "side synchronised to the epoch");
                        self.switch.acked(k);
                        // The peer may now take its share (PEER_SYNCED).
                        self.publish_pairing();
                        kicked = true;
                    }
                }
            }
        }
        if shape_may_change {
            self.update_shape();
            kicked = true;
        }
        kicked
    }

    fn update_shape(&mut self) {
        let shape = [0, 1].map(|k| (self.fns[k].is_active(), self.fns[k].is_shared_buffers()));
        if shape == self.shape {
            return;
        }
        self.shape = shape;
        self.epoch = self.epoch.wrapping_add(1).max(1);
        self.switch.begin_epoch([shape[0].1, shape[1].1]);
        for q in 0..self.switch.queue_pairs() {
            let [f0, f1] = &mut self.fns;
            self.switch
                .flush_pair(q, &mut [f0.view_pair(q), f1.view_pair(q)]);
        }
        tracing::info!(
            epoch = self.epoch,
            mode = ?self.switch.mode(),
            side0 = ?shape[0],
            side1 = ?shape[1],
            "pairing epoch changed (active, shared buffers)"
        );
        self.publish_pairing();
    }

    pub(super) fn publish_pairing(&mut self) {
        for k in 0..2 {
            let peer = &self.fns[1 - k];
            let mut st = 0;
            if peer.is_active() {
                st |= PEER_PRESENT;
            }
            if peer.is_shared_buffers() {
                st |= PEER_SHARED_BUFFERS;
            }
            if peer.is_active() && !self.switch.resyncing(1 - k) {
                st |= PEER_SYNCED;
            }
            self.fns[k].set_pairing(self.epoch, st);
        }
    }
}
