//! Network namespaces the lab made, entered from a test or benchmark.

use std::fs::File;
use std::thread::JoinHandle;

/// Run `f` on a thread of its own inside network namespace `ns` (a name
/// under `/var/run/netns`).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering {path}: {e}"));
        f()
    })
}
