//! Signalling: JSON-RPC 2.0 text frames over a TLS WebSocket, the shape of the CCP's softphone
//! signalling (DESIGN §4), so that a CCP-style client could talk to the simulator's endpoint.
//!
//! Methods: `invite` {sdp, candidates, callContextToken} → {callId, sdp, candidates};
//! `accept` {callId}; `bye` {callId}; `connectContact` / `disconnectContact` {contactId}.
//! Errors carry a code the agent maps to a failure class: 403 access denied, 486 busy, 404 call
//! not found, 400 bad request, 408 request timeout, 409 idempotency, 500 internal, and JSON-RPC's
//! own −32700 … −32600 for malformed requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reports::FailureClass;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

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

/// `invite` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Invite {
    /// The SDP offer.
    pub sdp: String,
    /// The agent's ICE candidates (its TURN relay candidate).
    pub candidates: Vec<Candidate>,
    /// The contact this call belongs to.
    pub call_context_token: String,
}

/// `invite` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InviteAnswer {
    /// The call's id, for `accept` and `bye`.
    pub call_id: String,
    /// The SDP answer.
    pub sdp: String,
    /// The anchor's ICE candidates.
    pub candidates: Vec<Candidate>,
}

/// `accept` / `bye` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallRef {
    /// The call's id.
    pub call_id: String,
}

/// A JSON-RPC request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Always "2.0".
    pub jsonrpc: String,
    /// The request id.
    pub id: u64,
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
    /// The request's id (`null` when the request could not be read).
    pub id: Option<u64>,
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
}

impl std::fmt::Display for SignallingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "signalling connection failed: {e}"),
            Self::Timeout(m) => write!(f, "no answer to `{m}` in time"),
            Self::Rpc(e) => write!(f, "signalling error {}: {}", e.code, e.message),
            Self::Protocol(e) => write!(f, "signalling protocol violation: {e}"),
        }
    }
}

impl std::error::Error for SignallingError {}

impl SignallingError {
    /// The call failure class this error stands for (DESIGN §4).
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Connect(_) => FailureClass::SignallingConnectionFailure,
            Self::Rpc(e) if e.code == 403 => FailureClass::AccessDenied,
            Self::Rpc(e) if e.code == 486 => FailureClass::UserBusy,
            Self::Rpc(e) if e.code == 404 => FailureClass::CallNotFound,
            Self::Timeout(_) | Self::Rpc(_) | Self::Protocol(_) => {
                FailureClass::SignallingHandshakeFailure
            }
        }
    }
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

/// A connected signalling client.
#[derive(Debug)]
pub struct SignallingClient {
    ws: WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
    next_id: u64,
}

impl SignallingClient {
    /// Opens the WebSocket, retrying up to `attempts` times within `timeout` in all (the CCP
    /// tries 3 times within 10 s).
    pub async fn connect(
        endpoint: &Endpoint,
        timeout: Duration,
        attempts: u32,
    ) -> Result<Self, SignallingError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no attempt");
        for attempt in 0..attempts.max(1) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, Self::connect_once(endpoint)).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("timed out after {timeout:?}"),
            }
            // Back off a little between tries, within the deadline.
            let pause = Duration::from_millis(250 * u64::from(attempt + 1));
            if tokio::time::Instant::now() + pause < deadline {
                tokio::time::sleep(pause).await;
            }
        }
        Err(SignallingError::Connect(last))
    }

    async fn connect_once(endpoint: &Endpoint) -> Result<Self, String> {
        let (host, _) = host_port(&endpoint.url)?;
        let config = tls_client_config(&endpoint.roots)?;
        let tcp = TcpStream::connect(endpoint.addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (ws, _) = tokio_tungstenite::client_async(endpoint.url.as_str(), tls)
            .await
            .map_err(|e| format!("WebSocket upgrade: {e}"))?;
        Ok(Self { ws, next_id: 1 })
    }

    /// Sends a request and waits up to `timeout` for its response.
    pub async fn call(
        &mut self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, SignallingError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request {
            jsonrpc: JSONRPC.into(),
            id,
            method: method.into(),
            params,
        };
        let text = serde_json::to_string(&request)
            .map_err(|e| SignallingError::Protocol(e.to_string()))?;
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| SignallingError::Protocol(format!("send: {e}")))?;
        let response = tokio::time::timeout(timeout, self.read_response(id))
            .await
            .map_err(|_| SignallingError::Timeout(method.into()))??;
        match (response.result, response.error) {
            (_, Some(e)) => Err(SignallingError::Rpc(e)),
            (Some(v), None) => Ok(v),
            (None, None) => Err(SignallingError::Protocol(
                "response with neither result nor error".into(),
            )),
        }
    }

    async fn read_response(&mut self, id: u64) -> Result<Response, SignallingError> {
        loop {
            let Some(frame) = self.ws.next().await else {
                return Err(SignallingError::Protocol(
                    "connection closed while waiting for a response".into(),
                ));
            };
            let text = match frame {
                Ok(Message::Text(t)) => t,
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Close(_)) => {
                    return Err(SignallingError::Protocol(
                        "server closed the connection".into(),
                    ));
                }
                Ok(other) => {
                    return Err(SignallingError::Protocol(format!(
                        "unexpected frame {other:?}"
                    )));
                }
                Err(e) => return Err(SignallingError::Protocol(e.to_string())),
            };
            let raw: Value = serde_json::from_str(text.as_str())
                .map_err(|e| SignallingError::Protocol(format!("not JSON: {e}")))?;
            let mut response: Response = serde_json::from_value(raw.clone())
                .map_err(|e| SignallingError::Protocol(format!("not a JSON-RPC response: {e}")))?;
            // `"result": null` is a success with a null result, not a missing result.
            response.result = raw.get("result").cloned();
            if response.jsonrpc != JSONRPC {
                return Err(SignallingError::Protocol(format!(
                    "jsonrpc {:?}, expected \"2.0\"",
                    response.jsonrpc
                )));
            }
            match response.id {
                Some(got) if got == id => return Ok(response),
                // A late answer to an earlier request that timed out: skip it.
                Some(got) if got < id => continue,
                other => {
                    return Err(SignallingError::Protocol(format!(
                        "response id {other:?}, expected {id}"
                    )));
                }
            }
        }
    }

    /// `invite`: offer a call, get the answer.
    pub async fn invite(
        &mut self,
        invite: &Invite,
        timeout: Duration,
    ) -> Result<InviteAnswer, SignallingError> {
        let params =
            serde_json::to_value(invite).map_err(|e| SignallingError::Protocol(e.to_string()))?;
        let v = self.call("invite", params, timeout).await?;
        serde_json::from_value(v)
            .map_err(|e| SignallingError::Protocol(format!("invite result: {e}")))
    }

    /// `accept` or `bye` for a call.
    pub async fn call_ref(
        &mut self,
        method: &str,
        call_id: &str,
        timeout: Duration,
    ) -> Result<(), SignallingError> {
        let params = serde_json::to_value(CallRef {
            call_id: call_id.into(),
        })
        .map_err(|e| SignallingError::Protocol(e.to_string()))?;
        self.call(method, params, timeout).await.map(|_| ())
    }

    /// Closes the WebSocket.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
