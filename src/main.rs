//! `rauta`: the command line. Wiring only; the work is in the crates.

mod echo_client;
mod echo_load;
mod echo_server;
mod lab;
mod probe_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use rauta_netstack::{BindMode, IdlePolicy, XskConfig};
use rauta_xdp::{AttachMethod, AttachMode};
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "rauta", version, about = "Kernel-bypass Kubernetes gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build or remove the veth lab (network namespaces named PREFIX-*).
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// Operate on Rauta's XDP program.
    Xdp {
        #[command(subcommand)]
        action: XdpAction,
    },
    /// Serve ARP, ICMP echo and UDP/TCP echo (port 7) on an interface
    /// entirely in userspace, printing per-queue counters.
    Probe(ProbeArgs),
    /// Check an echo service: send a known byte stream, verify the echo.
    EchoClient(EchoClientArgs),
    /// Load an echo service: many connections at once, round trips for a
    /// while; reports rps and latency percentiles.
    EchoLoad(EchoLoadArgs),
    /// An HTTP/1.1 backend answering every request with JSON about it (the
    /// Gateway API conformance echo server's shape).
    Echo {
        /// ADDR:PORT to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum LabAction {
    /// Build the lab (replacing one of the same prefix).
    Up {
        /// Queues on the gateway's veth.
        #[arg(long, default_value_t = 2)]
        queues: u32,
        #[arg(long, default_value = "rauta")]
        prefix: String,
    },
    /// Remove the lab.
    Down {
        #[arg(long, default_value = "rauta")]
        prefix: String,
    },
}

