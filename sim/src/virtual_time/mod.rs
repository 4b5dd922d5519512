//! Virtual time: a run's calls on one simulated clock, in one process, with no sockets. Each
//! call is the agent's session ([`Session`]: the softphone's state machine with its media leg
//! and signalling connection, the core the real-time agents run), the endpoint's end of its
//! signalling connection ([`ServerConnection`]), and the anchor — its call handling
//! (`anchor::desk`) and its media server (`anchor::media_core`: ICE-lite, DTLS server, SRTP) — as
//! the far end of every call, as in real time. TLS, the WebSocket and JSON-RPC cross the
//! site's path in its stream form (as the real-time TCP relay carries them: delay, jitter,
//! rate and stalls, no loss), and the agent's datagrams cross the site's path ([`Netem`]) to
//! the TURN core ([`turn_server::Server`]), which relays them to the anchor; the anchor's come
//! back the same way. Every one of them is the same sans-I/O core the real-time run drives on
//! sockets — real TLS, real ICE, real DTLS handshakes, real SRTP — so a minute of calls takes
//! what the CPU needs for their crypto and bookkeeping, not a minute.
//!
//! Replayable: the paths, every leg, the anchor and the endpoint's certificate draw from the
//! run's seed ([`Entropy::Seeded`]), so one seed gives the same figures.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use loadgen::entropy::Entropy;
use loadgen::leg::{TurnCredentials, TurnTransport, WireKind};
use loadgen::session::{CallSpec, Session, SessionEvent, Timeouts};
use loadgen::signalling::{Endpoint, Plaintext, RpcError};
use loadgen::turn_stream::{TlsSession, TurnStream};
use loadgen::turn_url::TurnUrl;
use rayon::iter::{IndexedParallelIterator, IntoParallelRefMutIterator, ParallelIterator};
use reports::components::Components;
use reports::emodel::Codec;
use reports::record::MediaStats;
use reports::{CallIdentity, CallKind, CallRecord, Shard};
use rtc::crypto::RTCCryptoProvider;
use rustls::pki_types::CertificateDer;
use turn_server::auth::{Credentials, Secret};
use turn_server::policy::PeerPolicy;
use turn_server::server::{Config, Event, Faults, FiveTuple, Server, Transport};

use crate::anchor::desk::{self, Desk, Ending, Media, Reply};
use crate::anchor::media::{CONSENT_TIMEOUT, LegEvent, LegSpec, MediaCounters, Restart};
use crate::anchor::media_core::MediaCore;
use crate::anchor::recording::{Recorder, Recording};
use crate::anchor::{AnchorBehaviour, AnchorStats};
use crate::dns::NodeName;
use crate::inspection::{Inspection, InspectionCa, ProxyConnection, ProxyEvent};
use crate::netem::{Direction, FlowId, Netem, Output, Path};
use crate::relay::tcp::TcpRelayStats;
use crate::relay::udp::RelayStats;
use crate::scenario::{Fault, Policy, Transport as Protocol};
use crate::signalling::{ServerConnection, ServerEvent, SignallingLimits, SignallingStats};

pub mod scenario;

/// TURN node `n`'s address in the simulated network (TEST-NET-1, RFC 5737): its listeners
/// (on each TURN URL's port) and its relayed addresses.
const fn turn_node_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 1 + n as u8)
}

/// The TURN node at `addr` (a listener or a relayed address), if it is one's: the inverse of
/// [`turn_node_ip`].
fn node_at(addr: SocketAddr) -> Option<usize> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.octets()[..3] == [192, 0, 2] => {
            usize::from(ip.octets()[3]).checked_sub(1)
        }
        _ => None,
    }
}
/// The anchor's media server in the simulated network (TEST-NET-2).
const ANCHOR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 20_000));
/// The signalling endpoint in the simulated network (TEST-NET-3), and the URL a
/// [`MediaRun`]'s agents are given.
const SIGNALLING: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 8443));
const SIGNALLING_URL: &str = "wss://signalling.sim.local:8443/rtc";
/// The anchor's longest sleep with nothing due.
const IDLE: Duration = Duration::from_millis(500);
/// How long the run goes on after its last call ended, at most, for what is still on the
/// paths to arrive.
const DRAIN: Duration = Duration::from_secs(1);
/// IPv4 and TCP headers of each chunk of a signalling stream on the wire.
const TCP_HEADERS: u32 = 40;
/// IPv4 and UDP headers of each datagram on the wire.
const UDP_HEADERS: u32 = 28;
/// The first local port of each agent's wires (in the range the vendor's guide asks a
/// firewall to open, 49152–65535).
const AGENT_PORT: u16 = 50_000;
/// The TURN user every agent allocates as.
const USER: (&str, &str) = ("agent", "virtual");
/// [`Entropy::for_leg`]'s sides: the agent's leg, the endpoint's randomness for one call, the
/// endpoint's certificate, the anchor's.
const AGENT_SIDE: u64 = 0;
const ENDPOINT_CALL_SIDE: u64 = 1;
const ENDPOINT_SIDE: u64 = 2;
const ANCHOR_SIDE: u64 = 3;
/// [`Entropy::for_leg`]'s side of the TURN nodes' TLS certificates.
const TURN_SIDE: u64 = 4;
/// A site's TLS-inspecting proxy (its CA and forged certificates).
const PROXY_SIDE: u64 = 5;

/// What to run: `calls` inbound calls at once over `path`, each talking for `talk` (the media
/// bench's and the tests' shape of a [`Plan`]).
#[derive(Debug, Clone)]
pub struct MediaRun {
    /// The agents' path to the TURN server.
    pub path: Path,
    /// Calls, all started at once.
    pub calls: u32,
    /// Talk time of each call, from when it connected.
    pub talk: Duration,
    /// Seed of all randomness: the path's, and every leg's certificate, keys, credentials and
    /// handshake (the same seed replays the same run).
    pub seed: u64,
}

impl MediaRun {
    /// The plan of this run: one site, every call at once, every call inbound.
    pub fn plan(&self) -> Plan {
        let calls = (0..self.calls)
            .map(|i| PlannedCall {
                site: 0,
                identity: CallIdentity {
                    run: format!("media-seed{}", self.seed),
                    call: format!("c{i:05}"),
                    agent: format!("agent-{i:04}"),
                    scenario: "media".into(),
                    site: "site".into(),
                    profile: "path".into(),
                    kind: CallKind::Inbound,
                    shard: Shard::WHOLE,
                },
            })
            .collect();
        Plan {
            sites: vec![PlannedSite {
                name: "site".into(),
                path: self.path.clone(),
                policy: Policy::default(),
            }],
            calls,
            concurrency: self.calls,
            ramp_per_second: f64::INFINITY,
            talk: self.talk,
            timeouts: Timeouts::default(),
            dead_air: Duration::from_secs(5),
            codec: Codec::OPUS,
            seed: self.seed,
            signalling_url: SIGNALLING_URL.to_owned(),
            turn: vec![TurnUrl {
                secure: false,
                host: "turn.sim.local".into(),
                port: 3478,
                transport: Protocol::Udp,
            }],
            turn_nodes: 1,
            faults: Vec::new(),
            anchor: AnchorBehaviour::Answer,
            recording: None,
            threads: 1,
        }
    }
}

/// One site of a [`Plan`]: its path to the vendor side and its network's policy.
#[derive(Debug, Clone)]
pub struct PlannedSite {
    /// Its name (in the components' names).
    pub name: String,
    /// The path (TURN and signalling).
    pub path: Path,
    /// Its firewall, DNS and proxy (blocked ports, names that do not resolve, a stateless
    /// firewall, a TLS-inspecting proxy that breaks upgrades, stalls connections or resets
    /// them when its certificate cache expires).
    pub policy: Policy,
}

/// One call of a [`Plan`]: where its agent sits and who it is.
#[derive(Debug, Clone)]
pub struct PlannedCall {
    /// Its site (an index into [`Plan::sites`]).
    pub site: usize,
    /// Its identity in the record (its kind says what it does).
    pub identity: CallIdentity,
}

