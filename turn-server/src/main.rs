//! `turn-server`: the STUN/TURN relay on every simulated call's media path (RFC 8489, RFC 8656).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::{error, info, warn};
use turn_server::auth::Secret;
use turn_server::config::FileConfig;
use turn_server::io::{self, Settings, Snapshot};
use turn_server::policy::{Cidr, loopback};
use turn_server::{Config, Faults};

mod bench;
mod flood;

/// A STUN/TURN relay (RFC 8489 / RFC 8656) for softphone media: UDP, TCP and TLS listeners,
/// long-term and time-limited credentials, no open relay by default.
///
/// Flags override the configuration file. With only `--user` and `--allow-loopback-peers` it
/// serves UDP and TCP on 127.0.0.1:3478 and TLS on 127.0.0.1:5349 (self-signed).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// TOML configuration file (every field documented in the README).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// UDP and TCP listen address (repeatable) [default: 127.0.0.1:3478].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// TLS listen address (repeatable) [default: port 5349 on the first listen address].
    #[arg(long, value_name = "ADDR:PORT")]
    tls_listen: Vec<SocketAddr>,
    /// No TLS listener.
    #[arg(long, conflicts_with = "tls_listen")]
    no_tls: bool,
    /// Long-term credential (repeatable).
    #[arg(long, value_name = "NAME:PASSWORD")]
    user: Vec<String>,
    /// REALM [default: softphone-sim].
    #[arg(long)]
    realm: Option<String>,
    /// Shared secret of time-limited credentials (username `expiry:user`, password
    /// base64(HMAC-SHA1(secret, username)), as coturn's use-auth-secret).
    #[arg(long, value_name = "SECRET")]
    static_auth_secret: Option<String>,
    /// Lowest relayed port [default: 49152].
    #[arg(long)]
    min_port: Option<u16>,
    /// Highest relayed port [default: 65535].
    #[arg(long)]
    max_port: Option<u16>,
    /// Peer range to allow despite the default deny list (repeatable).
    #[arg(long, value_name = "CIDR")]
    allow_peer: Vec<Cidr>,
    /// Allow loopback peers (127.0.0.0/8, ::1).
    #[arg(long)]
    allow_loopback_peers: bool,
    /// TLS certificate chain (PEM) [default: self-signed at start].
    #[arg(long, value_name = "FILE", requires = "pkey")]
    cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pkey: Option<PathBuf>,
    /// HTTP address for Prometheus `/metrics` and the `/faults` control API.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// Allow `POST /faults` on the metrics endpoint (unauthenticated: keep it on loopback).
    #[arg(long)]
    http_faults: bool,
    /// Address relayed sockets bind on (IPv4 or IPv6) [default: the listen address].
    #[arg(long, value_name = "IP")]
    relay_ip: Vec<IpAddr>,
    /// Allocations per user [default: 100].
    #[arg(long)]
    user_quota: Option<u32>,
    /// Allocations in all, 486 beyond; lowered to what the descriptor limit holds
    /// [default: 10000].
    #[arg(long)]
    total_quota: Option<u32>,
    /// Relayed bits per second per allocation, both ways; 0 = no cap [default: 8000000].
    #[arg(long)]
    max_bps: Option<u64>,
    /// Seconds a TCP/TLS connection may hold no allocation before it is closed, from its start
    /// and from the end of its allocation (coturn: max-allocate-timeout) [default: 60].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    stream_idle_timeout: Option<u64>,
    /// TCP/TLS connections held at once, refused beyond; lowered to what the descriptor limit
    /// holds (coturn: no such limit) [default: 10000].
    #[arg(long, value_name = "N")]
    max_streams: Option<u32>,
    /// TCP/TLS connections one source address may hold, refused beyond (coturn: no such
    /// limit) [default: 1000].
    #[arg(long, value_name = "N")]
    max_streams_per_source: Option<u32>,
    /// Fault: answer every Allocate with 508.
    #[arg(long)]
    fault_refuse_allocations: bool,
    /// Fault: answer every credential with 401.
    #[arg(long)]
    fault_fail_auth: bool,
    /// Fault: answer nothing at all (a dead TURN node).
    #[arg(long)]
    fault_unresponsive: bool,
    /// Fault: close every TCP/TLS connection.
    #[arg(long)]
    fault_drop_streams: bool,
    /// Fault: hold every outgoing packet this many milliseconds.
    #[arg(long, value_name = "MS")]
    fault_delay_ms: Option<u64>,
    /// Log filter (RUST_LOG syntax) [default: info].
    #[arg(long)]
    log: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relay benchmark: ChannelData packets/s and added latency, ours and coturn's side by side.
    Bench(bench::BenchArgs),
    /// Connection-flood benchmark: what a second client sees while one address holds idle TCP
    /// connections, ours and coturn's side by side.
    BenchFlood(flood::FloodArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = &cli.command {
        init_log(cli.log.as_deref().unwrap_or("warn"));
        let (name, outcome) = match command {
            Command::Bench(args) => ("bench", bench::run(args)),
            Command::BenchFlood(args) => ("bench-flood", flood::run(args)),
        };
        return match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("turn-server {name}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let file = match &cli.config {
        Some(path) => match FileConfig::load(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("turn-server: {e}");
                return ExitCode::from(2);
            }
        },
        None => FileConfig::default(),
    };
    init_log(cli.log.as_deref().or(file.log.as_deref()).unwrap_or("info"));
    let settings = match settings(&cli, file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("turn-server: {e}");
            return ExitCode::from(2);
        }
    };
    let running = match io::start(settings) {
        Ok(r) => r,
        Err(e) => {
            error!(%e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let b = &running.bound;
    let list = |v: &[SocketAddr]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    // One machine-readable line on stdout for scripts that start us on port 0.
    println!(
        "turn-server ready udp={} tcp={} tls={} metrics={}",
        list(&b.udp),
        list(&b.tcp),
        list(&b.tls),
        b.metrics.map(|m| m.to_string()).unwrap_or_default()
    );
    info!(
        udp = list(&b.udp),
        tcp = list(&b.tcp),
        tls = list(&b.tls),
        "serving"
    );
    if running.capacity.clamped {
        warn!(
            "the descriptor limit ({}) lowered the configured limits to {} connections and {} \
             allocations: raise it (ulimit -n, systemd LimitNOFILE=) to hold more",
            running.capacity.descriptors, running.capacity.streams, running.capacity.allocations
        );
    }
    wait_for_signal();
    info!("shutting down");
    log_final(&running.stop());
    ExitCode::SUCCESS
}

fn init_log(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                let _ = tokio::signal::ctrl_c().await;
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    });
}

