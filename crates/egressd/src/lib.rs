//! egressd as a library: the server the `egressd` binary runs, exposed so that
//! fuzzing and benchmarks drive the real session code over in-memory streams.
//! The binary (`main.rs`) is the CLI over these modules.
//!
//! - [`inbound`]: one client's ESMTP session (transport, command dispatch,
//!   transaction).
//! - [`outbound`]: routing, the destination session, the idle pool.
//! - [`server`]: listeners, limits, signals. [`listen`] makes the sockets,
//!   [`client_limits`] keeps one address from taking them all.
//! - [`admin`]: the HTTP API and `/metrics`; [`metrics`] keeps the numbers;
//!   [`ctl`] is the CLI's client for the API.
#![forbid(unsafe_code)]

pub mod admin;
pub mod client_limits;
pub mod ctl;
pub mod delivery;
pub mod dns;
pub mod inbound;
pub mod listen;
pub mod metrics;
pub mod outbound;
pub mod probe;
pub mod server;
pub mod shutdown;
pub mod txlog;
