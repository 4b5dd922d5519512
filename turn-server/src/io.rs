//! The tokio edge around the sans-I/O [`Server`]: UDP and TCP listeners, TLS listeners
//! (rustls, self-signed when no certificate is given), one UDP socket per relayed address, an
//! HTTP endpoint for Prometheus `/metrics` and the `/faults` control API, and a [`Handle`] the
//! embedding program (the simulator, the binary) uses to inject faults, read counters and shut
//! down.
//!
//! Everything runs on one thread: a current-thread tokio runtime with a `LocalSet`, the core in
//! a `RefCell`. Each input is one mutation followed by a drain (STYLE.md's edge loop), UDP
//! replies go out with a non-blocking `send_to` straight from the drain, and a timer task sleeps until
//! [`Server::poll_timeout`].
//!
//! What an outsider can make the server hold is bounded: at start the edge raises its
//! descriptor limit to the hard limit and splits what it allows between TCP/TLS connections and
//! relayed sockets, keeping a reserve for the listeners and the metrics endpoint
//! ([`Capacity`]); the core refuses connections past its limits and closes idle ones
//! ([`crate::streams`]); the metrics endpoint has its own small connection limits.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::{JoinHandle, spawn_local};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use crate::server::{
    Config, Counters, DropReason, Event, Faults, FiveTuple, Gauges, Server, Transmit, Transport,
};
use crate::streams::{StreamClose, StreamRefusal};

/// The edge's clock: the one place the crate reads it.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

#[allow(clippy::disallowed_methods)]
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What to listen on and how the core is configured.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The core's configuration.
    pub core: Config,
    /// UDP and TCP listen addresses (port 0 picks a free port).
    pub listen: Vec<SocketAddr>,
    /// TLS listen addresses.
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain and private key; a self-signed certificate when `None`.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// The same in memory (PEM chain, PEM key), for a server embedded in another program;
    /// takes precedence over `tls_files`.
    pub tls_pem: Option<(String, String)>,
    /// HTTP address of `/metrics` and `/faults`.
    pub metrics: Option<SocketAddr>,
    /// Whether `POST /faults` may change faults (an unauthenticated control: off by default,
    /// for loopback use by the simulator).
    pub http_faults: bool,
    /// Faults in force at start.
    pub faults: Faults,
}

impl Settings {
    /// A server on loopback for tests and demos: UDP and TCP on `127.0.0.1` (a free port), one
    /// long-term user, loopback peers allowed (the relayed far end is on this machine too).
    pub fn loopback(user: &str, password: &str, realm: &str) -> Self {
        let mut core = Config {
            realm: realm.to_owned(),
            ..Config::default()
        };
        core.credentials
            .users
            .insert(user.to_owned(), crate::auth::Secret(password.to_owned()));
        core.peer_policy.allow.extend(crate::policy::loopback());
        Self {
            core,
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ..Self::default()
        }
    }
}

/// The addresses actually bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bound {
    /// UDP listeners.
    pub udp: Vec<SocketAddr>,
    /// TCP listeners.
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners.
    pub tls: Vec<SocketAddr>,
    /// The metrics/control endpoint.
    pub metrics: Option<SocketAddr>,
}

/// What the edge counts on top of the core (the core counts TCP/TLS connections: opened,
/// refused and closed, in [`Counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeCounters {
    /// Packets the socket refused (full buffer, or a vanished TCP connection).
    pub send_failed: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: u64,
    /// Relayed sockets that could not be bound.
    pub relay_bind_failures: u64,
    /// `accept` calls that failed (out of descriptors and the like): the connection waits in
    /// the listen backlog.
    pub accept_failures: u64,
    /// Connections to the metrics endpoint refused past its limits.
    pub http_refused: u64,
    /// Bytes waiting to be written to TCP/TLS clients now (a gauge).
    pub stream_queued_bytes: u64,
}

/// What the server can hold, worked out at start from the process's descriptor limit
/// (`RLIMIT_NOFILE`): every TCP/TLS connection and every relayed socket takes a descriptor, and
/// a reserve stays for the listeners, the metrics endpoint and the runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    /// The descriptor limit in force (the soft limit, after raising it).
    pub descriptors: u64,
    /// The soft limit before it was raised to the hard one, when it was.
    pub raised_from: Option<u64>,
    /// Descriptors already open when the server started (the embedding program's).
    pub open_at_start: u64,
    /// Descriptors kept back from connections and relayed sockets.
    pub reserve: u64,
    /// TCP/TLS connections held at once.
    pub streams: u32,
    /// TCP/TLS connections one source address may hold.
    pub streams_per_source: u32,
    /// Allocations held at once (each has a relayed socket).
    pub allocations: u32,
    /// Whether the configured limits were lowered to fit the descriptors.
    pub clamped: bool,
}

impl std::fmt::Display for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "holds {} TCP/TLS connections ({} per source address) and {} allocations; \
             descriptor limit {}",
            self.streams, self.streams_per_source, self.allocations, self.descriptors
        )?;
        if let Some(from) = self.raised_from {
            write!(f, " (raised from {from})")?;
        }
        write!(
            f,
            ", {} open at start, {} in reserve",
            self.open_at_start, self.reserve
        )
    }
}

/// Counters, gauges and faults at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The core's counters.
    pub counters: Counters,
    /// The core's table sizes.
    pub gauges: Gauges,
    /// The edge's counters.
    pub edge: EdgeCounters,
    /// The faults in force.
    pub faults: Faults,
    /// What the server can hold.
    pub capacity: Capacity,
}

