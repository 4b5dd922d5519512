//! Test harness for the sans-I/O core: an explicit clock, a server that opens every relay it is
//! asked for, and a minimal TURN client that answers the 401 challenge.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use turn_server::auth::{Credentials, Secret, long_term_key, long_term_key_sha256};
use turn_server::policy::loopback;
use turn_server::wire::{
    Class, IntegrityKind, MessageBuilder, Method, StunPacket, StunRepr, TransactionId, attr,
    decode_xor_address,
};
use turn_server::{Config, Event, FiveTuple, Server, StreamClose, Transmit, Transport};

pub const REALM: &str = "test.realm";
pub const UNIX_START: u64 = 1_800_000_000;

pub fn config() -> Config {
    let mut users = HashMap::new();
    users.insert("alice".to_owned(), Secret("alice-pw".into()));
    users.insert("bob".to_owned(), Secret("bob-pw".into()));
    let mut config = Config {
        realm: REALM.into(),
        credentials: Credentials {
            users,
            static_auth_secret: Some(Secret("s3cret".into())),
        },
        min_port: 50000,
        max_port: 50099,
        seed: 7,
        nonce_key: [3; 32],
        ..Config::default()
    };
    config.peer_policy.allow.extend(loopback());
    config
}

pub fn five_tuple(port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::from(([127, 0, 0, 1], port)),
        server: "127.0.0.1:3478".parse().unwrap(),
    }
}

/// The server and its clock.
pub struct Harness {
    pub server: Server,
    pub epoch: Instant,
    pub now: Instant,
    /// Relays the harness refuses to open (to test 508 and retries).
    pub refuse_open: usize,
    pub closed_relays: Vec<SocketAddr>,
    /// When set, OpenRelay requests are held here instead of answered.
    pub held: Option<Vec<turn_server::RelayRequest>>,
    /// Connections the server asked to close, in order, with the transmits drained before
    /// each request (how many replies went out first).
    pub closed_streams: Vec<(FiveTuple, StreamClose, usize)>,
    /// Whether `send` on a TCP/TLS 5-tuple goes through `handle_stream_data` (framing)
    /// instead of `handle_packet` (one whole message).
    pub framed: bool,
    /// Transmits drained so far.
    pub transmitted: usize,
}

impl Harness {
    pub fn new(config: Config) -> Self {
        // The only clock read: an arbitrary origin; every later time is epoch + offset.
        #[allow(clippy::disallowed_methods)]
        let epoch = Instant::now();
        Self {
            server: Server::new(config, epoch, UNIX_START),
            epoch,
            now: epoch,
            refuse_open: 0,
            closed_relays: Vec::new(),
            held: None,
            closed_streams: Vec::new(),
            framed: false,
            transmitted: 0,
        }
    }

    /// Drains transmits and events, answering OpenRelay at once.
    pub fn drain(&mut self) -> Vec<Transmit> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            let mut progressed = false;
            while let Some(t) = self.server.poll_transmit() {
                out.push(t);
                self.transmitted += 1;
                progressed = true;
            }
            while let Some(e) = self.server.poll_event() {
                progressed = true;
                match e {
                    Event::OpenRelay { request, .. } if self.held.is_some() => {
                        self.held.as_mut().unwrap().push(request);
                    }
                    Event::OpenRelay { request, .. } => {
                        let ok = if self.refuse_open > 0 {
                            self.refuse_open -= 1;
                            false
                        } else {
                            true
                        };
                        self.server.handle_relay_opened(self.now, request, ok);
                    }
                    Event::CloseRelay { addr } => self.closed_relays.push(addr),
                    Event::CloseStream { five_tuple, reason } => {
                        self.closed_streams
                            .push((five_tuple, reason, self.transmitted));
                    }
                    _ => {}
                }
            }
            if !progressed {
                return out;
            }
        }
        panic!("server did not go idle");
    }

    pub fn send(&mut self, ft: FiveTuple, bytes: &[u8]) -> Vec<Transmit> {
        if self.framed && ft.transport.is_stream() {
            self.server.handle_stream_data(self.now, ft, bytes);
        } else {
            self.server.handle_packet(self.now, ft, bytes);
        }
        self.drain()
    }

    /// Bytes on a TCP/TLS connection, cut anywhere.
    pub fn stream(&mut self, ft: FiveTuple, bytes: &[u8]) -> Vec<Transmit> {
        self.server.handle_stream_data(self.now, ft, bytes);
        self.drain()
    }

    pub fn peer_send(&mut self, relay: SocketAddr, peer: SocketAddr, data: &[u8]) -> Vec<Transmit> {
        self.server.handle_peer_packet(self.now, relay, peer, data);
        self.drain()
    }

    /// Advances the clock by `d`, firing every timeout on the way (bounded).
    pub fn advance(&mut self, d: Duration) -> Vec<Transmit> {
        let target = self.now + d;
        let mut out = Vec::new();
        for _ in 0..100_000 {
            match self.server.poll_timeout() {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.server.handle_timeout(self.now);
                    out.extend(self.drain());
                }
                _ => break,
            }
        }
        self.now = target;
        self.server.handle_timeout(target);
        out.extend(self.drain());
        out
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub bytes: Vec<u8>,
    pub method: Method,
    pub class: Class,
    pub code: Option<u16>,
    pub relayed: Option<SocketAddr>,
    pub mapped: Option<SocketAddr>,
    pub lifetime: Option<u32>,
    pub nonce: Option<String>,
    pub realm: Option<String>,
    pub unknown: Vec<u16>,
    pub signed: bool,
}

