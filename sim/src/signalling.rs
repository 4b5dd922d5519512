//! The signalling endpoint: JSON-RPC 2.0 over WebSocket/TLS (see `loadgen::signalling` for the
//! protocol). Requests that are well formed go to the application — the media anchor — through
//! a channel, each with its own reply slot; malformed ones are answered here with JSON-RPC's
//! own error codes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use loadgen::signalling::{JSONRPC, Request, Response, RpcError};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
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

/// A well-formed request for the application, with the slot for its answer. Dropping `reply`
/// answers 500; never answering leaves the agent to its timeout.
#[derive(Debug)]
pub struct Incoming {
    /// The WebSocket connection it came on (an agent).
    pub connection: u64,
    /// The method, one of [`METHODS`].
    pub method: String,
    /// Its parameters.
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
}

impl SignallingStats {
    /// Its counters, named as in `summary.json`'s `components`.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        reports::components::snapshot(&[
            ("connections", &self.connections),
            ("handshake_failures", &self.handshake_failures),
            ("requests", &self.requests),
            ("malformed", &self.malformed),
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
        app: mpsc::UnboundedSender<Incoming>,
    ) -> io::Result<Self> {
        let acceptor = tls_acceptor_for(certs, key)?;
        let stats = Arc::new(SignallingStats::default());
        let s = stats.clone();
        let service = Service::start("signalling", listen, move |listener| {
            serve(listener, acceptor, app, s)
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

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: mpsc::UnboundedSender<Incoming>,
    stats: Arc<SignallingStats>,
) {
    let mut next = 0u64;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        next += 1;
        tokio::spawn(connection(
            tcp,
            next,
            acceptor.clone(),
            app.clone(),
            stats.clone(),
        ));
    }
}

async fn connection(
    tcp: TcpStream,
    id: u64,
    acceptor: TlsAcceptor,
    app: mpsc::UnboundedSender<Incoming>,
    stats: Arc<SignallingStats>,
) {
    let _ = tcp.set_nodelay(true);
    let ws = match acceptor.accept(tcp).await {
        Ok(tls) => tokio_tungstenite::accept_async(tls).await,
        Err(_) => {
            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let Ok(mut ws) = ws else {
        stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    while let Some(frame) = ws.next().await {
        let response = match frame {
            Ok(Message::Text(text)) => handle(text.as_str(), id, &app, &stats).await,
            Ok(Message::Binary(_)) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                error_response(
                    None,
                    RpcError::new(-32600, "binary frames are not JSON-RPC"),
                )
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Ok(text) = serde_json::to_string(&response) else {
            break;
        };
        if ws.send(Message::text(text)).await.is_err() {
            break;
        }
    }
}

fn error_response(id: Option<u64>, error: RpcError) -> Response {
    Response {
        jsonrpc: JSONRPC.into(),
        id,
        result: None,
        error: Some(error),
    }
}

async fn handle(
    text: &str,
    connection: u64,
    app: &mpsc::UnboundedSender<Incoming>,
    stats: &SignallingStats,
) -> Response {
    let request: Request = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            // −32700 for text that is not JSON, −32600 for JSON that is not a request.
            let code = if serde_json::from_str::<Value>(text).is_ok() {
                -32600
            } else {
                -32700
            };
            return error_response(None, RpcError::new(code, format!("invalid request: {e}")));
        }
    };
    if request.jsonrpc != JSONRPC {
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        return error_response(
            Some(request.id),
            RpcError::new(-32600, "jsonrpc must be \"2.0\""),
        );
    }
    if !METHODS.contains(&request.method.as_str()) {
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        return error_response(
            Some(request.id),
            RpcError::new(-32601, format!("unknown method `{}`", request.method)),
        );
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let (reply, answer) = oneshot::channel();
    let incoming = Incoming {
        connection,
        method: request.method,
        params: request.params,
        reply,
    };
    if app.send(incoming).is_err() {
        return error_response(Some(request.id), RpcError::new(500, "no one to answer"));
    }
    match answer.await {
        Ok(Ok(result)) => Response {
            jsonrpc: JSONRPC.into(),
            id: Some(request.id),
            result: Some(result),
            error: None,
        },
        Ok(Err(e)) => error_response(Some(request.id), e),
        Err(_) => error_response(
            Some(request.id),
            RpcError::new(500, "the request was dropped"),
        ),
    }
}