impl Snapshot {
    /// The counters (not the gauges) as named totals, `label.value` where the Prometheus
    /// rendering has a label: `error_responses.401`, `dropped.no_permission`, and the edge's
    /// failed sends as `send_failed`.
    #[must_use]
    pub fn totals(&self) -> Vec<(String, u64)> {
        let (c, e) = (&self.counters, &self.edge);
        let mut rows: Vec<(String, u64)> = [
            ("allocations_created", c.allocations_created),
            ("allocations_expired", c.allocations_expired),
            ("allocations_deleted", c.allocations_deleted),
            ("permissions_created", c.permissions_created),
            ("channels_bound", c.channels_bound),
            ("relayed_packets.client_to_peer", c.client_to_peer.packets),
            ("relayed_packets.peer_to_client", c.peer_to_client.packets),
            ("relayed_bytes.client_to_peer", c.client_to_peer.bytes),
            ("relayed_bytes.peer_to_client", c.peer_to_client.bytes),
            ("send_failed", e.send_failed),
            ("stream_connections", c.streams_opened),
            (
                "stream_connections_dropped",
                c.closed(StreamClose::Fault) + c.refused(StreamRefusal::Fault),
            ),
            ("stream_framing_errors", c.closed(StreamClose::Framing)),
            ("tls_handshake_failures", e.tls_handshake_failures),
            ("relay_bind_failures", e.relay_bind_failures),
            ("accept_failures", e.accept_failures),
            ("http_refused", e.http_refused),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        rows.extend(
            c.requests
                .iter()
                .map(|(m, v)| (format!("requests.{m}"), *v)),
        );
        rows.extend(
            c.errors
                .iter()
                .map(|(code, v)| (format!("error_responses.{code}"), *v)),
        );
        rows.extend(
            DropReason::ALL
                .iter()
                .map(|r| (format!("dropped.{}", r.name()), c.dropped(*r))),
        );
        rows.extend(
            StreamRefusal::ALL
                .iter()
                .map(|r| (format!("streams_refused.{}", r.name()), c.refused(*r))),
        );
        rows.extend(
            StreamClose::ALL
                .iter()
                .map(|r| (format!("streams_closed.{}", r.name()), c.closed(*r))),
        );
        rows
    }
}

enum Command {
    SetFaults(Faults, std::sync::mpsc::Sender<()>),
    Snapshot(oneshot::Sender<Snapshot>),
    Shutdown,
}

/// Controls a running server from any thread: the fault-injection control API.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Command>,
}

impl Handle {
    /// Replaces the faults in force, and returns once the server has applied them (so that
    /// the next packet sees them), or after a second if the server has stopped. Turning
    /// `drop_streams` on closes every TCP/TLS connection and refuses new ones until it is
    /// turned off.
    pub fn set_faults(&self, faults: Faults) {
        let (ack, applied) = std::sync::mpsc::channel();
        if self.tx.send(Command::SetFaults(faults, ack)).is_ok() {
            // A std channel: waiting here is safe even from inside an async runtime.
            let _ = applied.recv_timeout(Duration::from_secs(1));
        }
    }

    /// The counters now (`None` once the server has stopped).
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Snapshot(tx)).ok()?;
        rx.await.ok()
    }

    /// [`Handle::snapshot`] for callers outside any async runtime.
    #[must_use]
    pub fn snapshot_blocking(&self) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Snapshot(tx)).ok()?;
        rx.blocking_recv().ok()
    }

    /// Asks the server to stop.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}

/// A server running on its own thread. Dropping it stops the server.
#[derive(Debug)]
pub struct Running {
    /// The addresses bound.
    pub bound: Bound,
    /// What it can hold.
    pub capacity: Capacity,
    handle: Handle,
    thread: Option<std::thread::JoinHandle<Snapshot>>,
}

impl Running {
    /// A handle for the control API.
    #[must_use]
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops the server and returns its final counters.
    #[must_use]
    pub fn stop(mut self) -> Snapshot {
        self.handle.shutdown();
        self.join()
    }

    /// Waits until the server stops (after [`Handle::shutdown`]) and returns its final counters.
    #[must_use]
    pub fn wait(mut self) -> Snapshot {
        self.join()
    }

    fn join(&mut self) -> Snapshot {
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.handle.shutdown();
            let _ = self.join();
        }
    }
}

