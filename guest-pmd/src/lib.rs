//! # sbnet-pmd
//!
//! A DPDK-style poll-mode driver for the sbnet virtio-net function.
#![deny(missing_docs)]

pub mod bus;
