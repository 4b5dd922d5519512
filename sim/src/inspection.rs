//! A TLS-inspecting web proxy on the signalling path, without its sockets: the corporate
//! middlebox that breaks softphones by refusing WebSocket upgrades, by stalling long-lived
//! connections, or by renewing its certificates mid-shift.
//!
//! It terminates the agent's TLS with a certificate for the server's name that its own
//! [`InspectionCa`] forged (agents trust that root, as corporate machines trust their
//! proxy's), reads the HTTP request head, and either refuses a WebSocket upgrade with
//! `403 Forbidden` or opens a TLS connection of its own to the real server and relays the
//! plaintext both ways. When its certificate cache expires it renews its certificate and
//! resets every connection open through it — what drops agents' signalling when a cache is
//! shorter than a shift.
//!
//! Two rustls sessions over bytes, in the quinn-proto shape: [`Inspection`] is the proxy
//! (its certificate, its policy, its cache's expiry), [`ProxyConnection`] one connection
//! through it (`handle_*_input`, `poll_*_transmit`, `poll_event`, `poll_timeout`). The
//! real-time edge (`relay::proxy`) moves their bytes over TCP sockets; the virtual-time
//! driver over the site's simulated path.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loadgen::entropy::{Authority, Entropy};
use loadgen::signalling::Plaintext;
use rustls::pki_types::{CertificateDer, ServerName};

/// Largest HTTP request head the proxy reads before deciding.
const MAX_HEAD: usize = 16 * 1024;
/// The answer to a WebSocket upgrade the proxy refuses.
const FORBIDDEN: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 42\r\n\
Connection: close\r\n\r\nWebSocket upgrade blocked by proxy policy.";
/// The answer when the server cannot be reached.
const BAD_GATEWAY: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// How long a stalled connection is held open before the proxy forgets it (and closes it).
pub const STALL_HOLD: Duration = Duration::from_secs(600);

/// The proxy's certificate authority, whose root the agents trust.
#[derive(Debug)]
pub struct InspectionCa(Authority);

impl InspectionCa {
    /// A new CA whose keys come from `entropy`: the OS's (real time), or a seed (virtual
    /// time, so that its certificates and handshakes replay exactly).
    pub fn new(entropy: Entropy) -> Result<Self, String> {
        Authority::new("softphone-sim inspection CA", entropy.provider()?).map(Self)
    }

    /// The root certificate agents must trust.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.0.certificate()
    }
}

/// What the proxy does to the connections through it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InspectionPolicy {
    /// Refuse WebSocket upgrades with 403.
    pub breaks_websocket_upgrade: bool,
    /// Renew the certificate and reset every open connection this long after the start.
    pub cache_expiry: Option<Duration>,
    /// Stop relaying each connection this long after it opened, silently: both ends stay
    /// open and hear nothing more (no FIN, no RST) until [`STALL_HOLD`] has passed.
    pub stalls_after: Option<Duration>,
}

impl InspectionPolicy {
    /// Whether a site with this policy has a proxy at all.
    pub fn inspects(&self) -> bool {
        *self != Self::default()
    }
}

/// Counters of a proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// TLS handshakes with agents that failed.
    pub tls_failed: AtomicU64,
    /// WebSocket upgrades refused.
    pub upgrades_blocked: AtomicU64,
    /// Connections relayed to the server.
    pub relayed: AtomicU64,
    /// Connections that could not reach the server.
    pub upstream_failed: AtomicU64,
    /// Connections torn down when the certificate cache expired.
    pub reset: AtomicU64,
    /// Certificate renewals.
    pub renewals: AtomicU64,
    /// Connections stalled (relaying stopped without closing them).
    pub stalled: AtomicU64,
}

