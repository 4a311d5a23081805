//! Test equipment shared by the lab tests (`tests/lab`) and the lab
//! benchmarks (`benches/`): not part of the product.
//!
//! - [`fake_apiserver`]: a wire-faithful fake Kubernetes API server;
//! - [`netns`]: running code inside the lab's network namespaces.

pub mod fake_apiserver;
pub mod netns;
