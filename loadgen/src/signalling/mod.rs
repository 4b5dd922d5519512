//! Signalling: JSON-RPC 2.0 text frames over a TLS WebSocket, exactly as the CCP's softphone
//! library (connect-rtc-js) sends them (DESIGN §4), so that what the agents send is what the
//! CCP sends and the CCP's library can talk to the simulator's endpoint.
//!
//! Every request id is a fresh UUID string, and a response is matched to its request by id.
//! Methods, with the parameters the library sends when it is not in persistent-connection mode:
//! `invite` {sdp, candidates, callContextToken} → {sdp, candidates} (our anchor adds `callId`);
//! `accept` {}; `bye` {callContextToken}. In persistent-connection mode the library adds
//! `contactId`, `browserId`, `persistentConnection`, `peerConnectionId`, `peerConnectionToken`
//! and `iceRestart`, and `connectContact` / `disconnectContact` name the contact by
//! `contactId` ([`INVITE_PARAMS`]). The server may send `bye` itself; the client answers `{}`.
//! Errors carry a code the agent maps to a failure class: 403 access denied, 486 busy, 404 call
//! not found, 400 bad request, 408 request timeout, 409 idempotency, 500 internal, and JSON-RPC's
//! own −32700 … −32600 for malformed requests.
//!
//! [`Connection`] is one connection's core (TLS, WebSocket, JSON-RPC; no socket, no clock);
//! [`SignallingClient`] is its real-time edge over TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reports::FailureClass;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[allow(clippy::disallowed_methods)] // the edge: a TCP socket and the real clock
mod client;
mod connection;

pub use client::SignallingClient;
pub use connection::{Connection, Event, Plaintext};

/// The JSON-RPC version string.
pub const JSONRPC: &str = "2.0";

/// An ICE candidate on the wire (the browser's `RTCIceCandidateInit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// The `candidate:` attribute.
    pub candidate: String,
    /// The media section's mid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The media section's index.
    #[serde(
        default,
        rename = "sdpMLineIndex",
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_m_line_index: Option<u16>,
}

/// Every parameter the library's `invite` carries (`signaling.js`, in both modes): [`Invite`]'s
/// three, then those persistent-connection mode adds. The server reads this list too.
pub const INVITE_PARAMS: [&str; 10] = [
    "sdp",
    "candidates",
    "callContextToken",
    "contactId",
    "browserId",
    "persistentConnection",
    "peerConnectionId",
    "iceRestart",
    "peerConnectionToken",
    "allowExtendedPersistentConnection",
];

/// `invite` parameters (the library's non-persistent shape; a server reads more, see
/// [`INVITE_PARAMS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invite {
    /// The SDP offer.
    pub sdp: String,
    /// The agent's ICE candidates (its TURN relay candidate).
    pub candidates: Vec<Candidate>,
    /// The contact this call belongs to (the library may send `null`: read as empty).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub call_context_token: String,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Option::<String>::deserialize(d).map(Option::unwrap_or_default)
}

/// `invite` result. The library reads `sdp` and `candidates` (and, in persistent-connection
/// mode, `inactivityDuration`, `peerConnectionId`, `peerConnectionToken`); other fields are
/// ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InviteAnswer {
    /// The anchor's id of the call (its contact id: `connectContact` / `disconnectContact`
    /// name it as `contactId`); empty from a server that gives none.
    #[serde(default)]
    pub call_id: String,
    /// The SDP answer.
    pub sdp: String,
    /// The anchor's ICE candidates.
    pub candidates: Vec<Candidate>,
}

/// A JSON-RPC request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Always "2.0".
    pub jsonrpc: String,
    /// The request id: the library's are UUID strings; a server echoes whatever it was sent.
    pub id: Value,
    /// The method.
    pub method: String,
    /// Its parameters.
    #[serde(default)]
    pub params: Value,
}

