//! Connection admission, shared by every worker: client connections held
//! in all and per listener port, and the process's resident memory against
//! a budget. A connection past a limit is refused as it is accepted (reset,
//! before any byte of it is read) and the refusal counted; the ones already
//! open are untouched. Envoy's overload manager and connection limit
//! filter do the same at the edge.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

/// The limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Client connections the gateway holds at most, over all workers.
    pub max_connections: Option<usize>,
    /// Client connections one listener port holds at most.
    pub max_per_listener: Option<usize>,
    /// Resident bytes past which new connections are refused.
    pub memory_budget: Option<u64>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached.
    Connections,
    /// The listener's `max_per_listener` reached.
    Listener,
    /// Resident memory past the budget.
    Memory,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::Connections, Refusal::Listener, Refusal::Memory];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Connections => "connections",
            Refusal::Listener => "listener",
            Refusal::Memory => "memory",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The shared counts behind [`ConnectionLimits`].
#[derive(Debug, Default)]
pub struct ConnectionGate {
    limits: ConnectionLimits,
    open: AtomicUsize,
    /// Per listener port; a port's counter is made at its first connection
    /// and kept (there are few ports).
    per_listener: RwLock<HashMap<u16, Arc<AtomicUsize>>>,
    /// The process's resident bytes, as last measured.
    resident: AtomicU64,
}

impl ConnectionGate {
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Admit a client connection to `port`, or say why not. An admitted
    /// connection is [`Self::release`]d when it closes.
    pub fn admit(&self, port: u16) -> Result<(), Refusal> {
        if self
            .limits
            .memory_budget
            .is_some_and(|budget| self.resident.load(Relaxed) > budget)
        {
            return Err(Refusal::Memory);
        }
        if !take(&self.open, self.limits.max_connections) {
            return Err(Refusal::Connections);
        }
        if self.limits.max_per_listener.is_some()
            && !take(&self.listener(port), self.limits.max_per_listener)
        {
            self.open.fetch_sub(1, Relaxed);
            return Err(Refusal::Listener);
        }
        Ok(())
    }

    /// An admitted connection to `port` closed.
    pub fn release(&self, port: u16) {
        self.open.fetch_sub(1, Relaxed);
        if self.limits.max_per_listener.is_some() {
            self.listener(port).fetch_sub(1, Relaxed);
        }
    }

    /// Client connections admitted and not released.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// The process's resident bytes, measured by whoever watches memory
    /// ([`resident_bytes`]).
    pub fn set_resident(&self, bytes: u64) {
        self.resident.store(bytes, Relaxed);
    }

    pub fn resident(&self) -> u64 {
        self.resident.load(Relaxed)
    }

    fn listener(&self, port: u16) -> Arc<AtomicUsize> {
        if let Some(count) = self
            .per_listener
            .read()
            .ok()
            .and_then(|m| m.get(&port).cloned())
        {
            return count;
        }
        match self.per_listener.write() {
            Ok(mut map) => map.entry(port).or_default().clone(),
            // A poisoned map (a panic elsewhere): count apart rather than
            // refuse everything.
            Err(_) => Arc::default(),
        }
    }
}

/// Take one of `count`'s places if it is under `max`.
fn take(count: &AtomicUsize, max: Option<usize>) -> bool {
    let held = count.fetch_add(1, Relaxed);
    if max.is_some_and(|max| held >= max) {
        count.fetch_sub(1, Relaxed);
        return false;
    }
    true
}

/// This process's resident set in bytes (`VmRSS` in `/proc/self/status`),
/// or `None` where it cannot be read.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// The memory limit of the cgroup this process runs in, as a container's
/// `resources.limits.memory` sets it, or `None` where there is none.
pub fn cgroup_memory_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    memory_limit(&cgroup, |file| std::fs::read_to_string(file).ok())
}

/// The limit `/proc/self/cgroup` (`cgroup`) leads to: cgroup v2's
/// `memory.max`, else v1's `memory.limit_in_bytes` (whose "unlimited" is
/// a number near 2^63).
fn memory_limit(cgroup: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let parse = |file: String| -> Option<u64> {
        read(&file)?
            .trim()
            .parse()
            .ok()
            .filter(|&n: &u64| n < 1 << 60)
    };
    let v2 = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|path| {
            parse(format!(
                "/sys/fs/cgroup{}/memory.max",
                path.trim_end_matches('/')
            ))
        });
    v2.or_else(|| {
        let path = cgroup.lines().find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then_some(path)
        })?;
        parse(format!(
            "/sys/fs/cgroup/memory{}/memory.limit_in_bytes",
            path.trim_end_matches('/')
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_global_limit_and_admits_again_after_a_release() {
        let gate = ConnectionGate::new(ConnectionLimits {
            max_connections: Some(2),
            ..Default::default()
        });
        assert_eq!(gate.admit(80), Ok(()));
        assert_eq!(gate.admit(443), Ok(()));
        assert_eq!(gate.admit(80), Err(Refusal::Connections));
        gate.release(443);
        assert_eq!(gate.admit(80), Ok(()));
        assert_eq!(gate.open(), 2);
    }

    #[test]
    fn a_full_listener_leaves_the_others_open() {
        let gate = ConnectionGate::new(ConnectionLimits {
            max_connections: Some(10),
            max_per_listener: Some(1),
            ..Default::default()
        });
        assert_eq!(gate.admit(80), Ok(()));
        assert_eq!(gate.admit(80), Err(Refusal::Listener));
        assert_eq!(gate.admit(8080), Ok(()));
        // The refused one holds no global place.
        assert_eq!(gate.open(), 2);
        gate.release(80);
        assert_eq!(gate.admit(80), Ok(()));
    }

    #[test]
    fn past_the_memory_budget_every_new_connection_is_refused() {
        let gate = ConnectionGate::new(ConnectionLimits {
            memory_budget: Some(100 << 20),
            ..Default::default()
        });
        gate.set_resident(99 << 20);
        assert_eq!(gate.admit(80), Ok(()));
        gate.set_resident(101 << 20);
        assert_eq!(gate.admit(80), Err(Refusal::Memory));
        assert_eq!(gate.open(), 1);
    }

    #[test]
    fn finds_the_memory_limit_in_cgroup_v2_then_v1() {
        let files = |limit: &'static str| {
            move |file: &str| match file {
                "/sys/fs/cgroup/memory.max" => Some(limit.to_owned()),
                "/sys/fs/cgroup/memory/pod/c1/memory.limit_in_bytes" => Some("536870912\n".into()),
                _ => None,
            }
        };
        assert_eq!(memory_limit("0::/\n", files("1073741824\n")), Some(1 << 30));
        assert_eq!(memory_limit("0::/\n", files("max\n")), None);
        let v1 = "4:memory:/pod/c1\n0::/\n";
        assert_eq!(memory_limit(v1, files("max\n")), Some(512 << 20));
        let unlimited = |_: &str| Some("9223372036854771712".to_owned());
        assert_eq!(memory_limit("4:memory:/x\n", unlimited), None);
    }

    #[test]
    fn reads_this_process_resident_memory() {
        let rss = resident_bytes().expect("/proc/self/statm");
        assert!(rss > 1 << 20, "{rss}");
    }
}
