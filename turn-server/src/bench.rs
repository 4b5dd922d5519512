//! `turn-server bench`: relayed ChannelData packets per second per core and the relay's added
//! latency, for our server and coturn's `turnserver` side by side, with one load generator.
//!
//! Each server runs as its own process on loopback. For every allocation count N the generator
//! opens N TURN clients (one UDP socket and one allocation each, a channel bound to one peer
//! socket) and sends `payload`-byte packets every `interval` in both directions: client →
//! ChannelData → relay → peer, and peer → relay → ChannelData → client. Each packet carries
//! its send time; the receiver records the one-way time in a histogram. The server's CPU time
//! comes from `/proc/PID/stat` (all its threads), so "packets/s per core" is relayed packets
//! divided by the CPU-seconds the server spent on them. A "direct" run (no relay, same
//! generator) gives the generator's own latency, subtracted to estimate what the relay adds.
// A load generator lives on the wall clock: the core's no-clock rule does not apply here.
#![allow(clippy::disallowed_methods)]

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::net::UdpSocket;
use turn_server::auth::long_term_key;
use turn_server::wire::{
    ChannelData, Class, MessageBuilder, Method, StunPacket, StunRepr, TransactionId, attr,
    decode_xor_address,
};

/// Benchmark options.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Allocation counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100, 500, 1000])]
    allocations: Vec<usize>,
    /// Measured seconds per run (after `--warmup`).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Warm-up seconds per run, not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Payload bytes per packet.
    #[arg(long, default_value_t = 160)]
    payload: usize,
    /// Milliseconds between packets of one flow, per direction.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Which directions carry packets: both, up (client → peer) or down (peer → client).
    #[arg(long, value_enum, default_value_t = Direction::Both)]
    direction: Direction,
    /// Runs of every configuration, interleaved; the report shows the median of each figure.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Which servers: ours, coturn or both.
    #[arg(long, value_enum, default_value_t = Servers::Both)]
    servers: Servers,
    /// coturn's server binary.
    #[arg(long, default_value = "turnserver")]
    coturn: String,
    /// Relay threads for coturn (`--relay-threads`); 0 keeps coturn's default.
    #[arg(long, default_value_t = 1)]
    coturn_relay_threads: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Direction {
    Both,
    Up,
    Down,
}

