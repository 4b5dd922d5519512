//! One signalling connection without its socket: TLS (rustls), the WebSocket (tungstenite) and
//! JSON-RPC, driven by the bytes and instants its caller passes in (the quinn-proto shape:
//! `handle_input`, `handle_timeout`, `poll_transmit`, `poll_event`, `poll_timeout`). The
//! real-time edge ([`super::SignallingClient`]) moves its bytes over a TCP socket; a
//! virtual-time driver moves them through the simulated path.
//!
//! rustls and tungstenite are both sans-I/O underneath: rustls takes and gives TLS records
//! through `read_tls`/`write_tls`, and tungstenite reads and writes any `Read + Write`, which
//! here is the TLS session's plaintext ([`Plaintext`], which the endpoint's core uses too).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::MidHandshake;
use tokio_tungstenite::tungstenite::handshake::client::ClientHandshake;
use tokio_tungstenite::tungstenite::{self, HandshakeError, Message, WebSocket};

use super::{JSONRPC, Request, Response, SignallingError, request_id, websocket_config};

/// Late answers to requests given up on that are still recognised (and skipped).
const ABANDONED: usize = 16;

/// What happened on a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The WebSocket is open (TLS and the upgrade done): requests may go.
    Connected,
    /// A request's outcome: the server's result or error, or [`SignallingError::Timeout`].
    Response {
        /// The request's id, as [`Connection::request`] gave it.
        id: String,
        /// What came of it.
        result: Result<Value, SignallingError>,
    },
    /// The pong of the last [`Connection::ping`].
    Pong,
    /// The server asked `bye` (it ended the call); it was answered `{}`, as the library does.
    RemoteBye,
    /// The connection can carry nothing more: why.
    Failed(SignallingError),
    /// The close handshake completed.
    Closed,
}

/// A TLS session (either end's) seen as a stream of its plaintext, for tungstenite: reads say
/// `WouldBlock` when nothing more has arrived, as a non-blocking socket would. The records go
/// in through [`Self::receive`] and out through [`Self::transmit`].
#[derive(Debug)]
pub struct Plaintext(pub rustls::Connection);

