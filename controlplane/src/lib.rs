//! Rauta's control plane: the file and Kubernetes route sources, the
//! RouteTable compiler, status writing and the admin server.
//!
//! Empty so far: the packet I/O layers come first (see the issue tracker);
//! the HTTP gateway and Kubernetes issues fill this crate.