fn log_final(s: &Snapshot) {
    let c = &s.counters;
    info!(
        allocations_created = c.allocations_created,
        allocations_expired = c.allocations_expired,
        allocations_deleted = c.allocations_deleted,
        permissions_created = c.permissions_created,
        channels_bound = c.channels_bound,
        client_to_peer_packets = c.client_to_peer.packets,
        client_to_peer_bytes = c.client_to_peer.bytes,
        peer_to_client_packets = c.peer_to_client.packets,
        peer_to_client_bytes = c.peer_to_client.bytes,
        stream_connections = c.streams_opened,
        send_failed = s.edge.send_failed,
        "final counters"
    );
    for (reason, n) in &c.drops {
        info!(reason = reason.name(), dropped = n, "final drops");
    }
    for (code, n) in &c.errors {
        info!(code, responses = n, "final error responses");
    }
}

/// The file, then the flags on top.
fn settings(cli: &Cli, file: FileConfig) -> Result<Settings, String> {
    let mut core = Config::default();
    if let Some(r) = cli.realm.clone().or(file.realm) {
        core.realm = r;
    }
    for (name, pw) in file.users {
        core.credentials.users.insert(name, Secret(pw));
    }
    for u in &cli.user {
        let (name, pw) = u
            .split_once(':')
            .ok_or_else(|| format!("--user {u:?}: expected NAME:PASSWORD"))?;
        core.credentials
            .users
            .insert(name.to_owned(), Secret(pw.to_owned()));
    }
    core.credentials.static_auth_secret = cli
        .static_auth_secret
        .clone()
        .or(file.static_auth_secret)
        .map(Secret);
    if core.credentials.users.is_empty() && core.credentials.static_auth_secret.is_none() {
        return Err("no credentials: give --user NAME:PASSWORD or --static-auth-secret".into());
    }
    core.min_port = cli.min_port.or(file.min_port).unwrap_or(core.min_port);
    core.max_port = cli.max_port.or(file.max_port).unwrap_or(core.max_port);
    if core.min_port > core.max_port {
        return Err(format!(
            "min port {} > max port {}",
            core.min_port, core.max_port
        ));
    }
    core.relay_ipv4 = file.relay_ip;
    core.relay_ipv6 = file.relay_ipv6;
    for ip in &cli.relay_ip {
        match ip {
            IpAddr::V4(v4) => core.relay_ipv4 = Some(*v4),
            IpAddr::V6(v6) => core.relay_ipv6 = Some(*v6),
        }
    }
    core.peer_policy
        .allow
        .extend(file.allow_peer.unwrap_or_default().into_iter().map(|c| c.0));
    core.peer_policy
        .allow
        .extend(cli.allow_peer.iter().copied());
    if cli.allow_loopback_peers || file.allow_loopback_peers == Some(true) {
        core.peer_policy.allow.extend(loopback());
    }
    core.user_quota = cli
        .user_quota
        .or(file.user_quota)
        .unwrap_or(core.user_quota);
    core.total_quota = cli
        .total_quota
        .or(file.total_quota)
        .unwrap_or(core.total_quota);
    if let Some(secs) = cli
        .stream_idle_timeout
        .or(file.stream_idle_timeout.map(std::num::NonZeroU64::get))
    {
        core.stream_idle_timeout = Duration::from_secs(secs);
    }
    core.max_streams = cli
        .max_streams
        .or(file.max_streams)
        .unwrap_or(core.max_streams);
    core.max_streams_per_source = cli
        .max_streams_per_source
        .or(file.max_streams_per_source)
        .unwrap_or(core.max_streams_per_source);
    if let Some(bps) = cli.max_bps.or(file.max_bps) {
        core.bandwidth_bytes_per_sec = bps / 8;
    }
    if let Some(s) = file.nonce_lifetime {
        core.nonce_lifetime = Duration::from_secs(s);
    }
    if let Some(s) = file.max_lifetime {
        core.max_lifetime = Duration::from_secs(s.max(600));
    }
    if let Some(s) = file.software {
        core.software = s;
    }
    let listen = if cli.listen.is_empty() {
        file.listen
            .unwrap_or_else(|| vec![SocketAddr::from(([127, 0, 0, 1], 3478))])
    } else {
        cli.listen.clone()
    };
    // A wildcard listener gives no address to put in XOR-RELAYED-ADDRESS: it needs a relay IP.
    for l in &listen {
        let missing = match l.ip() {
            IpAddr::V4(ip) => ip.is_unspecified() && core.relay_ipv4.is_none(),
            IpAddr::V6(ip) => ip.is_unspecified() && core.relay_ipv6.is_none(),
        };
        if missing {
            return Err(format!(
                "listening on {l} needs --relay-ip (relay_ip in the file): the address clients \
                 and peers reach relayed ports on"
            ));
        }
    }
    let tls_listen = if cli.no_tls {
        Vec::new()
    } else if !cli.tls_listen.is_empty() {
        cli.tls_listen.clone()
    } else {
        file.tls_listen.unwrap_or_else(|| {
            listen
                .first()
                .map(|l| SocketAddr::new(l.ip(), 5349))
                .into_iter()
                .collect()
        })
    };
    let ff = file.faults;
    let faults = Faults {
        refuse_allocations: cli.fault_refuse_allocations || ff.refuse_allocations,
        fail_auth: cli.fault_fail_auth || ff.fail_auth,
        unresponsive: cli.fault_unresponsive || ff.unresponsive,
        drop_streams: cli.fault_drop_streams || ff.drop_streams,
        delay: Duration::from_millis(cli.fault_delay_ms.unwrap_or(ff.delay_ms)),
    };
    let tls_files = match (
        cli.cert.clone().or(file.cert),
        cli.pkey.clone().or(file.pkey),
    ) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("cert and pkey go together".into()),
    };
    Ok(Settings {
        core,
        listen,
        tls_listen,
        tls_files,
        tls_pem: None,
        metrics: cli.metrics.or(file.metrics),
        http_faults: cli.http_faults || file.http_faults == Some(true),
        faults,
    })
}
