//! Rauta's control plane: where routes come from and how they become the
//! table the workers serve.
//!
//! - [`manifests`]: Kubernetes YAML from a directory, parsed strictly into
//!   the `gateway-api` and `k8s-openapi` types.
//! - [`compile`]: Gateway API attachment and resolution rules, producing the
//!   immutable [`rauta_dataplane::config::GatewayConfig`].
//! - [`kubernetes`]: the Kubernetes source: reflectors, status, leader
//!   election.
//! - [`source`]: the file source: watch the directory, recompile, publish
//!   atomically, keep the last good configuration on errors.

pub mod compile;
pub mod endpoints;
pub mod kubernetes;
pub mod manifests;
pub mod policy;
pub mod source;
pub mod verdict;

pub use compile::{compile, CompileError, Compiled, OnInvalid, Selection};
pub use endpoints::OwnSockets;
pub use manifests::{ManifestError, Manifests};