impl Direction {
    const fn count(self) -> f64 {
        if matches!(self, Self::Both) { 2.0 } else { 1.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Servers {
    Ours,
    Coturn,
    Both,
}

const USER: &str = "bench";
const PASSWORD: &str = "bench-pw";
const REALM: &str = "bench";

/// One measured run.
#[derive(Debug, Clone)]
struct RunResult {
    server: &'static str,
    allocations: usize,
    offered_pps: f64,
    relayed_pps: f64,
    cpu_cores: f64,
    loss: f64,
    p50_us: f64,
    p99_us: f64,
}

impl RunResult {
    fn per_core(&self) -> f64 {
        if self.cpu_cores > 0.0 {
            self.relayed_pps / self.cpu_cores
        } else {
            f64::NAN
        }
    }
}

pub(crate) fn run(args: &BenchArgs) -> Result<(), String> {
    if args.payload < 12 {
        return Err("--payload must be at least 12 bytes (timestamp and flow id)".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    let mut baselines = Vec::new();
    let mut servers: Vec<&'static str> = Vec::new();
    if args.servers != Servers::Coturn {
        servers.push("turn-server");
    }
    if args.servers != Servers::Ours {
        servers.push("coturn");
    }
    // Interleaved so that anything else running on the machine hits every server alike.
    for rep in 0..args.repeat.max(1) {
        for &n in &args.allocations {
            eprintln!("== run {}: {n} flows: direct (generator baseline)", rep + 1);
            let local = tokio::task::LocalSet::new();
            baselines.push(local.block_on(&rt, load(None, n, args))?);
            for &name in &servers {
                eprintln!("== run {}: {n} flows: {name}", rep + 1);
                let mut proc = if name == "coturn" {
                    spawn_coturn(&args.coturn, args.coturn_relay_threads, &Launch::default())?
                } else {
                    spawn_ours(&Launch::default())?
                };
                let local = tokio::task::LocalSet::new();
                let r = local.block_on(&rt, load(Some(&proc), n, args));
                proc.stop();
                results.push(RunResult { server: name, ..r? });
            }
        }
    }
    let baselines = medians(&baselines);
    let results = medians(&results);
    print_report(args, &baselines, &results);
    Ok(())
}

/// One row per (server, allocations), each figure the median over the repeated runs.
fn medians(runs: &[RunResult]) -> Vec<RunResult> {
    let mut out: Vec<RunResult> = Vec::new();
    for r in runs {
        if out
            .iter()
            .any(|o| o.server == r.server && o.allocations == r.allocations)
        {
            continue;
        }
        let same: Vec<&RunResult> = runs
            .iter()
            .filter(|o| o.server == r.server && o.allocations == r.allocations)
            .collect();
        let median = |f: fn(&RunResult) -> f64| {
            let mut v: Vec<f64> = same.iter().map(|r| f(r)).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        out.push(RunResult {
            server: r.server,
            allocations: r.allocations,
            offered_pps: r.offered_pps,
            relayed_pps: median(|r| r.relayed_pps),
            cpu_cores: median(|r| r.cpu_cores),
            loss: median(|r| r.loss),
            p50_us: median(|r| r.p50_us),
            p99_us: median(|r| r.p99_us),
        });
    }
    out
}

fn print_report(args: &BenchArgs, baselines: &[RunResult], results: &[RunResult]) {
    let cmd: Vec<String> = std::env::args().skip(1).collect();
    println!(
        "Relayed ChannelData, {} B payloads, one packet per {} ms per flow, directions: {:?}; \
         {} s measured after {} s warm-up, median of {} interleaved run(s); latency is one-way \
         through the relay minus the generator's direct (no relay) latency at the same \
         percentile.\n",
        args.payload,
        args.interval_ms,
        args.direction,
        args.seconds,
        args.warmup,
        args.repeat.max(1)
    );
    println!(
        "Command: `cargo run --release -p turn-server -- {}`\n",
        cmd.join(" ")
    );
    println!(
        "| server | allocations | offered pkt/s | relayed pkt/s | server CPU (cores) | \
         pkt/s per core | added p50 (µs) | added p99 (µs) | loss |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let base = baselines.iter().find(|b| b.allocations == r.allocations);
        let (b50, b99) = base.map_or((0.0, 0.0), |b| (b.p50_us, b.p99_us));
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.3} % |",
            r.server,
            r.allocations,
            r.offered_pps,
            r.relayed_pps,
            r.cpu_cores,
            r.per_core(),
            (r.p50_us - b50).max(0.0),
            (r.p99_us - b99).max(0.0),
            r.loss * 100.0
        );
    }
    println!();
    for b in baselines {
        println!(
            "Generator alone (direct, {} flows): p50 {:.0} µs, p99 {:.0} µs.",
            b.allocations, b.p50_us, b.p99_us
        );
    }
    for ours in results.iter().filter(|r| r.server == "turn-server") {
        if let Some(c) = results
            .iter()
            .find(|r| r.server == "coturn" && r.allocations == ours.allocations)
        {
            println!(
                "Ratio at {} allocations, turn-server / coturn packets/s per core: {:.2}",
                ours.allocations,
                ours.per_core() / c.per_core()
            );
        }
    }
}

/// How a server under test is started, beyond UDP and TCP on a free loopback port.
#[derive(Debug, Clone, Default)]
pub(crate) struct Launch {
    /// The server's descriptor limit, soft and hard (`ulimit -n`); the bench's own otherwise.
    pub(crate) descriptors: Option<u64>,
    /// TLS certificate chain and key (PEM files): a TLS listener on a free port; none without.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
}

impl Launch {
    /// `program`, under the descriptor limit when there is one (the shell `exec`s it, so the
    /// child's PID is the server's).
    fn command(&self, program: &OsStr) -> Command {
        match self.descriptors {
            None => Command::new(program),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(program);
                c
            }
        }
    }
}

/// A server process under test.
pub(crate) struct ServerProc {
    child: Child,
    /// UDP and TCP (the same port).
    pub(crate) addr: SocketAddr,
    /// TLS, when launched with it.
    pub(crate) tls: Option<SocketAddr>,
    /// Our `/metrics` (coturn has none here).
    pub(crate) metrics: Option<SocketAddr>,
}

impl ServerProc {
    pub(crate) fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// User + system CPU time of the whole process, all threads.
    fn cpu_time(&self) -> Duration {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) else {
            return Duration::ZERO;
        };
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields
            .get(11..13)
            .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second())
    }

    /// Resident memory now, bytes (`VmRSS`).
    pub(crate) fn rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// Descriptors the process has open now.
    pub(crate) fn descriptors_open(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, Iterator::count)
    }

