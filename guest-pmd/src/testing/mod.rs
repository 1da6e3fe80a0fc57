//! Test doubles (the `test-utils` feature; never in a default build).
//!
//! - [`DmaArena`] and [`DeviceRing`]: heap memory standing in for DMA
//!   memory, and the device's side of a virtqueue over it, for tests that
//!   play the device by hand.
//! - [`FakePair`]: two sbnet functions behind in-memory register files,
//!   sharing one heap "Shared Buffers region", with a small host switch
//!   that follows `docs/abi.md` §6 (zero-copy matching, copy mode, classic
//!   path, epochs and resync, the host's ownership checks). Each side is
//!   driven through a [`FakeBus`], so a real [`crate::Port`] runs against
//!   it. It is a stand-in for `host-pair` in unit tests, not a second
//!   implementation of it: no deferral after a TX wait, no interrupts, no
//!   vfio-user.
//! - [`config_space::sbnet_config_space`]: the ABI's config space.

pub mod config_space;
mod fake_bus;
mod mem;
mod pair;
mod ring;
mod switch;

pub use fake_bus::FakeBus;
pub use mem::{Chunk, DmaArena, IOVA_BASE};
pub use pair::{FakeCounters, FakeOptions, FakePair, QueueRegs, SideRegs, SwitchThread};
pub use ring::DeviceRing;