/// What to run, in general: calls from sites, each site with its path, started at a ramp up to
/// a concurrency.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Each site: its path to the vendor side (TURN and signalling) and its policy.
    pub sites: Vec<PlannedSite>,
    /// The calls, in the order they start.
    pub calls: Vec<PlannedCall>,
    /// Calls up at once, at most.
    pub concurrency: u32,
    /// New calls per second, at most (`f64::INFINITY`: all at once).
    pub ramp_per_second: f64,
    /// Talk time of each call, from when it connected.
    pub talk: Duration,
    /// The session timeouts.
    pub timeouts: Timeouts,
    /// No RTP for this long, on a path that is up, drops the call.
    pub dead_air: Duration,
    /// The codec the meters score (MOS).
    pub codec: Codec,
    /// Seed of all randomness.
    pub seed: u64,
    /// The signalling endpoint's URL, as the agents are given it (its host names the
    /// endpoint's certificate).
    pub signalling_url: String,
    /// The TURN URLs, in the order the agents are given them (their failure messages name
    /// them): UDP, TCP or TLS.
    pub turn: Vec<TurnUrl>,
    /// The TURN nodes every TURN name resolves to, in turn (a load balancer's addresses).
    pub turn_nodes: u8,
    /// What goes wrong at set times (TURN nodes failing).
    pub faults: Vec<Fault>,
    /// How the anchor behaves (its faults, as the real-time failure-path tests set them).
    pub anchor: AnchorBehaviour,
    /// What the anchor records, and where (written as the run goes).
    pub recording: Option<Recording>,
    /// Threads that run the due calls' own work at each instant (their sessions' timers and
    /// what arrived for them: RTP, SRTP, ICE, DTLS, their endpoint connections' TLS); 1 runs
    /// it on the loop's thread. The results do not depend on it. With more than 1, a helper
    /// spins for a few milliseconds after each instant it shared ([`default_threads`]: the
    /// CLI's count).
    pub threads: usize,
}

/// The threads the CLI's virtual-time runs use unless told: one per core this process may run
/// on.
#[must_use]
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Due calls at one instant from which their work is shared across the threads: each call's
/// step is ~2.5 µs, and handing a batch to the pool and back costs about as much as a few.
const SHARED_FROM: usize = 16;

/// How long a helper spins for the next instant's work before it sleeps: 2^17 pauses, 1 to
/// 10 ms as the CPU's pause lasts (a run sharing an instant every few slots never sleeps; one
/// whose calls stopped sharing does not burn a core for nothing).
const SPIN_ROUNDS: u32 = 1 << 17;

/// How one call went.
#[derive(Debug, Clone)]
pub struct CallResult {
    /// Its record, as a real-time agent writes it (wall-clock fields from the simulated
    /// clock's).
    pub record: CallRecord,
    /// Simulated time from the run's start to the call's end.
    pub ended: Duration,
}

impl CallResult {
    /// The media figures each way when it completed, agent → far end first.
    pub fn completed(&self) -> Option<(&MediaStats, &MediaStats)> {
        let r = &self.record;
        match (r.outcome, &r.agent_to_anchor, &r.anchor_to_agent) {
            (reports::Outcome::Completed, Some(up), Some(down)) => Some((up, down)),
            _ => None,
        }
    }
}

/// What a virtual-time run measured.
#[derive(Debug, Clone)]
pub struct MediaResult {
    /// Each call's result, in the plan's order.
    pub calls: Vec<CallResult>,
    /// Simulated time from the first call's start to the last one's end.
    pub simulated: Duration,
    /// What the vendor side's components counted (the TURN nodes, the signalling endpoint,
    /// the anchor), named as a real-time run names them.
    pub components: Components,
    /// Instants whose due calls' own work was shared across the threads (0 on one thread, or
    /// when no instant had enough calls due at once).
    pub shared_instants: u64,
}

/// What a run tells its caller as it goes (for live progress).
#[derive(Debug)]
pub enum CallEvent<'a> {
    /// Call `index` of the plan started.
    Started(usize),
    /// Call `index` of the plan ended with this record.
    Ended(usize, &'a CallRecord),
    /// The simulated clock passed another second since the run's start.
    Clock(Duration),
}

/// What a packet on a simulated path belongs to (its flow is its call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carried {
    /// A datagram of the call's wire `.0`, to or from the TURN listener at `.1`.
    Datagram(usize, SocketAddr),
    /// A chunk of the call's signalling connection with this number.
    Signalling(u64),
    /// A chunk of the TCP/TLS connection of the call's wire with this number to its TURN node.
    TurnStream(usize),
}

/// A datagram or a chunk of a stream on a simulated path, with what it belongs to. A chunk
/// with no data is the stream's FIN.
#[derive(Debug, Clone)]
struct Packet {
    carried: Carried,
    data: BytesMut,
}

/// `bytes` as a path's packet, without copying them.
fn owned(bytes: Vec<u8>) -> BytesMut {
    BytesMut::from(bytes::Bytes::from(bytes))
}

impl AsMut<[u8]> for Packet {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

/// One call: the agent's session, and the endpoint's end of its signalling connection.
struct Call {
    site: usize,
    session: Session,
    /// The local end of each of the session's wires, by number.
    wires: Vec<SocketAddr>,
    /// The wires that are TCP/TLS connections to a TURN node, by number.
    streams: BTreeMap<usize, StreamWire>,
    /// The vendor side's end of the agent's signalling connection (what is still on the
    /// path of an older one is dropped).
    server: Option<VendorEnd>,
    /// The number of the agent's own end of its latest connection.
    connection: Option<u64>,
    /// The endpoint's randomness for this call (the anchor leg's ICE credentials).
    endpoint_random: Arc<dyn RTCCryptoProvider>,
    /// When the call must run next: only calls with something due run at an instant.
    wake: Instant,
    result: Option<CallResult>,
}

/// The vendor side's end of a signalling connection: the endpoint's, reached through the
/// site's TLS-inspecting proxy when it has one (the proxy's leg to the endpoint is the
/// vendor's LAN: its bytes arrive at once).
struct VendorEnd {
    /// The connection's number.
    number: u64,
    proxy: Option<ProxyConnection>,
    /// The endpoint's end (through a proxy: once the proxy has connected to it).
    endpoint: Option<ServerConnection>,
    /// What the endpoint serves a connection the proxy opens.
    tls: Arc<rustls::ServerConfig>,
    stats: Arc<SignallingStats>,
}

impl VendorEnd {
    /// TLS records from the agent, at `now`.
    fn receive(&mut self, now: Instant, data: &[u8]) {
        match &mut self.proxy {
            Some(proxy) => {
                proxy.handle_agent_input(now, data);
                self.upstream(now);
            }
            None => {
                if let Some(endpoint) = &mut self.endpoint {
                    endpoint.handle_input(data);
                }
            }
        }
    }

    /// Carries out the proxy's requests and hands what it sends the endpoint over; `true`
    /// when anything went.
    fn upstream(&mut self, now: Instant) -> bool {
        let Some(proxy) = &mut self.proxy else {
            return false;
        };
        let mut moved = false;
        while let Some(event) = proxy.poll_event() {
            if event == ProxyEvent::ConnectUpstream {
                let tls = self.tls.clone();
                let endpoint = ServerConnection::new(
                    tls,
                    SignallingLimits::default(),
                    self.stats.clone(),
                    now,
                );
                proxy.handle_upstream_connected(now, endpoint.is_ok());
                self.endpoint = endpoint.ok();
            }
            // `Close`: the caller sees `is_closed`, after what is queued.
        }
        if let Some(endpoint) = &mut self.endpoint {
            while let Some(records) = proxy.poll_upstream_transmit() {
                endpoint.handle_input(&records);
                moved = true;
            }
        }
        moved
    }

    /// The next chunk for the agent: the endpoint's records, through the proxy when there is
    /// one (its two TLS sessions passing records until neither has more).
    fn transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.proxy.is_none() {
            return self.endpoint.as_mut()?.poll_transmit();
        }
        loop {
            let mut moved = false;
            if let (Some(endpoint), Some(proxy)) = (&mut self.endpoint, &mut self.proxy) {
                while let Some(records) = endpoint.poll_transmit() {
                    proxy.handle_upstream_input(now, &records);
                    moved = true;
                }
            }
            if !self.upstream(now) && !moved {
                break;
            }
        }
        self.proxy.as_mut()?.poll_agent_transmit()
    }

