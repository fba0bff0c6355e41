//! The Sluice config model: one document per fleet, parsed from YAML or JSON.
//!
//! [`parse`] turns bytes into a validated [`Config`] or returns *every* problem it found, each with
//! a path into the document (`routes[2].match.path_regex: ...`). A `Config` that exists is valid:
//! names are unique, references resolve, regexes compile, addresses parse.
//!
//! [`sign`] holds the signed envelope: payload bytes, ed25519 signatures, and every check a data
//! plane makes before it accepts a bundle.
//!
//! API boundary: this crate knows nothing of sockets, tokio or databases. The data plane compiles a
//! `Config` into its runtime snapshot; the control plane stores and signs it.

#![forbid(unsafe_code)]

pub mod access;
mod auth;
mod cache;
mod decode;
pub mod diff;
mod duration;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod model;
mod net;
mod parse;
mod resilience;
pub mod rollout;
pub mod schema;
pub mod sign;
pub mod stats;
pub mod time;
mod tls;
mod traffic;
mod transform;

pub use auth::*;
pub use cache::*;
pub use duration::Duration;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use net::Cidr;
pub use parse::{Format, MAX_DOCUMENT_BYTES, anchored_regex, parse, parse_value};
pub use resilience::*;
pub use tls::*;
pub use traffic::*;
pub use transform::*;