#[derive(Subcommand)]
enum XdpAction {
    /// Detach Rauta's XDP program from an interface (another program is
    /// left alone).
    Detach { iface: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpAttachArg {
    /// BPF link: released by the kernel whenever the process exits.
    Link,
    /// Legacy netlink attach: stays after a crash until replaced.
    Netlink,
}

#[derive(Clone, Copy, ValueEnum)]
enum BindArg {
    Auto,
    Copy,
    Zerocopy,
}

#[derive(clap::Args)]
struct ProbeArgs {
    /// Interface to run on.
    #[arg(long)]
    iface: String,
    /// Address the userspace stack owns, ADDR/PREFIX.
    #[arg(long)]
    address: String,
    /// Queues (0..N) to open AF_XDP sockets on.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// Worker threads, each owning queues i, i+W, ... (default: one per queue).
    #[arg(long)]
    workers: Option<u32>,
    /// TCP receive buffer per connection, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    tcp_rx_buffer: usize,
    /// TCP send buffer per connection, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    tcp_tx_buffer: usize,
    /// Connections per worker at most; SYNs beyond are dropped.
    #[arg(long, default_value_t = 65_536)]
    max_connections: usize,
    /// Half-open (SYN received) connections per worker at most.
    #[arg(long, default_value_t = 4_096)]
    max_half_open: usize,
    /// Sockets kept ready per worker for bursts of new connections.
    #[arg(long, default_value_t = 64)]
    spare_sockets: usize,
    /// Where the XDP program runs.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpModeArg,
    /// How the XDP program is attached.
    #[arg(long, value_enum, default_value = "link")]
    xdp_attach: XdpAttachArg,
    /// AF_XDP bind mode.
    #[arg(long, value_enum, default_value = "auto")]
    bind: BindArg,
    /// UMEM frame size in bytes.
    #[arg(long, default_value_t = 4096)]
    frame_size: u32,
    /// Entries per AF_XDP ring (power of two).
    #[arg(long, default_value_t = 4096)]
    ring_size: u32,
    /// Descriptors per ring operation.
    #[arg(long, default_value_t = 64)]
    batch: u32,
    /// Empty loop passes before sleeping in poll(2).
    #[arg(long, default_value_t = 2000)]
    spin_loops: u32,
    /// Do not try 2 MiB hugepages for the UMEM.
    #[arg(long)]
    no_hugepages: bool,
    /// Seconds between counter reports.
    #[arg(long, default_value_t = 1.0)]
    report_every: f64,
}

#[derive(clap::Args)]
struct EchoClientArgs {
    /// ADDR:PORT of the echo service.
    #[arg(long)]
    target: std::net::SocketAddr,
    /// Bytes per connection (per datagram with --udp).
    #[arg(long, default_value_t = 1024)]
    bytes: usize,
    /// Concurrent connections (datagrams with --udp).
    #[arg(long, default_value_t = 1)]
    count: usize,
    #[arg(long)]
    udp: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum CloseArg {
    Fin,
    Rst,
}

#[derive(clap::Args)]
struct EchoLoadArgs {
    /// ADDR:PORT of the echo service.
    #[arg(long)]
    target: std::net::SocketAddr,
    /// Connections held open at once.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 64)]
    message: usize,
    /// Seconds of round trips once all connections are open.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Connects in flight at once while opening.
    #[arg(long, default_value_t = 256)]
    connect_burst: usize,
    /// How each connection ends.
    #[arg(long, value_enum, default_value = "fin")]
    close: CloseArg,
    /// Seconds to hold every connection open and idle before the round trips.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RAUTA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("rauta: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Lab { action } => match action {
            LabAction::Up { queues, prefix } => {
                let lab = lab::Lab::new(&prefix)?;
                for line in lab.up(queues)? {
                    println!("lab: made {line}");
                }
            }
            LabAction::Down { prefix } => {
                let removed = lab::Lab::new(&prefix)?.down()?;
                if removed.is_empty() {
                    println!("lab: nothing to remove");
                }
                for line in removed {
                    println!("lab: removed {line}");
                }
            }
        },
        Command::Xdp {
            action: XdpAction::Detach { iface },
        } => {
            lab::require_root("rauta xdp detach")?;
            match rauta_xdp::detach(&iface)? {
                rauta_xdp::Removed::Nothing => println!("no XDP program on {iface}"),
                rauta_xdp::Removed::Program(id) => {
                    println!("detached Rauta's XDP program (id {id}) from {iface}")
                }
            }
        }
        Command::Probe(args) => {
            let options = probe_cmd::ProbeOptions {
                address: probe_cmd::parse_cidr(&args.address)?,
                iface: args.iface,
                queues: args.queues,
                workers: args.workers.unwrap_or(args.queues),
                limits: probe_cmd::Limits {
                    max_connections: args.max_connections.max(1),
                    max_half_open: args.max_half_open.max(1),
                    spare_sockets: args.spare_sockets,
                },
                tcp: rauta_netstack::TcpConfig {
                    rx_buffer: args.tcp_rx_buffer.clamp(1024, 64 << 20),
                    tx_buffer: args.tcp_tx_buffer.clamp(1024, 64 << 20),
                    ..Default::default()
                },
                xdp_mode: match args.xdp_mode {
                    XdpModeArg::Auto => AttachMode::Auto,
                    XdpModeArg::Native => AttachMode::Native,
                    XdpModeArg::Generic => AttachMode::Generic,
                },
                xdp_attach: match args.xdp_attach {
                    XdpAttachArg::Link => AttachMethod::Link,
                    XdpAttachArg::Netlink => AttachMethod::Netlink,
                },
                xsk: XskConfig {
                    frame_size: args.frame_size,
                    ring_size: args.ring_size,
                    batch: args.batch,
                    bind_mode: match args.bind {
                        BindArg::Auto => BindMode::Auto,
                        BindArg::Copy => BindMode::Copy,
                        BindArg::Zerocopy => BindMode::ZeroCopy,
                    },
                    ..XskConfig::default()
                },
                idle: IdlePolicy {
                    spin_loops: args.spin_loops,
                    ..IdlePolicy::default()
                },
                report_every: Duration::from_secs_f64(args.report_every.clamp(0.05, 3600.0)),
            };
            probe_cmd::run(options, !args.no_hugepages)?;
        }
        Command::Echo { listen } => {
            echo_server::run(listen, echo_server::Identity::from_env())?;
        }
        Command::EchoLoad(args) => {
            let line = echo_load::run(&echo_load::EchoLoad {
                target: args.target,
                connections: args.connections.max(1),
                message: args.message.max(1),
                duration: Duration::from_secs_f64(args.duration.clamp(0.0, 3600.0)),
                connect_burst: args.connect_burst,
                close: match args.close {
                    CloseArg::Fin => echo_load::Close::Fin,
                    CloseArg::Rst => echo_load::Close::Rst,
                },
                connect_timeout: Duration::from_secs(30),
                hold: Duration::from_secs_f64(args.hold.clamp(0.0, 3600.0)),
            })?;
            println!("{line}");
        }
        Command::EchoClient(args) => {
            let summary = echo_client::run(&echo_client::EchoCheck {
                target: args.target,
                bytes: args.bytes,
                count: args.count.max(1),
                udp: args.udp,
                timeout: Duration::from_secs(args.timeout),
            })?;
            println!("{summary}");
        }
    }
    Ok(())
}