impl Plaintext {
    /// TLS records that arrived: read into the session and processed.
    pub fn receive(&mut self, mut data: &[u8]) -> Result<(), rustls::Error> {
        while !data.is_empty() {
            match self.0.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(rustls::Error::General(e.to_string())),
            }
            self.0.process_new_packets()?;
        }
        Ok(())
    }

    /// The other end closed the stream.
    pub fn receive_eof(&mut self) {
        let _ = self.0.read_tls(&mut &[][..]);
        let _ = self.0.process_new_packets();
    }

    /// TLS records to send, if any.
    pub fn transmit(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        while self.0.wants_write() {
            if self.0.write_tls(&mut out).is_err() {
                break;
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

impl Read for Plaintext {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.reader().read(buf)
    }
}

impl Write for Plaintext {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // rustls holds what is written before its handshake ends, and sends it after.
        self.0.writer().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One step of the WebSocket upgrade.
type Upgrade = Result<
    (
        WebSocket<Plaintext>,
        tungstenite::handshake::client::Response,
    ),
    HandshakeError<ClientHandshake<Plaintext>>,
>;

enum State {
    /// TLS and the HTTP upgrade under way.
    Upgrading(MidHandshake<ClientHandshake<Plaintext>>),
    /// Open (or, once `ended`, failed or closed: kept for its last TLS records).
    Open(WebSocket<Plaintext>),
    /// The upgrade failed and took the TLS session with it (or, inside a method, between
    /// two states).
    Gone,
}

/// A request awaiting its response.
#[derive(Debug)]
struct Pending {
    id: String,
    method: String,
    deadline: Instant,
}

/// One signalling connection's TLS, WebSocket and JSON-RPC state, without its socket.
pub struct Connection {
    state: State,
    pending: Vec<Pending>,
    /// The last ping's payload, its deadline and timeout, until its pong.
    ping: Option<(Vec<u8>, Instant, Duration)>,
    /// Requests given up on: a late answer to one is skipped.
    abandoned: VecDeque<String>,
    events: VecDeque<Event>,
    /// Whether [`Event::Failed`] or [`Event::Closed`] was given.
    ended: bool,
    /// Whether our Close went.
    closing: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Upgrading(_) => "upgrading",
            State::Open(_) => "open",
            State::Gone => "gone",
        };
        f.debug_struct("Connection")
            .field("state", &state)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Starts TLS to `host` (checked against `tls`'s roots) and the WebSocket upgrade to
    /// `url`: the ClientHello is in [`Self::poll_transmit`] at once.
    pub fn new(
        url: &str,
        host: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, SignallingError> {
        let connect = |e: String| SignallingError::Connect(e);
        let name = ServerName::try_from(host.to_owned()).map_err(|e| connect(e.to_string()))?;
        let session =
            rustls::ClientConnection::new(tls, name).map_err(|e| connect(format!("TLS: {e}")))?;
        let request = url
            .into_client_request()
            .map_err(|e| connect(format!("WebSocket upgrade: {e}")))?;
        let mut connection = Self {
            state: State::Gone,
            pending: Vec::new(),
            ping: None,
            abandoned: VecDeque::new(),
            events: VecDeque::new(),
            ended: false,
            closing: false,
        };
        let handshake =
            ClientHandshake::start(Plaintext(session.into()), request, Some(websocket_config()))
                .map_err(|e| connect(format!("WebSocket upgrade: {e}")))?;
        connection.upgrade(handshake.handshake());
        Ok(connection)
    }

    /// Whether the WebSocket is open (and not closing or failed).
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_)) && !self.ended
    }

    /// Whether it failed or closed: nothing more will come of it.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Bytes that arrived from the server.
    pub fn handle_input(&mut self, data: &[u8]) {
        let Some(tls) = self.tls() else { return };
        if let Err(e) = tls.receive(data) {
            let message = format!("TLS: {e}");
            return self.fail(if self.is_upgrading() {
                SignallingError::Connect(message)
            } else {
                SignallingError::Protocol(message)
            });
        }
        self.advance();
    }

    /// The server closed its end of the stream (a FIN, or a reset).
    pub fn handle_eof(&mut self) {
        if let Some(tls) = self.tls() {
            tls.receive_eof();
        }
        self.advance();
        let closed = "connection closed while waiting for a response";
        self.fail(if self.is_upgrading() {
            SignallingError::Connect("closed during the TLS or WebSocket handshake".into())
        } else {
            SignallingError::Protocol(closed.into())
        });
    }

    /// Bytes to send to the server, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.tls()?.transmit()
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] is due: the earliest request's or ping's deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let requests = self.pending.iter().map(|p| p.deadline);
        requests.chain(self.ping.as_ref().map(|p| p.1)).min()
    }

    /// Requests and pings past their deadline time out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].deadline > now {
                i += 1;
                continue;
            }
            let p = self.pending.remove(i);
            if self.abandoned.len() >= ABANDONED {
                self.abandoned.pop_front();
            }
            self.abandoned.push_back(p.id.clone());
            self.events.push_back(Event::Response {
                id: p.id,
                result: Err(SignallingError::Timeout(p.method)),
            });
        }
        if let Some((_, deadline, timeout)) = self.ping
            && deadline <= now
        {
            self.ping = None;
            self.fail(SignallingError::Stalled(timeout));
        }
    }

    /// Sends a JSON-RPC request, answered by an [`Event::Response`] with the id returned,
    /// or a [`SignallingError::Timeout`] one after `timeout`.
    pub fn request(
        &mut self,
        now: Instant,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<String, SignallingError> {
        let id = request_id();
        let request = Request {
            jsonrpc: JSONRPC.into(),
            id: Value::String(id.clone()),
            method: method.into(),
            params,
        };
        let text = serde_json::to_string(&request)
            .map_err(|e| SignallingError::Protocol(e.to_string()))?;
        self.send(Message::text(text))?;
        self.pending.push(Pending {
            id: id.clone(),
            method: method.into(),
            deadline: now + timeout,
        });
        Ok(id)
    }

    /// Sends a WebSocket ping (RFC 6455 §5.5.2): [`Event::Pong`] when its pong arrives, or the
    /// connection fails [`SignallingError::Stalled`] after `timeout` — the keep-alive that
    /// finds a connection a middlebox stalled without a FIN or RST.
    pub fn ping(&mut self, now: Instant, timeout: Duration) -> Result<(), SignallingError> {
        let payload = request_id().into_bytes();
        self.send(Message::Ping(payload.clone().into()))?;
        self.ping = Some((payload, now + timeout, timeout));
        Ok(())
    }

    /// Starts the close handshake (RFC 6455 §7.1.1): [`Event::Closed`] once the server's Close
    /// arrives.
    pub fn close(&mut self) {
        if let State::Open(ws) = &mut self.state
            && !self.ended
        {
            self.closing = true;
            let _ = ws.close(None);
            let _ = ws.flush();
        }
    }

    fn send(&mut self, message: Message) -> Result<(), SignallingError> {
        let (State::Open(ws), false) = (&mut self.state, self.ended) else {
            return Err(SignallingError::Protocol(
                "the connection is not open".into(),
            ));
        };
        ws.send(message)
            .map_err(|e| SignallingError::Protocol(format!("send: {e}")))
    }

    fn is_upgrading(&self) -> bool {
        matches!(self.state, State::Upgrading(_))
    }

    fn tls(&mut self) -> Option<&mut Plaintext> {
        match &mut self.state {
            State::Upgrading(mid) => Some(mid.get_mut().get_mut()),
            State::Open(ws) => Some(ws.get_mut()),
            State::Gone => None,
        }
    }

    /// The upgrade's next step: done, waiting for more bytes, or failed.
    fn upgrade(&mut self, step: Upgrade) {
        match step {
            Ok((ws, _)) => {
                self.state = State::Open(ws);
                self.events.push_back(Event::Connected);
            }
            Err(HandshakeError::Interrupted(mid)) => self.state = State::Upgrading(mid),
            Err(HandshakeError::Failure(e)) => {
                self.state = State::Gone;
                self.fail(SignallingError::Connect(format!("WebSocket upgrade: {e}")));
            }
        }
    }

    fn advance(&mut self) {
        if self.ended {
            return;
        }
        if let State::Upgrading(_) = self.state
            && let State::Upgrading(mid) = std::mem::replace(&mut self.state, State::Gone)
        {
            self.upgrade(mid.handshake());
        }
        while let State::Open(ws) = &mut self.state
            && !self.ended
        {
            let message = match ws.read() {
                Ok(message) => message,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::ConnectionClosed) => {
                    self.ended = true;
                    self.events.push_back(Event::Closed);
                    break;
                }
                Err(e) => {
                    self.fail(SignallingError::Protocol(e.to_string()));
                    break;
                }
            };
            match message {
                Message::Text(text) => self.handle_text(text.as_str()),
                Message::Pong(p) if self.ping.as_ref().is_some_and(|(want, ..)| *want == *p) => {
                    self.ping = None;
                    self.events.push_back(Event::Pong);
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                // The answer to our own Close: the close handshake is done (the server closes
                // the TCP connection next, RFC 6455 §7.1.1).
                Message::Close(_) if self.closing => {
                    self.ended = true;
                    self.events.push_back(Event::Closed);
                }
                Message::Close(_) => {
                    self.fail(SignallingError::Protocol(
                        "server closed the connection".into(),
                    ));
                }
                Message::Binary(_) => {
                    self.fail(SignallingError::Protocol("unexpected binary frame".into()));
                }
            }
        }
        // Pongs tungstenite queued, the reply to a Close.
        if let State::Open(ws) = &mut self.state {
            let _ = ws.flush();
        }
    }

    /// A text frame: the server's request (answered), or a response to one of ours.
    fn handle_text(&mut self, text: &str) {
        let raw: Value = match serde_json::from_str(text) {
            Ok(raw) => raw,
            Err(e) => return self.fail(SignallingError::Protocol(format!("not JSON: {e}"))),
        };
        if raw.get("method").is_some() {
            return self.answer_server_request(&raw);
        }
        let mut response: Response = match serde_json::from_value(raw.clone()) {
            Ok(r) => r,
            Err(e) => {
                let e = format!("not a JSON-RPC response: {e}");
                return self.fail(SignallingError::Protocol(e));
            }
        };
        // `"result": null` is a success with a null result, not a missing result.
        response.result = raw.get("result").cloned();
        if response.jsonrpc != JSONRPC {
            let e = format!("jsonrpc {:?}, expected \"2.0\"", response.jsonrpc);
            return self.fail(SignallingError::Protocol(e));
        }
        let got = response.id.as_str().unwrap_or_default();
        if let Some(i) = self.pending.iter().position(|p| p.id == got) {
            let p = self.pending.remove(i);
            let result = match (response.result, response.error) {
                (_, Some(e)) => Err(SignallingError::Rpc(e)),
                (Some(v), None) => Ok(v),
                (None, None) => Err(SignallingError::Protocol(
                    "response with neither result nor error".into(),
                )),
            };
            self.events.push_back(Event::Response { id: p.id, result });
        } else if !self.abandoned.iter().any(|a| a == got) {
            // A late answer to a request that timed out is skipped; any other is a violation.
            let expected: Vec<_> = self.pending.iter().map(|p| p.id.as_str()).collect();
            let e = format!("response id {}, expected one of {expected:?}", response.id);
            self.fail(SignallingError::Protocol(e));
        }
    }

    /// `bye` (the server ended the call) is answered `{}`, as the library does; anything else
    /// gets JSON-RPC's "method not found".
    fn answer_server_request(&mut self, raw: &Value) {
        let id = raw.get("id").cloned().unwrap_or(Value::Null);
        let reply = if raw.get("method").and_then(Value::as_str) == Some("bye") {
            self.events.push_back(Event::RemoteBye);
            serde_json::json!({ "jsonrpc": JSONRPC, "result": {}, "id": id })
        } else {
            serde_json::json!({
                "jsonrpc": JSONRPC,
                "error": { "code": -32601, "message": "the client serves no methods but bye" },
                "id": id,
            })
        };
        if let Err(e) = self.send(Message::text(reply.to_string())) {
            self.fail(e);
        }
    }

    /// The connection carries nothing more: the first failure is the one given.
    fn fail(&mut self, error: SignallingError) {
        if !self.ended {
            self.ended = true;
            self.events.push_back(Event::Failed(error));
        }
    }
}