/// Binds every listener and starts serving on a new thread. Returns once all listeners are
/// bound, or with the first bind error.
///
/// # Errors
/// The listener that could not be bound, or a TLS certificate that could not be loaded.
pub fn start(mut settings: Settings) -> std::io::Result<Running> {
    let listeners = 2 * settings.listen.len() + settings.tls_listen.len() + 1;
    let capacity = plan_capacity(&mut settings.core, listeners);
    info!("{capacity}");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (tx, rx) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("turn-server".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Snapshot::default();
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, serve(settings, capacity, rx, ready_tx))
        })?;
    match ready_rx.recv() {
        Ok(Ok(bound)) => Ok(Running {
            bound,
            capacity,
            handle: Handle { tx },
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(std::io::Error::other("server thread died during start")),
    }
}

/// A non-blocking UDP socket registered for readability only: sends go straight to the socket
/// (a full buffer drops the datagram, as UDP may), so the kernel's write-space notifications
/// never wake the runtime (coturn registers its relay sockets the same way).
type UdpSocket = AsyncFd<std::net::UdpSocket>;

// `with_interest` is deprecated because a `T` that merely borrows its file descriptor could
// close it while registered; `std::net::UdpSocket` owns its descriptor and the `AsyncFd` owns
// the socket, so that cannot happen here. Its replacement is `unsafe`, which this crate forbids.
#[allow(deprecated)]
fn udp_socket(addr: SocketAddr, buffer: Option<usize>) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(bytes) = buffer {
        // Best effort: the kernel caps it at net.core.rmem_max / wmem_max.
        let _ = s.set_recv_buffer_size(bytes);
        let _ = s.set_send_buffer_size(bytes);
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    AsyncFd::with_interest(std::net::UdpSocket::from(s), Interest::READABLE)
}

/// Socket buffers of a UDP listener, which every client's traffic crosses: big enough to ride
/// out a few milliseconds without the CPU (a busy or virtualised host) at 50,000 packets/s.
const LISTENER_BUFFER: usize = 4 << 20;

struct Relay {
    socket: Rc<UdpSocket>,
    task: JoinHandle<()>,
}

/// The edge's side of a client connection the core knows.
struct Stream {
    /// Replies to write, in order; the writer task ends once every sender is gone.
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes queued in `tx` (counted against [`STREAM_QUEUE_LIMIT`]).
    queued: Rc<Cell<usize>>,
    /// Rung when the core asks for the connection to close.
    close: Rc<Notify>,
}

/// The writer's end of a connection's queue. Whatever leaves it, written or dropped with the
/// connection, is taken off the connection's and the edge's counts.
struct Outbox {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Rc<Cell<usize>>,
    all: Rc<Cell<usize>>,
}

impl Outbox {
    async fn next(&mut self) -> Option<Vec<u8>> {
        let b = self.rx.recv().await?;
        self.taken(b.len());
        Some(b)
    }

    fn taken(&self, n: usize) {
        self.queued.set(self.queued.get() - n);
        self.all.set(self.all.get() - n);
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        while let Ok(b) = self.rx.try_recv() {
            self.taken(b.len());
        }
    }
}

/// Bytes of replies and relayed data one TCP/TLS client may have waiting to be written: a
/// quarter of a second at the default 8 Mbit/s cap. A client that does not read loses what is
/// past it (counted `send_failed`), as a full UDP socket buffer would; real-time media is of
/// no use later anyway.
const STREAM_QUEUE_LIMIT: usize = 256 << 10;
/// The same over every connection together.
const STREAM_QUEUE_BUDGET: usize = 64 << 20;

struct Edge {
    server: RefCell<Server>,
    udp: HashMap<SocketAddr, Rc<UdpSocket>>,
    relays: RefCell<HashMap<SocketAddr, Relay>>,
    streams: RefCell<HashMap<(SocketAddr, SocketAddr), Stream>>,
    /// Bytes queued for every connection together.
    stream_queued: Rc<Cell<usize>>,
    /// The one read buffer of every socket and connection: a read borrows it for one poll or
    /// datagram, so an idle connection or relayed socket holds no buffer of its own.
    scratch: RefCell<Box<[u8]>>,
    /// Metrics endpoint connections open, per source address.
    http_open: RefCell<HashMap<IpAddr, usize>>,
    timer: Notify,
    armed: Cell<Option<Instant>>,
    stats: RefCell<EdgeCounters>,
    http_faults: bool,
    capacity: Capacity,
}

/// Descriptors kept back from connections and relayed sockets: the runtime (epoll, eventfd,
/// signal pipe), standard streams, logs, a file the embedding program opens.
const BASE_RESERVE: u64 = 64;
/// Metrics endpoint connections at once, and from one source address (a scraper needs one).
const MAX_HTTP_CONNECTIONS: usize = 16;
const MAX_HTTP_PER_SOURCE: usize = 4;
/// How long a TLS client has to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long queued replies may take to go out once a connection is closing.
const STREAM_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

async fn serve(
    settings: Settings,
    capacity: Capacity,
    mut commands: mpsc::UnboundedReceiver<Command>,
    ready: std::sync::mpsc::Sender<std::io::Result<Bound>>,
) -> Snapshot {
    let listeners = match bind_all(&settings).await {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Snapshot::default();
        }
    };
    let mut core = settings.core.clone();
    if core.nonce_key == [0; 32] {
        let _ = getrandom::fill(&mut core.nonce_key);
    }
    if core.seed == 0 {
        let mut seed = [0; 8];
        let _ = getrandom::fill(&mut seed);
        core.seed = u64::from_le_bytes(seed);
    }
    let mut server = Server::new(core, now(), unix_now());
    server.set_faults(settings.faults);
    let edge = Rc::new(Edge {
        server: RefCell::new(server),
        udp: listeners.udp.iter().map(|s| (s.0, s.1.clone())).collect(),
        relays: RefCell::new(HashMap::new()),
        streams: RefCell::new(HashMap::new()),
        stream_queued: Rc::new(Cell::new(0)),
        scratch: RefCell::new(vec![0; 65536].into_boxed_slice()),
        http_open: RefCell::new(HashMap::new()),
        timer: Notify::new(),
        armed: Cell::new(None),
        stats: RefCell::new(EdgeCounters::default()),
        http_faults: settings.http_faults,
        capacity,
    });
    let mut tasks = Vec::new();
    for (addr, socket) in &listeners.udp {
        tasks.push(spawn_local(udp_listener(
            edge.clone(),
            socket.clone(),
            *addr,
        )));
    }
    for (addr, l) in listeners.tcp {
        tasks.push(spawn_local(stream_listener(edge.clone(), l, addr, None)));
    }
    for (addr, l) in listeners.tls {
        let acceptor = listeners.tls_acceptor.clone();
        tasks.push(spawn_local(stream_listener(
            edge.clone(),
            l,
            addr,
            acceptor,
        )));
    }
    if let Some((_, l)) = listeners.metrics {
        tasks.push(spawn_local(http_listener(edge.clone(), l)));
    }
    tasks.push(spawn_local(timer(edge.clone())));
    let _ = ready.send(Ok(listeners.bound));
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::SetFaults(f, ack) => {
                edge.set_faults(f);
                let _ = ack.send(());
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(edge.snapshot());
            }
            Command::Shutdown => break,
        }
    }
    for t in &tasks {
        t.abort();
    }
    for (_, r) in edge.relays.borrow_mut().drain() {
        r.task.abort();
    }
    for (_, s) in edge.streams.borrow().iter() {
        s.close.notify_one();
    }
    edge.snapshot()
}

