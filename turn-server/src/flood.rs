//! `turn-server bench-flood`: what a second client sees while one address floods the server with
//! idle TCP connections, for our server and coturn's `turnserver` side by side.
//!
//! Each server runs as its own process under the same descriptor limit (`ulimit -n`). The
//! flooder opens `--connections` TCP connections from 127.0.0.1 that send nothing, keeping
//! those the server keeps (a refused one is reset at once and closed here); then a second
//! client on 127.0.0.2 allocates over UDP, TCP and TLS and the time each takes is measured, as
//! is our `/metrics`; the server's resident memory and open descriptors are read from `/proc`.
// A load generator lives on the wall clock: the core's no-clock rule does not apply here.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use turn_server::wire::{Method, TransactionId, attr, frame_len};

use crate::bench::{Answer, Launch, ServerProc, Servers, signed_request, spawn_coturn, spawn_ours};

/// Flood benchmark options.
#[derive(Debug, clap::Args)]
pub(crate) struct FloodArgs {
    /// Idle TCP connections the flooder opens from 127.0.0.1.
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Each server's descriptor limit (`ulimit -n`, soft and hard).
    #[arg(long, default_value_t = 20_000)]
    descriptors: u64,
    /// Which servers: ours, coturn or both.
    #[arg(long, value_enum, default_value_t = Servers::Both)]
    servers: Servers,
    /// coturn's server binary.
    #[arg(long, default_value = "turnserver")]
    coturn: String,
}

/// How long one step of the second client may take before it counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Connects in a row that time out before the flood stops (the listen backlog is full).
const GIVE_UP_AFTER: usize = 20;

/// One server's figures.
struct FloodResult {
    server: &'static str,
    attempted: usize,
    held: usize,
    flood_time: Duration,
    rss_idle: u64,
    rss_flooded: u64,
    fds_flooded: usize,
    udp: Result<Duration, String>,
    tcp: Result<Duration, String>,
    tls: Result<Duration, String>,
    metrics: Option<Result<Duration, String>>,
    alive: bool,
    during: Probes,
}

pub(crate) fn run(args: &FloodArgs) -> Result<(), String> {
    let connections = own_descriptors(args.connections)?;
    let dir = std::env::temp_dir().join(format!("turn-server-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io_error)?;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(|e| e.to_string())?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).map_err(io_error)?;
    std::fs::write(&key, ck.signing_key.serialize_pem()).map_err(io_error)?;
    let tls = tls_client(ck.cert.der())?;
    let launch = Launch {
        descriptors: Some(args.descriptors),
        tls: Some((cert, key)),
    };
    let mut results = Vec::new();
    if args.servers != Servers::Coturn {
        eprintln!("== turn-server: {connections} idle connections from 127.0.0.1");
        let proc = spawn_ours(&launch)?;
        results.push(flood("turn-server", proc, connections, &tls));
    }
    if args.servers != Servers::Ours {
        eprintln!("== coturn: {connections} idle connections from 127.0.0.1");
        let proc = spawn_coturn(&args.coturn, 0, &launch)?;
        results.push(flood("coturn", proc, connections, &tls));
    }
    let _ = std::fs::remove_dir_all(&dir);
    print_report(args, &results);
    Ok(())
}

/// Raises this process's descriptor limit so that it can hold `wanted` connections, and says
/// how many it can.
fn own_descriptors(wanted: usize) -> Result<usize, String> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let need = wanted as u64 + 512;
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(need);
    if current >= need {
        return Ok(wanted);
    }
    // Raising the hard limit needs privilege; the soft one can always go up to the hard one.
    let hard = limit.maximum.unwrap_or(need);
    let target = if setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(need),
            maximum: Some(need.max(hard)),
        },
    )
    .is_ok()
    {
        need
    } else {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
        hard
    };
    let can = usize::try_from(target.saturating_sub(512)).unwrap_or(wanted);
    if can < wanted {
        eprintln!("the flooder's descriptor limit holds {can} connections, not {wanted}");
    }
    Ok(can.min(wanted))
}