    /// Whether it is still running.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// Our server, from this very binary.
pub(crate) fn spawn_ours(launch: &Launch) -> Result<ServerProc, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = launch.command(exe.as_os_str());
    cmd.args(["--listen", "127.0.0.1:0", "--realm", REALM])
        .args(["--metrics", "127.0.0.1:0"])
        .args([
            "--user",
            &format!("{USER}:{PASSWORD}"),
            "--allow-loopback-peers",
        ])
        .args([
            "--max-bps",
            "0",
            "--user-quota",
            "100000",
            "--total-quota",
            "100000",
        ])
        .args(["--log", "warn"]);
    match &launch.tls {
        Some((cert, key)) => {
            cmd.args(["--tls-listen", "127.0.0.1:0", "--cert"])
                .arg(cert)
                .arg("--pkey")
                .arg(key);
        }
        None => {
            cmd.arg("--no-tls");
        }
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting turn-server: {e}"))?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|a| a.split(',').next()?.parse::<SocketAddr>().ok())
    };
    let addr = field("udp=")
        .ok_or_else(|| format!("turn-server did not say where it listens: {line:?}"))?;
    Ok(ServerProc {
        tls: field("tls="),
        metrics: field("metrics="),
        child,
        addr,
    })
}

/// A free loopback port (UDP; TCP on it is free as well in practice on loopback).
fn free_port() -> Result<u16, String> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// coturn's `turnserver`, configured like ours: loopback, one long-term user, no DTLS, no
/// RFC 6062 TCP relay.
pub(crate) fn spawn_coturn(
    program: &str,
    relay_threads: u32,
    launch: &Launch,
) -> Result<ServerProc, String> {
    let port = free_port()?;
    let pidfile = std::env::temp_dir().join(format!("bench-coturn-{}.pid", std::process::id()));
    let mut cmd = launch.command(OsStr::new(program));
    cmd.args([
        "-n",
        "--listening-ip",
        "127.0.0.1",
        "--relay-ip",
        "127.0.0.1",
    ])
    .args([
        "--listening-port",
        &port.to_string(),
        "--lt-cred-mech",
        "--realm",
        REALM,
    ])
    .args([
        "--user",
        &format!("{USER}:{PASSWORD}"),
        "--allow-loopback-peers",
    ])
    .args([
        "--no-dtls",
        "--no-cli",
        "--no-tcp-relay",
        "--log-file",
        "stdout",
    ])
    .arg("--pidfile")
    .arg(&pidfile)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let tls = match &launch.tls {
        Some((cert, key)) => {
            let tls_port = free_port()?;
            cmd.args(["--tls-listening-port", &tls_port.to_string(), "--cert"])
                .arg(cert)
                .arg("--pkey")
                .arg(key);
            Some(SocketAddr::from(([127, 0, 0, 1], tls_port)))
        }
        None => {
            cmd.arg("--no-tls");
            None
        }
    };
    if relay_threads > 0 {
        cmd.args(["--relay-threads", &relay_threads.to_string()]);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {program}: {e}"))?;
    let proc = ServerProc {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        tls,
        metrics: None,
    };
    // Wait until it answers a Binding request (bounded: 5 s).
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let req = MessageBuilder::new(Method::BINDING, Class::Request, TransactionId([1; 12])).finish();
    for _ in 0..50 {
        let _ = probe.send_to(&req, proc.addr);
        let mut buf = [0u8; 512];
        if probe.recv_from(&mut buf).is_ok() {
            return Ok(proc);
        }
    }
    Err("coturn did not answer a Binding request within 5 s".into())
}

/// One flow: a client socket with its allocation, and the relayed address.
struct Flow {
    socket: Rc<UdpSocket>,
    relay: SocketAddr,
}

#[derive(Default)]
struct Tally {
    received: u64,
    latency_ns: Option<Histogram<u64>>,
    measuring: bool,
}

impl Tally {
    fn record(&mut self, payload: &[u8], epoch: Instant) {
        if !self.measuring || payload.len() < 8 {
            return;
        }
        self.received += 1;
        let sent = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
        let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if let Some(h) = &mut self.latency_ns {
            let _ = h.record(now.saturating_sub(sent).max(1));
        }
    }
}

/// Runs the load against `server` (or directly between the sockets when `None`).
async fn load(
    server: Option<&ServerProc>,
    n: usize,
    args: &BenchArgs,
) -> Result<RunResult, String> {
    let peer = Rc::new(
        UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?,
    );
    let peer_addr = peer.local_addr().map_err(|e| e.to_string())?;
    let mut flows = Vec::with_capacity(n);
    for i in 0..n {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let relay = match server {
            Some(s) => {
                socket.connect(s.addr).await.map_err(|e| e.to_string())?;
                setup_flow(&socket, peer_addr, i).await?
            }
            None => {
                socket.connect(peer_addr).await.map_err(|e| e.to_string())?;
                socket.local_addr().map_err(|e| e.to_string())?
            }
        };
        flows.push(Flow {
            socket: Rc::new(socket),
            relay,
        });
    }
    let epoch = Instant::now();
    let tally = Rc::new(RefCell::new(Tally::default()));
    let relayed = server.is_some();
    let mut tasks = Vec::new();
    for f in &flows {
        let (socket, tally) = (f.socket.clone(), tally.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut buf = vec![0u8; 2048];
            // Readiness, then every queued datagram: one wake-up per burst, not per packet.
            while socket.readable().await.is_ok() {
                while let Ok(n) = socket.try_recv(&mut buf) {
                    let mut t = tally.borrow_mut();
                    if relayed {
                        if let Ok(cd) = ChannelData::new_checked(&buf[..n]) {
                            t.record(cd.data(), epoch);
                        }
                    } else {
                        t.record(&buf[..n], epoch);
                    }
                }
            }
        }));
    }
    {
        let (peer, tally) = (peer.clone(), tally.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut buf = vec![0u8; 2048];
            while peer.readable().await.is_ok() {
                while let Ok((n, _)) = peer.try_recv_from(&mut buf) {
                    tally.borrow_mut().record(&buf[..n], epoch);
                }
            }
        }));
    }
    // The sender: every millisecond, the flows of that millisecond's slot send one packet
    // each way, so that load is spread evenly over the interval.
    let slots = args.interval_ms.max(1);
    let warmup_end = epoch + Duration::from_secs(args.warmup);
    let end = warmup_end + Duration::from_secs(args.seconds);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut payload = vec![0u8; args.payload];
    let mut k: u64 = 0;
    let mut cpu_start = Duration::ZERO;
    let mut sent_in_window = 0u64;
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= end {
            break;
        }
        let measuring = now >= warmup_end;
        {
            let mut t = tally.borrow_mut();
            if measuring && !t.measuring {
                t.measuring = true;
                t.latency_ns = Histogram::new_with_bounds(1, 60_000_000_000, 3).ok();
                cpu_start = server.map_or(Duration::ZERO, ServerProc::cpu_time);
            }
        }
        let slot = usize::try_from(k % slots).unwrap_or(0);
        let step = usize::try_from(slots).unwrap_or(1);
        for (i, f) in flows.iter().enumerate().skip(slot).step_by(step) {
            let ts = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(0);
            payload[..8].copy_from_slice(&ts.to_be_bytes());
            payload[8..12].copy_from_slice(&u32::try_from(i).unwrap_or(0).to_be_bytes());
            let out = if relayed {
                ChannelData::<&[u8]>::emit(0x4000, &payload, false)
            } else {
                payload.clone()
            };
            let a = args.direction != Direction::Down && f.socket.try_send(&out).is_ok();
            let b = args.direction != Direction::Up && peer.try_send_to(&payload, f.relay).is_ok();
            if measuring {
                sent_in_window += u64::from(a) + u64::from(b);
            }
        }
        k += 1;
    }
    let window = Duration::from_secs(args.seconds);
    let cpu = server.map_or(Duration::ZERO, |s| s.cpu_time().saturating_sub(cpu_start));
    // Let packets in flight land, then stop counting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for t in &tasks {
        t.abort();
    }
    let t = tally.borrow();
    let (p50, p99) = t.latency_ns.as_ref().map_or((0.0, 0.0), |h| {
        (
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        )
    });
    let flows_per_s = 1000.0 / args.interval_ms.max(1) as f64;
    Ok(RunResult {
        server: "direct",
        allocations: n,
        offered_pps: args.direction.count() * n as f64 * flows_per_s,
        relayed_pps: t.received as f64 / window.as_secs_f64(),
        cpu_cores: cpu.as_secs_f64() / window.as_secs_f64(),
        loss: if sent_in_window > 0 {
            1.0 - (t.received as f64 / sent_in_window as f64).min(1.0)
        } else {
            0.0
        },
        p50_us: p50,
        p99_us: p99,
    })
}