/// Raises the descriptor limit to the hard limit when it can, then lowers the core's
/// connection and allocation limits to what the descriptors can hold: every TCP/TLS connection
/// and every relayed socket takes one, and [`BASE_RESERVE`], the `listeners` and the metrics
/// endpoint's connections are kept back.
fn plan_capacity(core: &mut Config, listeners: usize) -> Capacity {
    let (descriptors, raised_from) = raise_descriptor_limit();
    let open_at_start = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let reserve = BASE_RESERVE + listeners as u64 + MAX_HTTP_CONNECTIONS as u64;
    let available = descriptors.saturating_sub(open_at_start + reserve);
    let fit = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    // Half for connections unless fewer are asked for; allocations take the rest.
    let streams_first = core.max_streams.min(fit(available / 2));
    let allocations = core
        .total_quota
        .min(fit(available - u64::from(streams_first)));
    let streams = core
        .max_streams
        .min(fit(available - u64::from(allocations)));
    let per_source = core.max_streams_per_source.min(streams);
    let clamped = streams < core.max_streams || allocations < core.total_quota;
    core.max_streams = streams;
    core.max_streams_per_source = per_source;
    core.total_quota = allocations;
    Capacity {
        descriptors,
        raised_from,
        open_at_start,
        reserve,
        streams,
        streams_per_source: per_source,
        allocations,
        clamped,
    }
}

/// The soft `RLIMIT_NOFILE`, raised to the hard limit when it is lower (`None`: not raised).
fn raise_descriptor_limit() -> (u64, Option<u64>) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // No limit at all is not a thing for descriptors; read it as the kernel's usual ceiling.
    let current = limit.current.unwrap_or(1 << 20);
    match limit.maximum {
        Some(max) if max > current => {
            let raised = Rlimit {
                current: Some(max),
                maximum: Some(max),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => (max, Some(current)),
                Err(e) => {
                    debug!(%e, "could not raise the descriptor limit");
                    (current, None)
                }
            }
        }
        _ => (current, None),
    }
}

struct Listeners {
    udp: Vec<(SocketAddr, Rc<UdpSocket>)>,
    tcp: Vec<(SocketAddr, TcpListener)>,
    tls: Vec<(SocketAddr, TcpListener)>,
    tls_acceptor: Option<TlsAcceptor>,
    metrics: Option<(SocketAddr, TcpListener)>,
    bound: Bound,
}

async fn bind_all(settings: &Settings) -> std::io::Result<Listeners> {
    let mut l = Listeners {
        udp: Vec::new(),
        tcp: Vec::new(),
        tls: Vec::new(),
        tls_acceptor: None,
        metrics: None,
        bound: Bound::default(),
    };
    let context = |what: &str, addr: SocketAddr| {
        let what = what.to_owned();
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what} {addr}: {e}"))
    };
    for &addr in &settings.listen {
        // TCP on the same port as UDP. Port 0 takes UDP's choice, which a TCP socket may
        // already hold (outgoing connections draw from the same ephemeral range): then another
        // choice, a few times.
        let attempts = if addr.port() == 0 { 16 } else { 1 };
        let mut attempt = 0;
        let (udp, udp_addr, tcp) = loop {
            attempt += 1;
            let udp =
                udp_socket(addr, Some(LISTENER_BUFFER)).map_err(context("UDP listen", addr))?;
            let udp_addr = udp.get_ref().local_addr()?;
            let tcp_addr = SocketAddr::new(addr.ip(), udp_addr.port());
            match stream_listener_socket(tcp_addr) {
                Ok(tcp) => break (udp, udp_addr, tcp),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < attempts => {}
                Err(e) => return Err(context("TCP listen", tcp_addr)(e)),
            }
        };
        l.bound.udp.push(udp_addr);
        l.bound.tcp.push(tcp.local_addr()?);
        l.udp.push((udp_addr, Rc::new(udp)));
        l.tcp.push((tcp.local_addr()?, tcp));
    }
    if !settings.tls_listen.is_empty() {
        l.tls_acceptor = Some(tls_acceptor(settings)?);
    }
    for &addr in &settings.tls_listen {
        let tls = stream_listener_socket(addr).map_err(context("TLS listen", addr))?;
        l.bound.tls.push(tls.local_addr()?);
        l.tls.push((tls.local_addr()?, tls));
    }
    if let Some(addr) = settings.metrics {
        let m = TcpListener::bind(addr)
            .await
            .map_err(context("metrics listen", addr))?;
        l.bound.metrics = Some(m.local_addr()?);
        l.metrics = Some((m.local_addr()?, m));
    }
    Ok(l)
}

