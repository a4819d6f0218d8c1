//! The egress model: named outbound identities and how to pick among them.
//!
//! An [`EgressSource`] is where a connection leaves from (a local IP, or a proxy
//! that owns the IP) and what it calls itself in EHLO. An [`EgressPool`] is a
//! weighted set of sources, picked by [`WeightedRoundRobin`]. [`EgressPathConfig`]
//! and [`QueueConfig`] carry the per-site and per-queue settings that decide the
//! EHLO name ([`effective_ehlo_domain`]) and destination port ([`effective_port`]).
//!
//! Everything here is plain data: parsing (serde, from JSON or Lua tables),
//! validation with errors written for the operator, and selection. No I/O, no async.
//!
//! ```
//! use egress_source::{EgressSource, ValidationError};
//! let src: EgressSource = serde_json::from_str(
//!     r#"{ "name": "ip-1", "ha_proxy_server": "10.0.0.9:5000" }"#).unwrap();
//! let err = src.validate().unwrap_err();
//! assert!(matches!(err, ValidationError::MissingPartner { missing: "ha_proxy_source_address", .. }));
//! assert!(err.to_string().contains("egress source 'ip-1'"));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod automation;
mod credential;
mod error;
mod fields;
mod keys;
mod listener;
mod path;
mod pool;
mod precedence;
mod queue;
mod redis;
mod site;
mod source;
mod suspend;
mod throttle;
mod wrr;

pub use automation::{
    AutomationAction, AutomationRule, AutomationTrigger, ConfigOverride, ConfigValue, Pattern,
};
pub use credential::KeySource;
pub use error::ValidationError;
pub use fields::duration as serde_duration;
pub use fields::optional_duration as serde_optional_duration;
pub use fields::{networks as serde_networks, optional_networks as serde_optional_networks};
pub use fields::{parse_duration, parse_network, HostPort};
pub use keys::nearest;
pub use listener::ListenerDomain;
pub use path::{EgressPathConfig, IpLookupStrategy, Tls, INERT_PATH_KEYS, RUSTLS_CIPHER_SUITES};
pub use pool::{EgressPool, EgressPoolEntry};
pub use precedence::{effective_ehlo_domain, effective_port};
pub use queue::{DeliveryProtocol, MxListEntry, QueueConfig, SmtpProtocol, DEFAULT_POOL};
pub use redis::{RedisParams, REDIS_CONNECT_TIMEOUT, REDIS_RESPONSE_TIMEOUT, REDIS_WAIT_TIMEOUT};
pub use site::site_name;
pub use source::{EgressSource, Route, DEFAULT_TTL};
pub use suspend::{SuspensionRule, Trigger};
pub use throttle::{ConnectionLimit, ThrottleSpec};
pub use wrr::{NoEligibleEntry, WeightedRoundRobin, MAX_SCHEDULE};
