//! # sbnet-vfio-user
//!
//! sbnet's vfio-user protocol (QEMU 10.1+'s and libvfio-user's), both ends:
//! the host device model serves it, the PMD in host-process mode speaks it
//! as a client. Both use the same layouts, limits, framing and capability
//! parsing, so the two ends cannot drift apart.
//!
//! | module | what it holds |
//! |---|---|
//! | [`wire`] | header and body layouts, the [`Command`](wire::Command) enum (numbers, fixed body lengths, no-reply rule), flag sets as `bitflags` types, protocol limits, send/receive of a message with descriptors |
//! | [`caps`] | the `VERSION` capabilities JSON, typed ([`VersionData`](caps::VersionData)) |
//! | [`server`] | [`Server`](server::Server) and the [`Backend`](server::Backend) trait a device implements |
//! | [`client`] | [`Client`](client::Client): connect, negotiate, region info and access, DMA map/unmap, IRQs, reset |
//!
//! Why not rust-vmm's `vfio_user` crate: see `docs/design.md`. In short, every
//! size from the peer is checked (with checked arithmetic, against
//! [`MAX_MESSAGE`](wire::MAX_MESSAGE)) before anything is allocated, a
//! malformed message gets an error reply or closes the connection and never
//! panics, received descriptors are owned at once (the control buffer holds
//! [`SCM_MAX_FD`](wire::SCM_MAX_FD) of them, so none leaks behind
//! `MSG_CTRUNC`), and a stop flag ends the server promptly.
#![deny(missing_docs)]

pub mod caps;
pub mod client;
pub mod server;
pub mod wire;