    /// Whether the proxy has closed the connection (the agent gets a FIN).
    fn is_closed(&self) -> bool {
        self.proxy.as_ref().is_some_and(ProxyConnection::is_closed)
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(endpoint) = &mut self.endpoint {
            endpoint.handle_timeout(now);
        }
        if let Some(proxy) = &mut self.proxy {
            proxy.handle_timeout(now);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let endpoint = self
            .endpoint
            .as_ref()
            .and_then(ServerConnection::poll_timeout);
        let proxy = self.proxy.as_ref().and_then(ProxyConnection::poll_timeout);
        endpoint.into_iter().chain(proxy).min()
    }
}

/// A wire that is a TCP (or TLS) connection to a TURN node: the agent's end (the real-time
/// edge's framing and TLS, without its socket) and the node's (TLS, when `turns:`).
struct StreamWire {
    node: usize,
    /// Its TURN URL (an index into [`Plan::turn`]).
    url: usize,
    five_tuple: FiveTuple,
    client: TurnStream,
    /// Whether the agent's end still has the connection open.
    client_open: bool,
    node_end: NodeEnd,
}

/// The TURN node's end of a TCP (or TLS) connection: its bytes, through the node's TLS session
/// when `turns:`.
struct NodeEnd {
    tls: Option<Plaintext>,
    open: bool,
}

impl NodeEnd {
    /// Bytes from the agent: the plaintext they carry (for TLS, what the records completed).
    fn receive<'a>(&mut self, data: &'a [u8]) -> Result<Cow<'a, [u8]>, rustls::Error> {
        let Some(tls) = &mut self.tls else {
            return Ok(Cow::Borrowed(data));
        };
        tls.receive(data)?;
        let mut plain = Vec::new();
        // Reads until the session has nothing more (`WouldBlock`), keeping what it read.
        let _ = tls.read_to_end(&mut plain);
        Ok(Cow::Owned(plain))
    }

    /// What goes on the wire for `plain` (the node's frames), with what the TLS session has
    /// to say besides (its handshake); `None` when nothing.
    fn transmit(&mut self, plain: Vec<u8>) -> Option<Vec<u8>> {
        match &mut self.tls {
            None => (!plain.is_empty()).then_some(plain),
            Some(tls) => {
                tls.write_all(&plain).ok()?;
                tls.transmit()
            }
        }
    }
}

/// Puts `data`, a chunk of the stream `carried` is (its FIN when empty), on the stream path
/// `path`.
fn put_chunk(
    path: &mut Netem<Packet>,
    (at, flow, direction): (Instant, FlowId, Direction),
    carried: Carried,
    data: BytesMut,
) {
    let len = data.len() as u32 + TCP_HEADERS;
    path.handle_input(at, flow, direction, len, Packet { carried, data });
}

/// One site's paths: its datagrams' and its streams'.
struct SitePaths {
    policy: Policy,
    /// The site's TLS-inspecting proxy, if it has one, and the root its agents trust for it.
    proxy: Option<(Inspection, CertificateDer<'static>)>,
    media: Netem<Packet>,
    /// The path's stream form, for the signalling connections.
    streams: Netem<Packet>,
    /// The path's stream form, for TURN over TCP/TLS (a real-time run's own relay too).
    turn_streams: Netem<Packet>,
    /// Each TURN URL's name as the site resolves it: a node leaves the DNS when its fault
    /// says.
    names: Vec<Arc<NodeName>>,
    counts: PathCounts,
}

/// What a site's paths counted beyond their engines' own counters, in the real-time relays'
/// own counters (so `summary.json` names them as a real-time run does).
#[derive(Debug, Default)]
struct PathCounts {
    /// The datagram path's flows (UDP wires to TURN).
    flows: u64,
    /// Datagrams the site's firewall dropped: up, down.
    policy: [u64; 2],
    signalling: TcpRelayStats,
    /// Per TURN URL (its TCP/TLS connections; unused for UDP ones).
    turn: Vec<TcpRelayStats>,
}

/// Counts a stream connection opening on `stats` (`refused`: by the site's firewall).
fn count_connection(stats: &TcpRelayStats, refused: bool) {
    stats.accepted.fetch_add(1, Ordering::Relaxed);
    if refused {
        stats.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts `bytes` of a stream crossing its path `direction` on `stats`.
fn count_bytes(stats: &TcpRelayStats, direction: Direction, bytes: usize) {
    match direction {
        Direction::Up => &stats.bytes_up,
        Direction::Down => &stats.bytes_down,
    }
    .fetch_add(bytes as u64, Ordering::Relaxed);
}

impl SitePaths {
    /// The datagram path's counters, as a real-time UDP relay's: its engine's, less what the
    /// firewall dropped after it.
    fn datagram_totals(&self) -> Vec<(&'static str, u64)> {
        let (up, down) = (
            self.media.stats(Direction::Up),
            self.media.stats(Direction::Down),
        );
        let n = AtomicU64::new;
        let [policy_up, policy_down] = self.counts.policy;
        RelayStats {
            flows: n(self.counts.flows),
            from_agents: n(up.input),
            to_server: n(up.delivered.saturating_sub(policy_up)),
            from_server: n(down.input),
            to_agents: n(down.delivered.saturating_sub(policy_down)),
            dropped_loss: n(up.lost + down.lost),
            dropped_queue: n(up.queue_full + down.queue_full),
            dropped_mtu: n(up.mtu + down.mtu),
            dropped_outage: n(up.outage + down.outage),
            dropped_policy: n(policy_up + policy_down),
            ..RelayStats::default()
        }
        .totals()
    }
}

/// The anchor: its call handling and its media server (the cores real time runs), and when
/// the media server runs next.
struct Anchor {
    desk: Desk,
    core: MediaCore,
    fingerprint: String,
    stats: AnchorStats,
    counters: Arc<MediaCounters>,
    wake: Instant,
}

/// The anchor's media server core at an instant, as its desk commands it.
struct AnchorMedia<'a> {
    core: &'a mut MediaCore,
    fingerprint: &'a str,
    now: Instant,
}

impl Media for AnchorMedia<'_> {
    fn fingerprint(&self) -> &str {
        self.fingerprint
    }

    fn address(&self) -> SocketAddr {
        ANCHOR
    }

    fn open(&mut self, spec: LegSpec) {
        self.core.open(self.now, Box::new(spec));
    }

    fn restart(&mut self, restart: Restart) {
        self.core.restart(self.now, restart);
    }

    fn conference(&mut self, call_id: &str) {
        self.core.conference(call_id);
    }
}

impl Anchor {
    fn new(plan: &Plan, start: Instant, unix_start: Duration) -> Result<Self, String> {
        let crypto = Entropy::Seeded(plan.seed)
            .for_leg(u64::MAX, ANCHOR_SIDE)
            .provider()?;
        let certificate = loadgen::entropy::certificate("anchor", &crypto)?;
        let fingerprint = loadgen::media::fingerprint(&crypto, &certificate.certificate[0])?;
        let counters = Arc::new(MediaCounters::default());
        let recorder = plan
            .recording
            .clone()
            .map(|r| {
                let dir = r.dir.display().to_string();
                Recorder::inline(r, counters.clone()).map_err(|e| format!("{dir}: {e}"))
            })
            .transpose()?;
        let core = MediaCore::new(
            ANCHOR,
            crypto,
            certificate,
            start,
            plan.codec,
            counters.clone(),
            recorder,
            (start, unix_start),
        );
        Ok(Self {
            desk: Desk::new(plan.anchor, CONSENT_TIMEOUT),
            core,
            fingerprint,
            stats: AnchorStats::default(),
            counters,
            wake: start,
        })
    }