/// Allocate (answering the 401 challenge) and bind channel 0x4000 to the peer.
async fn setup_flow(socket: &UdpSocket, peer: SocketAddr, i: usize) -> Result<SocketAddr, String> {
    let mut nonce: Option<String> = None;
    let mut relay = None;
    let steps = [Method::ALLOCATE, Method::CHANNEL_BIND];
    let mut step = 0;
    let mut seq: u32 = 0;
    // Bounded: each step gets a challenge and an answer, with a retry for loss.
    for _ in 0..12 {
        if step == steps.len() {
            break;
        }
        seq += 1;
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&seq.to_be_bytes());
        id[4..12].copy_from_slice(&(i as u64).to_be_bytes());
        let txid = TransactionId(id);
        let method = steps[step];
        let request = signed_request(method, txid, nonce.as_deref(), |b| {
            if method == Method::ALLOCATE {
                b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
            } else {
                b.u32_attribute(attr::CHANNEL_NUMBER, 0x4000 << 16)
                    .xor_address(attr::XOR_PEER_ADDRESS, peer);
            }
        });
        socket.send(&request).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1500];
        let Ok(Ok(len)) = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await
        else {
            continue;
        };
        let Some(answer) = Answer::parse(&buf[..len], txid) else {
            continue;
        };
        match answer {
            Answer::Success { relayed } => {
                if method == Method::ALLOCATE {
                    relay = relayed;
                }
                step += 1;
            }
            Answer::Challenge { nonce: n } => nonce = Some(n),
            Answer::Error { code } => {
                return Err(format!("flow {i}: {method:?} failed with {code:?}"));
            }
        }
    }
    relay
        .filter(|_| step == steps.len())
        .ok_or_else(|| format!("flow {i}: setup timed out"))
}

