//! One connection of the endpoint without its socket: TLS (rustls), the WebSocket
//! (tungstenite) and JSON-RPC, driven by the bytes and instants its caller passes in — the
//! endpoint's core, as `loadgen::signalling::Connection` is the client's. Well-formed requests
//! come out as [`ServerEvent::Request`], answered with [`ServerConnection::respond`];
//! malformed ones are answered here with JSON-RPC's own error codes.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use loadgen::signalling::{JSONRPC, Plaintext, RpcError};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::handshake::MidHandshake;
use tokio_tungstenite::tungstenite::handshake::server::{NoCallback, ServerHandshake};
use tokio_tungstenite::tungstenite::{self, HandshakeError, Message, WebSocket};

use super::{METHODS, SignallingLimits, SignallingStats, known_params};

/// What happened on a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// TLS and the WebSocket upgrade are done.
    Opened,
    /// A well-formed request, for the application; answer it with
    /// [`ServerConnection::respond`] and `key`.
    Request {
        /// Names the request in [`ServerConnection::respond`].
        key: u64,
        /// The method, one of [`METHODS`].
        method: String,
        /// Its parameters (an object; `{}` when the request had none).
        params: Value,
    },
    /// The connection ended: the close handshake (`clean`), or a failure, a reset or the
    /// handshake deadline.
    Ended {
        /// Whether it ended with the close handshake.
        clean: bool,
    },
}

/// A request handed out and not answered yet: its id and the envelope it came in.
#[derive(Debug)]
struct Awaiting {
    key: u64,
    id: Value,
    envelope: Option<serde_json::Map<String, Value>>,
}

/// One step of the WebSocket upgrade.
type Upgrade = Result<WebSocket<Plaintext>, HandshakeError<ServerHandshake<Plaintext, NoCallback>>>;

enum State {
    Accepting(MidHandshake<ServerHandshake<Plaintext, NoCallback>>),
    Open(WebSocket<Plaintext>),
    /// The upgrade failed and took the TLS session with it (or, inside a method, between two
    /// states).
    Gone,
}

/// One connection of the signalling endpoint, without its socket.
pub struct ServerConnection {
    state: State,
    stats: Arc<SignallingStats>,
    /// The TLS handshake and upgrade must be done by then.
    handshake_deadline: Option<Instant>,
    awaiting: Vec<Awaiting>,
    next_key: u64,
    events: VecDeque<ServerEvent>,
    ended: bool,
}

