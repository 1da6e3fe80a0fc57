//! The virtio-net device configuration (virtio 1.2 §5.1.4) with sbnet's
//! fields after the standard ones (`docs/abi.md`): read-only but for
//! `epoch_ack`, which the driver writes to acknowledge a pairing epoch.

use super::{Event, Function};
use sbnet_abi::net::{self, cfg_off, NetConfig};

/// MTU advertised in the device configuration.
pub const MTU: u16 = 1500;

impl Function {
    pub(super) fn net_config(&self) -> NetConfig {
        NetConfig {
            mac: self.mac,
            // The link is up while a driver runs on the other side.
            status: if self.peer_status & net::PEER_PRESENT != 0 {
                net::VIRTIO_NET_S_LINK_UP
            } else {
                0
            },
            max_virtqueue_pairs: self.q_pairs,
            mtu: MTU,
            shared_buffers_offset: self.side,
            // The switch takes a post of a slot its poster is sending
            // (`Ctx::harvest_rx`).
            sb_flags: net::SB_F_EARLY_POST,
            slot_size: self.geometry.slot_size(),
            slot_count: self.geometry.slot_count(),
            pairing_epoch: self.pairing_epoch,
            peer_status: self.peer_status,
            epoch_ack: self.epoch_ack,
            ..Default::default()
        }
    }

    /// Reads the device configuration at `off`; bytes past its end read 0.
    pub(super) fn device_cfg_read(&self, off: usize, data: &mut [u8]) {
        let cfg = self.net_config();
        let bytes = bytemuck::bytes_of(&cfg);
        data.fill(0);
        if let Some(src) = bytes.get(off..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    /// Writes the device configuration: only a 4-byte `epoch_ack` counts.
    pub(super) fn device_cfg_write(&mut self, off: usize, len: usize, v: u64) {
        if off == cfg_off::EPOCH_ACK && len == 4 {
            self.epoch_ack = v as u32;
            self.events.push(Event::EpochAck(v as u32));
        } else {
            self.counters.ignored_writes += 1;
        }
    }
}