fn flood(
    server: &'static str,
    mut proc: ServerProc,
    connections: usize,
    tls: &Arc<rustls::ClientConfig>,
) -> FloodResult {
    let rss_idle = proc.rss();
    let flooder = IpAddr::from([127, 0, 0, 1]);
    let prober = Prober::start(proc.addr);
    let started = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(connections);
    let (mut attempted, mut timeouts_in_a_row, mut timeouts) = (0, 0, 0);
    let mut checked = 0;
    while attempted < connections && timeouts_in_a_row < GIVE_UP_AFTER {
        attempted += 1;
        match connect_from(flooder, proc.addr, Duration::from_millis(500)) {
            Ok(s) => {
                timeouts_in_a_row = 0;
                held.push(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                timeouts += 1;
                timeouts_in_a_row += 1;
            }
            Err(_) => {}
        }
        if held.len() - checked >= 256 {
            checked = drop_refused(&mut held, checked);
        }
    }
    // Let the server take what is left in its backlog, then count what it kept.
    std::thread::sleep(Duration::from_millis(500));
    let kept = drop_refused(&mut held, 0);
    let flood_time = started.elapsed();
    let rss_flooded = proc.rss();
    let fds_flooded = proc.descriptors_open();
    eprintln!(
        "   {} of {attempted} connections held ({timeouts} connects timed out), RSS {:.1} MB; \
         second client on 127.0.0.2",
        kept,
        mb(rss_flooded)
    );
    let other = IpAddr::from([127, 0, 0, 2]);
    let during = prober.finish();
    let udp = timed(|| allocate_udp(other, proc.addr, false));
    let tcp = timed(|| {
        let mut s = connect_from(other, proc.addr, STEP_TIMEOUT).map_err(io_error)?;
        allocate_stream(&mut s)
    });
    let tls = match proc.tls {
        Some(addr) => timed(|| {
            let s = connect_from(other, addr, STEP_TIMEOUT).map_err(io_error)?;
            let name =
                rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let conn =
                rustls::ClientConnection::new(tls.clone(), name).map_err(|e| e.to_string())?;
            allocate_stream(&mut rustls::StreamOwned::new(conn, s))
        }),
        None => Err("no TLS listener".into()),
    };
    let metrics = proc.metrics.map(|m| timed(|| scrape(m)));
    let alive = proc.alive();
    drop(held);
    proc.stop();
    FloodResult {
        server,
        attempted,
        held: kept,
        flood_time,
        rss_idle,
        rss_flooded,
        fds_flooded,
        udp,
        tcp,
        tls,
        metrics,
        alive,
        during,
    }
}

/// A second client that allocates (and releases) over UDP and over TCP every
/// [`PROBE_INTERVAL`] while the flood goes on.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Probes>,
}

/// What the second client saw during the flood.
#[derive(Default)]
struct Probes {
    udp: Vec<Duration>,
    tcp: Vec<Duration>,
    failures: Vec<String>,
}

const PROBE_INTERVAL: Duration = Duration::from_millis(200);

impl Prober {
    fn start(server: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let other = IpAddr::from([127, 0, 0, 2]);
            let mut p = Probes::default();
            while !flag.load(Ordering::Relaxed) {
                match timed(|| allocate_udp(other, server, true)) {
                    Ok(d) => p.udp.push(d),
                    Err(e) => p.failures.push(format!("UDP: {e}")),
                }
                let tcp = timed(|| {
                    let mut s = connect_from(other, server, STEP_TIMEOUT).map_err(io_error)?;
                    allocate_stream(&mut s)
                });
                match tcp {
                    Ok(d) => p.tcp.push(d),
                    Err(e) => p.failures.push(format!("TCP: {e}")),
                }
                std::thread::sleep(PROBE_INTERVAL);
            }
            p
        });
        Self { stop, thread }
    }

    fn finish(self) -> Probes {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

impl Probes {
    /// "median / worst (count)" of one kind.
    fn summary(times: &[Duration]) -> String {
        if times.is_empty() {
            return "none".into();
        }
        let mut t = times.to_vec();
        t.sort();
        format!(
            "{:.1} / {:.1} ms ({})",
            t[t.len() / 2].as_secs_f64() * 1e3,
            t[t.len() - 1].as_secs_f64() * 1e3,
            t.len()
        )
    }
}

/// Closes the connections from `from` on that the server has reset; returns how many remain.
fn drop_refused(held: &mut Vec<TcpStream>, from: usize) -> usize {
    let mut kept = held.split_off(from);
    kept.retain(|s| {
        let _ = s.set_nonblocking(true);
        let mut byte = [0u8; 1];
        let open =
            matches!((&*s).read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        let _ = s.set_nonblocking(false);
        open
    });
    held.extend(kept);
    held.len()
}

fn connect_from(ip: IpAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    s.bind(&SocketAddr::new(ip, 0).into())?;
    s.connect_timeout(&to.into(), timeout)?;
    let s = TcpStream::from(s);
    s.set_read_timeout(Some(STEP_TIMEOUT))?;
    s.set_write_timeout(Some(STEP_TIMEOUT))?;
    Ok(s)
}

/// An I/O error as the table shows it: a socket timeout (`EAGAIN` on Linux) says so.
#[allow(clippy::needless_pass_by_value)]
fn io_error(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

fn timed(f: impl FnOnce() -> Result<(), String>) -> Result<Duration, String> {
    let t = Instant::now();
    f().map(|()| t.elapsed())
}

fn txid(i: u8) -> TransactionId {
    let mut id = [0x42; 12];
    id[0] = i;
    TransactionId(id)
}

fn allocate_request(i: u8, nonce: Option<&str>) -> (TransactionId, Vec<u8>) {
    let id = txid(i);
    let request = signed_request(Method::ALLOCATE, id, nonce, |b| {
        b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
    });
    (id, request)
}

/// Allocate over UDP from `ip`, answering the challenge; then delete the allocation when
/// `release` (a Refresh with lifetime 0, not waited for).
fn allocate_udp(ip: IpAddr, server: SocketAddr, release: bool) -> Result<(), String> {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(io_error)?;
    s.set_read_timeout(Some(STEP_TIMEOUT)).map_err(io_error)?;
    let mut nonce = None;
    for i in 0..3 {
        let (id, request) = allocate_request(i, nonce.as_deref());
        s.send_to(&request, server).map_err(io_error)?;
        let mut buf = [0u8; 1500];
        let (n, _) = s.recv_from(&mut buf).map_err(io_error)?;
        match Answer::parse(&buf[..n], id) {
            Some(Answer::Success { .. }) => {
                if release {
                    let delete = signed_request(Method::REFRESH, txid(9), nonce.as_deref(), |b| {
                        b.u32_attribute(attr::LIFETIME, 0);
                    });
                    let _ = s.send_to(&delete, server);
                }
                return Ok(());
            }
            Some(Answer::Challenge { nonce: n }) => nonce = Some(n),
            Some(Answer::Error { code }) => return Err(format!("error {code:?}")),
            None => return Err("unreadable answer".into()),
        }
    }
    Err("challenged three times".into())
}

/// Allocate over a TCP or TLS stream, answering the challenge.
fn allocate_stream(s: &mut (impl Read + Write)) -> Result<(), String> {
    let mut nonce = None;
    for i in 0..3 {
        let (id, request) = allocate_request(i, nonce.as_deref());
        s.write_all(&request).map_err(io_error)?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head).map_err(io_error)?;
        let len = frame_len(&head).ok().flatten().ok_or("not a STUN frame")?;
        let mut frame = head.to_vec();
        frame.resize(len, 0);
        s.read_exact(&mut frame[4..]).map_err(io_error)?;
        match Answer::parse(&frame, id) {
            Some(Answer::Success { .. }) => return Ok(()),
            Some(Answer::Challenge { nonce: n }) => nonce = Some(n),
            Some(Answer::Error { code }) => return Err(format!("error {code:?}")),
            None => return Err("unreadable answer".into()),
        }
    }
    Err("challenged three times".into())
}

fn scrape(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, STEP_TIMEOUT).map_err(io_error)?;
    s.set_read_timeout(Some(STEP_TIMEOUT)).map_err(io_error)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .map_err(io_error)?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(io_error)?;
    if text.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(text.lines().next().unwrap_or("no answer").to_owned())
    }
}