impl ProxyStats {
    /// Its counters, named as in `summary.json`'s `components`.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        reports::components::snapshot(&[
            ("accepted", &self.accepted),
            ("tls_failed", &self.tls_failed),
            ("upgrades_blocked", &self.upgrades_blocked),
            ("relayed", &self.relayed),
            ("upstream_failed", &self.upstream_failed),
            ("reset", &self.reset),
            ("renewals", &self.renewals),
            ("stalled", &self.stalled),
        ])
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One TLS-inspecting proxy: its forged certificate, its policy and its cache's expiry.
pub struct Inspection {
    ca: Arc<InspectionCa>,
    host: String,
    server_name: ServerName<'static>,
    /// The forged certificate agents are served (renewed when the cache expires).
    agent_tls: Arc<rustls::ServerConfig>,
    /// The proxy's own client side, trusting the real server.
    upstream_tls: Arc<rustls::ClientConfig>,
    policy: InspectionPolicy,
    expiry: Option<Instant>,
    stats: Arc<ProxyStats>,
}

impl std::fmt::Debug for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspection")
            .field("host", &self.host)
            .field("policy", &self.policy)
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

impl Inspection {
    /// A proxy started at `now` for the server named `host`, trusting `upstream_roots` for it.
    pub fn new(
        ca: Arc<InspectionCa>,
        host: &str,
        upstream_roots: &[CertificateDer<'static>],
        policy: InspectionPolicy,
        now: Instant,
    ) -> Result<Self, String> {
        Ok(Self {
            agent_tls: ca.0.tls_server(host)?,
            upstream_tls: loadgen::signalling::tls_client_config(upstream_roots)?,
            server_name: ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?,
            host: host.to_owned(),
            ca,
            policy,
            expiry: policy.cache_expiry.map(|d| now + d),
            stats: Arc::default(),
        })
    }

    /// The proxy's counters.
    pub fn stats(&self) -> Arc<ProxyStats> {
        self.stats.clone()
    }

    /// A connection an agent opened at `now`.
    pub fn accept(&self, now: Instant) -> Result<ProxyConnection, String> {
        count(&self.stats.accepted);
        let agent =
            rustls::ServerConnection::new(self.agent_tls.clone()).map_err(|e| e.to_string())?;
        Ok(ProxyConnection {
            agent: Plaintext(agent.into()),
            upstream: None,
            upstream_tls: self.upstream_tls.clone(),
            server_name: self.server_name.clone(),
            breaks_websocket_upgrade: self.policy.breaks_websocket_upgrade,
            stall_at: self.policy.stalls_after.map(|d| now + d),
            phase: Phase::Head,
            pending: Vec::new(),
            relayed: false,
            events: VecDeque::new(),
            stats: self.stats.clone(),
        })
    }

    /// When the certificate cache expires, if it has yet to.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiry
    }

    /// `true` when the certificate cache expired by `now` (once, as a misconfigured proxy's
    /// does): the certificate is renewed for new connections, and the caller must
    /// [`ProxyConnection::reset`] every connection open through the proxy.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if self.expiry.is_none_or(|at| at > now) {
            return false;
        }
        self.expiry = None;
        if let Ok(renewed) = self.ca.0.tls_server(&self.host) {
            self.agent_tls = renewed;
            count(&self.stats.renewals);
        }
        true
    }
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// TLS with the agent, then the request head.
    Head,
    /// Waiting for the TCP connection to the server.
    Connecting,
    /// Relaying plaintext both ways.
    Relaying,
    /// Relaying stopped; closes at this instant.
    Stalled(Instant),
    Closed,
}

/// What a connection asks of its edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyEvent {
    /// Open a TCP connection to the server, then call
    /// [`ProxyConnection::handle_upstream_connected`].
    ConnectUpstream,
    /// Send what both sides have queued, then close both connections.
    Close,
}

/// One connection through the proxy: the agent's TLS session (the forged certificate's
/// server end) and, once the request head is read and allowed, the proxy's own TLS session
/// with the server.
pub struct ProxyConnection {
    agent: Plaintext,
    upstream: Option<Plaintext>,
    upstream_tls: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    breaks_websocket_upgrade: bool,
    stall_at: Option<Instant>,
    phase: Phase,
    /// The request head, and what followed it before the server was connected.
    pending: Vec<u8>,
    /// Whether the TLS handshake with the server completed (counted once).
    relayed: bool,
    events: VecDeque<ProxyEvent>,
    stats: Arc<ProxyStats>,
}

impl std::fmt::Debug for ProxyConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConnection")
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

