//! egressd: the thin server over egress-relay. The binary (`main.rs`) is the CLI;
//! this library is what it is made of, exposed for its tests and benchmarks.
//!
//! - [`server`]: process wiring — listeners bound, the relay built, signals,
//!   reload, shutdown. [`listen`] makes the sockets (backlog, descriptor limit).
//! - [`admin`]: the HTTP API and `/metrics`; [`metrics`] is the Prometheus
//!   registry the relay reports into (it implements `egress_relay::Report`);
//!   [`ctl`] is the CLI's client for the API.
//! - [`probe`]: `egressd probe`, one connection through a source.
//! - [`records`]: the policy's local logs and log hooks (egress-log), the
//!   relay's record sink, kept in step with reloads.
//!
//! The relay itself — sessions, routing, shaping, spool delivery — is
//! `egress_relay`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod ctl;
pub mod listen;
pub mod metrics;
pub mod probe;
pub mod records;
pub mod server;
