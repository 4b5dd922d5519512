//! The signalling endpoint: JSON-RPC 2.0 over WebSocket/TLS (see `loadgen::signalling` for the
//! protocol). Requests that are well formed go to the application — the media anchor — through
//! a channel, each with its own reply slot; malformed ones are answered here with JSON-RPC's
//! own error codes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use loadgen::signalling::{JSONRPC, RpcError};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

use crate::service::Service;
use turn_server::io::tls_acceptor_for;

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
        let acceptor = tls_acceptor_for(certs, key)?;
        let stats = Arc::new(SignallingStats::default());
        let s = stats.clone();
        let service = Service::start("signalling", listen, move |listener| {
            serve(listener, acceptor, app, s, limits)
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
    acceptor: TlsAcceptor,
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
            acceptor.clone(),
            app.clone(),
            stats.clone(),
            (limits, place),
        ));
    }
}

async fn connection(
    tcp: TcpStream,
    id: u64,
    acceptor: TlsAcceptor,
    app: mpsc::UnboundedSender<Signal>,
    stats: Arc<SignallingStats>,
    (limits, _place): (SignallingLimits, Place),
) {
    let _ = tcp.set_nodelay(true);
    let config = loadgen::signalling::websocket_config()
        .max_message_size(Some(limits.message_bytes))
        .max_frame_size(Some(limits.message_bytes));
    let handshake = async {
        let tls = acceptor.accept(tcp).await.ok()?;
        tokio_tungstenite::accept_async_with_config(tls, Some(config))
            .await
            .ok()
    };
    // A client that opens the connection and says nothing is dropped at the deadline.
    let Ok(Some(mut ws)) = tokio::time::timeout(limits.handshake, handshake).await else {
        stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    while let Some(frame) = ws.next().await {
        let response = match frame {
            Ok(Message::Text(text)) => handle(text.as_str(), id, &app, &stats).await,
            Ok(Message::Binary(_)) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                Some(error_response(
                    Value::Null,
                    RpcError::new(-32600, "binary frames are not JSON-RPC"),
                ))
            }
            Ok(Message::Close(_)) => {
                // The close handshake (RFC 6455 §5.5.1): tungstenite has queued our Close
                // frame in reply; flushing sends it, so the client sees a clean close (1000),
                // not an abnormal one (1006).
                if ws.flush().await.is_ok() {
                    stats.closed_cleanly.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            Err(_) => break,
            Ok(_) => continue,
        };
        let Some(response) = response else {
            continue;
        };
        if ws.send(Message::text(response.to_string())).await.is_err() {
            break;
        }
    }
    let _ = app.send(Signal::Closed { connection: id });
}

fn error_response(id: Value, error: RpcError) -> Value {
    let mut response = serde_json::Map::new();
    response.insert("jsonrpc".into(), JSONRPC.into());
    response.insert("id".into(), id);
    let RpcError { code, message } = error;
    response.insert("error".into(), json!({ "code": code, "message": message }));
    Value::Object(response)
}

/// Answers one text frame; `None` for a frame that gets no reply (an answer from the client,
/// a notification).
///
/// The CCP carries the library's messages on its shared WebSocket in an envelope,
/// `{topic, connectionId, jsonRpcMsg}` (persistent-connection mode); such a frame is answered
/// in the same envelope.
async fn handle(
    text: &str,
    connection: u64,
    app: &mpsc::UnboundedSender<Signal>,
    stats: &SignallingStats,
) -> Option<Value> {
    let frame: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            return Some(error_response(
                Value::Null,
                RpcError::new(-32700, format!("not JSON: {e}")),
            ));
        }
    };
    match frame {
        Value::Object(mut envelope) if envelope.get("jsonRpcMsg").is_some_and(Value::is_object) => {
            let message = envelope.remove("jsonRpcMsg").unwrap_or_default();
            let reply = handle_message(message, connection, app, stats).await?;
            envelope.insert("jsonRpcMsg".into(), reply);
            Some(Value::Object(envelope))
        }
        message => handle_message(message, connection, app, stats).await,
    }
}

/// [`handle`] for one JSON-RPC message.
async fn handle_message(
    frame: Value,
    connection: u64,
    app: &mpsc::UnboundedSender<Signal>,
    stats: &SignallingStats,
) -> Option<Value> {
    let malformed = |id: Value, code: i64, message: String| {
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        Some(error_response(id, RpcError::new(code, message)))
    };
    let Some(object) = frame.as_object() else {
        return malformed(Value::Null, -32600, "a request is a JSON object".into());
    };
    if !object.contains_key("method") {
        // An answer to a request of ours (the library answers a server's `bye` with `{}`).
        if object.contains_key("result") || object.contains_key("error") {
            stats.unanswered.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        return malformed(
            Value::Null,
            -32600,
            "neither a request nor an answer".into(),
        );
    }
    // The id is echoed exactly as sent: a string (the library's UUIDs) or a number. `null` is
    // allowed by JSON-RPC 2.0 but cannot be matched to its answer, so it is refused, and any
    // other type is not an id at all (both answered with `id: null`, as the spec says).
    let id = match object.get("id") {
        None => {
            stats.unanswered.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        Some(Value::Null) => {
            return malformed(
                Value::Null,
                -32600,
                "id null: give a string or a number to match the answer by".into(),
            );
        }
        Some(other) => {
            return malformed(
                Value::Null,
                -32600,
                format!("id must be a string or a number, not {other}"),
            );
        }
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some(JSONRPC) {
        return malformed(id, -32600, "jsonrpc must be \"2.0\"".into());
    }
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        return malformed(id, -32600, "method must be a string".into());
    };
    if !METHODS.contains(&method) {
        return malformed(id, -32601, format!("unknown method `{method}`"));
    }
    let params = match object.get("params") {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return malformed(id, -32602, "params must be an object".into()),
    };
    let known = known_params(method);
    let unknown = params.as_object().map_or(0, |p| {
        p.keys().filter(|k| !known.contains(&k.as_str())).count()
    });
    stats
        .unknown_params
        .fetch_add(unknown as u64, Ordering::Relaxed);
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let (reply, answer) = oneshot::channel();
    let incoming = Incoming {
        connection,
        method: method.to_owned(),
        params,
        reply,
    };
    if app.send(Signal::Request(incoming)).is_err() {
        return Some(error_response(id, RpcError::new(500, "no one to answer")));
    }
    Some(match answer.await {
        Ok(Ok(result)) => json!({ "jsonrpc": JSONRPC, "id": id, "result": result }),
        Ok(Err(e)) => error_response(id, e),
        Err(_) => error_response(id, RpcError::new(500, "the request was dropped")),
    })
}
