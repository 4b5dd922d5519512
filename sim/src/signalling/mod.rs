//! The signalling endpoint: JSON-RPC 2.0 over WebSocket/TLS (see `loadgen::signalling` for the
//! protocol). Requests that are well formed go to the application — the media anchor — through
//! a channel, each with its own reply slot; malformed ones are answered with JSON-RPC's own
//! error codes.
//!
//! [`ServerConnection`] is one connection's core (TLS, WebSocket, JSON-RPC; no socket, no
//! clock); [`SignallingServer`] is the real-time edge: the listener, the per-source and total
//! limits, and a task per connection moving its bytes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use loadgen::signalling::RpcError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::service::Service;
use turn_server::io::tls_server_config;

mod connection;

pub use connection::{ServerConnection, ServerEvent};

/// The methods the endpoint knows.
pub const METHODS: [&str; 9] = [
    "invite",
    "accept",
    "bye",
    "connectContact",
    "disconnectContact",
    "hold",
    "resume",
    "transfer",
    "conference",
];

/// The parameters each method is known to carry: every one the CCP's softphone library sends
/// (`signaling.js`, in both of its modes), and ours for the mid-call methods. Others are
/// ignored and counted, never refused.
pub fn known_params(method: &str) -> &'static [&'static str] {
    const PCM: [&str; 4] = [
        "contactId",
        "persistentConnection",
        "peerConnectionId",
        "peerConnectionToken",
    ];
    match method {
        "invite" => &loadgen::signalling::INVITE_PARAMS,
        "accept" => &[PCM[0], PCM[1], PCM[2], PCM[3], "callId"],
        "bye" | "connectContact" => &[PCM[0], PCM[1], PCM[2], PCM[3], "callContextToken", "callId"],
        "disconnectContact" => &[PCM[0], PCM[2], PCM[3], "callContextToken", "callId"],
        "transfer" | "conference" => &["callId", "contactId", "callContextToken", "target"],
        _ => &["callId", "contactId", "callContextToken"],
    }
}

/// What the endpoint hands the application.
#[derive(Debug)]
pub enum Signal {
    /// A well-formed request.
    Request(Incoming),
    /// A connection ended, by either side: that agent's signalling is gone.
    Closed {
        /// The connection.
        connection: u64,
    },
}

/// A well-formed request for the application, with the slot for its answer. Dropping `reply`
/// answers 500; never answering leaves the agent to its timeout.
#[derive(Debug)]
pub struct Incoming {
    /// The WebSocket connection it came on (an agent).
    pub connection: u64,
    /// The method, one of [`METHODS`].
    pub method: String,
    /// Its parameters (an object; `{}` when the request had none).
    pub params: Value,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Value, RpcError>>,
}

/// Counters of the endpoint.
#[derive(Debug, Default)]
pub struct SignallingStats {
    /// WebSocket connections opened.
    pub connections: AtomicU64,
    /// TLS or WebSocket handshakes that failed.
    pub handshake_failures: AtomicU64,
    /// Requests handed to the application.
    pub requests: AtomicU64,
    /// Malformed requests answered with a JSON-RPC error.
    pub malformed: AtomicU64,
    /// Parameters no method is known to carry, ignored.
    pub unknown_params: AtomicU64,
    /// Frames from a client that were answers (to a `bye` the server sent) or notifications
    /// (no id), which get no reply.
    pub unanswered: AtomicU64,
    /// Connections that ended with the close handshake.
    pub closed_cleanly: AtomicU64,
    /// Connections refused at once past [`SignallingLimits`].
    pub refused: AtomicU64,
}

/// What one client, or all, can make the endpoint hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignallingLimits {
    /// Connections at once, in all (default 10,000).
    pub connections: usize,
    /// Connections at once from one source address (default 1,000: one NAT address in front
    /// of a contact centre's agents, as for the TURN server).
    pub per_source: usize,
    /// Time for the TLS handshake and the WebSocket upgrade together (default 10 s, the
    /// library's own connect timeout).
    pub handshake: std::time::Duration,
    /// The largest message a client may send (default 1 MiB; an invite with its SDP is a few
    /// kilobytes).
    pub message_bytes: usize,
}

impl Default for SignallingLimits {
    fn default() -> Self {
        Self {
            connections: 10_000,
            per_source: 1_000,
            handshake: std::time::Duration::from_secs(10),
            message_bytes: 1 << 20,
        }
    }
}

impl SignallingStats {
    /// Its counters, named as in `summary.json`'s `components`.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        reports::components::snapshot(&[
            ("connections", &self.connections),
            ("handshake_failures", &self.handshake_failures),
            ("requests", &self.requests),
            ("malformed", &self.malformed),
            ("unknown_params", &self.unknown_params),
            ("unanswered", &self.unanswered),
            ("closed_cleanly", &self.closed_cleanly),
            ("refused", &self.refused),
        ])
    }
}

