//! Rauta's control plane: where routes come from and how they become the
//! table the workers serve.
//!
//! - [`manifests`]: Kubernetes YAML from a directory, parsed strictly into
//!   the `gateway-api` and `k8s-openapi` types.
//! - [`compile`]: Gateway API attachment and resolution rules, producing the
//!   immutable [`rauta_dataplane::config::GatewayConfig`].
//! - [`source`]: the file source: watch the directory, recompile, publish
//!   atomically, keep the last good configuration on errors.

pub mod compile;
pub mod manifests;
pub mod source;

pub use compile::{compile, CompileError, Compiled, Selection};
pub use manifests::{ManifestError, Manifests};
