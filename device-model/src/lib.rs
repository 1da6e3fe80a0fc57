//! # sbnet-device
//!
//! The host side of an sbnet virtio-net function and the pairing switch.
//!
//! | module | what |
//! |---|---|
//! | [`irq`] | interrupt fds: eventfds only, written non-blocking |
//! | [`mem`] | guest memory from DMA maps; the host's mapping of the Shared Buffers region |
//! | [`queue`] | the device side of a split virtqueue, validated once at enable |
//! | [`chain`] | descriptor-chain walking and validation |
//! | [`pci_config`] | PCI config space: identity, BARs, capabilities |
//! | [`function`] | one virtio-net function's registers, features, status, interrupts |
//! | [`switch`] | the pairing switch: zero-copy and classic paths, the host ledger |
//! | [`pair`] | two functions, the switch and the epoch rules behind one lock |
//! | [`counters`] | per-side counters |
//! | [`vfio_user`] | the vfio-user front end (knows nothing of virtio) |
#![deny(missing_docs)]

pub mod chain;
pub mod counters;
pub mod function;
pub mod irq;
pub mod mem;
pub mod pair;
pub mod pci_config;
pub mod queue;
pub mod switch;
pub mod vfio_user;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod switch_tests;
#[cfg(any(test, feature = "test-utils"))]
#[allow(missing_docs, clippy::missing_panics_doc)]
pub mod testutil;
