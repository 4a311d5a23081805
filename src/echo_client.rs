//! A checking client for echo services (the probe's port 7): sends a
//! deterministic byte stream and verifies that exactly it comes back.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// What to send.
#[derive(Clone, Debug)]
pub struct EchoCheck {
    pub target: SocketAddr,
    /// Bytes per TCP connection, or per UDP datagram.
    pub bytes: usize,
    /// Concurrent TCP connections, or UDP datagrams in sequence.
    pub count: usize,
    pub udp: bool,
    /// Deadline for the whole check.
    pub timeout: Duration,
}

/// The byte at `offset` of stream `stream`: cheap, deterministic, and
/// different per stream so crossed streams are caught.
fn pattern(stream: usize, offset: usize) -> u8 {
    let x = (offset as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (stream as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    (x >> 56) as u8
}

/// Run the check; Ok with a one-line summary when every byte came back.
pub fn run(check: &EchoCheck) -> Result<String> {
    let start = Instant::now();
    let (total, checksums) = if check.udp {
        (udp(check)?, String::new())
    } else {
        tcp(check)?
    };
    let secs = start.elapsed().as_secs_f64();
    Ok(format!(
        "echo-client: {} {} of {} bytes to {}: all byte-exact{checksums}, {:.1} MB echoed in {:.3} s",
        check.count,
        if check.udp {
            "datagrams"
        } else {
            "connections"
        },
        check.bytes,
        check.target,
        total as f64 / 1e6,
        secs
    ))
}

fn tcp(check: &EchoCheck) -> Result<(usize, String)> {
    let deadline = Instant::now() + check.timeout;
    let handles: Vec<_> = (0..check.count)
        .map(|stream| {
            let check = check.clone();
            std::thread::spawn(move || tcp_stream(&check, stream, deadline))
        })
        .collect();
    let mut total = 0;
    let mut sums = Vec::new();
    let mut errors = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok((n, sent, received))) => {
                total += n;
                sums.push((sent, received));
            }
            Ok(Err(e)) => errors.push(format!("connection {i}: {e:#}")),
            Err(_) => errors.push(format!("connection {i}: thread panicked")),
        }
    }
    if !errors.is_empty() {
        bail!(
            "{} of {} connections failed; first: {}",
            errors.len(),
            check.count,
            errors[0]
        );
    }
    if let [(sent, received)] = sums[..] {
        return Ok((
            total,
            format!(", FNV-1a checksum sent {sent:016x} received {received:016x}"),
        ));
    }
    Ok((total, String::new()))
}

/// FNV-1a, 64-bit: a checksum of a stream, folded byte by byte.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn tcp_stream(check: &EchoCheck, stream: usize, deadline: Instant) -> Result<(usize, u64, u64)> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut socket = TcpStream::connect_timeout(&check.target, left.max(Duration::from_millis(1)))
        .with_context(|| format!("connecting to {}", check.target))?;
    socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
    socket.set_nodelay(true)?;
    let mut writer = socket.try_clone()?;
    let bytes = check.bytes;
    let sender = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut offset = 0;
        let mut sum = FNV_OFFSET;
        while offset < bytes {
            let n = chunk.len().min(bytes - offset);
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(stream, offset + i);
            }
            writer.write_all(&chunk[..n])?;
            sum = fnv1a(sum, &chunk[..n]);
            offset += n;
        }
        writer.shutdown(Shutdown::Write)?;
        Ok(sum)
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    let mut received_sum = FNV_OFFSET;
    loop {
        if Instant::now() > deadline {
            bail!("timed out after {received} of {bytes} bytes");
        }
        let n = socket
            .read(&mut buf)
            .with_context(|| format!("reading after {received} bytes"))?;
        if n == 0 {
            break;
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            if b != pattern(stream, received + i) {
                bail!("byte {} differs", received + i);
            }
        }
        received_sum = fnv1a(received_sum, &buf[..n]);
        received += n;
    }
    let sent_sum = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))?
        .context("sending")?;
    if received != bytes {
        bail!("got {received} bytes back, sent {bytes}");
    }
    if received_sum != sent_sum {
        bail!("checksums differ: sent {sent_sum:016x}, received {received_sum:016x}");
    }
    Ok((received, sent_sum, received_sum))
}

fn udp(check: &EchoCheck) -> Result<usize> {
    let socket = UdpSocket::bind(if check.target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    socket.connect(check.target)?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let deadline = Instant::now() + check.timeout;
    let mut buf = vec![0u8; check.bytes + 1];
    let mut total = 0;
    for datagram in 0..check.count {
        let payload: Vec<u8> = (0..check.bytes).map(|i| pattern(datagram, i)).collect();
        // UDP may lose a datagram: resend until it is echoed or time is up.
        loop {
            if Instant::now() > deadline {
                bail!("datagram {datagram} was never echoed");
            }
            socket.send(&payload)?;
            match socket.recv(&mut buf) {
                Ok(n) if buf[..n] == payload[..] => break,
                Ok(n) => bail!(
                    "datagram {datagram}: {n} bytes came back, not the {} sent",
                    payload.len()
                ),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e).context("receiving"),
            }
        }
        total += check.bytes;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn verifies_a_kernel_echo_server_and_catches_a_corrupting_one() {
        fn serve(corrupt: bool) -> SocketAddr {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let mut conn = conn.unwrap();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        let mut first = true;
                        loop {
                            let n = conn.read(&mut buf).unwrap();
                            if n == 0 {
                                break;
                            }
                            if corrupt && first {
                                buf[0] ^= 1;
                                first = false;
                            }
                            conn.write_all(&buf[..n]).unwrap();
                        }
                    });
                }
            });
            addr
        }
        let check = |target| EchoCheck {
            target,
            bytes: 100_000,
            count: 3,
            udp: false,
            timeout: Duration::from_secs(10),
        };
        run(&check(serve(false))).unwrap();
        let err = run(&check(serve(true))).unwrap_err().to_string();
        assert!(err.contains("differs"), "{err}");
    }
}
