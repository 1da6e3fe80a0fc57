//! # sbnet-device
//!
//! The host side of an sbnet virtio-net function and the pairing switch.
//! The vfio-user front end is the `sbnet-vfio-user` crate; [`pair`] implements
//! its `Backend`.
//!
//! | module | what |
//! |---|---|
//! | [`irq`] | interrupt fds: eventfds only, written non-blocking |
//! | [`mem`] | guest memory from DMA maps; the host's mapping of the Shared Buffers region |
//! | [`queue`] | the device side of a split virtqueue, validated once at enable |
//! | [`chain`] | descriptor-chain walking and validation |
//! | [`pci_config`] | PCI config space: identity, BARs, capabilities |
//! | [`function`] | one virtio-net function's registers: common config, MSI-X, net config |
//! | [`view`] | the switch's narrow view of one side (queues, memory, counters, interrupt hook) |
//! | [`switch`] | the pairing switch: zero-copy and classic paths, the host ledger |
//! | [`pair`] | two functions and the switch behind one lock: epoch rules, the data-plane runner |
//! | [`backend`] | one side served to the vfio-user front end (regions, IRQs, DMA maps) |
//! | [`counters`] | per-side counters |
//! | [`ctrl`] | the control virtqueue of a multiqueue link (`VQ_PAIRS_SET`) |
#![deny(missing_docs)]

pub mod backend;
pub mod chain;
pub mod counters;
pub mod ctrl;
pub mod function;
pub mod irq;
pub mod mem;
pub mod pair;
pub mod pci_config;
pub mod queue;
pub mod switch;
pub mod view;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod mq_model_tests;
#[cfg(test)]
mod mq_tests;
#[cfg(test)]
mod switch_tests;
#[cfg(any(test, feature = "test-utils"))]
#[allow(missing_docs, clippy::missing_panics_doc)]
pub mod testutil;
#[cfg(test)]
mod viommu_tests;