/// A request as the bench's one user sends it: signed once a nonce is known.
pub(crate) fn signed_request(
    method: Method,
    txid: TransactionId,
    nonce: Option<&str>,
    attrs: impl FnOnce(&mut MessageBuilder),
) -> Vec<u8> {
    let mut b = MessageBuilder::new(method, Class::Request, txid);
    attrs(&mut b);
    if let Some(n) = nonce {
        b.attribute(attr::USERNAME, USER.as_bytes())
            .attribute(attr::REALM, REALM.as_bytes())
            .attribute(attr::NONCE, n.as_bytes())
            .integrity(
                turn_server::wire::IntegrityKind::Sha1,
                &long_term_key(USER, REALM, PASSWORD),
            );
    }
    b.finish_with_fingerprint()
}

/// A server's answer to one of the bench's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Success, with the relayed address when it was an Allocate.
    Success { relayed: Option<SocketAddr> },
    /// 401 or 438 with a nonce: sign and ask again.
    Challenge { nonce: String },
    /// Any other error.
    Error { code: Option<u16> },
}

impl Answer {
    /// The answer to `txid` in `bytes`; `None` for anything else (or nothing readable).
    pub(crate) fn parse(bytes: &[u8], txid: TransactionId) -> Option<Self> {
        let p = StunPacket::new_checked(bytes).ok()?;
        if p.transaction_id() != txid {
            return None;
        }
        let repr = StunRepr::parse(&p).ok()?;
        match p.class() {
            Class::Success => Some(Self::Success {
                relayed: p
                    .attributes()
                    .find(|a| a.kind == attr::XOR_RELAYED_ADDRESS)
                    .and_then(|a| decode_xor_address(a.value, &txid)),
            }),
            Class::Error => {
                let code = p
                    .attributes()
                    .find(|a| a.kind == attr::ERROR_CODE)
                    .and_then(|a| {
                        Some(u16::from(a.value.get(2)? & 7) * 100 + u16::from(*a.value.get(3)?))
                    });
                Some(match (code, repr.nonce) {
                    (Some(401 | 438), Some(n)) => Self::Challenge {
                        nonce: n.to_owned(),
                    },
                    _ => Self::Error { code },
                })
            }
            _ => None,
        }
    }
}