/// A TLS client that trusts only the bench's own certificate.
fn tls_client(
    cert: &rustls::pki_types::CertificateDer<'_>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.clone().into_owned())
        .map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn print_report(args: &FloodArgs, results: &[FloodResult]) {
    let show = |r: &Result<Duration, String>| match r {
        Ok(d) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
        Err(e) => format!("failed: {e}"),
    };
    println!(
        "\nConnection flood: up to {} idle TCP connections from 127.0.0.1; each server limited \
         to {} descriptors; a second client on 127.0.0.2 allocates while they are held.\n",
        args.connections, args.descriptors
    );
    println!(
        "| server | open (not reset) / attempted | flood took | RSS idle → flooded | descriptors open | UDP allocate | TCP allocate | TLS allocate | /metrics | still up |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        println!(
            "| {} | {} / {} | {:.1} s | {:.1} → {:.1} MB | {} | {} | {} | {} | {} | {} |",
            r.server,
            r.held,
            r.attempted,
            r.flood_time.as_secs_f64(),
            mb(r.rss_idle),
            mb(r.rss_flooded),
            r.fds_flooded,
            show(&r.udp),
            show(&r.tcp),
            show(&r.tls),
            r.metrics.as_ref().map_or_else(|| "n/a".into(), show),
            if r.alive { "yes" } else { "no" },
        );
    }
    println!(
        "\nWhile the flood was going on, the second client allocated every {} ms \
         (median / worst):\n",
        PROBE_INTERVAL.as_millis()
    );
    println!("| server | UDP allocate | TCP allocate | failures |");
    println!("|---|---|---|---|");
    for r in results {
        let mut failures = std::collections::BTreeMap::<&str, usize>::new();
        for f in &r.during.failures {
            *failures.entry(f).or_default() += 1;
        }
        let failures: Vec<String> = failures.iter().map(|(f, n)| format!("{n}× {f}")).collect();
        println!(
            "| {} | {} | {} | {} |",
            r.server,
            Probes::summary(&r.during.udp),
            Probes::summary(&r.during.tcp),
            if failures.is_empty() {
                "none".to_owned()
            } else {
                failures.join("; ")
            }
        );
    }
}