impl std::fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnection")
            .field("open", &matches!(self.state, State::Open(_)))
            .field("awaiting", &self.awaiting)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl ServerConnection {
    /// A connection accepted at `now`, serving `tls`'s certificate within `limits`.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        limits: SignallingLimits,
        stats: Arc<SignallingStats>,
        now: Instant,
    ) -> io::Result<Self> {
        let session = rustls::ServerConnection::new(tls).map_err(io::Error::other)?;
        let config = loadgen::signalling::websocket_config()
            .max_message_size(Some(limits.message_bytes))
            .max_frame_size(Some(limits.message_bytes));
        let mut connection = Self {
            state: State::Gone,
            stats,
            handshake_deadline: Some(now + limits.handshake),
            awaiting: Vec::new(),
            next_key: 0,
            events: VecDeque::new(),
            ended: false,
        };
        let handshake = ServerHandshake::start(Plaintext(session.into()), NoCallback, Some(config));
        connection.upgrade(handshake.handshake());
        Ok(connection)
    }

    /// Bytes that arrived from the client.
    pub fn handle_input(&mut self, data: &[u8]) {
        let Some(tls) = self.tls() else { return };
        if tls.receive(data).is_err() {
            // rustls has queued its alert; the edge sends it and closes.
            return self.end(false);
        }
        self.advance();
    }

    /// The client closed its end of the stream.
    pub fn handle_eof(&mut self) {
        if let Some(tls) = self.tls() {
            tls.receive_eof();
        }
        self.advance();
        self.end(false);
    }

    /// A client that opened the connection and said nothing is dropped at the deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.handshake_deadline.is_some_and(|d| d <= now) {
            self.handshake_deadline = None;
            self.end(false);
        }
    }

    /// When [`Self::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.handshake_deadline
    }

    /// Bytes to send to the client, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.tls()?.transmit()
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Whether it ended: nothing more will come of it but what [`Self::poll_transmit`] holds.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Answers the request `key` (a result, or an error the agent maps to a failure class).
    pub fn respond(&mut self, key: u64, answer: Result<Value, RpcError>) {
        let Some(i) = self.awaiting.iter().position(|a| a.key == key) else {
            return;
        };
        let Awaiting { id, envelope, .. } = self.awaiting.remove(i);
        let response = match answer {
            Ok(result) => json!({ "jsonrpc": JSONRPC, "id": id, "result": result }),
            Err(e) => error_response(id, e),
        };
        self.send(&wrap(envelope, response));
    }

    fn tls(&mut self) -> Option<&mut Plaintext> {
        match &mut self.state {
            State::Accepting(mid) => Some(mid.get_mut().get_mut()),
            State::Open(ws) => Some(ws.get_mut()),
            State::Gone => None,
        }
    }

    fn upgrade(&mut self, step: Upgrade) {
        match step {
            Ok(ws) => {
                self.state = State::Open(ws);
                self.handshake_deadline = None;
                self.stats.connections.fetch_add(1, Ordering::Relaxed);
                self.events.push_back(ServerEvent::Opened);
            }
            Err(HandshakeError::Interrupted(mid)) => self.state = State::Accepting(mid),
            Err(HandshakeError::Failure(_)) => {
                self.state = State::Gone;
                self.end(false);
            }
        }
    }

    fn advance(&mut self) {
        if self.ended {
            return;
        }
        if let State::Accepting(_) = self.state
            && let State::Accepting(mid) = std::mem::replace(&mut self.state, State::Gone)
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
                    self.end(true);
                    break;
                }
                Err(_) => {
                    self.end(false);
                    break;
                }
            };
            match message {
                Message::Text(text) => {
                    if let Some(reply) = self.handle(text.as_str()) {
                        self.send(&reply);
                    }
                }
                Message::Binary(_) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    let e = RpcError::new(-32600, "binary frames are not JSON-RPC");
                    self.send(&error_response(Value::Null, e));
                }
                // The close handshake (RFC 6455 §5.5.1): tungstenite has queued our Close in
                // reply; flushing sends it, so the client sees a clean close (1000), not an
                // abnormal one (1006).
                Message::Close(_) => {
                    self.stats.closed_cleanly.fetch_add(1, Ordering::Relaxed);
                    if let State::Open(ws) = &mut self.state {
                        let _ = ws.flush();
                    }
                    self.end(true);
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        // Pongs tungstenite queued.
        if let State::Open(ws) = &mut self.state {
            let _ = ws.flush();
        }
    }

    fn send(&mut self, reply: &Value) {
        if let State::Open(ws) = &mut self.state
            && ws.send(Message::text(reply.to_string())).is_err()
        {
            self.end(false);
        }
    }

    fn end(&mut self, clean: bool) {
        if !self.ended {
            if !matches!(self.state, State::Open(_)) {
                self.stats
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.ended = true;
            self.events.push_back(ServerEvent::Ended { clean });
        }
    }

    /// Answers one text frame at once (malformed), hands it out (a request), or neither (an
    /// answer from the client, a notification).
    ///
    /// The CCP carries the library's messages on its shared WebSocket in an envelope,
    /// `{topic, connectionId, jsonRpcMsg}` (persistent-connection mode); such a frame is
    /// answered in the same envelope.
    fn handle(&mut self, text: &str) -> Option<Value> {
        let frame: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                let e = RpcError::new(-32700, format!("not JSON: {e}"));
                return Some(error_response(Value::Null, e));
            }
        };
        match frame {
            Value::Object(mut envelope)
                if envelope.get("jsonRpcMsg").is_some_and(Value::is_object) =>
            {
                let message = envelope.remove("jsonRpcMsg").unwrap_or_default();
                let reply = self.handle_message(&message, Some(envelope.clone()))?;
                Some(wrap(Some(envelope), reply))
            }
            message => self.handle_message(&message, None),
        }
    }

    /// [`Self::handle`] for one JSON-RPC message.
    fn handle_message(
        &mut self,
        frame: &Value,
        envelope: Option<serde_json::Map<String, Value>>,
    ) -> Option<Value> {
        let stats = &self.stats;
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
            let e = "neither a request nor an answer".into();
            return malformed(Value::Null, -32600, e);
        }
        // The id is echoed exactly as sent: a string (the library's UUIDs) or a number. `null`
        // is allowed by JSON-RPC 2.0 but cannot be matched to its answer, so it is refused, and
        // any other type is not an id at all (both answered with `id: null`, as the spec says).
        let id = match object.get("id") {
            None => {
                stats.unanswered.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
            Some(Value::Null) => {
                let e = "id null: give a string or a number to match the answer by".into();
                return malformed(Value::Null, -32600, e);
            }
            Some(other) => {
                let e = format!("id must be a string or a number, not {other}");
                return malformed(Value::Null, -32600, e);
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
        self.next_key += 1;
        let key = self.next_key;
        self.awaiting.push(Awaiting { key, id, envelope });
        self.events.push_back(ServerEvent::Request {
            key,
            method: method.to_owned(),
            params,
        });
        None
    }
}

/// A reply in the envelope its request came in, if any.
fn wrap(envelope: Option<serde_json::Map<String, Value>>, reply: Value) -> Value {
    match envelope {
        Some(mut envelope) => {
            envelope.insert("jsonRpcMsg".into(), reply);
            Value::Object(envelope)
        }
        None => reply,
    }
}

fn error_response(id: Value, error: RpcError) -> Value {
    let mut response = serde_json::Map::new();
    response.insert("jsonrpc".into(), JSONRPC.into());
    response.insert("id".into(), id);
    let RpcError { code, message } = error;
    response.insert("error".into(), json!({ "code": code, "message": message }));
    Value::Object(response)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // one real instant to start the simulated clock from
mod tests {
    use std::time::Duration;

    use loadgen::signalling::{Connection, Event, SignallingError, tls_client_config};

    use super::*;

    const HOST: &str = "signalling.sim.local";

    /// A client core and a server core joined by memory, on a simulated clock.
    struct Pair {
        client: Connection,
        server: ServerConnection,
        stats: Arc<SignallingStats>,
        now: Instant,
        /// Whether bytes cross (a stalled middlebox carries none).
        carrying: bool,
    }

    impl Pair {
        fn new(trusted: bool) -> Self {
            let cert = rcgen::generate_simple_self_signed(vec![HOST.to_owned()]).unwrap();
            let other = rcgen::generate_simple_self_signed(vec![HOST.to_owned()]).unwrap();
            let root = if trusted { &cert } else { &other };
            let client_tls = tls_client_config(&[root.cert.der().clone()]).unwrap();
            let key =
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
            let server_tls =
                turn_server::io::tls_server_config(vec![cert.cert.der().clone()], key).unwrap();
            let stats = Arc::new(SignallingStats::default());
            let now = Instant::now();
            let url = format!("wss://{HOST}:8443/rtc");
            Self {
                client: Connection::new(&url, HOST, client_tls).unwrap(),
                server: ServerConnection::new(
                    server_tls,
                    SignallingLimits::default(),
                    stats.clone(),
                    now,
                )
                .unwrap(),
                stats,
                now,
                carrying: true,
            }
        }

        /// Moves bytes both ways until neither side has any.
        fn settle(&mut self) {
            loop {
                let mut moved = false;
                while let Some(data) = self.client.poll_transmit() {
                    moved = true;
                    if self.carrying {
                        self.server.handle_input(&data);
                    }
                }
                while let Some(data) = self.server.poll_transmit() {
                    moved = true;
                    if self.carrying {
                        self.client.handle_input(&data);
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
            self.client.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
            self.settle();
        }

        fn client_events(&mut self) -> Vec<Event> {
            std::iter::from_fn(|| self.client.poll_event()).collect()
        }

        fn server_events(&mut self) -> Vec<ServerEvent> {
            std::iter::from_fn(|| self.server.poll_event()).collect()
        }

        fn open() -> Self {
            let mut pair = Self::new(true);
            pair.settle();
            assert_eq!(pair.client_events(), [Event::Connected]);
            assert_eq!(pair.server_events(), [ServerEvent::Opened]);
            pair
        }
    }

    #[test]
    fn a_request_crosses_and_its_answer_comes_back_by_id() {
        let mut pair = Pair::open();
        let params = json!({ "sdp": "v=0", "candidates": [], "callContextToken": "t" });
        let id = pair
            .client
            .request(pair.now, "invite", params.clone(), Duration::from_secs(5))
            .unwrap();
        pair.settle();
        let [
            ServerEvent::Request {
                key,
                method,
                params: got,
            },
        ] = &pair.server_events()[..]
        else {
            panic!("no request");
        };
        assert_eq!((method.as_str(), got), ("invite", &params));
        pair.server.respond(*key, Ok(json!({ "sdp": "answer" })));
        pair.settle();
        assert_eq!(
            pair.client_events(),
            [Event::Response {
                id,
                result: Ok(json!({ "sdp": "answer" }))
            }]
        );
        // An error answer carries its code (the agent's failure class).
        let id = pair
            .client
            .request(pair.now, "accept", json!({}), Duration::from_secs(2))
            .unwrap();
        pair.settle();
        let [ServerEvent::Request { key, .. }] = &pair.server_events()[..] else {
            panic!("no request");
        };
        pair.server.respond(*key, Err(RpcError::new(486, "busy")));
        pair.settle();
        assert_eq!(
            pair.client_events(),
            [Event::Response {
                id,
                result: Err(SignallingError::Rpc(RpcError::new(486, "busy")))
            }]
        );
        assert_eq!(pair.stats.requests.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn an_unanswered_request_times_out_at_its_deadline_and_its_late_answer_is_skipped() {
        let mut pair = Pair::open();
        let timeout = Duration::from_secs(5);
        let id = pair
            .client
            .request(pair.now, "invite", json!({}), timeout)
            .unwrap();
        pair.settle();
        let [ServerEvent::Request { key, .. }] = &pair.server_events()[..] else {
            panic!("no request");
        };
        assert_eq!(pair.client.poll_timeout(), Some(pair.now + timeout));
        pair.advance(timeout - Duration::from_millis(1));
        assert_eq!(pair.client_events(), []);
        pair.advance(Duration::from_millis(1));
        assert_eq!(
            pair.client_events(),
            [Event::Response {
                id,
                result: Err(SignallingError::Timeout("invite".into()))
            }]
        );
        pair.server.respond(*key, Ok(json!({})));
        pair.settle();
        assert_eq!(pair.client_events(), [], "a late answer is skipped");
        assert!(pair.client.is_open());
    }

    #[test]
    fn a_ping_is_ponged_and_a_stalled_connection_is_found_at_the_pongs_deadline() {
        let mut pair = Pair::open();
        let timeout = Duration::from_secs(20);
        pair.client.ping(pair.now, timeout).unwrap();
        pair.settle();
        assert_eq!(pair.client_events(), [Event::Pong]);
        // A middlebox that carries nothing more and closes nothing.
        pair.carrying = false;
        pair.client.ping(pair.now, timeout).unwrap();
        pair.advance(timeout);
        assert_eq!(
            pair.client_events(),
            [Event::Failed(SignallingError::Stalled(timeout))]
        );
    }

    #[test]
    fn the_server_asks_bye_and_the_client_answers_it() {
        let mut pair = Pair::open();
        // The server side of the library's contract: a `bye` it sends is answered `{}`.
        let bye = json!({ "jsonrpc": JSONRPC, "id": "s1", "method": "bye", "params": {} });
        pair.server.send(&bye);
        pair.settle();
        assert_eq!(pair.client_events(), [Event::RemoteBye]);
        assert_eq!(pair.stats.unanswered.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_close_handshake_ends_both_cleanly() {
        let mut pair = Pair::open();
        pair.client.close();
        pair.settle();
        assert_eq!(pair.client_events(), [Event::Closed]);
        assert_eq!(pair.server_events(), [ServerEvent::Ended { clean: true }]);
        assert_eq!(pair.stats.closed_cleanly.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_untrusted_certificate_fails_the_connect_and_counts_a_handshake_failure() {
        let mut pair = Pair::new(false);
        pair.settle();
        let events = pair.client_events();
        assert!(
            matches!(&events[..], [Event::Failed(SignallingError::Connect(e))] if e.starts_with("TLS")),
            "{events:?}"
        );
        assert_eq!(pair.server_events(), [ServerEvent::Ended { clean: false }]);
        assert_eq!(pair.stats.handshake_failures.load(Ordering::Relaxed), 1);
        assert_eq!(pair.stats.connections.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_client_that_says_nothing_is_dropped_at_the_handshake_deadline() {
        let mut pair = Pair::new(true);
        pair.carrying = false;
        let limit = SignallingLimits::default().handshake;
        assert_eq!(pair.server.poll_timeout(), Some(pair.now + limit));
        pair.advance(limit);
        assert_eq!(pair.server_events(), [ServerEvent::Ended { clean: false }]);
        assert!(pair.server.is_ended());
        assert_eq!(pair.stats.handshake_failures.load(Ordering::Relaxed), 1);
    }
}