/// A running endpoint; dropping it stops it.
#[derive(Debug)]
pub struct SignallingServer {
    stats: Arc<SignallingStats>,
    service: Service,
}

impl SignallingServer {
    /// Binds `listen` and serves with the given certificate; requests go to `app`.
    pub fn start(
        listen: SocketAddr,
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        app: mpsc::UnboundedSender<Signal>,
    ) -> io::Result<Self> {
        Self::start_with_limits(listen, certs, key, app, SignallingLimits::default())
    }

    /// [`SignallingServer::start`] with other limits.
    pub fn start_with_limits(
        listen: SocketAddr,
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        app: mpsc::UnboundedSender<Signal>,
        limits: SignallingLimits,
    ) -> io::Result<Self> {
        let tls = tls_server_config(certs, key)?;
        let stats = Arc::new(SignallingStats::default());
        let s = stats.clone();
        let service = Service::start("signalling", listen, move |listener| {
            serve(listener, tls, app, s, limits)
        })?;
        Ok(Self { stats, service })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }

    /// The endpoint's counters.
    pub fn stats(&self) -> Arc<SignallingStats> {
        self.stats.clone()
    }

    /// Stops the endpoint, closing every connection.
    pub fn shutdown(self) {
        drop(self.service);
    }
}

/// Connections open, per source address.
type Open = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// A connection's place in [`Open`], given back when it ends.
struct Place {
    open: Open,
    ip: std::net::IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: mpsc::UnboundedSender<Signal>,
    stats: Arc<SignallingStats>,
    limits: SignallingLimits,
) {
    let mut next = 0u64;
    let open: Open = Arc::default();
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            // Out of descriptors and the like: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let place = {
            let Ok(mut counts) = open.lock() else {
                continue;
            };
            let total: usize = counts.values().sum();
            let mine = counts.get(&peer.ip()).copied().unwrap_or(0);
            if total >= limits.connections || mine >= limits.per_source {
                None
            } else {
                counts.insert(peer.ip(), mine + 1);
                Some(Place {
                    open: open.clone(),
                    ip: peer.ip(),
                })
            }
        };
        let Some(place) = place else {
            // Refused at once, with a reset: nothing lingers.
            stats.refused.fetch_add(1, Ordering::Relaxed);
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO));
            continue;
        };
        next += 1;
        tokio::spawn(connection(
            tcp,
            next,
            tls.clone(),
            app.clone(),
            stats.clone(),
            (limits, place),
        ));
    }
}

#[allow(clippy::disallowed_methods)] // the edge: the real clock
async fn connection(
    mut tcp: TcpStream,
    id: u64,
    tls: Arc<rustls::ServerConfig>,
    app: mpsc::UnboundedSender<Signal>,
    stats: Arc<SignallingStats>,
    (limits, _place): (SignallingLimits, Place),
) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut core) = ServerConnection::new(tls, limits, stats, Instant::now()) else {
        return;
    };
    let mut answers = FuturesUnordered::new();
    let mut buf = vec![0; loadgen::signalling::WEBSOCKET_READ_BUFFER];
    let mut opened = false;
    loop {
        while let Some(event) = core.poll_event() {
            match event {
                ServerEvent::Opened => opened = true,
                ServerEvent::Request {
                    key,
                    method,
                    params,
                } => {
                    let (reply, answer) = oneshot::channel();
                    let incoming = Incoming {
                        connection: id,
                        method,
                        params,
                        reply,
                    };
                    if app.send(Signal::Request(incoming)).is_err() {
                        core.respond(key, Err(RpcError::new(500, "no one to answer")));
                        continue;
                    }
                    answers.push(async move {
                        let dropped = || Err(RpcError::new(500, "the request was dropped"));
                        (key, answer.await.unwrap_or_else(|_| dropped()))
                    });
                }
                ServerEvent::Ended { .. } => {}
            }
        }
        let mut sent = true;
        while let Some(data) = core.poll_transmit() {
            if tcp.write_all(&data).await.is_err() {
                sent = false;
                break;
            }
        }
        if core.is_ended() || !sent {
            break;
        }
        tokio::select! {
            read = tcp.read(&mut buf) => match read {
                Ok(0) | Err(_) => core.handle_eof(),
                Ok(n) => core.handle_input(&buf[..n]),
            },
            Some((key, answer)) = answers.next(), if !answers.is_empty() => {
                core.respond(key, answer);
            }
            () = loadgen::clock::until_timeout(core.poll_timeout()) => {
                core.handle_timeout(Instant::now());
            }
        }
    }
    if opened {
        let _ = app.send(Signal::Closed { connection: id });
    }
}