pub fn parse_response(bytes: &[u8]) -> Response {
    let p = StunPacket::new_checked(bytes).expect("a STUN message");
    let txid = p.transaction_id();
    let repr = StunRepr::parse(&p).expect("parsable");
    let mut r = Response {
        bytes: bytes.to_vec(),
        method: p.method(),
        class: p.class(),
        code: None,
        relayed: None,
        mapped: None,
        lifetime: repr.lifetime,
        nonce: repr.nonce.map(str::to_owned),
        realm: repr.realm.map(str::to_owned),
        unknown: Vec::new(),
        signed: repr.integrity.is_some(),
    };
    for a in p.attributes() {
        match a.kind {
            attr::ERROR_CODE => {
                r.code = Some(u16::from(a.value[2]) * 100 + u16::from(a.value[3]));
            }
            attr::XOR_RELAYED_ADDRESS => r.relayed = decode_xor_address(a.value, &txid),
            attr::XOR_MAPPED_ADDRESS => r.mapped = decode_xor_address(a.value, &txid),
            attr::UNKNOWN_ATTRIBUTES => {
                r.unknown = a
                    .value
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
            }
            _ => {}
        }
    }
    r
}

/// A TURN client with long-term credentials.
pub struct Client {
    pub ft: FiveTuple,
    pub username: String,
    pub password: String,
    pub nonce: Option<String>,
    pub integrity: IntegrityKind,
    /// The PASSWORD-ALGORITHM to choose (RFC 8489 §9.2.4) and the PASSWORD-ALGORITHMS list to
    /// echo with it; `None` for a client that knows no password algorithms (MD5).
    pub password_algorithm: Option<(u16, Vec<u8>)>,
    next_txid: u8,
}

impl Client {
    pub fn new(ft: FiveTuple, username: &str, password: &str) -> Self {
        Self {
            ft,
            username: username.into(),
            password: password.into(),
            nonce: None,
            integrity: IntegrityKind::Sha1,
            password_algorithm: None,
            next_txid: 0,
        }
    }

    pub fn txid(&mut self) -> TransactionId {
        self.next_txid = self.next_txid.wrapping_add(1);
        let mut id = [0xA5; 12];
        id[0] = self.next_txid;
        id[1] = self.ft.client.port() as u8;
        TransactionId(id)
    }

    /// A request, signed when a nonce is known.
    pub fn request(
        &mut self,
        method: Method,
        txid: TransactionId,
        attrs: impl Fn(&mut MessageBuilder),
    ) -> Vec<u8> {
        let mut b = MessageBuilder::new(method, Class::Request, txid);
        attrs(&mut b);
        if let Some(nonce) = &self.nonce {
            b.attribute(attr::USERNAME, self.username.as_bytes())
                .attribute(attr::REALM, REALM.as_bytes())
                .attribute(attr::NONCE, nonce.as_bytes());
            let key = match &self.password_algorithm {
                Some((algorithm, list)) => {
                    b.attribute(attr::PASSWORD_ALGORITHM, &[0, *algorithm as u8, 0, 0])
                        .attribute(attr::PASSWORD_ALGORITHMS, list);
                    if *algorithm == 2 {
                        long_term_key_sha256(&self.username, REALM, &self.password).to_vec()
                    } else {
                        long_term_key(&self.username, REALM, &self.password).to_vec()
                    }
                }
                None => long_term_key(&self.username, REALM, &self.password).to_vec(),
            };
            b.integrity(self.integrity, &key);
        }
        b.finish_with_fingerprint()
    }