    /// Closes the leg of a call that ends: what `bye` answers.
    fn close(&mut self, now: Instant, ending: &Ending) -> serde_json::Value {
        self.wake = now;
        self.core
            .close(now, &ending.call_id)
            .map_or(serde_json::Value::Null, |e| desk::ended_result(&e))
    }
}

/// What every call is made from.
struct Vendor {
    /// The names the agents look up (their site's DNS may not resolve them), and the
    /// signalling endpoint's port (a site's firewall may block it).
    signalling_host: String,
    signalling_port: u16,
    server_tls: Arc<rustls::ServerConfig>,
    /// The TURN nodes' TLS configuration for each `turns:` host, and the agents' (trusting
    /// them).
    turn_tls: HashMap<String, Arc<rustls::ServerConfig>>,
    turn_client_tls: Arc<rustls::ClientConfig>,
    root: CertificateDer<'static>,
    stats: Arc<SignallingStats>,
    realm: String,
}

/// The simulated network and its servers: the calls, the paths, the TURN core, the anchor.
struct World {
    now: Instant,
    start: Instant,
    unix_start: Duration,
    plan: Plan,
    vendor: Vendor,
    sites: Vec<SitePaths>,
    /// The TURN nodes, each a TURN core at [`turn_node_ip`] of its index.
    nodes: Vec<Server>,
    /// The faults not yet in force: when, on which node, what (in time order).
    faults: VecDeque<(Instant, usize, Faults)>,
    /// The calls started so far, in the plan's order.
    calls: Vec<Call>,
    /// The calls not over (indices into `calls`): all the loop looks at.
    live: Vec<usize>,
    /// Calls that ended since the loop last told.
    finished: Vec<usize>,
    /// A wire's local address → its call and its number.
    wires: HashMap<SocketAddr, (usize, usize)>,
    /// Signalling connections opened so far (each one's number).
    connections: u64,
    /// The anchor: every call's far end, as in real time.
    anchor: Anchor,
    /// When the last call ended.
    ended: Option<Instant>,
    /// Bumped as each instant's shared work starts (and at the end): it stops the helper
    /// spinning since the last.
    phase: Arc<AtomicU64>,
    /// Instants whose calls' work was shared.
    shared_instants: u64,
}

/// Runs `run` on a simulated clock starting at `start` (any instant: nothing reads the real
/// clock), the wall clock reading `unix_start` then.
///
/// # Errors
/// The TURN core, the endpoint or the anchor could not be created.
pub fn run_media(
    run: &MediaRun,
    start: Instant,
    unix_start: Duration,
) -> Result<MediaResult, String> {
    run_plan(&run.plan(), start, unix_start, &mut |_| {})
}

/// Runs `plan` on a simulated clock starting at `start`, the wall clock reading `unix_start`
/// then.
///
/// # Errors
/// The TURN core, the endpoint or the anchor could not be created.
pub fn run_plan(
    plan: &Plan,
    start: Instant,
    unix_start: Duration,
    events: &mut (dyn FnMut(CallEvent<'_>) + Send),
) -> Result<MediaResult, String> {
    // One endpoint, one certificate, as a real endpoint has.
    let endpoint = Entropy::Seeded(plan.seed)
        .for_leg(u64::MAX, ENDPOINT_SIDE)
        .provider()?;
    let (signalling_host, signalling_port) = loadgen::signalling::host_port(&plan.signalling_url)?;
    let (server_tls, endpoint_root) = loadgen::entropy::tls_server(&signalling_host, &endpoint)?;
    // One certificate for each `turns:` host, shared by every node, as the real-time nodes
    // share theirs.
    let mut turn_tls = HashMap::new();
    let mut turn_roots = Vec::new();
    for (k, url) in plan.turn.iter().enumerate().filter(|(_, u)| u.secure) {
        if turn_tls.contains_key(&url.host) {
            continue;
        }
        let provider = Entropy::Seeded(plan.seed)
            .for_leg(u64::MAX - 1 - k as u64, TURN_SIDE)
            .provider()?;
        let (config, root) = loadgen::entropy::tls_server(&url.host, &provider)?;
        turn_tls.insert(url.host.clone(), config);
        turn_roots.push(root);
    }
    let turn_client_tls = loadgen::signalling::tls_client_config(&turn_roots)?;
    let calls = u32::try_from(plan.calls.len()).unwrap_or(u32::MAX);
    let nodes: Vec<Server> = (0..usize::from(plan.turn_nodes.max(1)))
        .map(|n| {
            let ip = turn_node_ip(n);
            let mut config = Config {
                // Every peer is in the simulated network's documentation ranges.
                peer_policy: PeerPolicy {
                    allow: Vec::new(),
                    deny: Vec::new(),
                },
                relay_ipv4: Some(ip),
                seed: plan.seed ^ n as u64,
                nonce_key: [7; 32],
                // Every agent allocates as the one user (on every URL, again across an ICE
                // restart).
                user_quota: calls.saturating_mul(4).max(100),
                total_quota: calls.saturating_mul(4).max(10_000),
                ..Config::default()
            };
            config.credentials = Credentials {
                users: HashMap::from([(USER.0.to_owned(), Secret(USER.1.to_owned()))]),
                static_auth_secret: None,
            };
            Server::new(config, start, unix_start.as_secs())
        })
        .collect();
    let realm = Config::default().realm;
    let faults = crate::run::turn_faults(&plan.faults)
        .into_iter()
        .map(|(at, node, faults)| (start + at, node, faults))
        .collect();
    let anchor = Anchor::new(plan, start, unix_start)?;
    let sites = plan
        .sites
        .iter()
        .enumerate()
        .map(|(i, site)| {
            // As a real-time run seeds each site's relays.
            let seed = crate::run::site_seed(plan.seed, i);
            let stream_path = crate::relay::tcp::stream_path(&site.path);
            let inspection = site.policy.inspection();
            let proxy = if inspection.inspects() {
                let entropy = Entropy::Seeded(plan.seed).for_leg(i as u64, PROXY_SIDE);
                let ca = Arc::new(InspectionCa::new(entropy)?);
                let root = ca.certificate();
                let host = &signalling_host;
                let proxy = Inspection::new(
                    ca,
                    host,
                    std::slice::from_ref(&endpoint_root),
                    inspection,
                    start,
                )?;
                Some((proxy, root))
            } else {
                None
            };
            Ok(SitePaths {
                policy: site.policy.clone(),
                proxy,
                media: Netem::new(site.path.clone(), seed, start),
                streams: Netem::new(stream_path.clone(), seed ^ 0x5157_5157, start),
                turn_streams: Netem::new(stream_path, seed ^ 0x7475_726e, start),
                names: plan
                    .turn
                    .iter()
                    .map(|url| {
                        let entries = (0..nodes.len())
                            .map(|n| {
                                let addr = SocketAddr::from((turn_node_ip(n), url.port));
                                (
                                    addr,
                                    crate::run::dns_removal(&plan.faults, n).map(|d| start + d),
                                )
                            })
                            .collect();
                        Arc::new(NodeName::new(entries))
                    })
                    .collect(),
                counts: PathCounts {
                    turn: plan.turn.iter().map(|_| TcpRelayStats::default()).collect(),
                    ..PathCounts::default()
                },
            })
        })
        .collect::<Result<_, String>>()?;
    let mut world = World {
        now: start,
        start,
        unix_start,
        plan: plan.clone(),
        vendor: Vendor {
            signalling_host,
            signalling_port,
            server_tls,
            turn_tls,
            turn_client_tls,
            root: endpoint_root,
            stats: Arc::new(SignallingStats::default()),
            realm,
        },
        sites,
        nodes,
        faults,
        calls: Vec::new(),
        live: Vec::new(),
        finished: Vec::new(),
        wires: HashMap::new(),
        connections: 0,
        anchor,
        ended: None,
        phase: Arc::new(AtomicU64::new(0)),
        shared_instants: 0,
    };
    if plan.threads > 1 {
        // The loop itself runs on one of the pool's threads, so that it takes its share of
        // each instant's calls and the others steal theirs (the loop never waits on a hand-off).
        rayon::ThreadPoolBuilder::new()
            .num_threads(plan.threads)
            .thread_name(|k| format!("virtual-{k}"))
            .build()
            .map_err(|e| format!("no threads for the calls: {e}"))?
            .install(|| {
                let ran = world.run(events);
                world.phase.fetch_add(1, Ordering::Relaxed);
                ran
            })?;
    } else {
        world.run(events)?;
    }
    let simulated = world
        .ended
        .unwrap_or(world.now)
        .saturating_duration_since(start);
    let shared_instants = world.shared_instants;
    let calls = world
        .calls
        .into_iter()
        .map(|mut c| {
            // Every call is over when the loop ends.
            c.result.take().unwrap_or_else(|| CallResult {
                record: c.session.record(),
                ended: simulated,
            })
        })
        .collect();
    let mut components = Components::new();
    for (n, node) in world.nodes.iter().enumerate() {
        let name = match world.nodes.len() {
            1 => "turn".to_owned(),
            _ => format!("turn node {}", n + 1),
        };
        let snapshot = turn_server::io::Snapshot {
            counters: node.counters().clone(),
            gauges: node.gauges(),
            faults: node.faults(),
            ..Default::default()
        };
        components.add(&name, snapshot.totals());
    }
    components.add("signalling", world.vendor.stats.totals());
    // The sites' paths: one engine per site carries every UDP URL's datagrams (named for
    // the URL when there is one); each TCP/TLS URL's connections are counted on their own
    // (real time has a relay per URL and node).
    let udp: Vec<&TurnUrl> = plan
        .turn
        .iter()
        .filter(|u| u.transport == Protocol::Udp)
        .collect();
    for (site, paths) in plan.sites.iter().zip(&world.sites) {
        let name = &site.name;
        match udp[..] {
            [] => {}
            [url] => components.add(&format!("path {name} → {url}"), paths.datagram_totals()),
            _ => components.add(
                &format!("path {name} → TURN over UDP"),
                paths.datagram_totals(),
            ),
        }
        for (url, counts) in plan.turn.iter().zip(&paths.counts.turn) {
            if url.transport != Protocol::Udp {
                components.add(&format!("path {name} → {url}"), counts.totals());
            }
        }
        components.add(
            &format!("path {name} → signalling"),
            paths.counts.signalling.totals(),
        );
        if let Some((proxy, _)) = &paths.proxy {
            components.add(&format!("proxy {name}"), proxy.stats().totals());
        }
    }
    let mut anchor = world.anchor.stats.totals();
    anchor.extend(world.anchor.counters.totals());
    components.add("anchor", anchor);
    Ok(MediaResult {
        calls,
        simulated,
        components,
        shared_instants,
    })
}

impl World {
    /// The event loop: start the calls that are due, advance to the earliest deadline, run
    /// what is due, route what it sent, until every call is over.
    fn run(&mut self, events: &mut (dyn FnMut(CallEvent<'_>) + Send)) -> Result<(), String> {
        loop {
            let before = self.calls.len();
            self.start_due_calls()?;
            for i in before..self.calls.len() {
                events(CallEvent::Started(i));
            }
            if !self.finished.is_empty() {
                for &i in &self.finished {
                    if let Some(r) = &self.calls[i].result {
                        events(CallEvent::Ended(i, &r.record));
                    }
                }
                self.finished.clear();
                let calls = &self.calls;
                self.live.retain(|&i| calls[i].result.is_none());
            }
            if self.calls.len() == self.plan.calls.len() && self.live.is_empty() {
                // The last calls' final datagrams (their allocations' release, the anchor's
                // last answers) still cross the paths: let them arrive, for a while at most,
                // as a real-time run waits for the TURN server to settle.
                let until = *self.ended.get_or_insert(self.now) + DRAIN;
                let drained = self.sites.iter().all(|s| {
                    [&s.media, &s.streams, &s.turn_streams]
                        .iter()
                        .all(|p| p.poll_timeout().is_none())
                });
                if drained || self.now >= until {
                    return Ok(());
                }
            }
            let mut next = self.next_deadline();
            if let Some(ended) = self.ended {
                next = next.min(ended + DRAIN);
            }
            let second = |t: Instant| t.saturating_duration_since(self.start).as_secs();
            if second(next) > second(self.now) {
                events(CallEvent::Clock(next.saturating_duration_since(self.start)));
            }
            self.now = self.now.max(next);
            let now = self.now;
            for site in &mut self.sites {
                site.media.handle_timeout(now);
                site.streams.handle_timeout(now);
                site.turn_streams.handle_timeout(now);
            }
            for node in &mut self.nodes {
                node.handle_timeout(now);
            }
            while let Some(&(at, node, faults)) = self.faults.front()
                && at <= now
            {
                self.faults.pop_front();
                if let Some(node) = self.nodes.get_mut(node) {
                    node.set_faults(faults);
                }
            }
            self.expire_proxies();
            if self.anchor.wake <= now {
                self.anchor.wake = self.anchor.core.handle_timeout(now).unwrap_or(now + IDLE);
                self.flush_anchor();
            }
            self.settle();
            self.step_calls();
        }
    }

    /// Runs the due calls' own timers (and what arrived for them), then sends what each has,
    /// in the calls' order. The first part touches nothing but each call's own state, so it
    /// runs on the pool's threads when enough calls share the instant (calls set up in step
    /// share their frames' slots on the 0.5 ms grid; jittered ones spread over its 40 slots a
    /// frame); only the second part's order reaches the other components, so the results do
    /// not depend on the thread count.
    fn step_calls(&mut self) {
        let now = self.now;
        // `live` is in the calls' order: a merge finds the due ones without a search.
        let first = self.live.first().copied().unwrap_or(self.calls.len());
        let mut live = self.live.iter().copied().peekable();
        let mut due: Vec<(usize, &mut Call)> = Vec::new();
        for (i, c) in self.calls.iter_mut().enumerate().skip(first) {
            if live.next_if_eq(&i).is_some() && c.result.is_none() && c.wake <= now {
                due.push((i, c));
            }
        }
        let step = |(_, c): &mut (usize, &mut Call)| {
            c.session.handle_timeout(now);
            if let Some(server) = &mut c.server {
                server.handle_timeout(now);
            }
        };
        // More than one thread: the loop runs in a pool of that many (`run_plan`).
        if self.plan.threads > 1 && due.len() >= SHARED_FROM {
            // The helpers stop spinning and steal their share.
            let phase = self.phase.fetch_add(1, Ordering::Relaxed) + 1;
            self.shared_instants += 1;
            due.par_iter_mut().with_min_len(4).for_each(step);
            // A helper woken from sleep for each instant comes late (a VM's idle core takes
            // tens of microseconds to wake, a good part of the ~250 µs it is there for): one
            // spins until the next instant's work is there, for a few milliseconds at most.
            let phase_of = self.phase.clone();
            rayon::spawn(move || {
                for _ in 0..SPIN_ROUNDS {
                    if phase_of.load(Ordering::Relaxed) != phase {
                        break;
                    }
                    std::hint::spin_loop();
                }
            });
        } else {
            due.iter_mut().for_each(step);
        }
        let due: Vec<usize> = due.into_iter().map(|(i, _)| i).collect();
        for i in due {
            // A call another's answer ended meanwhile sent what it had as it ended.
            if self.calls[i].result.is_none() {
                self.flush_call(i);
            }
        }
    }

    /// When the next call may start by the ramp, if the concurrency allows one now.
    fn next_start(&self) -> Option<Instant> {
        let k = self.calls.len();
        if k >= self.plan.calls.len() || self.active() >= self.plan.concurrency.max(1) as usize {
            return None;
        }
        let ramp = self.plan.ramp_per_second;
        Some(if ramp.is_finite() && ramp > 0.0 {
            self.start + Duration::from_secs_f64(k as f64 / ramp)
        } else {
            self.start
        })
    }

    fn start_due_calls(&mut self) -> Result<(), String> {
        while let Some(at) = self.next_start()
            && at <= self.now
        {
            self.start_call()?;
        }
        Ok(())
    }

    /// Makes the next planned call: its session, as a real-time agent is given it.
    fn start_call(&mut self) -> Result<(), String> {
        let now = self.now;
        let index = self.calls.len();
        let i = u64::try_from(index).map_err(|e| e.to_string())?;
        let planned = &self.plan.calls[index];
        let seeded = Entropy::Seeded(self.plan.seed);
        // The names as the site's DNS answers them, as in real time.
        let policy = &self.sites[planned.site].policy;
        // Agents behind an inspecting proxy trust its root, as the site's machines do.
        let root = match &self.sites[planned.site].proxy {
            Some((_, root)) => root,
            None => &self.vendor.root,
        };
        let endpoint = Endpoint {
            url: self.plan.signalling_url.clone(),
            addr: SIGNALLING,
            roots: vec![root.clone()],
        };
        let vendor = &self.vendor;
        let spec = CallSpec {
            identity: planned.identity.clone(),
            signalling: crate::dns::resolve(policy, &vendor.signalling_host, endpoint),
            turn: self
                .plan
                .turn
                .iter()
                .zip(&self.sites[planned.site].names)
                // As a real-time site resolves it.
                .map(|(url, name)| {
                    crate::run::turn_server(url, policy, name, &vendor.turn_client_tls)
                })
                .collect(),
            turn_username: USER.0.to_owned(),
            turn_password: USER.1.to_owned(),
            turn_realm: self.vendor.realm.clone(),
            timeouts: self.plan.timeouts,
            talk: self.plan.talk,
            dead_air: self.plan.dead_air,
            codec: self.plan.codec,
            epoch: self.start,
            ssrc: 0x1000_0000 | (index as u32 & 0x0fff_ffff),
            hangup: None,
        };
        let session = Session::new(spec, seeded.for_leg(i, AGENT_SIDE), now, self.unix_now());
        let endpoint_random = seeded.for_leg(i, ENDPOINT_CALL_SIDE).provider()?;
        self.calls.push(Call {
            site: planned.site,
            session,
            wires: Vec::new(),
            streams: BTreeMap::new(),
            server: None,
            connection: None,
            endpoint_random,
            wake: now,
            result: None,
        });
        self.live.push(index);
        self.flush_call(index);
        Ok(())
    }

    /// Calls started and not over.
    fn active(&self) -> usize {
        self.live
            .iter()
            .filter(|&&i| self.calls[i].result.is_none())
            .count()
    }

    /// The wall clock now: the simulated clock's, counted from the run's wall-clock start.
    fn unix_now(&self) -> Duration {
        self.unix_start + self.now.saturating_duration_since(self.start)
    }

    fn next_deadline(&mut self) -> Instant {
        let mut next = self.now + IDLE;
        let engines = self
            .sites
            .iter_mut()
            .flat_map(|s| {
                [
                    s.media.poll_timeout(),
                    s.streams.poll_timeout(),
                    s.turn_streams.poll_timeout(),
                ]
            })
            .chain(self.nodes.iter_mut().map(|n| n.poll_timeout()))
            .chain([self.faults.front().map(|f| f.0)]);
        for t in engines.flatten() {
            next = next.min(t);
        }
        if let Some(t) = self.next_start() {
            next = next.min(t.max(self.now));
        }
        next = next.min(self.anchor.wake);
        for t in self
            .sites
            .iter()
            .filter_map(|s| s.proxy.as_ref()?.0.poll_timeout())
        {
            next = next.min(t.max(self.now));
        }
        for &i in &self.live {
            let c = &self.calls[i];
            if c.result.is_none() {
                next = next.min(c.wake);
            }
        }
        next
    }

    /// Does what call `i`'s session asks (wires, connections), answers its endpoint's
    /// requests, and sends what both have ready; routes until nothing moves.
    fn flush_call(&mut self, i: usize) {
        self.events(i);
        self.serve(i);
        self.emit(i);
        self.settle();
    }

    /// Carries out what call `i`'s session asks of its edge.
    fn events(&mut self, i: usize) {
        let now = self.now;
        while let Some(event) = self.calls[i].session.poll_event() {
            match event {
                SessionEvent::OpenWires { kinds, replace } => {
                    if replace {
                        // What the old wires have queued goes first, then they close.
                        self.emit(i);
                        let old = self.calls[i].wires.len();
                        self.close_wires(i, 0..old);
                    }
                    let mut locals = Vec::new();
                    let mut failed = Vec::new();
                    for kind in &kinds {
                        let c = &self.calls[i];
                        let (n, w) = (i as u32, c.wires.len());
                        let a = [10, (n >> 16) as u8, (n >> 8) as u8, n as u8];
                        let local = SocketAddr::from((a, AGENT_PORT + w as u16));
                        match kind {
                            WireKind::Turn(t) if matches!(t.transport, TurnTransport::Udp) => {
                                self.sites[c.site].counts.flows += 1;
                            }
                            WireKind::Turn(t) => {
                                if let Err(why) = self.connect_turn(i, w, local, t) {
                                    failed.push((w, why));
                                }
                            }
                            WireKind::Host => {}
                        }
                        self.wires.insert(local, (i, w));
                        self.calls[i].wires.push(local);
                        locals.push(local);
                    }
                    let c = &mut self.calls[i];
                    c.session.handle_wires(now, Ok(locals));
                    for (w, why) in failed {
                        c.session.handle_wire_error(w, &why);
                    }
                }
                SessionEvent::Dial(_) => {
                    self.drop_connection(i);
                    self.connections += 1;
                    let number = self.connections;
                    let site = &self.sites[self.calls[i].site];
                    // A firewall that blocks the port accepts and drops the connection, as
                    // the site's relay does.
                    let blocked = site
                        .policy
                        .blocks(Protocol::Tcp, self.vendor.signalling_port);
                    count_connection(&site.counts.signalling, blocked);
                    let (tls, stats) = (self.vendor.server_tls.clone(), self.vendor.stats.clone());
                    // The agent's TLS ends at the site's proxy, when it has one; the proxy
                    // connects to the endpoint once it has read the request.
                    let server = match &site.proxy {
                        Some((proxy, _)) => proxy.accept(now).map(|p| (Some(p), None)),
                        None => ServerConnection::new(
                            tls.clone(),
                            SignallingLimits::default(),
                            stats.clone(),
                            now,
                        )
                        .map(|e| (None, Some(e)))
                        .map_err(|e| e.to_string()),
                    };
                    let c = &mut self.calls[i];
                    c.connection = Some(number);
                    match server {
                        Ok((proxy, endpoint)) if !blocked => {
                            c.server = Some(VendorEnd {
                                number,
                                proxy,
                                endpoint,
                                tls,
                                stats,
                            });
                            c.session.handle_signalling_open(now);
                        }
                        Ok(_) => {
                            c.session.handle_signalling_open(now);
                            c.session.handle_signalling_eof(now);
                        }
                        Err(e) => c.session.handle_signalling_error(now, e),
                    }
                }
                SessionEvent::DropSignalling => {
                    self.calls[i].connection = None;
                    self.drop_connection(i);
                }
                SessionEvent::Ended => {
                    self.emit(i);
                    let all = self.calls[i].wires.len();
                    self.close_wires(i, 0..all);
                    let c = &mut self.calls[i];
                    c.result = Some(CallResult {
                        record: c.session.record(),
                        ended: now.saturating_duration_since(self.start),
                    });
                    self.finished.push(i);
                }
            }
        }
    }

    /// Opens wire `w` of call `i`, at `local`, as a TCP (or TLS) connection to the TURN node
    /// `turn` names: at once, as the connection's handshake across the path is not modelled.
    /// `Err`: it closes at once (the site's firewall blocks the port and its relay drops the
    /// connection, or the node refuses it), worded as the real-time edge words it.
    fn connect_turn(
        &mut self,
        i: usize,
        w: usize,
        local: SocketAddr,
        turn: &TurnCredentials,
    ) -> Result<(), String> {
        let node = node_at(turn.server)
            .filter(|&n| n < self.nodes.len())
            .ok_or_else(|| format!("no TURN node at {}", turn.server))?;
        let (tls, transport) = match &turn.transport {
            TurnTransport::Tls {
                server_name,
                config,
            } => (
                Some(TlsSession::new(config.clone(), server_name)?),
                Transport::Tls,
            ),
            _ => (None, Transport::Tcp),
        };
        let node_tls = match &turn.transport {
            TurnTransport::Tls { server_name, .. } => {
                let config = self
                    .vendor
                    .turn_tls
                    .get(server_name)
                    .ok_or_else(|| format!("no TURN certificate for {server_name}"))?;
                let session =
                    rustls::ServerConnection::new(config.clone()).map_err(|e| e.to_string())?;
                Some(Plaintext(session.into()))
            }
            _ => None,
        };
        let five_tuple = FiveTuple {
            transport,
            client: local,
            server: turn.server,
        };
        let c = &self.calls[i];
        let blocked = self.sites[c.site]
            .policy
            .blocks(Protocol::Tcp, turn.server.port());
        let url = self
            .plan
            .turn
            .iter()
            .position(|u| {
                u.transport == Protocol::Tcp
                    && u.secure == (transport == Transport::Tls)
                    && u.port == turn.server.port()
            })
            .unwrap_or_default();
        if let Some(stats) = self.sites[c.site].counts.turn.get(url) {
            count_connection(stats, blocked);
        }
        let refused = blocked
            || self.nodes[node]
                .handle_stream_opened(self.now, five_tuple)
                .is_err();
        if refused {
            return Err(loadgen::turn_stream::CLOSED_BY_SERVER.to_owned());
        }
        self.calls[i].streams.insert(
            w,
            StreamWire {
                node,
                url,
                five_tuple,
                client: TurnStream::new(tls),
                client_open: true,
                node_end: NodeEnd {
                    tls: node_tls,
                    open: true,
                },
            },
        );
        Ok(())
    }

    /// Closes wires `range` of call `i`: what comes to them is dropped, and each TCP/TLS
    /// connection's FIN crosses the path to its node after what was sent before it.
    fn close_wires(&mut self, i: usize, range: std::ops::Range<usize>) {
        let now = self.now;
        let c = &mut self.calls[i];
        for w in range {
            if let Some(local) = c.wires.get(w) {
                self.wires.remove(local);
            }
            let Some(stream) = c.streams.get_mut(&w) else {
                continue;
            };
            if std::mem::replace(&mut stream.client_open, false) {
                let path = &mut self.sites[c.site].turn_streams;
                let to = (now, FlowId(i as u64), Direction::Up);
                put_chunk(path, to, Carried::TurnStream(w), BytesMut::new());
            }
        }
    }

    /// A site's TLS-inspecting proxy whose certificate cache expires now resets every
    /// connection through it (once; it serves new ones with a renewed certificate): the
    /// endpoint's ends close at once (the proxy's side is the vendor's LAN), each agent gets
    /// the FIN after what was on its way.
    fn expire_proxies(&mut self) {
        let now = self.now;
        for s in 0..self.sites.len() {
            let Some((proxy, _)) = &mut self.sites[s].proxy else {
                continue;
            };
            if !proxy.handle_timeout(now) {
                continue;
            }
            for k in 0..self.live.len() {
                let i = self.live[k];
                let c = &mut self.calls[i];
                if c.site != s || c.result.is_some() {
                    continue;
                }
                if let Some(proxy) = c.server.as_mut().and_then(|v| v.proxy.as_mut()) {
                    proxy.reset();
                }
                if let Some(number) = c.connection {
                    let streams = &mut self.sites[s].streams;
                    let to = (now, FlowId(i as u64), Direction::Down);
                    put_chunk(streams, to, Carried::Signalling(number), BytesMut::new());
                }
                self.drop_connection(i);
                self.flush_call(i);
            }
        }
    }

    /// Call `i`'s signalling connection is gone: the endpoint sees it end (a FIN's own trip
    /// across the path is not modelled), and what is still on the path is dropped.
    fn drop_connection(&mut self, i: usize) {
        let Some(server) = self.calls[i].server.take() else {
            return;
        };
        if let Some(mut endpoint) = server.endpoint {
            endpoint.handle_eof();
        }
        let endings = self.anchor.desk.connection_closed(server.number);
        self.abandon(endings);
    }

    /// Ends the calls whose agents are gone.
    fn abandon(&mut self, endings: Vec<Ending>) {
        for ending in endings {
            self.anchor.stats.abandoned.fetch_add(1, Ordering::Relaxed);
            self.anchor.close(self.now, &ending);
        }
        self.flush_anchor();
    }

    /// The endpoint's side of call `i`: its requests answered by the anchor's desk.
    fn serve(&mut self, i: usize) {
        let now = self.now;
        let unix_ms = u64::try_from(self.unix_now().as_millis()).unwrap_or(u64::MAX);
        let c = &mut self.calls[i];
        let Some(VendorEnd {
            endpoint: Some(server),
            number,
            ..
        }) = &mut c.server
        else {
            return;
        };
        let number = *number;
        let anchor = &mut self.anchor;
        while let Some(event) = server.poll_event() {
            let ServerEvent::Request {
                key,
                method,
                params,
            } = event
            else {
                continue;
            };
            let random = c.endpoint_random.clone();
            let mut credentials = || {
                loadgen::entropy::ice_credentials(random.random())
                    .map_err(|e| RpcError::new(500, format!("no ICE credentials: {e}")))
            };
            let mut media = AnchorMedia {
                core: &mut anchor.core,
                fingerprint: &anchor.fingerprint,
                now,
            };
            let reply = anchor.desk.request(
                now,
                unix_ms,
                number,
                &method,
                params,
                &mut media,
                &mut credentials,
                &anchor.stats,
            );
            anchor.wake = now;
            match reply {
                Reply::Answer(answer) => server.respond(key, answer),
                Reply::Withheld => {}
                Reply::Close(ending) => {
                    let result = anchor.close(now, &ending);
                    server.respond(key, Ok(result));
                }
            }
        }
        self.flush_anchor();
    }

    /// Sends what the anchor queued through the TURN core, from the anchor's address, and
    /// acts on what it tells.
    fn flush_anchor(&mut self) {
        let now = self.now;
        while let Some((to, bytes)) = self.anchor.core.poll_transmit() {
            // To a relayed address: the node that has that address.
            if let Some(node) = node_at(to).and_then(|n| self.nodes.get_mut(n)) {
                node.handle_peer_packet(now, to, ANCHOR, &bytes);
            }
        }
        while let Some(LegEvent::ConsentLost { call_id }) = self.anchor.core.poll_event() {
            if let Some(ending) = self.anchor.desk.consent_lost(&call_id) {
                self.abandon(vec![ending]);
            }
        }
    }

    /// Puts what call `i`'s session and its endpoint connection have ready on its site's
    /// paths, and sets when the call runs next.
    fn emit(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.calls[i];
        let site = &mut self.sites[c.site];
        let flow = FlowId(i as u64);
        while let Some(t) = c.session.poll_transmit() {
            match c.streams.get_mut(&t.wire) {
                Some(stream) if stream.client_open => {
                    if let Err(e) = stream.client.send(&t.data) {
                        stream.client_open = false;
                        c.session.handle_wire_error(t.wire, &e.to_string());
                    }
                }
                // A closed connection sends nothing.
                Some(_) => {}
                None => {
                    let len = t.data.len() as u32 + UDP_HEADERS;
                    let packet = Packet {
                        carried: Carried::Datagram(t.wire, t.to),
                        data: t.data,
                    };
                    site.media
                        .handle_input(now, flow, Direction::Up, len, packet);
                }
            }
        }
        let (up, down) = ((now, flow, Direction::Up), (now, flow, Direction::Down));
        for (&w, stream) in &mut c.streams {
            while let Some(data) = stream.client.poll_transmit() {
                put_chunk(
                    &mut site.turn_streams,
                    up,
                    Carried::TurnStream(w),
                    owned(data),
                );
            }
        }
        let carried = Carried::Signalling(c.connection.unwrap_or(0));
        while let Some(data) = c.session.poll_signalling_transmit() {
            put_chunk(&mut site.streams, up, carried, owned(data));
        }
        let mut closed = false;
        if let Some(server) = &mut c.server {
            let carried = Carried::Signalling(server.number);
            while let Some(data) = server.transmit(now) {
                put_chunk(&mut site.streams, down, carried, owned(data));
            }
            // The proxy closed it: a FIN after what it sent.
            closed = server.is_closed();
            if closed {
                put_chunk(&mut site.streams, down, carried, BytesMut::new());
            }
        }
        let server = c.server.as_ref().and_then(VendorEnd::poll_timeout);
        c.wake = [c.session.poll_timeout(), server]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + IDLE);
        if closed {
            self.drop_connection(i);
        }
    }

    /// Routes until nothing moves at this instant: what leaves a path without delay must
    /// reach its end now, not at its next wake-up.
    fn settle(&mut self) {
        loop {
            self.route_paths();
            let turned = self.route_turn();
            let streamed = self.route_streams();
            let relayed = self.route_turn_streams();
            if !turned && !streamed && !relayed {
                break;
            }
        }
    }

    /// Delivers what left the signalling streams to each end, lets both act on it, and sends
    /// their answers; `true` when anything arrived.
    fn route_streams(&mut self) -> bool {
        let now = self.now;
        let mut touched = Vec::new();
        for site in &mut self.sites {
            while let Some(out) = site.streams.poll_output() {
                let Output::Deliver {
                    at,
                    flow,
                    direction,
                    packet,
                } = out
                else {
                    continue;
                };
                let i = flow.0 as usize;
                let Some(c) = self.calls.get_mut(i) else {
                    continue;
                };
                let Carried::Signalling(number) = packet.carried else {
                    continue;
                };
                count_bytes(&site.counts.signalling, direction, packet.data.len());
                // What was on the way when its connection ended goes nowhere.
                match direction {
                    Direction::Up => match c.server.as_mut() {
                        Some(server) if server.number == number => {
                            server.receive(at, &packet.data);
                        }
                        _ => continue,
                    },
                    Direction::Down if c.connection == Some(number) => {
                        if packet.data.is_empty() {
                            // The proxy's FIN, after what it had relayed.
                            c.connection = None;
                            c.session.handle_signalling_eof(now);
                        } else {
                            c.session.handle_signalling_input(now, &packet.data);
                        }
                    }
                    Direction::Down => continue,
                }
                touched.push(i);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for &i in &touched {
            self.events(i);
            self.serve(i);
            self.emit(i);
        }
        !touched.is_empty()
    }

    /// Delivers what left the sites' paths: up to the TURN nodes, down to the agents.
    fn route_paths(&mut self) {
        for site in &mut self.sites {
            while let Some(out) = site.media.poll_output() {
                let Output::Deliver {
                    at,
                    flow,
                    direction,
                    packet,
                } = out
                else {
                    continue;
                };
                let Some(c) = self.calls.get_mut(flow.0 as usize) else {
                    continue;
                };
                let Carried::Datagram(wire, listener) = packet.carried else {
                    continue;
                };
                let Some(&client) = c.wires.get(wire) else {
                    continue;
                };
                // The site's firewall: UDP to TURN's port blocked (nothing goes out, nothing
                // comes back), or a stateless one letting in only UDP to allowed ports.
                if site.policy.blocks(Protocol::Udp, listener.port())
                    || (direction == Direction::Down
                        && !site.policy.admits_inbound_udp(client.port()))
                {
                    site.counts.policy[usize::from(direction == Direction::Down)] += 1;
                    continue;
                }
                match direction {
                    Direction::Up => {
                        let five_tuple = FiveTuple {
                            transport: Transport::Udp,
                            client,
                            server: listener,
                        };
                        if let Some(node) = node_at(listener).and_then(|n| self.nodes.get_mut(n)) {
                            node.handle_packet(at, five_tuple, &packet.data);
                        }
                    }
                    Direction::Down => {
                        c.session.handle_datagram(at, wire, listener, packet.data);
                        // It acts on the datagram at once, as a woken real-time leg would.
                        c.wake = c.wake.min(at);
                    }
                }
            }
        }
    }

    /// Carries out what the TURN nodes ask: relayed sockets (always opened), connections
    /// closed, and their datagrams and stream frames, down the agent's site's path or straight
    /// to a far end; `true` when any went on a path.
    fn route_turn(&mut self) -> bool {
        let mut onto_path = false;
        let now = self.now;
        for n in 0..self.nodes.len() {
            while let Some(event) = self.nodes[n].poll_event() {
                match event {
                    Event::OpenRelay { request, .. } => {
                        self.nodes[n].handle_relay_opened(now, request, true);
                    }
                    Event::CloseStream { five_tuple, .. } => {
                        onto_path |= self.close_stream(n, five_tuple);
                    }
                    _ => {}
                }
            }
            while let Some(t) = self.nodes[n].poll_transmit() {
                if t.destination == ANCHOR {
                    self.anchor.core.handle_datagram(now, t.source, &t.contents);
                    // What it answers goes back through TURN at once; what it starts (a keyed
                    // leg's first frame) runs at its next timeout, now.
                    self.anchor.wake = now;
                    self.flush_anchor();
                } else if t.transport != Transport::Udp {
                    onto_path |= self.stream_down(t.destination, t.contents);
                } else if let Some(&(i, wire)) = self.wires.get(&t.destination) {
                    let len = t.contents.len() as u32 + UDP_HEADERS;
                    let site = &mut self.sites[self.calls[i].site];
                    let packet = Packet {
                        carried: Carried::Datagram(wire, t.source),
                        data: owned(t.contents),
                    };
                    site.media
                        .handle_input(now, FlowId(i as u64), Direction::Down, len, packet);
                    onto_path = true;
                }
            }
        }
        onto_path
    }

    /// Puts `plain` (a node's frames, or its FIN when empty) on the TCP/TLS connection to the
    /// agent's end `client`, down its site's path; `true` when anything went.
    fn stream_down(&mut self, client: SocketAddr, plain: Vec<u8>) -> bool {
        let Some(&(i, w)) = self.wires.get(&client) else {
            return false;
        };
        let c = &mut self.calls[i];
        let Some(stream) = c.streams.get_mut(&w).filter(|s| s.node_end.open) else {
            return false;
        };
        let data = if plain.is_empty() {
            stream.node_end.open = false;
            plain
        } else {
            match stream.node_end.transmit(plain) {
                Some(data) => data,
                None => return false,
            }
        };
        let path = &mut self.sites[c.site].turn_streams;
        let to = (self.now, FlowId(i as u64), Direction::Down);
        put_chunk(path, to, Carried::TurnStream(w), owned(data));
        true
    }

    /// The node's end of the connection `five_tuple` closes, as the TURN core asks: its FIN
    /// goes down after what was sent before it, and the core is told it is closed.
    fn close_stream(&mut self, node: usize, five_tuple: FiveTuple) -> bool {
        let moved = self.stream_down(five_tuple.client, Vec::new());
        self.nodes[node].handle_connection_closed(self.now, five_tuple);
        moved
    }

    /// Delivers what left the TURN connections' paths: up to the nodes (through their TLS),
    /// down to the agents (through theirs); `true` when anything arrived.
    fn route_turn_streams(&mut self) -> bool {
        let mut touched = Vec::new();
        let mut closing = Vec::new();
        let mut moved = false;
        for s in 0..self.sites.len() {
            while let Some(out) = self.sites[s].turn_streams.poll_output() {
                let Output::Deliver {
                    at,
                    flow,
                    direction,
                    packet,
                } = out
                else {
                    continue;
                };
                let i = flow.0 as usize;
                let Carried::TurnStream(w) = packet.carried else {
                    continue;
                };
                let Some(c) = self.calls.get_mut(i) else {
                    continue;
                };
                let Some(stream) = c.streams.get_mut(&w) else {
                    continue;
                };
                moved = true;
                if let Some(stats) = self.sites[s].counts.turn.get(stream.url) {
                    count_bytes(stats, direction, packet.data.len());
                }
                match direction {
                    Direction::Up if stream.node_end.open => {
                        let (node, five_tuple) = (stream.node, stream.five_tuple);
                        if packet.data.is_empty() {
                            stream.node_end.open = false;
                            self.nodes[node].handle_connection_closed(at, five_tuple);
                            continue;
                        }
                        match stream.node_end.receive(&packet.data) {
                            Ok(plain) if plain.is_empty() => {}
                            Ok(plain) => {
                                self.nodes[node].handle_stream_data(at, five_tuple, &plain);
                            }
                            // Bad TLS: the node's end closes the connection.
                            Err(_) => {
                                closing.push((node, five_tuple));
                                continue;
                            }
                        }
                        // The handshake's answer.
                        if let Some(records) = stream.node_end.transmit(Vec::new()) {
                            let path = &mut self.sites[s].turn_streams;
                            let to = (at, flow, Direction::Down);
                            put_chunk(path, to, Carried::TurnStream(w), owned(records));
                        }
                    }
                    Direction::Down if stream.client_open => {
                        let server = stream.five_tuple.server;
                        let mut frames = Vec::new();
                        let failed = if packet.data.is_empty() {
                            Some(loadgen::turn_stream::CLOSED_BY_SERVER.to_owned())
                        } else {
                            stream
                                .client
                                .handle_input(&packet.data, &mut frames)
                                .err()
                                .map(|e| e.to_string())
                        };
                        if failed.is_some() {
                            stream.client_open = false;
                        }
                        for frame in frames {
                            c.session.handle_datagram(at, w, server, frame);
                        }
                        if let Some(why) = failed {
                            c.session.handle_wire_error(w, &why);
                        }
                        c.wake = c.wake.min(at);
                        touched.push(i);
                    }
                    _ => {}
                }
            }
        }
        for (node, five_tuple) in closing {
            self.close_stream(node, five_tuple);
        }
        touched.sort_unstable();
        touched.dedup();
        for &i in &touched {
            self.events(i);
            self.emit(i);
        }
        moved
    }
}
