//! Rauta's data plane: polling workers and the services they run on the
//! userspace stack.
//!
//! So far: the probe (ARP, ICMP, UDP and TCP echo) and the loop that drives
//! it, one worker per queue; and the first piece of the HTTP gateway, the
//! sans-IO HTTP/1.1 request framing ([`http1`]) and the Gateway API route
//! table with its precedence rules ([`routes`]). The proxy that joins them
//! comes with the gateway issue.

pub mod config;
pub mod error;
pub mod gate;
pub mod gateway;
pub mod http1;
pub mod http2;
pub mod kernel;
pub mod legs;
pub mod listeners;
pub mod message;
pub mod metrics;
pub mod path;
pub mod probe;
pub mod proxy;
pub mod routes;
pub mod service;
pub mod worker;

pub use probe::{Probe, ProbeConfig, ProbeCounters};
pub use worker::{run_probe, QueueReport, SharedReport, WorkerReport};
