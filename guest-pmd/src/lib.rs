//! # sbnet-pmd
//!
//! A DPDK-style poll-mode driver for the sbnet virtio-net function
//! (`docs/design.md`, `docs/abi.md`). It brings the function up as a
//! virtio 1.x device, then moves packets with burst calls and no
//! interrupts. With `VIRTIO_NET_F_SHARED_BUFFERS` negotiated on both sides
//! of a pair, a packet built in a slot of the Shared Buffers region reaches
//! the peer without a copy; otherwise the host copies it once (the classic
//! path), so a mixed pair works too.
//!
//! ```no_run
//! # fn demo<B: sbnet_pmd::bus::Bus>(bus: B) -> Result<(), sbnet_pmd::PmdError> {
//! use sbnet_pmd::{Port, PortConfig};
//! let mut port = Port::open(bus, PortConfig::default())?;
//! // Send one frame.
//! if let Some(mut pkt) = port.alloc() {
//!     pkt.set_len(60)?;
//!     port.data_mut(&mut pkt).fill(0xab);
//!     let mut burst = [Some(pkt)];
//!     port.tx_burst(&mut burst)?;
//! }
//! // Receive, look, free.
//! let mut rx: [Option<sbnet_pmd::Pkt>; 32] = Default::default();
//! let n = port.rx_burst(&mut rx)?;
//! for slot in &mut rx[..n] {
//!     if let Some(pkt) = slot.take() {
//!         let _first = port.data(&pkt).first();
//!         port.free(pkt);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! With several queue pairs, one thread per queue pair, DPDK-style:
//!
//! ```no_run
//! # fn demo<B: sbnet_pmd::bus::Bus>(bus: B) -> Result<(), sbnet_pmd::PmdError> {
//! use sbnet_pmd::{Port, PortConfig};
//! let mut port = Port::open_queue_pairs(bus, PortConfig::default(), 2)?;
//! std::thread::scope(|s| {
//!     for q in port.queues_mut() {
//!         s.spawn(move || {
//!             let mut rx: [Option<sbnet_pmd::Pkt>; 32] = Default::default();
//!             let n = q.rx_burst(&mut rx)?;
//!             for p in rx[..n].iter_mut().filter_map(Option::take) {
//!                 q.free(p);
//!             }
//!             Ok::<_, sbnet_pmd::PmdError>(())
//!         });
//!     }
//! });
//! let per_queue = port.queue_stats(1);
//! let whole_port = port.stats();
//! # let _ = (per_queue, whole_port);
//! # Ok(()) }
//! ```
//!
//! ## Pieces
//!
//! | module | job |
//! |---|---|
//! | [`bus`] | the [`bus::Bus`] trait: config space, BARs, DMA memory (VFIO or vfio-user) |
//! | `caps` | finds the virtio structures and the Shared Buffers region in config space |
//! | `device` | virtio bring-up: reset, features, queues, `DRIVER_OK`; device config reads |
//! | `vq` | the driver side of a split virtqueue, validating everything the device writes |
//! | `ledger` | who holds each slot ([`SlotState`]) |
//! | `classic` | classic buffers in the port's own DMA memory |
//! | `pkt` | [`Pkt`], the handle of a buffer the application holds |
//! | `gift` | when to hand surplus slots back to the peer |
//! | `mode` | an epoch's [`Mode`]: zero-copy, copy or classic |
//! | `ctrl` | the control queue: `VQ_PAIRS_SET` at start (multiqueue) |
//! | `link` | what the queue pairs share: the device registers (cold paths), epoch acknowledgement |
//! | `queue` | [`PortQueue`]: one queue pair's `alloc`/`free`, `rx_burst`/`tx_burst`, resync |
//! | `port` | [`Port`]: open, the queue pairs, the single-queue API |
//! | `stats` | [`Stats`] |
//!
//! ## Design choices
//!
//! - **Handles, not guards.** A [`Pkt`] is a plain value (port id, epoch
//!   generation, buffer, length) with no reference to the port; it goes
//!   back through [`Port::free`] or [`Port::tx_burst`]. The packet path
//!   needs no lock, reference count or allocation, and the application can
//!   hold packets while calling the port. Frame bytes are reached through
//!   [`Port::data`]/[`Port::data_mut`], which check the handle.
//! - **Ownership as the ABI says.** Side `k` starts with the slots
//!   `s % 2 == k` in zero-copy mode and with all of them in copy mode. It
//!   posts the peer's slots on its receive queue, and a zero-copy send
//!   gives the slot away; the slot is posted back in the same burst when
//!   the host allows early posts (`SB_F_EARLY_POST`, queue pair 0,
//!   [`PortConfig::early_post`]), otherwise once the host completes the
//!   send.
//! - **Queue pairs are sub-pairs.** On a link of `Q` queue pairs, queue
//!   pair `q` uses the slots `s % Q == q` only, and starts with those of
//!   them whose `(s / Q) % 2` is its side. Each [`PortQueue`] owns its
//!   queues, ledger share, gifts, resync and counters, so one thread per
//!   queue pair shares nothing on the packet path; only cold paths (a
//!   notification a sleeping host asks for, epoch polls and resyncs) take
//!   the port's device lock.
//! - **Gifts.** Free slots above `slot_count / 2 + hysteresis` are gifted
//!   down to `slot_count / 2`, in bursts ([`PortConfig::gift_hysteresis`],
//!   [`PortConfig::gift_burst`]).
//! - **Epochs.** A length-0 receive completion or an idle poll finds a new
//!   pairing epoch; the port drains, acknowledges, resets its ledger and
//!   bumps its generation, which makes every old slot handle stale.
//! - **One path per epoch.** The receive and transmit functions are chosen
//!   when an epoch is adopted, not per packet.
//! - **Distrust the device.** Every used entry is checked; a broken ring
//!   stops the port with [`PmdError::DeviceMisbehaved`], never a panic.
#![deny(missing_docs)]

pub mod bus;
mod caps;
mod classic;
mod config;
mod ctrl;
mod device;
mod error;
mod gift;
mod ledger;
mod link;
mod mode;
mod pkt;
mod port;
mod queue;
mod stats;
mod vq;

#[cfg(test)]
mod testing;

pub use caps::CapError;
pub use config::PortConfig;
pub use device::DRIVER_FEATURES;
pub use error::PmdError;
pub use gift::GiftPolicy;
pub use ledger::SlotState;
pub use mode::Mode;
pub use pkt::Pkt;
pub use port::Port;
pub use queue::PortQueue;
pub use stats::{ClassicCounts, SlotCounts, Stats};
pub use vq::VqError;
/// The split virtqueue's driver side, for the fuzz crate (`fuzz/`, target
/// `pmd_used_ring`) only: not part of the PMD's supported API.
#[doc(hidden)]
pub use vq::{RingLayout as VqRingLayout, SplitQueue, Used};