/// Connections the kernel completes and queues before we accept them (capped by
/// `net.core.somaxconn`): a deep queue rides out a burst of connects while the thread is busy
/// or descheduled, instead of dropping SYNs (which a client retries only after a second).
const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener with [`LISTEN_BACKLOG`].
fn stream_listener_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's listener does: a restarted server may bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn tls_acceptor(settings: &Settings) -> std::io::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |e: &dyn std::fmt::Display| std::io::Error::other(format!("TLS: {e}"));
    let (certs, key) = match (&settings.tls_pem, &settings.tls_files) {
        (Some((cert, key)), _) => {
            let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(&format!("certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| invalid(&format!("private key: {e}")))?;
            (certs, key)
        }
        (None, Some((cert, key))) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| invalid(&format!("{}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| invalid(&format!("{}: {e}", key.display())))?;
            (certs, key)
        }
        (None, None) => {
            let mut names = vec!["localhost".to_owned()];
            names.extend(settings.tls_listen.iter().map(|a| a.ip().to_string()));
            let ck = rcgen::generate_simple_self_signed(names).map_err(|e| invalid(&e))?;
            info!("TLS: no certificate configured, generated a self-signed one");
            let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
            (vec![ck.cert.der().clone()], key)
        }
    };
    tls_acceptor_for(certs, key)
}

/// A TLS acceptor for a certificate chain and key: rustls with the `ring` provider, TLS 1.2 and
/// 1.3, no client certificates — every TLS endpoint of the server and of the simulator.
pub fn tls_acceptor_for(
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> std::io::Result<TlsAcceptor> {
    tls_server_config(certs, key).map(TlsAcceptor::from)
}

/// The server configuration of [`tls_acceptor_for`], for a sans-I/O TLS session.
pub fn tls_server_config(
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> std::io::Result<Arc<rustls::ServerConfig>> {
    let invalid = |e: &dyn std::fmt::Display| std::io::Error::other(format!("TLS: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&e))?;
    Ok(Arc::new(config))
}

/// How many datagrams one wake-up reads before draining.
const RECV_BATCH: usize = 64;

impl Edge {
    /// Sends the core's output and does its events; re-arms the timer if needed.
    fn drain(self: &Rc<Self>) {
        // Bounded: each event is answered at once, and the core emits at most one
        // OpenRelay per answer (MAX_RELAY_ATTEMPTS in the core bounds the retries).
        for _ in 0..10_000 {
            let event = {
                let mut server = self.server.borrow_mut();
                while let Some(t) = server.poll_transmit() {
                    self.send(t);
                }
                server.poll_event()
            };
            match event {
                None => break,
                Some(Event::OpenRelay { request, addr }) => {
                    let opened = self.open_relay(addr);
                    self.server
                        .borrow_mut()
                        .handle_relay_opened(now(), request, opened);
                }
                Some(Event::CloseRelay { addr }) => {
                    if let Some(r) = self.relays.borrow_mut().remove(&addr) {
                        r.task.abort();
                    }
                }
                Some(Event::CloseStream { five_tuple, reason }) => {
                    debug!(client = %five_tuple.client, reason = reason.name(), "closing connection");
                    if let Some(s) = self
                        .streams
                        .borrow()
                        .get(&(five_tuple.server, five_tuple.client))
                    {
                        s.close.notify_one();
                    }
                }
            }
        }
        let next = self.server.borrow().poll_timeout();
        if next.is_some_and(|n| self.armed.get().is_none_or(|a| n < a)) {
            self.timer.notify_one();
        }
    }

    fn send(&self, t: Transmit) {
        let sent = match t.transport {
            Transport::Udp => {
                let relays = self.relays.borrow();
                let socket = self
                    .udp
                    .get(&t.source)
                    .or_else(|| relays.get(&t.source).map(|r| &r.socket));
                socket.is_some_and(|s| s.get_ref().send_to(&t.contents, t.destination).is_ok())
            }
            Transport::Tcp | Transport::Tls => {
                let streams = self.streams.borrow();
                let (len, all) = (t.contents.len(), &self.stream_queued);
                streams.get(&(t.source, t.destination)).is_some_and(|s| {
                    let fits = s.queued.get() + len <= STREAM_QUEUE_LIMIT
                        && all.get() + len <= STREAM_QUEUE_BUDGET;
                    let sent = fits && s.tx.send(t.contents).is_ok();
                    if sent {
                        s.queued.set(s.queued.get() + len);
                        all.set(all.get() + len);
                    }
                    sent
                })
            }
        };
        if !sent {
            self.stats.borrow_mut().send_failed += 1;
        }
    }

    fn open_relay(self: &Rc<Self>, addr: SocketAddr) -> bool {
        match udp_socket(addr, None) {
            Ok(socket) => {
                let socket = Rc::new(socket);
                let task = spawn_local(relay_socket(self.clone(), socket.clone(), addr));
                self.relays
                    .borrow_mut()
                    .insert(addr, Relay { socket, task });
                true
            }
            Err(e) => {
                debug!(%addr, %e, "relay bind failed");
                self.stats.borrow_mut().relay_bind_failures += 1;
                false
            }
        }
    }

    fn set_faults(self: &Rc<Self>, f: Faults) {
        info!(?f, "faults set");
        self.server.borrow_mut().set_faults(f);
        self.drain();
    }

    fn snapshot(&self) -> Snapshot {
        let server = self.server.borrow();
        Snapshot {
            counters: server.counters().clone(),
            gauges: server.gauges(),
            edge: EdgeCounters {
                stream_queued_bytes: self.stream_queued.get() as u64,
                ..*self.stats.borrow()
            },
            faults: server.faults(),
            capacity: self.capacity,
        }
    }
}

async fn timer(edge: Rc<Edge>) {
    loop {
        let deadline = edge.server.borrow().poll_timeout();
        edge.armed.set(deadline);
        if let Some(at) = deadline {
            tokio::select! {
                () = tokio::time::sleep_until(at.into()) => {
                    edge.server.borrow_mut().handle_timeout(now());
                    edge.drain();
                }
                () = edge.timer.notified() => {}
            }
        } else {
            edge.timer.notified().await;
        }
    }
}

/// Reads every queued datagram (up to a batch) per wake-up: one mutation and one drain per
/// datagram, so that the first of a burst is not held back behind the rest. Datagrams land in
/// the edge's one scratch buffer, borrowed for each read and its handling (no await between):
/// a buffer of its own per relayed socket cost every allocation 64 KiB.
async fn recv_batches(
    edge: &Rc<Edge>,
    socket: &UdpSocket,
    mut handle: impl FnMut(&mut Server, Instant, SocketAddr, &[u8]),
) {
    loop {
        let Ok(mut ready) = socket.readable().await else {
            return;
        };
        for _ in 0..RECV_BATCH {
            let mut buf = edge.scratch.borrow_mut();
            match ready.get_inner().recv_from(&mut buf) {
                Ok((n, from)) => {
                    handle(&mut edge.server.borrow_mut(), now(), from, &buf[..n]);
                    drop(buf);
                    edge.drain();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    break;
                }
                // ICMP errors reported on the socket, and the like: keep serving (each error
                // is consumed by the read that reports it).
                Err(_) => break,
            }
        }
        drop(ready);
    }
}

async fn udp_listener(edge: Rc<Edge>, socket: Rc<UdpSocket>, local: SocketAddr) {
    recv_batches(&edge, &socket, |server, now, client, data| {
        let ft = FiveTuple {
            transport: Transport::Udp,
            client,
            server: local,
        };
        server.handle_packet(now, ft, data);
    })
    .await;
}

async fn relay_socket(edge: Rc<Edge>, socket: Rc<UdpSocket>, relay: SocketAddr) {
    recv_batches(&edge, &socket, |server, now, peer, data| {
        server.handle_peer_packet(now, relay, peer, data);
    })
    .await;
}

async fn stream_listener(
    edge: Rc<Edge>,
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<TlsAcceptor>,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: the connection waits in the backlog; back
                // off instead of spinning.
                debug!(%e, "accept failed");
                edge.stats.borrow_mut().accept_failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ft = FiveTuple {
            transport,
            client,
            server: local,
        };
        let opened = edge.server.borrow_mut().handle_stream_opened(now(), ft);
        if opened.is_err() {
            // Closed at once with a reset: nothing lingers on our side.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (close, queued) = (Rc::new(Notify::new()), Rc::new(Cell::new(0)));
        let rx = Outbox {
            rx,
            queued: queued.clone(),
            all: edge.stream_queued.clone(),
        };
        edge.streams.borrow_mut().insert(
            (ft.server, ft.client),
            Stream {
                tx,
                queued,
                close: close.clone(),
            },
        );
        let edge = edge.clone();
        let tls = tls.clone();
        spawn_local(async move {
            match tls {
                None => {
                    let (rd, wr) = stream.into_split();
                    run_stream(&edge, rd, wr, ft, rx, &close).await;
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let outcome = tokio::select! {
                        biased;
                        () = close.notified() => None,
                        r = handshake => Some(r),
                    };
                    match outcome {
                        Some(Ok(Ok(s))) => {
                            let (rd, wr) = tokio::io::split(s);
                            run_stream(&edge, rd, wr, ft, rx, &close).await;
                        }
                        Some(Ok(Err(e))) => {
                            debug!(client = %ft.client, %e, "TLS handshake failed");
                            edge.stats.borrow_mut().tls_handshake_failures += 1;
                        }
                        Some(Err(_)) => {
                            debug!(client = %ft.client, "TLS handshake timed out");
                            edge.stats.borrow_mut().tls_handshake_failures += 1;
                        }
                        None => {}
                    }
                }
            }
            edge.streams.borrow_mut().remove(&(ft.server, ft.client));
            edge.server.borrow_mut().handle_connection_closed(now(), ft);
            edge.drain();
        });
    }
}

/// Serves one TCP or TLS connection until either side closes it: its bytes go to the core,
/// which frames them (RFC 8656 §12.5); its replies are written in order by a writer task. When
/// the core asks for it to close, what was queued before is written first.
async fn run_stream<R, W>(
    edge: &Rc<Edge>,
    mut rd: R,
    mut wr: W,
    ft: FiveTuple,
    mut rx: Outbox,
    close: &Notify,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + 'static,
{
    let mut writer = spawn_local(async move {
        while let Some(b) = rx.next().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    loop {
        tokio::select! {
            biased;
            () = close.notified() => break,
            open = read_into_core(edge, &mut rd, ft) => {
                edge.drain();
                if !open {
                    break;
                }
            }
        }
    }
    // Dropping the sender ends the writer once it has written what is queued; a client that
    // does not read cannot hold the connection open past the flush timeout.
    edge.streams.borrow_mut().remove(&(ft.server, ft.client));
    if tokio::time::timeout(STREAM_FLUSH_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Reads what has arrived into the edge's scratch buffer (borrowed for this one poll) and hands
/// it to the core. `false` at the end of the stream or on an error.
async fn read_into_core<R: AsyncRead + Unpin>(edge: &Edge, rd: &mut R, ft: FiveTuple) -> bool {
    std::future::poll_fn(|cx| {
        let mut scratch = edge.scratch.borrow_mut();
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *rd).poll_read(cx, &mut buf) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(false),
            std::task::Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                std::task::Poll::Ready(false)
            }
            std::task::Poll::Ready(Ok(())) => {
                edge.server
                    .borrow_mut()
                    .handle_stream_data(now(), ft, buf.filled());
                std::task::Poll::Ready(true)
            }
        }
    })
    .await
}

async fn http_listener(edge: Rc<Edge>, listener: TcpListener) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            edge.stats.borrow_mut().accept_failures += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Bounded in all and per source, so that no one client can keep a scraper out.
        let ip = peer.ip();
        let admitted = {
            let mut open = edge.http_open.borrow_mut();
            let total: usize = open.values().sum();
            let mine = open.entry(ip).or_default();
            if total < MAX_HTTP_CONNECTIONS && *mine < MAX_HTTP_PER_SOURCE {
                *mine += 1;
                true
            } else {
                if *mine == 0 {
                    open.remove(&ip);
                }
                false
            }
        };
        if !admitted {
            edge.stats.borrow_mut().http_refused += 1;
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            continue;
        }
        let edge = edge.clone();
        spawn_local(async move {
            http_connection(&edge, stream).await;
            let mut open = edge.http_open.borrow_mut();
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        });
    }
}

/// One HTTP/1.x request per connection: `GET /metrics`, `GET /faults`,
/// `POST /faults?refuse_allocations=1&fail_auth=0&unresponsive=0&drop_streams=0&delay_ms=20`.
async fn http_connection(edge: &Rc<Edge>, mut stream: TcpStream) {
    let mut req = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => req.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(5), read).await,
        Ok(true)
    ) {
        return;
    }
    let head = String::from_utf8_lossy(&req);
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", render_prometheus(&edge.snapshot())),
        ("GET", "/faults") => ("200 OK", format_faults(edge.server.borrow().faults())),
        ("POST" | "PUT", "/faults") if !edge.http_faults => (
            "403 Forbidden",
            "fault injection over HTTP is off (start with --http-faults)\n".to_owned(),
        ),
        ("POST" | "PUT", "/faults") => match parse_faults(query) {
            Ok(f) => {
                edge.set_faults(f);
                ("200 OK", format_faults(f))
            }
            Err(e) => ("400 Bad Request", format!("{e}\n")),
        },
        _ => ("404 Not Found", "try /metrics or /faults\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Faults as the `/faults` query string.
#[must_use]
pub fn format_faults(f: Faults) -> String {
    format!(
        "refuse_allocations={}&fail_auth={}&unresponsive={}&drop_streams={}&delay_ms={}\n",
        u8::from(f.refuse_allocations),
        u8::from(f.fail_auth),
        u8::from(f.unresponsive),
        u8::from(f.drop_streams),
        f.delay.as_millis()
    )
}

/// Parses a `/faults` query string; absent faults are off.
///
/// # Errors
/// The first unknown key or bad value.
pub fn parse_faults(query: &str) -> Result<Faults, String> {
    let mut f = Faults::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "1"));
        let flag = || match v {
            "1" | "true" | "on" => Ok(true),
            "0" | "false" | "off" => Ok(false),
            _ => Err(format!("bad value {v:?} for {k}")),
        };
        match k {
            "refuse_allocations" => f.refuse_allocations = flag()?,
            "fail_auth" => f.fail_auth = flag()?,
            "unresponsive" => f.unresponsive = flag()?,
            "drop_streams" => f.drop_streams = flag()?,
            "delay_ms" => {
                let ms = v
                    .parse()
                    .map_err(|_| format!("bad value {v:?} for delay_ms"))?;
                f.delay = Duration::from_millis(ms);
            }
            _ => return Err(format!("unknown fault {k:?}")),
        }
    }
    Ok(f)
}

/// A metric family: name, type, help, and (labels, value) rows.
type Family<'a> = (&'a str, &'a str, &'a str, Vec<(String, u64)>);

/// Renders a snapshot in the Prometheus text exposition format.
#[must_use]
pub fn render_prometheus(s: &Snapshot) -> String {
    fn labelled<K: std::fmt::Display>(
        label: &str,
        rows: impl IntoIterator<Item = (K, u64)>,
    ) -> Vec<(String, u64)> {
        rows.into_iter()
            .map(|(k, v)| (format!("{{{label}=\"{k}\"}}"), v))
            .collect()
    }
    let one = |v: u64| vec![(String::new(), v)];
    let (c, g, e, f) = (&s.counters, &s.gauges, &s.edge, s.faults);
    let dirs = [
        ("client_to_peer", c.client_to_peer),
        ("peer_to_client", c.peer_to_client),
    ];
    let mut drops = labelled(
        "reason",
        DropReason::ALL.iter().map(|r| (r.name(), c.dropped(*r))),
    );
    drops.extend(labelled(
        "reason",
        [
            ("send_failed", e.send_failed),
            ("stream_framing", c.closed(StreamClose::Framing)),
        ],
    ));
    let cap = &s.capacity;
    let families: [Family<'_>; 23] = [
        (
            "turn_allocations",
            "gauge",
            "Allocations now.",
            one(g.allocations as u64),
        ),
        (
            "turn_permissions",
            "gauge",
            "Permissions now.",
            one(g.permissions as u64),
        ),
        (
            "turn_channels",
            "gauge",
            "Channel bindings now.",
            one(g.channels as u64),
        ),
        (
            "turn_allocation_events_total",
            "counter",
            "Allocations created, expired, deleted.",
            labelled(
                "event",
                [
                    ("created", c.allocations_created),
                    ("expired", c.allocations_expired),
                    ("deleted", c.allocations_deleted),
                ],
            ),
        ),
        (
            "turn_permissions_created_total",
            "counter",
            "Permissions installed.",
            one(c.permissions_created),
        ),
        (
            "turn_channels_bound_total",
            "counter",
            "Channels bound.",
            one(c.channels_bound),
        ),
        (
            "turn_relayed_packets_total",
            "counter",
            "Packets relayed.",
            labelled("direction", dirs.map(|(d, t)| (d, t.packets))),
        ),
        (
            "turn_relayed_bytes_total",
            "counter",
            "Application bytes relayed.",
            labelled("direction", dirs.map(|(d, t)| (d, t.bytes))),
        ),
        (
            "turn_requests_total",
            "counter",
            "STUN/TURN requests received.",
            labelled("method", c.requests.iter().map(|(m, v)| (m, *v))),
        ),
        (
            "turn_error_responses_total",
            "counter",
            "Error responses sent.",
            labelled("code", c.errors.iter().map(|(code, v)| (code, *v))),
        ),
        (
            "turn_dropped_total",
            "counter",
            "Packets dropped, by reason.",
            drops,
        ),
        (
            "turn_stream_connections_total",
            "counter",
            "TCP/TLS connections accepted.",
            one(c.streams_opened),
        ),
        (
            "turn_stream_connections",
            "gauge",
            "TCP/TLS connections open.",
            one(g.streams as u64),
        ),
        (
            "turn_stream_buffered_bytes",
            "gauge",
            "Bytes of partial frames held for TCP/TLS connections.",
            one(g.stream_buffered_bytes as u64),
        ),
        (
            "turn_stream_queued_bytes",
            "gauge",
            "Bytes waiting to be written to TCP/TLS clients.",
            one(e.stream_queued_bytes),
        ),
        (
            "turn_streams_refused_total",
            "counter",
            "TCP/TLS connections refused at once, by reason.",
            labelled(
                "reason",
                StreamRefusal::ALL.iter().map(|r| (r.name(), c.refused(*r))),
            ),
        ),
        (
            "turn_streams_closed_total",
            "counter",
            "TCP/TLS connections the server closed, by reason.",
            labelled(
                "reason",
                StreamClose::ALL.iter().map(|r| (r.name(), c.closed(*r))),
            ),
        ),
        (
            "turn_stream_connections_dropped_total",
            "counter",
            "TCP/TLS connections closed or refused by the drop_streams fault.",
            one(c.closed(StreamClose::Fault) + c.refused(StreamRefusal::Fault)),
        ),
        (
            "turn_accept_failures_total",
            "counter",
            "accept() calls that failed (out of descriptors and the like).",
            one(e.accept_failures),
        ),
        (
            "turn_http_refused_total",
            "counter",
            "Metrics endpoint connections refused past its limits.",
            one(e.http_refused),
        ),
        (
            "turn_capacity",
            "gauge",
            "What the server holds at most, from its descriptor limit.",
            labelled(
                "limit",
                [
                    ("descriptors", cap.descriptors),
                    ("streams", u64::from(cap.streams)),
                    ("streams_per_source", u64::from(cap.streams_per_source)),
                    ("allocations", u64::from(cap.allocations)),
                ],
            ),
        ),
        (
            "turn_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed (including clients probing old TLS versions).",
            one(e.tls_handshake_failures),
        ),
        (
            "turn_fault",
            "gauge",
            "Injected faults in force (delay in ms).",
            labelled(
                "fault",
                [
                    ("refuse_allocations", u64::from(f.refuse_allocations)),
                    ("fail_auth", u64::from(f.fail_auth)),
                    ("unresponsive", u64::from(f.unresponsive)),
                    ("drop_streams", u64::from(f.drop_streams)),
                    (
                        "delay_ms",
                        u64::try_from(f.delay.as_millis()).unwrap_or(u64::MAX),
                    ),
                ],
            ),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, rows) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_query_round_trips() {
        let f = parse_faults("refuse_allocations=1&delay_ms=25&drop_streams=true").unwrap();
        assert!(f.refuse_allocations && f.drop_streams && !f.fail_auth);
        assert_eq!(f.delay, Duration::from_millis(25));
        assert_eq!(parse_faults(format_faults(f).trim()).unwrap(), f);
        assert!(parse_faults("nonsense=1").is_err());
        assert!(parse_faults("fail_auth=maybe").is_err());
    }

    #[test]
    fn prometheus_text_has_every_family() {
        let text = render_prometheus(&Snapshot::default());
        for family in [
            "turn_allocations 0",
            "turn_relayed_packets_total{direction=\"client_to_peer\"} 0",
            "turn_dropped_total{reason=\"malformed\"} 0",
            "turn_fault{fault=\"unresponsive\"} 0",
        ] {
            assert!(text.contains(family), "{family} missing from\n{text}");
        }
    }
}
