//! `rauta`: the command line. Wiring only; the work is in the crates.

mod admin;
mod echo_client;
mod echo_load;
mod echo_server;
mod kernel_neighbours;
mod kernel_routes;
mod lab;
mod probe_cmd;
mod run_cmd;
mod xdp_setup;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use rauta_dataplane::gate::{ConnectionGate, ConnectionLimits};
use rauta_dataplane::legs::LegChoice;
use rauta_netstack::{BindMode, IdlePolicy, XskConfig};
use rauta_xdp::{AttachMethod, AttachMode};
use std::sync::Arc;
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
    /// Run the gateway: listeners and routes from the Gateway API manifests
    /// in --config, proxied over the userspace stack (--io xdp) or kernel
    /// sockets (--io kernel).
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions Rauta reads beside Gateway API
    /// (BackendTrafficPolicy), as deploy/ has them.
    Crds,
    /// Validate a directory of manifests: errors name file, object and field.
    CheckConfig {
        dir: std::path::PathBuf,
        #[command(flatten)]
        selection: SelectionArgs,
    },
    /// An HTTP/1.1 backend answering every request with JSON about it (the
    /// Gateway API conformance echo server's shape).
    Echo {
        /// ADDR:PORT to listen on (repeatable). Each port serves HTTP/1.1
        /// and, to clients that open with the preface, h2c.
        #[arg(long, required = true)]
        listen: Vec<std::net::SocketAddr>,
        /// Print echo-basic's line for every request echoed ("Echoing back
        /// request made to PATH to client (PEER)"), as its logs show it.
        #[arg(long)]
        log_requests: bool,
        /// Hold every HTTP/1.1 answer back this long (a Go duration, e.g.
        /// `20ms`): a slow endpoint.
        #[arg(long, value_parser = echo_server::parse_go_duration)]
        delay: Option<std::time::Duration>,
        /// Answer every N-th HTTP/1.1 request with 503.
        #[arg(long, default_value_t = 0)]
        fail_every: u64,
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
enum AddressModeArg {
    Dedicated,
    Node,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

impl From<XdpModeArg> for AttachMode {
    fn from(mode: XdpModeArg) -> Self {
        match mode {
            XdpModeArg::Auto => AttachMode::Auto,
            XdpModeArg::Native => AttachMode::Native,
            XdpModeArg::Generic => AttachMode::Generic,
        }
    }
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
struct SelectionArgs {
    /// Serve Gateways of this GatewayClass (repeatable).
    #[arg(long = "gateway-class", default_value = "rauta")]
    gateway_classes: Vec<String>,
    /// Serve only this Gateway, NAMESPACE/NAME (repeatable; default: all of
    /// the class).
    #[arg(long = "gateway")]
    gateways: Vec<String>,
}

impl SelectionArgs {
    fn selection(self) -> rauta_controlplane::Selection {
        rauta_controlplane::Selection {
            gateway_classes: self.gateway_classes,
            gateways: self.gateways,
            own: Default::default(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IoArg {
    /// AF_XDP sockets and the userspace TCP/IP stack.
    Xdp,
    /// Kernel sockets (epoll).
    Kernel,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BalanceArg {
    /// Power of two random choices over latency × outstanding requests.
    LeastRequest,
    /// Each endpoint in turn.
    RoundRobin,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Transport.
    #[arg(long, value_enum, default_value = "kernel")]
    io: IoArg,
    /// Directory of Gateway, HTTPRoute, Service and EndpointSlice manifests
    /// (watched: changes apply without a restart).
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    config: Option<std::path::PathBuf>,
    /// Routes from the cluster's Gateway API objects (watched), status
    /// written back by the elected leader.
    #[arg(long)]
    kubernetes: bool,
    /// With --kubernetes: the kubeconfig (default: in-cluster, then
    /// KUBECONFIG, then ~/.kube/config).
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<std::path::PathBuf>,
    /// With --kubernetes: GatewayClasses with this controllerName are served.
    #[arg(long, default_value = "rauta.dev/gateway-controller")]
    controller_name: String,
    /// With --kubernetes: namespace of the leader-election Lease (default
    /// POD_NAMESPACE, else rauta-system).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// With --kubernetes: this replica's identity in the election (default
    /// POD_NAME, else the host name).
    #[arg(long)]
    identity: Option<String>,
    #[command(flatten)]
    selection: SelectionArgs,
    /// kernel: IP address to listen on (default all); xdp: ADDR/PREFIX the
    /// userspace stack owns, or with --address-mode node the node's address
    /// to share (default: the interface's primary IPv4 address).
    #[arg(long)]
    address: Option<String>,
    /// xdp: `dedicated`: --address is the gateway's alone (it answers ARP;
    /// everything sent to it is the gateway's). `node`: the node's own
    /// address, shared with its kernel: XDP takes only TCP to the listener
    /// ports and to --ephemeral-ports; ARP, ICMP, SSH and every other port
    /// stay with the kernel.
    #[arg(long, value_enum, default_value = "dedicated")]
    address_mode: AddressModeArg,
    /// xdp: the userspace stack's IPv6 address beside --address (dual
    /// stack): ADDR/PREFIX of its own, or with --address-mode node the
    /// node's IPv6 address to share. kernel: an IPv6 address to listen on
    /// as well.
    #[arg(long)]
    address6: Option<String>,
    /// xdp, node address: the userspace stack's outbound ports, FIRST-LAST
    /// (default 61000-65535). They must lie outside the kernel's
    /// net.ipv4.ip_local_port_range unless reserved from it
    /// (net.ipv4.ip_local_reserved_ports); the gateway checks at start.
    #[arg(long)]
    ephemeral_ports: Option<String>,
    /// xdp: interface to run on.
    #[arg(long)]
    iface: Option<String>,
    /// xdp: queues (0..N) to open AF_XDP sockets on.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// Worker threads (kernel default 1; xdp default one per queue).
    #[arg(long)]
    workers: Option<u32>,
    /// Admin server address (/metrics, /healthz, /readyz, /config).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: String,
    /// Seconds a request head may take from its first byte (and an HTTP/2
    /// preface and first SETTINGS frame from the connection's start).
    #[arg(long, default_value_t = 10.0)]
    request_head_timeout: f64,
    /// Longest pause, in seconds, between request body bytes.
    #[arg(long, default_value_t = 60.0)]
    request_body_timeout: f64,
    /// Seconds to open a backend connection.
    #[arg(long, default_value_t = 5.0)]
    connect_timeout: f64,
    /// Attempts a request may make, the first included, when a backend
    /// refuses or times out a connection, or resets one before answering
    /// (idempotent requests without a body): each on the next endpoint.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..))]
    max_attempts: u8,
    /// How each worker picks an endpoint among a backend's.
    #[arg(long, value_enum, default_value_t = BalanceArg::LeastRequest)]
    load_balancing: BalanceArg,
    /// Circuit breaker: requests each worker may have in flight to one
    /// endpoint; a request that finds every endpoint at it gets 503 at
    /// once (counted as cause `overflow`).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_requests_per_endpoint: u32,
    /// Bytes of a request (head and body) kept to send it again under a
    /// route's `retry`; a larger request is not retried.
    #[arg(long, default_value_t = 64 * 1024)]
    retry_buffer: usize,
    /// Retries a worker allows per request it saw over the last 10 s
    /// (the retry budget), on top of --retry-budget-min-per-second.
    #[arg(long, default_value_t = 0.2)]
    retry_budget_ratio: f64,
    /// Retries a second each worker allows whatever the traffic.
    #[arg(long, default_value_t = 10)]
    retry_budget_min_per_second: u32,
    /// Seconds from the end of a forwarded request to the response head.
    #[arg(long, default_value_t = 30.0)]
    response_timeout: f64,
    /// Longest pause, in seconds, in relaying a response body (backend
    /// silent or client not reading).
    #[arg(long, default_value_t = 60.0)]
    response_body_timeout: f64,
    /// Seconds an idle HTTP/1.1 client connection is kept between requests.
    #[arg(long, default_value_t = 60.0)]
    idle_timeout: f64,
    /// Seconds an HTTP/2 client connection with no open stream is kept.
    #[arg(long, default_value_t = 180.0)]
    h2_idle_timeout: f64,
    /// Seconds SIGTERM waits for requests in flight.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_body: u64,
    /// Largest request head, bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    max_header_bytes: usize,
    /// Client connections the gateway holds at most, over all workers and
    /// listeners; past it a new connection is reset and counted
    /// (`rauta_connections_refused_total{reason="connections"}`).
    #[arg(long, default_value_t = 50_000)]
    max_client_connections: usize,
    /// Client connections one listener port holds at most (default: only
    /// the gateway-wide limit).
    #[arg(long)]
    max_connections_per_listener: Option<usize>,
    /// Resident memory past which new client connections are refused:
    /// bytes, with an optional Ki/Mi/Gi suffix, or `none`. Default: 90% of
    /// the container's memory limit (cgroup `memory.max`), none without one.
    #[arg(long, value_parser = parse_memory_budget)]
    memory_budget: Option<MemoryBudget>,
    /// xdp: where the XDP program runs.
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpModeArg,
    /// xdp: do not try 2 MiB hugepages for the UMEM.
    #[arg(long)]
    no_hugepages: bool,
    /// xdp: how backend connections go out: `auto` takes the userspace
    /// stack where it reaches the endpoint (its link, routes out of its
    /// interface) and a kernel socket elsewhere (a pod on this node, a
    /// tunnel); `userspace` or `kernel` forces one.
    #[arg(long, default_value = "auto")]
    backend_legs: LegChoice,
    #[command(flatten)]
    edge: EdgeArgs,
}

/// How request heads are admitted, before route match (see
/// docs/operations.md, "Edge defaults").
#[derive(clap::Args)]
struct EdgeArgs {
    /// Decode percent-encoded unreserved characters and remove `.` and
    /// `..` segments (RFC 3986) before routing; the backend gets the
    /// normalised path.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    normalize_path: bool,
    /// Merge runs of `/` in paths into one.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    merge_slashes: bool,
    /// Encoded slashes (`%2F`, `%5C`) in a path: `keep` them encoded,
    /// `reject` (400), `decode` and forward, or `redirect` the client to
    /// the decoded path (307; gRPC gets 400).
    #[arg(long, value_enum, default_value = "redirect")]
    escaped_slashes: EscapedSlashesArg,
    /// Request header names holding `_`: `reject` (400), `drop` the
    /// fields, or `allow`.
    #[arg(long, value_enum, default_value = "reject")]
    headers_with_underscores: UnderscoresArg,
    /// CIDRs of the proxies in front of the gateway (comma-separated or
    /// repeated): only their X-Forwarded-For/-Proto/-Host/-Port and
    /// Forwarded fields are kept and extended; any other client's are
    /// removed.
    #[arg(long, value_delimiter = ',')]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Also append an RFC 7239 `Forwarded: for=…;proto=http` element.
    #[arg(long, value_enum, default_value = "x-forwarded-only")]
    forwarded: ForwardedArg,
}

impl EdgeArgs {
    fn settings(&self) -> rauta_dataplane::proxy::AdmitSettings {
        use rauta_dataplane::path::EscapedSlashes;
        use rauta_dataplane::proxy::{ForwardedPolicy, UnderscoreHeaders};
        rauta_dataplane::proxy::AdmitSettings {
            path: rauta_dataplane::path::PathPolicy {
                normalize: self.normalize_path,
                merge_slashes: self.merge_slashes,
                escaped_slashes: match self.escaped_slashes {
                    EscapedSlashesArg::Keep => EscapedSlashes::Keep,
                    EscapedSlashesArg::Reject => EscapedSlashes::Reject,
                    EscapedSlashesArg::Decode => EscapedSlashes::Decode,
                    EscapedSlashesArg::Redirect => EscapedSlashes::Redirect,
                },
            },
            underscores: match self.headers_with_underscores {
                UnderscoresArg::Reject => UnderscoreHeaders::Reject,
                UnderscoresArg::Drop => UnderscoreHeaders::Drop,
                UnderscoresArg::Allow => UnderscoreHeaders::Allow,
            },
            trusted_proxies: self.trusted_proxies.clone(),
            forwarded: match self.forwarded {
                ForwardedArg::XForwardedOnly => ForwardedPolicy::XForwardedOnly,
                ForwardedArg::Append => ForwardedPolicy::Append,
            },
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum EscapedSlashesArg {
    Keep,
    Reject,
    Decode,
    Redirect,
}

#[derive(Clone, Copy, ValueEnum)]
enum UnderscoresArg {
    Reject,
    Drop,
    Allow,
}

#[derive(Clone, Copy, ValueEnum)]
enum ForwardedArg {
    XForwardedOnly,
    Append,
}

/// `--memory-budget`.
#[derive(Clone, Copy, Debug)]
enum MemoryBudget {
    Bytes(u64),
    Unlimited,
}

fn parse_memory_budget(text: &str) -> Result<MemoryBudget, String> {
    if text == "none" {
        return Ok(MemoryBudget::Unlimited);
    }
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        _ => {
            return Err(format!(
                "{text:?}: expected bytes with Ki, Mi or Gi, or none"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .map(MemoryBudget::Bytes)
        .ok_or_else(|| format!("{text:?}: expected a positive number of bytes"))
}

/// This machine's name, for the leader election's identity.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("rauta-{}", std::process::id()))
}

fn seconds(value: f64) -> Duration {
    Duration::from_secs_f64(value.clamp(0.001, 86_400.0))
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
                xdp: xdp_setup::XdpOptions {
                    address: xdp_setup::parse_cidr(&args.address)?,
                    address6: None,
                    addressing: xdp_setup::Addressing::Dedicated,
                    iface: args.iface,
                    queues: args.queues,
                    workers: args.workers.unwrap_or(args.queues),
                    limits: xdp_setup::Limits {
                        max_connections: args.max_connections.max(1),
                        max_half_open: args.max_half_open.max(1),
                        spare_sockets: args.spare_sockets,
                    },
                    tcp: rauta_netstack::TcpConfig {
                        rx_buffer: args.tcp_rx_buffer.clamp(1024, 64 << 20),
                        tx_buffer: args.tcp_tx_buffer.clamp(1024, 64 << 20),
                        ..Default::default()
                    },
                    xdp_mode: args.xdp_mode.into(),
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
                    hugepages: !args.no_hugepages,
                },
                idle: IdlePolicy {
                    spin_loops: args.spin_loops,
                    ..IdlePolicy::default()
                },
                report_every: Duration::from_secs_f64(args.report_every.clamp(0.05, 3600.0)),
            };
            probe_cmd::run(options)?;
        }
        Command::CheckConfig { dir, selection } => {
            run_cmd::check_config(dir, selection.selection())?;
        }
        Command::Run(args) => {
            let selection = args.selection.selection();
            let source = match args.config {
                Some(dir) => run_cmd::RouteSource::Dir(dir),
                None => run_cmd::RouteSource::Kubernetes {
                    kubeconfig: args.kubeconfig,
                    options: Box::new(rauta_controlplane::kubernetes::KubeOptions {
                        controller_name: args.controller_name,
                        gateways: selection.gateways.clone(),
                        // The address Gateways are reached at: --address
                        // without its prefix, unless it is "any".
                        addresses: args
                            .address
                            .as_deref()
                            .and_then(|a| a.split('/').next()?.parse::<std::net::IpAddr>().ok())
                            .filter(|ip| !ip.is_unspecified())
                            .into_iter()
                            .collect(),
                        // Set where the transport knows its addresses.
                        own: Default::default(),
                        lease: rauta_controlplane::kubernetes::lease::LeaseSettings::new(
                            args.lease_namespace
                                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                                .unwrap_or_else(|| "rauta-system".into()),
                            args.identity
                                .or_else(|| std::env::var("POD_NAME").ok())
                                .unwrap_or_else(host_name),
                        ),
                    }),
                },
            };
            let options = run_cmd::RunOptions {
                source,
                selection,
                admin: match args.admin.as_str() {
                    "" | "off" => None,
                    a => Some(a.parse().map_err(|_| {
                        anyhow::anyhow!("--admin {a:?}: expected ADDR:PORT or off")
                    })?),
                },
                workers: args.workers.unwrap_or(match args.io {
                    IoArg::Kernel => 1,
                    IoArg::Xdp => args.queues,
                }) as usize,
                settings: rauta_dataplane::proxy::ProxySettings {
                    limits: rauta_dataplane::http1::Limits {
                        max_body: args.max_body,
                        max_head_bytes: args.max_header_bytes.max(1024),
                        ..Default::default()
                    },
                    deadlines: rauta_dataplane::proxy::Deadlines {
                        request_head: seconds(args.request_head_timeout),
                        request_body: seconds(args.request_body_timeout),
                        connect: seconds(args.connect_timeout),
                        response_head: seconds(args.response_timeout),
                        response_body: seconds(args.response_body_timeout),
                        keep_alive: seconds(args.idle_timeout),
                        http2_idle: seconds(args.h2_idle_timeout),
                    },
                    max_attempts: args.max_attempts,
                    retry_buffer: args.retry_buffer,
                    max_requests_per_endpoint: args.max_requests_per_endpoint,
                    load_balancing: match args.load_balancing {
                        BalanceArg::LeastRequest => {
                            rauta_dataplane::proxy::LoadBalancing::LeastRequest
                        }
                        BalanceArg::RoundRobin => rauta_dataplane::proxy::LoadBalancing::RoundRobin,
                    },
                    retry_budget: rauta_dataplane::proxy::RetryBudgetSettings {
                        ratio: args.retry_budget_ratio.max(0.0),
                        min_per_second: args.retry_budget_min_per_second,
                    },
                    admit: args.edge.settings(),
                    gate: Arc::new(ConnectionGate::new(ConnectionLimits {
                        max_connections: Some(args.max_client_connections.max(1)),
                        max_per_listener: args.max_connections_per_listener.map(|n| n.max(1)),
                        memory_budget: match args.memory_budget {
                            Some(MemoryBudget::Bytes(bytes)) => Some(bytes),
                            Some(MemoryBudget::Unlimited) => None,
                            None => rauta_dataplane::gate::cgroup_memory_limit()
                                .map(|limit| limit / 10 * 9),
                        },
                    })),
                    ..Default::default()
                },
                drain_timeout: seconds(args.drain_timeout),
            };
            if options.workers == 0 {
                anyhow::bail!("--workers must be at least 1");
            }
            match args.io {
                IoArg::Kernel => {
                    let address = match args.address.as_deref() {
                        None => std::net::IpAddr::from([0, 0, 0, 0]),
                        Some(a) => a.parse().map_err(|_| {
                            anyhow::anyhow!("--address {a:?}: expected an IP address")
                        })?,
                    };
                    let mut addresses = vec![address];
                    if let Some(a) = args.address6.as_deref() {
                        let v6: std::net::Ipv6Addr = a.parse().map_err(|_| {
                            anyhow::anyhow!("--address6 {a:?}: expected an IPv6 address")
                        })?;
                        addresses.push(v6.into());
                    }
                    run_cmd::run_kernel(options, addresses)?;
                }
                IoArg::Xdp => {
                    let iface = args
                        .iface
                        .ok_or_else(|| anyhow::anyhow!("--io xdp needs --iface"))?;
                    let (address, addressing) = match args.address_mode {
                        AddressModeArg::Dedicated => {
                            let address = args.address.as_deref().ok_or_else(|| {
                                anyhow::anyhow!(
                                    "--io xdp needs --address ADDR/PREFIX (an address only the \
                                     gateway holds), or --address-mode node"
                                )
                            })?;
                            (
                                xdp_setup::parse_cidr(address)?,
                                xdp_setup::Addressing::Dedicated,
                            )
                        }
                        AddressModeArg::Node => {
                            let ephemeral = match args.ephemeral_ports.as_deref() {
                                None => xdp_setup::NODE_EPHEMERAL_PORTS,
                                Some(text) => xdp_setup::parse_port_range(text)
                                    .filter(|r| *r.start() >= 1024)
                                    .ok_or_else(|| {
                                        anyhow::anyhow!(
                                            "--ephemeral-ports {text:?}: expected FIRST-LAST, \
                                             e.g. 61000-65535 (from 1024 up)"
                                        )
                                    })?,
                            };
                            (
                                xdp_setup::node_address(&iface, args.address.as_deref())?,
                                xdp_setup::Addressing::Node { ephemeral },
                            )
                        }
                    };
                    let address6 = match (&args.address6, &addressing) {
                        (None, _) => None,
                        (Some(text), xdp_setup::Addressing::Dedicated) => {
                            Some(xdp_setup::parse_cidr6(text)?)
                        }
                        (Some(text), xdp_setup::Addressing::Node { .. }) => {
                            Some(xdp_setup::node_address6(&iface, text)?)
                        }
                    };
                    let xdp = xdp_setup::XdpOptions {
                        address,
                        address6,
                        addressing,
                        iface,
                        queues: args.queues,
                        workers: options.workers as u32,
                        limits: xdp_setup::Limits {
                            max_connections: 65_536,
                            max_half_open: 4_096,
                            spare_sockets: 64,
                        },
                        tcp: rauta_netstack::TcpConfig::default(),
                        xdp_mode: args.xdp_mode.into(),
                        xdp_attach: AttachMethod::Link,
                        xsk: XskConfig::default(),
                        hugepages: !args.no_hugepages,
                    };
                    run_cmd::run_xdp(options, xdp, IdlePolicy::default(), args.backend_legs)?;
                }
            }
        }
        Command::Crds => print!("{}", rauta_controlplane::policy::crd_yaml()?),
        Command::Echo {
            listen,
            log_requests,
            delay,
            fail_every,
        } => {
            let identity = echo_server::Identity {
                log_requests,
                faults: echo_server::Faults {
                    delay: delay.unwrap_or_default(),
                    fail_every,
                },
                ..echo_server::Identity::from_env()
            };
            echo_server::run(&listen, identity)?;
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