    /// Sends a request and returns the single response, answering 401/438 challenges once.
    pub fn transact(
        &mut self,
        h: &mut Harness,
        method: Method,
        attrs: impl Fn(&mut MessageBuilder),
    ) -> Response {
        let mut last = None;
        for _ in 0..3 {
            let txid = self.txid();
            let req = self.request(method, txid, &attrs);
            let out = h.send(self.ft, &req);
            assert_eq!(out.len(), 1, "exactly one response expected, got {out:?}");
            let r = parse_response(&out[0].contents);
            assert_eq!(r.method, method);
            match r.code {
                Some(401 | 438)
                    if r.nonce.is_some() && (self.nonce.is_none() || r.code == Some(438)) =>
                {
                    self.nonce = r.nonce.clone();
                    last = Some(r);
                }
                _ => return r,
            }
        }
        last.expect("a response")
    }

    pub fn allocate(&mut self, h: &mut Harness) -> SocketAddr {
        let r = self.transact(h, Method::ALLOCATE, |b| {
            b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
        });
        assert_eq!(r.class, Class::Success, "allocate failed: {r:?}");
        assert!(r.signed);
        r.relayed.expect("XOR-RELAYED-ADDRESS")
    }

    pub fn permit(&mut self, h: &mut Harness, peer: SocketAddr) -> Response {
        self.transact(h, Method::CREATE_PERMISSION, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    pub fn bind(&mut self, h: &mut Harness, channel: u16, peer: SocketAddr) -> Response {
        self.transact(h, Method::CHANNEL_BIND, |b| {
            b.u32_attribute(attr::CHANNEL_NUMBER, u32::from(channel) << 16)
                .xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    pub fn refresh(&mut self, h: &mut Harness, lifetime: u32) -> Response {
        self.transact(h, Method::REFRESH, |b| {
            b.u32_attribute(attr::LIFETIME, lifetime);
        })
    }

    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let txid = self.txid();
        let mut b = MessageBuilder::new(Method::SEND, Class::Indication, txid);
        b.xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attribute(attr::DATA, data);
        b.finish()
    }
}

/// Sends a request over a real UDP socket and returns the response, answering 401/438 once
/// (for the edge tests; bounded by the socket's read timeout).
pub fn transact_udp(
    c: &mut Client,
    sock: &std::net::UdpSocket,
    server: SocketAddr,
    method: Method,
    attrs: impl Fn(&mut MessageBuilder),
) -> Option<Response> {
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        let txid = c.txid();
        sock.send_to(&c.request(method, txid, &attrs), server)
            .ok()?;
        let r = loop {
            let (n, _) = sock.recv_from(&mut buf).ok()?;
            // Skip anything that is not the answer to this transaction (e.g. Data indications).
            if n >= 20 && buf[8..20] == txid.0 {
                break parse_response(&buf[..n]);
            }
        };
        match r.code {
            Some(401 | 438) if r.nonce.is_some() && (c.nonce.is_none() || r.code == Some(438)) => {
                c.nonce = r.nonce.clone();
            }
            _ => return Some(r),
        }
    }
    None
}

/// Reads one STUN/ChannelData frame from a stream (bounded by the stream's read timeout).
pub fn read_frame(s: &mut impl std::io::Read) -> Option<Vec<u8>> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).ok()?;
    let len = turn_server::wire::frame_len(&head).ok()??;
    let mut rest = vec![0; len - 4];
    s.read_exact(&mut rest).ok()?;
    Some([&head[..], &rest].concat())
}

/// [`transact_udp`] over a TCP or TLS stream.
pub fn transact_stream(
    c: &mut Client,
    s: &mut (impl std::io::Read + std::io::Write),
    method: Method,
    attrs: impl Fn(&mut MessageBuilder),
) -> Option<Response> {
    for _ in 0..3 {
        let txid = c.txid();
        s.write_all(&c.request(method, txid, &attrs)).ok()?;
        let r = loop {
            let frame = read_frame(s)?;
            if frame.len() >= 20 && frame[8..20] == txid.0 {
                break parse_response(&frame);
            }
        };
        match r.code {
            Some(401 | 438) if r.nonce.is_some() && (c.nonce.is_none() || r.code == Some(438)) => {
                c.nonce = r.nonce.clone();
            }
            _ => return Some(r),
        }
    }
    None
}

/// A self-signed certificate for `localhost`: (PEM chain, PEM key, DER certificate).
pub fn test_certificate() -> (String, String, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (
        ck.cert.pem(),
        ck.signing_key.serialize_pem(),
        ck.cert.der().to_vec(),
    )
}

/// A TCP connection to `to` from `from_ip` (any port), with a read timeout.
pub fn connect_from(
    from_ip: std::net::IpAddr,
    to: SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    s.bind(&SocketAddr::new(from_ip, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    let s = std::net::TcpStream::from(s);
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    Ok(s)
}

/// A TLS client over `tcp` that trusts only `cert` (DER), for the name `localhost`; the
/// handshake runs on first use.
pub fn tls_over(
    tcp: std::net::TcpStream,
    cert: &[u8],
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert.to_vec()))
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}
