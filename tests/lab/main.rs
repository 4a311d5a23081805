//! Rauta's root-only tests, one binary: they share the machine's cores and
//! its network namespaces, so they run one at a time (see
//! [`common::serial`]).

mod common;
mod conformance;
mod dual_stack;
mod gateway;
mod grpc;
mod hardening;
mod http2;
mod kubernetes;
mod probe;
mod resilience;
mod routing;
mod timeouts;
