//! Peers under test in the lab: started in a namespace with their output
//! in a log, and waited for until they answer (the benchmarks of a gateway
//! against nginx and HAProxy share this).

use crate::support::ChildGuard;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `args` run in lab namespace `{prefix}-{role}`.
pub fn in_ns(prefix: &str, role: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &format!("{prefix}-{role}")])
        .args(args);
    c
}

/// Start `command` with its output in `log` (read when it fails).
pub fn spawn(mut command: Command, log: &Path) -> ChildGuard {
    let out = std::fs::File::create(log).expect("creating a log");
    let err = out.try_clone().expect("cloning a log");
    ChildGuard(
        command
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawning"),
    )
}

/// Start `args` in `{prefix}-gw` with a high file limit, and return once
/// `url` answers 200 to curl (with `curl_flags`) from `{prefix}-client`;
/// panics with the log if it does not within 10 s.
pub fn start_answering(
    prefix: &str,
    args: &[&str],
    log: &Path,
    url: &str,
    curl_flags: &[&str],
) -> ChildGuard {
    let mut command = in_ns(
        prefix,
        "gw",
        &["sh", "-c", "ulimit -n 20000 2>/dev/null; exec \"$@\"", "sh"],
    );
    command.args(args);
    let guard = spawn(command, log);
    for _ in 0..100 {
        let mut curl = vec![
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "1",
        ];
        curl.extend_from_slice(curl_flags);
        curl.push(url);
        let ok = in_ns(prefix, "client", &curl)
            .output()
            .map(|o| o.stdout == b"200")
            .unwrap_or(false);
        if ok {
            return guard;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{} did not start answering {url}: {}",
        args.join(" "),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
