//! Shared pieces of the lab tests: root check, a lab that removes itself,
//! processes started in the lab's namespaces and stopped by PID.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const RAUTA: &str = env!("CARGO_BIN_EXE_rauta");
pub const GATEWAY: &str = "198.18.0.1";
pub const GATEWAY_NODE: &str = "198.18.0.2";
pub const GATEWAY6: &str = "2001:2::1";
pub const GATEWAY_NODE6: &str = "2001:2::2";

/// Lab tests share the machine's two cores and the network namespaces:
/// one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Fail (never skip) when the lab cannot be built.
pub fn require_root() {
    assert!(
        is_root(),
        "lab tests need root (network namespaces, XDP, AF_XDP): run them as root, as CI does"
    );
}

/// A lab built with `rauta lab up`, removed with `rauta lab down` on drop.
pub struct Lab {
    pub prefix: String,
}

impl Lab {
    pub fn up(prefix: &str, queues: u32) -> Self {
        require_root();
        let lab = Self {
            prefix: prefix.to_owned(),
        };
        let out = Command::new(RAUTA)
            .args([
                "lab",
                "up",
                "--prefix",
                prefix,
                "--queues",
                &queues.to_string(),
            ])
            .output()
            .expect("running rauta lab up");
        assert!(
            out.status.success(),
            "lab up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    /// Set the MTU of the segment's client, backend and gateway links
    /// (both ends: the host's interface and its bridge port).
    pub fn segment_mtu(&self, mtu: u32) {
        let mtu = mtu.to_string();
        for (role, iface) in [("gw", "gw"), ("client", "cl"), ("backend", "be")] {
            let iface = format!("{}-{iface}", self.prefix);
            let port = format!("{iface}-p");
            for (ns, link) in [(self.ns(role), &iface), (self.ns("br"), &port)] {
                let out = Command::new("ip")
                    .args(["-n", &ns, "link", "set", link, "mtu", &mtu])
                    .output()
                    .expect("running ip");
                assert!(
                    out.status.success(),
                    "MTU {mtu} on {link}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    pub fn gw_iface(&self) -> String {
        format!("{}-gw", self.prefix)
    }

    /// Run a command in the namespace of `role` and wait for it.
    pub fn exec(&self, role: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .args(args)
            .output()
            .expect("running ip netns exec")
    }

    /// Run a command in a namespace; assert it succeeded; its stdout.
    pub fn exec_ok(&self, role: &str, args: &[&str]) -> String {
        let out = self.exec(role, args);
        assert!(
            out.status.success(),
            "{args:?} in {role} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start a long-running command in a namespace.
    pub fn spawn(&self, role: &str, args: &[&str]) -> Process {
        Process::spawn(
            Command::new("ip")
                .args(["netns", "exec", &self.ns(role)])
                .args(args),
        )
    }

    /// The XDP program attached to the gateway interface: (id, name).
    pub fn xdp_program(&self) -> Option<(u32, String)> {
        let out = self.exec_ok("gw", &["ip", "link", "show", "dev", &self.gw_iface()]);
        let line = out.lines().find(|l| l.contains("prog/xdp"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .map(|s| s.to_string())
        };
        Some((at("id")?.parse().ok()?, at("name")?))
    }

    /// Start `rauta probe` on the gateway interface and wait until it serves.
    pub fn start_probe(&self, queues: u32, extra: &[&str]) -> Process {
        let iface = self.gw_iface();
        let queues = queues.to_string();
        let address = format!("{GATEWAY}/24");
        let mut args = vec![
            RAUTA,
            "probe",
            "--iface",
            &iface,
            "--address",
            &address,
            "--queues",
            &queues,
        ];
        args.extend_from_slice(extra);
        let probe = self.spawn("gw", &args);
        probe.wait_for_line(|l| l.starts_with("rauta probe:"), Duration::from_secs(15));
        probe
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = Command::new(RAUTA)
            .args(["lab", "down", "--prefix", &self.prefix])
            .output();
        if let Ok(out) = out {
            if !out.status.success() {
                eprintln!("lab down failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

/// A child process whose output is collected; killed by PID on drop.
pub struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning a lab process");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Self { child, lines }
    }

    /// Whether the process has exited.
    pub fn try_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn wait_for_line(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        self.wait_for_line_after(0, pred, timeout)
    }

    /// The first line printed so far that starts with `prefix`; fails the
    /// test, showing the output, if there is none.
    pub fn line_starting(&self, prefix: &str) -> String {
        let output = self.output();
        output
            .iter()
            .find(|l| l.starts_with(prefix))
            .cloned()
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{}", output.join("\n")))
    }

    /// Lines printed so far (a mark for [`Self::wait_for_line_after`]).
    pub fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Wait for a matching line printed after `mark`.
    pub fn wait_for_line_after(
        &self,
        mark: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.output().into_iter().skip(mark).find(|l| pred(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "expected line not seen within {timeout:?}; output so far:\n{}",
                self.output().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM, then wait (bounded) for the exit; the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.wait(Duration::from_secs(15))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        self.wait(Duration::from_secs(15));
    }

    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for a lab process") {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if Instant::now() > deadline {
                self.signal("-KILL");
                panic!(
                    "process {} did not exit within {timeout:?}",
                    self.child.id()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("-KILL");
            let _ = self.child.wait();
        }
    }
}

/// Parse a `key=value` field out of a probe report line.
pub fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}