/// Reads what `tls` has decrypted into `out`; `true` when its peer has closed (close_notify,
/// or the stream ended).
fn read_plaintext(tls: &mut Plaintext, out: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tls.0.reader().read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

impl ProxyConnection {
    /// TLS records from the agent, at `now`.
    pub fn handle_agent_input(&mut self, now: Instant, data: &[u8]) {
        self.check_stall(now);
        if !self.is_live() {
            return;
        }
        let handshaking = self.agent.0.is_handshaking();
        if self.agent.receive(data).is_err() {
            if handshaking {
                count(&self.stats.tls_failed);
            }
            // rustls has queued its alert; the edge sends it and closes.
            return self.close();
        }
        self.agent_plaintext(now);
    }

    /// The agent's connection ended (its FIN).
    pub fn handle_agent_eof(&mut self, now: Instant) {
        if !self.is_live() {
            return;
        }
        if self.agent.0.is_handshaking() {
            count(&self.stats.tls_failed);
            return self.close();
        }
        self.agent.receive_eof();
        self.agent_plaintext(now);
        if self.is_live() {
            self.close();
        }
    }

    /// The TCP connection to the server the proxy asked for opened (`true`) or failed.
    pub fn handle_upstream_connected(&mut self, now: Instant, connected: bool) {
        if self.phase != Phase::Connecting {
            return;
        }
        let session = connected
            .then(|| {
                rustls::ClientConnection::new(self.upstream_tls.clone(), self.server_name.clone())
            })
            .and_then(Result::ok);
        let Some(session) = session else {
            return self.fail_upstream();
        };
        let mut upstream = Plaintext(session.into());
        // rustls holds it until its handshake is done.
        let _ = upstream.write_all(&std::mem::take(&mut self.pending));
        self.upstream = Some(upstream);
        self.phase = Phase::Relaying;
        self.check_stall(now);
    }

    /// TLS records from the server, at `now`.
    pub fn handle_upstream_input(&mut self, now: Instant, data: &[u8]) {
        self.check_stall(now);
        if self.phase != Phase::Relaying {
            return;
        }
        let Some(upstream) = &mut self.upstream else {
            return;
        };
        let handshaking = upstream.0.is_handshaking();
        if upstream.receive(data).is_err() {
            if handshaking {
                self.fail_upstream();
            } else {
                self.close();
            }
            return;
        }
        if !self.relayed && !upstream.0.is_handshaking() {
            self.relayed = true;
            count(&self.stats.relayed);
        }
        let mut plain = Vec::new();
        let ended = read_plaintext(upstream, &mut plain);
        let _ = self.agent.write_all(&plain);
        if ended {
            self.agent.0.send_close_notify();
            self.close();
        }
    }

    /// The server's connection ended (its FIN).
    pub fn handle_upstream_eof(&mut self, now: Instant) {
        if let Some(upstream) = &mut self.upstream {
            upstream.receive_eof();
        }
        self.handle_upstream_input(now, &[]);
        if self.phase == Phase::Relaying {
            self.agent.0.send_close_notify();
            self.close();
        }
    }

    /// TLS records for the agent, if any.
    pub fn poll_agent_transmit(&mut self) -> Option<Vec<u8>> {
        self.agent.transmit()
    }

    /// TLS records for the server, if any.
    pub fn poll_upstream_transmit(&mut self) -> Option<Vec<u8>> {
        self.upstream.as_mut()?.transmit()
    }

    /// What the edge must do next.
    pub fn poll_event(&mut self) -> Option<ProxyEvent> {
        self.events.pop_front()
    }

    /// When the connection stalls, or (stalled) when the proxy forgets it.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Stalled(until) => Some(until),
            Phase::Closed => None,
            _ => self.stall_at,
        }
    }

    /// Its timers at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.check_stall(now);
        if let Phase::Stalled(until) = self.phase
            && now >= until
        {
            self.close();
        }
    }

    /// The proxy's certificate cache expired: the connection is torn down (no more bytes
    /// either way; the edge closes both ends). Counted if it was still open.
    pub fn reset(&mut self) {
        if self.phase != Phase::Closed {
            count(&self.stats.reset);
            self.phase = Phase::Closed;
        }
    }

    /// Whether relaying has stopped (the edge need not read either end).
    pub fn is_stalled(&self) -> bool {
        matches!(self.phase, Phase::Stalled(_))
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Still moving bytes (not stalled, not closed).
    fn is_live(&self) -> bool {
        !matches!(self.phase, Phase::Stalled(_) | Phase::Closed)
    }

    /// Acts on the plaintext the agent's session holds.
    fn agent_plaintext(&mut self, now: Instant) {
        let mut plain = Vec::new();
        let ended = read_plaintext(&mut self.agent, &mut plain);
        match self.phase {
            Phase::Head => {
                self.pending.extend_from_slice(&plain);
                if self.pending.windows(4).any(|w| w == b"\r\n\r\n") {
                    self.decide(now);
                } else if ended || self.pending.len() > MAX_HEAD {
                    self.close();
                }
            }
            Phase::Connecting => self.pending.extend_from_slice(&plain),
            Phase::Relaying => {
                if let Some(upstream) = &mut self.upstream {
                    let _ = upstream.write_all(&plain);
                }
            }
            Phase::Stalled(_) | Phase::Closed => {}
        }
        if ended && self.is_live() {
            if let Some(upstream) = &mut self.upstream {
                upstream.0.send_close_notify();
            }
            self.close();
        }
    }

    /// The request head is read: refuse it, or connect to the server.
    fn decide(&mut self, now: Instant) {
        if self.breaks_websocket_upgrade && is_websocket_upgrade(&self.pending) {
            count(&self.stats.upgrades_blocked);
            let _ = self.agent.write_all(FORBIDDEN);
            self.agent.0.send_close_notify();
            return self.close();
        }
        self.phase = Phase::Connecting;
        self.events.push_back(ProxyEvent::ConnectUpstream);
        self.check_stall(now);
    }

    fn fail_upstream(&mut self) {
        count(&self.stats.upstream_failed);
        let _ = self.agent.write_all(BAD_GATEWAY);
        self.agent.0.send_close_notify();
        self.close();
    }

    /// A connection relaying past its stall instant stops relaying, and is held.
    fn check_stall(&mut self, now: Instant) {
        if self.phase == Phase::Relaying && self.stall_at.is_some_and(|at| now >= at) {
            count(&self.stats.stalled);
            self.phase = Phase::Stalled(now + STALL_HOLD);
        }
    }

    fn close(&mut self) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.events.push_back(ProxyEvent::Close);
        }
    }
}

