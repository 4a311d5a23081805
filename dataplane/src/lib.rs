//! Rauta's data plane: polling workers and the services they run on the
//! userspace stack.
//!
//! So far: the probe (ARP, ICMP, UDP and TCP echo) and the loop that drives
//! it, one worker per queue. HTTP, routing and proxying come with the
//! gateway issues.

pub mod probe;
pub mod worker;

pub use probe::{Probe, ProbeConfig, ProbeCounters};
pub use worker::{run_probe, QueueReport, SharedReport, WorkerReport};