/// A JSON-RPC response: exactly one of `result` and `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Always "2.0".
    pub jsonrpc: String,
    /// The request's id as it was sent (`null` when the request could not be read).
    #[serde(default)]
    pub id: Value,
    /// The result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcError {
    /// The code (see the module doc).
    pub code: i64,
    /// A message for a person.
    pub message: String,
}

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Why a signalling exchange failed, with the failure class it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignallingError {
    /// The WebSocket could not be opened (refused, TLS, upgrade, DNS) within the timeout.
    Connect(String),
    /// The server did not answer a request within its timeout.
    Timeout(String),
    /// The server answered with a JSON-RPC error.
    Rpc(RpcError),
    /// The server broke the protocol (not JSON-RPC, wrong id, closed mid-request).
    Protocol(String),
    /// A keep-alive ping went unanswered this long: the connection is open but carries
    /// nothing (a middlebox stalled it without a FIN or RST).
    Stalled(Duration),
}

impl std::fmt::Display for SignallingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "signalling connection failed: {e}"),
            Self::Timeout(m) => write!(f, "no answer to `{m}` in time"),
            Self::Rpc(e) => write!(f, "signalling error {}: {}", e.code, e.message),
            Self::Protocol(e) => write!(f, "signalling protocol violation: {e}"),
            Self::Stalled(d) => write!(
                f,
                "no pong within {d:?}: the signalling connection stalled with nothing closing it \
                 (a proxy or firewall that drops idle connections silently)"
            ),
        }
    }
}

impl std::error::Error for SignallingError {}

impl SignallingError {
    /// The call failure class this error stands for (DESIGN §4).
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Connect(_) | Self::Stalled(_) => FailureClass::SignallingConnectionFailure,
            Self::Rpc(e) if e.code == 403 => FailureClass::AccessDenied,
            Self::Rpc(e) if e.code == 486 => FailureClass::UserBusy,
            Self::Rpc(e) if e.code == 404 => FailureClass::CallNotFound,
            Self::Timeout(_) | Self::Rpc(_) | Self::Protocol(_) => {
                FailureClass::SignallingHandshakeFailure
            }
        }
    }
}

/// The read buffer of a signalling WebSocket, at each end (what one read asks of TLS). At
/// tungstenite's default, 128 KiB, the two ends' buffers were half of a call's memory; a
/// JSON-RPC message is a few KiB (an SDP offer about 2), and a longer one still arrives whole,
/// over several reads.
pub const WEBSOCKET_READ_BUFFER: usize = 4096;

/// The WebSocket settings of both ends of the signalling connection.
pub fn websocket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(WEBSOCKET_READ_BUFFER)
}

/// A TLS client configuration trusting only `roots` (the signalling endpoint's, a `turns:`
/// server's).
pub fn tls_client_config(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(store)
            .with_no_client_auth(),
    ))
}

/// The host and port of a `wss://` URL; the port defaults to 443. A plain `ws://` URL is
/// refused: the agents always speak TLS, as a softphone's signalling does.
pub fn host_port(url: &str) -> Result<(String, u16), String> {
    let bad = || format!("expected a secure WebSocket URL like wss://host:port/path, found {url}");
    if url.starts_with("ws://") {
        return Err(format!(
            "{url}: plain WebSocket (ws://) is not supported; softphone signalling runs over TLS \
             (wss://)"
        ));
    }
    let Some(rest) = url.strip_prefix("wss://") else {
        return Err(bad());
    };
    let default_port = 443;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
        None => (authority, default_port),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The URL (`wss://HOST:PORT/PATH`), as the agent is given it.
    pub url: String,
    /// The address `HOST` resolved to.
    pub addr: SocketAddr,
    /// Roots the agent trusts.
    pub roots: Vec<CertificateDer<'static>>,
}

/// A request id as the library makes them: a random (version 4) UUID string.
#[must_use]
pub fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_fresh_uuid_v4_strings_as_the_library_makes_them() {
        let (a, b) = (request_id(), request_id());
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(a.len(), 36, "{a}");
        assert_eq!(a, a.to_lowercase());
    }

    #[test]
    fn websocket_urls() {
        assert_eq!(
            host_port("wss://signalling.sim.local:8443/rtc"),
            Ok(("signalling.sim.local".into(), 8443))
        );
        assert_eq!(host_port("wss://x.example/"), Ok(("x.example".into(), 443)));
        assert!(
            host_port("ws://x.example")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(host_port("wss://:8443/").is_err());
        assert!(host_port("https://x.example").is_err());
        assert!(host_port("wss://x.example:port/").is_err());
    }
}