/// Whether an HTTP request head asks for a WebSocket upgrade (RFC 6455 §4.1).
fn is_websocket_upgrade(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().skip(1).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("upgrade")
                && value.trim().eq_ignore_ascii_case("websocket")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "signalling.sim.local";
    const HEAD: &[u8] = b"GET /rtc HTTP/1.1\r\nHost: signalling.sim.local\r\n\r\n";
    const UPGRADE: &[u8] = b"GET /rtc HTTP/1.1\r\nHost: signalling.sim.local\r\n\
Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

    /// An agent, the proxy and the server, their records passed by hand.
    struct Ends {
        agent: Plaintext,
        connection: ProxyConnection,
        server_tls: Arc<rustls::ServerConfig>,
        server: Option<Plaintext>,
        events: Vec<ProxyEvent>,
    }

    #[allow(clippy::disallowed_methods)] // a test needs one real instant as its epoch
    fn epoch() -> Instant {
        Instant::now()
    }

    fn seeded(seed: u64) -> Entropy {
        Entropy::Seeded(seed)
    }

    fn proxy(policy: InspectionPolicy, now: Instant) -> (Inspection, Arc<InspectionCa>, Ends) {
        let provider = seeded(1).provider().unwrap();
        let (server_tls, root) = loadgen::entropy::tls_server(HOST, &provider).unwrap();
        let ca = Arc::new(InspectionCa::new(seeded(2)).unwrap());
        let inspection = Inspection::new(ca.clone(), HOST, &[root], policy, now).unwrap();
        let ends = ends(&inspection, &ca, server_tls, now);
        (inspection, ca, ends)
    }

    fn ends(
        inspection: &Inspection,
        ca: &InspectionCa,
        server_tls: Arc<rustls::ServerConfig>,
        now: Instant,
    ) -> Ends {
        let config = loadgen::signalling::tls_client_config(&[ca.certificate()]).unwrap();
        let name = ServerName::try_from(HOST).unwrap();
        let agent = rustls::ClientConnection::new(config, name).unwrap();
        Ends {
            agent: Plaintext(agent.into()),
            connection: inspection.accept(now).unwrap(),
            server_tls,
            server: None,
            events: Vec::new(),
        }
    }

    impl Ends {
        /// Passes records every way, and connects the proxy when it asks, until nothing moves.
        fn pump(&mut self, now: Instant) {
            loop {
                let mut moved = false;
                if let Some(records) = self.agent.transmit() {
                    self.connection.handle_agent_input(now, &records);
                    moved = true;
                }
                while let Some(records) = self.connection.poll_agent_transmit() {
                    let _ = self.agent.receive(&records);
                    moved = true;
                }
                while let Some(event) = self.connection.poll_event() {
                    if event == ProxyEvent::ConnectUpstream {
                        let session = rustls::ServerConnection::new(self.server_tls.clone());
                        self.server = Some(Plaintext(session.unwrap().into()));
                        self.connection.handle_upstream_connected(now, true);
                    }
                    self.events.push(event);
                    moved = true;
                }
                if let Some(server) = &mut self.server {
                    while let Some(records) = self.connection.poll_upstream_transmit() {
                        server.receive(&records).unwrap();
                        moved = true;
                    }
                    if let Some(records) = server.transmit() {
                        self.connection.handle_upstream_input(now, &records);
                        moved = true;
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        fn agent_reads(&mut self) -> Vec<u8> {
            let mut plain = Vec::new();
            read_plaintext(&mut self.agent, &mut plain);
            plain
        }

        fn server_reads(&mut self) -> Vec<u8> {
            let mut plain = Vec::new();
            read_plaintext(self.server.as_mut().unwrap(), &mut plain);
            plain
        }
    }

    fn stat(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    #[test]
    fn relays_both_ways_behind_a_forged_certificate() {
        let now = epoch();
        let (inspection, ca, mut ends) = proxy(InspectionPolicy::default(), now);
        ends.agent.write_all(HEAD).unwrap();
        ends.agent.write_all(b"hello").unwrap();
        ends.pump(now);
        assert_eq!(ends.events, [ProxyEvent::ConnectUpstream]);
        // The agent trusts only the inspection CA, so its handshake proves the forged leaf.
        let leaf = ends.agent.0.peer_certificates().unwrap()[0].clone();
        assert_ne!(leaf, ca.certificate());
        assert_eq!(ends.server_reads(), [HEAD, b"hello"].concat());
        ends.server.as_mut().unwrap().write_all(b"world").unwrap();
        ends.pump(now);
        assert_eq!(ends.agent_reads(), b"world");
        let stats = inspection.stats();
        assert_eq!((stat(&stats.accepted), stat(&stats.relayed)), (1, 1));
        // The agent closes: the proxy closes the server's side too.
        ends.agent.0.send_close_notify();
        ends.pump(now);
        assert_eq!(
            ends.events,
            [ProxyEvent::ConnectUpstream, ProxyEvent::Close]
        );
        assert!(ends.connection.is_closed());
    }

    #[test]
    fn a_proxy_breaking_upgrades_answers_403_and_never_connects() {
        let now = epoch();
        let policy = InspectionPolicy {
            breaks_websocket_upgrade: true,
            ..InspectionPolicy::default()
        };
        let (inspection, _, mut ends) = proxy(policy, now);
        ends.agent.write_all(UPGRADE).unwrap();
        ends.pump(now);
        assert_eq!(ends.events, [ProxyEvent::Close]);
        assert!(
            ends.agent_reads()
                .starts_with(b"HTTP/1.1 403 Forbidden\r\n")
        );
        let stats = inspection.stats();
        assert_eq!(stat(&stats.upgrades_blocked), 1);
        assert_eq!(stat(&stats.relayed), 0);
        // A plain request still goes through.
        let mut plain = self::ends(&inspection, &inspection.ca, ends.server_tls.clone(), now);
        plain.agent.write_all(HEAD).unwrap();
        plain.pump(now);
        assert_eq!(plain.server_reads(), HEAD);
    }

    #[test]
    fn an_agent_not_trusting_the_proxy_fails_its_handshake() {
        let now = epoch();
        let (inspection, _, mut ends) = proxy(InspectionPolicy::default(), now);
        let stranger = InspectionCa::new(seeded(3)).unwrap();
        ends = self::ends(&inspection, &stranger, ends.server_tls, now);
        ends.agent.write_all(HEAD).unwrap();
        ends.pump(now);
        assert_eq!(stat(&inspection.stats().tls_failed), 1);
        assert_eq!(ends.events, [ProxyEvent::Close]);
    }

    #[test]
    fn a_stalling_proxy_stops_relaying_then_forgets_the_connection() {
        let now = epoch();
        let after = Duration::from_secs(2);
        let policy = InspectionPolicy {
            stalls_after: Some(after),
            ..InspectionPolicy::default()
        };
        let (inspection, _, mut ends) = proxy(policy, now);
        ends.agent.write_all(HEAD).unwrap();
        ends.pump(now);
        assert_eq!(ends.server_reads(), HEAD);
        assert_eq!(ends.connection.poll_timeout(), Some(now + after));
        let stalled = now + after;
        ends.connection.handle_timeout(stalled);
        assert!(ends.connection.is_stalled());
        assert_eq!(stat(&inspection.stats().stalled), 1);
        // Nothing crosses either way, and neither end is told.
        ends.server.as_mut().unwrap().write_all(b"late").unwrap();
        ends.agent.write_all(b"also late").unwrap();
        ends.pump(stalled);
        assert!(ends.agent_reads().is_empty());
        assert!(ends.server_reads().is_empty());
        assert_eq!(ends.events, [ProxyEvent::ConnectUpstream]);
        assert_eq!(ends.connection.poll_timeout(), Some(stalled + STALL_HOLD));
        ends.connection.handle_timeout(stalled + STALL_HOLD);
        ends.pump(stalled + STALL_HOLD);
        assert_eq!(
            ends.events,
            [ProxyEvent::ConnectUpstream, ProxyEvent::Close]
        );
    }

    #[test]
    fn the_certificate_cache_expires_once_and_renews_the_forged_certificate() {
        let now = epoch();
        let expiry = Duration::from_secs(3);
        let policy = InspectionPolicy {
            cache_expiry: Some(expiry),
            ..InspectionPolicy::default()
        };
        let (mut inspection, ca, mut before) = proxy(policy, now);
        before.agent.write_all(HEAD).unwrap();
        before.pump(now);
        assert_eq!(inspection.poll_timeout(), Some(now + expiry));
        assert!(!inspection.handle_timeout(now + expiry - Duration::from_millis(1)));
        assert!(inspection.handle_timeout(now + expiry));
        assert!(!inspection.handle_timeout(now + expiry * 2));
        assert_eq!(inspection.poll_timeout(), None);
        before.connection.reset();
        before.connection.reset();
        let stats = inspection.stats();
        assert_eq!((stat(&stats.renewals), stat(&stats.reset)), (1, 1));
        let mut after = ends(&inspection, &ca, before.server_tls.clone(), now + expiry);
        after.agent.write_all(HEAD).unwrap();
        after.pump(now + expiry);
        let leaf = |e: &Ends| e.agent.0.peer_certificates().unwrap()[0].clone();
        assert_ne!(leaf(&before), leaf(&after));
    }

    #[test]
    fn a_seeded_authority_is_the_same_in_every_run() {
        let certificate = |seed| InspectionCa::new(seeded(seed)).unwrap().certificate();
        assert_eq!(certificate(7), certificate(7));
        assert_ne!(certificate(7), certificate(8));
    }

    #[test]
    fn recognises_upgrades() {
        assert!(is_websocket_upgrade(
            b"GET /rtc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        ));
        assert!(is_websocket_upgrade(
            b"GET / HTTP/1.1\r\nupgrade:WebSocket\r\n\r\n"
        ));
        assert!(!is_websocket_upgrade(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!is_websocket_upgrade(
            b"GET /upgrade: websocket HTTP/1.1\r\n\r\n"
        ));
    }
}
