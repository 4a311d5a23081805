//! A load client for echo services: holds many connections open at once,
//! sends a message on each, waits for the exact echo, repeats until the
//! time is up, and reports round trips per second and latency percentiles.
//! Bounded in time; one thread (pin it with taskset).

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Shut down writing, read the peer's FIN.
    Fin,
    /// Abort: SO_LINGER 0, so the kernel sends RST.
    Rst,
}

#[derive(Clone, Debug)]
pub struct EchoLoad {
    pub target: SocketAddr,
    pub connections: usize,
    /// Bytes per message.
    pub message: usize,
    /// How long to exchange messages once every connection is open.
    pub duration: Duration,
    /// Connection attempts in flight at once while opening.
    pub connect_burst: usize,
    pub close: Close,
    /// Hold every connection open and idle this long before the round
    /// trips (to measure what idle connections cost the server).
    pub hold: Duration,
    /// Give up opening the connections after this long in all.
    pub connect_timeout: Duration,
}

#[derive(Default)]
struct ConnResult {
    latencies_us: Vec<u32>,
    error: Option<String>,
}

fn byte(conn: usize, round: usize, i: usize) -> u8 {
    (conn.wrapping_mul(31) ^ round.wrapping_mul(7) ^ i) as u8
}

async fn exchange(
    mut stream: TcpStream,
    conn: usize,
    load: EchoLoad,
    until: Instant,
) -> ConnResult {
    let mut result = ConnResult::default();
    let mut out = vec![0u8; load.message];
    let mut back = vec![0u8; load.message];
    let mut round = 0;
    let run = async {
        while Instant::now() < until {
            for (i, b) in out.iter_mut().enumerate() {
                *b = byte(conn, round, i);
            }
            let start = Instant::now();
            stream.write_all(&out).await.context("writing")?;
            stream
                .read_exact(&mut back)
                .await
                .context("reading the echo")?;
            if back != out {
                bail!("echo differs in round {round}");
            }
            result
                .latencies_us
                .push(start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            round += 1;
        }
        match load.close {
            Close::Fin => {
                stream.shutdown().await.context("shutting down")?;
                let mut rest = [0u8; 1];
                let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut rest))
                    .await
                    .context("no FIN from the server within 10 s")?
                    .context("reading the FIN")?;
                if n != 0 {
                    bail!("data after the echo");
                }
            }
            Close::Rst => {
                stream.set_zero_linger().context("SO_LINGER")?;
                drop(stream);
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    // Bounded: a server that stops answering fails the run, never hangs it.
    let deadline = tokio::time::Instant::from_std(until) + Duration::from_secs(15);
    match tokio::time::timeout_at(deadline, run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => result.error = Some(format!("{e:#}")),
        Err(_) => result.error = Some("no echo within 15 s of the end of the run".to_owned()),
    }
    result
}

/// Run the load; a one-line `key=value` report.
pub fn run(load: &EchoLoad) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    runtime.block_on(run_async(load.clone()))
}

async fn run_async(load: EchoLoad) -> Result<String> {
    let opened_at = Instant::now();
    let open_deadline = tokio::time::Instant::now() + load.connect_timeout;
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(load.connect_burst.max(1)));
    let mut connecting = tokio::task::JoinSet::new();
    for conn in 0..load.connections {
        let semaphore = semaphore.clone();
        let target = load.target;
        connecting.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let stream = tokio::time::timeout_at(open_deadline, TcpStream::connect(target))
                .await
                .map_err(|_| anyhow::anyhow!("connect timed out"))?
                .map_err(anyhow::Error::from)?;
            stream.set_nodelay(true)?;
            Ok::<_, anyhow::Error>((conn, stream))
        });
    }
    let mut streams = Vec::with_capacity(load.connections);
    let mut connect_errors = Vec::new();
    while let Some(joined) = connecting.join_next().await {
        match joined.context("connect task")? {
            Ok(pair) => streams.push(pair),
            Err(e) => connect_errors.push(format!("{e:#}")),
        }
    }
    let open_secs = opened_at.elapsed().as_secs_f64();
    if !connect_errors.is_empty() {
        bail!(
            "{} of {} connects failed (first: {}); opened {} in {open_secs:.2} s",
            connect_errors.len(),
            load.connections,
            connect_errors[0],
            streams.len()
        );
    }

    if !load.hold.is_zero() {
        println!(
            "echo-load: {} connections open, holding {:?}",
            streams.len(),
            load.hold
        );
        tokio::time::sleep(load.hold).await;
    }
    let start = Instant::now();
    let until = start + load.duration;
    let mut running = tokio::task::JoinSet::new();
    for (conn, stream) in streams {
        running.spawn(exchange(stream, conn, load.clone(), until));
    }
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    while let Some(joined) = running.join_next().await {
        let result = joined.context("connection task")?;
        latencies.extend(result.latencies_us);
        if let Some(e) = result.error {
            errors.push(e);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if !errors.is_empty() {
        bail!(
            "{} of {} connections failed (first: {})",
            errors.len(),
            load.connections,
            errors[0]
        );
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        latencies[((latencies.len() - 1) as f64 * p).round() as usize]
    };
    let rounds = latencies.len();
    Ok(format!(
        "echo-load connections={} message={} opened_in_s={open_secs:.3} seconds={secs:.3} round_trips={rounds} \
         rps={:.0} mbytes_per_s={:.2} p50_us={} p99_us={} max_us={} errors=0",
        load.connections,
        load.message,
        rounds as f64 / secs,
        (rounds * load.message * 2) as f64 / secs / 1e6,
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drives_a_kernel_echo_server_and_reports() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                std::thread::spawn(move || {
                    let mut reader = conn.try_clone().unwrap();
                    let _ = std::io::copy(&mut reader, &mut conn);
                });
            }
        });
        let line = run(&EchoLoad {
            target,
            connections: 20,
            message: 64,
            duration: Duration::from_millis(300),
            connect_burst: 20,
            close: Close::Fin,
            hold: Duration::ZERO,
            connect_timeout: Duration::from_secs(5),
        })
        .unwrap();
        assert!(line.contains("connections=20"), "{line}");
        assert!(line.contains("errors=0"), "{line}");
        let rounds: u64 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("round_trips="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(rounds > 20, "{line}");
    }
}
