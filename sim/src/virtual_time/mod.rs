//! Virtual time, first part: a call's signalling and media path on one simulated clock, in one
//! process, with no sockets. Each call is an agent's relay-only [`Leg`], a signalling
//! [`Connection`] to the endpoint's [`ServerConnection`], and a leg of the anchor's media
//! server (`anchor::media_core`: ICE-lite, DTLS server, SRTP, as real time runs it on a socket). TLS,
//! the WebSocket and JSON-RPC (`invite` with the offer and the agent's candidates, answered
//! with the anchor's SDP; `accept`; keep-alives; `bye`, which closes the anchor's leg and
//! keeps its measurement; the close handshake) cross the site's path in its stream form (as
//! the real-time TCP relay carries them: delay, jitter, rate and stalls, no loss), and the
//! agent's datagrams cross the site's path ([`Netem`]) to the TURN core
//! ([`turn_server::Server`]), which relays them to the anchor; the anchor's come back the same
//! way. Every one of them is the same sans-I/O core the real-time run drives on sockets — real
//! TLS, real ICE, real DTLS handshakes, real SRTP — so a minute of calls takes what the CPU
//! needs for their crypto and bookkeeping, not a minute.
//!
//! Not yet here (DESIGN §3's promise, issue 16): the agent's session state machine as one core
//! for both drivers (here a reduced one: inbound and outbound calls, no mid-call steps, no ICE
//! restarts) and the anchor's call handling beyond invite and bye. What it has is replayable:
//! the paths, every leg, the anchor and the endpoint's certificate draw from the run's seed
//! ([`Entropy::Seeded`]), so one seed gives the same figures.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::BytesMut;
use loadgen::entropy::Entropy;
use loadgen::leg::{Leg, LegError, PeerConfig, TurnCredentials, TurnTransport};
use loadgen::session::{Timeouts, from_wire, to_wire};
use loadgen::signalling::{
    Connection, Event as Signalled, Invite, InviteAnswer, RpcError, SignallingError,
    tls_client_config,
};
use reports::emodel::Codec;
use reports::record::MediaStats;
use reports::{FailureClass, Milestones, SessionState};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use turn_server::auth::{Credentials, Secret};
use turn_server::policy::PeerPolicy;
use turn_server::server::{Config, Event, FiveTuple, Server, Transport};

use crate::anchor::media::{CONSENT_TIMEOUT, Ended, LegSpec, MediaCounters};
use crate::anchor::media_core::MediaCore;
use crate::netem::{Direction, FlowId, Netem, Output, Path};
use crate::signalling::{ServerConnection, ServerEvent, SignallingLimits, SignallingStats};
use loadgen::measure::MediaMeter;
use loadgen::sdp::Description;
use rtc::crypto::RTCCryptoProvider;

pub mod scenario;

/// The TURN server's listener in the simulated network (TEST-NET-1, RFC 5737).
const TURN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 3478));
/// Media frame interval.
const FRAME: Duration = Duration::from_millis(20);
/// The longest a leg goes undriven, as in the real-time driver (`loadgen::driver`): `rtc`'s
/// TURN client does not always report its next deadline.
const MAX_SLEEP: Duration = Duration::from_millis(10);
/// The anchor's media server in the simulated network (TEST-NET-2).
const ANCHOR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 20_000));
/// The anchor's longest sleep with nothing due.
const IDLE: Duration = Duration::from_millis(500);
/// The signalling endpoint's name and URL in the simulated network.
const SIGNALLING_HOST: &str = "signalling.sim.local";
const SIGNALLING_URL: &str = "wss://signalling.sim.local:8443/rtc";
/// IPv4 and TCP headers of each chunk of a signalling stream on the wire.
const TCP_HEADERS: u32 = 40;
/// How long the agent waits for the endpoint's Close (as `SignallingClient::close`).
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// After the last frame, how long the last packets may take to arrive.
const DRAIN: Duration = Duration::from_millis(500);
/// The TURN user every agent allocates as.
const USER: (&str, &str) = ("agent", "virtual");

/// What to run: `calls` calls at once over `path`, each talking for `talk` (the media bench's
/// and the tests' shape of a [`Plan`]).
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
    /// The plan of this run: one site, every call at once.
    pub fn plan(&self) -> Plan {
        Plan {
            sites: vec![self.path.clone()],
            calls: vec![0; self.calls as usize],
            concurrency: self.calls,
            ramp_per_second: f64::INFINITY,
            talk: self.talk,
            timeouts: Timeouts::default(),
            dead_air: Duration::from_secs(5),
            codec: Codec::OPUS,
            seed: self.seed,
        }
    }
}

/// What to run, in general: calls from sites, each site with its path, started at a ramp up to
/// a concurrency.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Each site's path to the vendor side (TURN and signalling).
    pub sites: Vec<Path>,
    /// The site of each call, in the order they start.
    pub calls: Vec<usize>,
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
}

/// How one call went.
#[derive(Debug, Clone)]
pub struct CallResult {
    /// Simulated time from the run's start to the call's start.
    pub started: Duration,
    /// Its milestones, from its start (the CCP's timing fields).
    pub milestones: Milestones,
    /// Where it stopped (`Disconnected` when it completed).
    pub last_state: SessionState,
    /// Whether DTLS connected (a failure after it is a dropped call).
    pub connected: bool,
    /// Why it failed, if it did.
    pub failure: Option<(FailureClass, String)>,
    /// What each far end measured of the other's stream, agent → far end first, when it
    /// connected.
    pub media: Option<(Box<MediaStats>, Box<MediaStats>)>,
    /// How the agent's media reached TURN, when it connected.
    pub relay_transport: Option<reports::RelayTransport>,
}

impl CallResult {
    /// Completed, dropped (it failed after it connected) or failed.
    pub fn outcome(&self) -> reports::Outcome {
        match (&self.failure, self.connected) {
            (None, _) => reports::Outcome::Completed,
            (Some(_), true) => reports::Outcome::Dropped,
            (Some(_), false) => reports::Outcome::Failed,
        }
    }

    /// The media figures each way when it completed, agent → far end first.
    pub fn completed(&self) -> Option<(&MediaStats, &MediaStats)> {
        match (&self.failure, &self.media) {
            (None, Some((up, down))) => Some((up, down)),
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
}

/// What a run tells its caller as it goes (for live progress).
#[derive(Debug)]
pub enum CallEvent<'a> {
    /// Call `index` of the plan started.
    Started(usize),
    /// Call `index` of the plan ended so.
    Ended(usize, &'a CallResult),
    /// The simulated clock passed another second since the run's start.
    Clock(Duration),
}

/// Virtual time cannot go on: the run needs what it does not model yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Allocating and connecting signalling, side by side.
    Gathering,
    /// `invite` sent (with the offer and the agent's candidates).
    Inviting,
    /// The answer applied, `accept` sent.
    Accepting,
    /// ICE and DTLS under way.
    Connecting,
    /// Frames flow both ways until `until`.
    Talking { until: Instant },
    /// The last frames are on their way; ends at `until`.
    Draining { until: Instant },
    /// `bye` sent.
    HangingUp,
    /// Our Close sent; the endpoint's awaited until `until`.
    Closing { until: Instant },
    /// Over.
    Done,
}

struct Call {
    /// Its place in the plan.
    index: usize,
    site: usize,
    agent: Leg,
    agent_local: SocketAddr,
    /// The anchor's id of the call, and whether its leg of the media server is open.
    call_id: String,
    anchor_open: bool,
    /// What the anchor's leg measured, once closed (at `bye`, or when the call failed).
    ended: Option<Ended>,
    /// The endpoint's randomness for this call (the anchor leg's ICE credentials).
    endpoint_random: Arc<dyn RTCCryptoProvider>,
    phase: Phase,
    /// When the agent's leg must run next.
    agent_wake: Instant,
    /// When the call must run next ([`Call::next_wake`], kept as it changes): only calls
    /// with something due run at an instant.
    wake: Instant,
    next_frame: Option<Instant>,
    started: Instant,
    /// When talking began, and when its signalling was last pinged.
    talk_start: Option<Instant>,
    last_keepalive: Option<Instant>,
    /// The agent's signalling connection and the endpoint's end of it.
    client: Connection,
    server: ServerConnection,
    /// The request of the phase, awaiting its answer.
    awaiting: Option<String>,
    milestones: Milestones,
    /// The run's start: results count from it.
    run_start: Instant,
    result: Option<CallResult>,
    /// Whether its end was noted for telling ([`CallEvent::Ended`]).
    reported: bool,
}

/// One site's paths: its datagrams' and its streams'.
struct SitePaths {
    media: Netem<Vec<u8>>,
    /// The path's stream form, for the signalling connections.
    streams: Netem<Vec<u8>>,
}

/// The anchor's media server (its core, as real time runs it on a socket) and when it runs
/// next.
struct Anchor {
    core: MediaCore,
    fingerprint: String,
    wake: Instant,
}

impl Anchor {
    fn new(plan: &Plan, start: Instant, unix_start: Duration) -> Result<Self, String> {
        let crypto = Entropy::Seeded(plan.seed).for_leg(u64::MAX, 3).provider()?;
        let certificate = loadgen::entropy::certificate("anchor", &crypto)?;
        let fingerprint = loadgen::media::fingerprint(&crypto, &certificate.certificate[0])?;
        let core = MediaCore::new(
            ANCHOR,
            crypto,
            certificate,
            start,
            plan.codec,
            Arc::new(MediaCounters::default()),
            None,
            (start, unix_start),
        );
        Ok(Self {
            core,
            fingerprint,
            wake: start,
        })
    }
}

/// What every call is made from.
struct Vendor {
    server_tls: Arc<rustls::ServerConfig>,
    root: CertificateDer<'static>,
    stats: Arc<SignallingStats>,
    realm: String,
}

/// The simulated network and its servers: the legs, the paths, the TURN core.
struct World {
    now: Instant,
    start: Instant,
    unix_start: Duration,
    plan: Plan,
    vendor: Vendor,
    sites: Vec<SitePaths>,
    turn: Server,
    /// The calls started so far, in the plan's order.
    calls: Vec<Call>,
    /// The calls not over (indices into `calls`): all the loop looks at.
    live: Vec<usize>,
    /// Calls that ended since the loop last told.
    finished: Vec<usize>,
    /// Agent address → call.
    agents: HashMap<SocketAddr, usize>,
    /// The anchor's media server: every call's far end, as in real time.
    anchor: Anchor,
    /// What stopped the run.
    unsupported: Option<Unsupported>,
}

/// Runs `run` on a simulated clock starting at `start` (any instant: nothing reads the real
/// clock), the wall clock reading `unix_start` then.
///
/// # Errors
/// A leg or the endpoint could not be created, or the run needs what virtual time does not
/// model.
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
/// A leg or the endpoint could not be created, or the run needs what virtual time does not
/// model ([`Unsupported`], as its text).
pub fn run_plan(
    plan: &Plan,
    start: Instant,
    unix_start: Duration,
    events: &mut dyn FnMut(CallEvent<'_>),
) -> Result<MediaResult, String> {
    // One endpoint, one certificate, as a real endpoint has.
    let endpoint = Entropy::Seeded(plan.seed).for_leg(u64::MAX, 2).provider()?;
    let (server_tls, root) = loadgen::entropy::tls_server(SIGNALLING_HOST, &endpoint)?;
    let calls = u32::try_from(plan.calls.len()).unwrap_or(u32::MAX);
    let mut config = Config {
        // Every peer is in the simulated network's documentation ranges.
        peer_policy: PeerPolicy {
            allow: Vec::new(),
            deny: Vec::new(),
        },
        relay_ipv4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        seed: plan.seed,
        nonce_key: [7; 32],
        // Every agent allocates as the one user.
        user_quota: calls.max(100),
        total_quota: calls.max(10_000),
        ..Config::default()
    };
    config.credentials = Credentials {
        users: HashMap::from([(USER.0.to_owned(), Secret(USER.1.to_owned()))]),
        static_auth_secret: None,
    };
    let anchor = Anchor::new(plan, start, unix_start)?;
    let sites = plan
        .sites
        .iter()
        .enumerate()
        .map(|(i, path)| {
            // As a real-time run seeds each site's relays.
            let seed = crate::run::site_seed(plan.seed, i);
            SitePaths {
                media: Netem::new(path.clone(), seed, start),
                streams: Netem::new(
                    crate::relay::tcp::stream_path(path),
                    seed ^ 0x5157_5157,
                    start,
                ),
            }
        })
        .collect();
    let mut world = World {
        now: start,
        start,
        unix_start,
        plan: plan.clone(),
        vendor: Vendor {
            server_tls,
            root,
            stats: Arc::new(SignallingStats::default()),
            realm: config.realm.clone(),
        },
        sites,
        turn: Server::new(config, start, unix_start.as_secs()),
        calls: Vec::new(),
        live: Vec::new(),
        finished: Vec::new(),
        agents: HashMap::new(),
        anchor,
        unsupported: None,
    };
    world.run(events)?;
    if let Some(u) = world.unsupported {
        return Err(u.0);
    }
    let simulated = world.now.saturating_duration_since(start);
    let calls = world
        .calls
        .iter_mut()
        .map(|c| {
            c.result.take().unwrap_or_else(|| CallResult {
                // Unreachable: the loop runs until every call is done.
                started: Duration::ZERO,
                milestones: c.milestones,
                last_state: SessionState::Failed,
                connected: false,
                failure: Some((FailureClass::MediaTimeout, "never ended".into())),
                media: None,
                relay_transport: None,
            })
        })
        .collect();
    Ok(MediaResult { calls, simulated })
}

/// The agent's signalling connection: a TLS client trusting only the endpoint's certificate,
/// one configuration per connection as in real time (separate browsers resume no sessions).
fn client_connection(root: &CertificateDer<'static>) -> Result<Connection, SignallingError> {
    let tls = tls_client_config(std::slice::from_ref(root)).map_err(SignallingError::Connect)?;
    Connection::new(SIGNALLING_URL, SIGNALLING_HOST, tls)
}

impl World {
    /// The event loop: start the calls that are due, advance to the earliest deadline, run
    /// what is due, route what it sent, until every call is over.
    fn run(&mut self, events: &mut dyn FnMut(CallEvent<'_>)) -> Result<(), String> {
        loop {
            let before = self.calls.len();
            self.start_due_calls()?;
            for i in before..self.calls.len() {
                events(CallEvent::Started(i));
            }
            if !self.finished.is_empty() {
                for &i in &self.finished {
                    if let Some(r) = &self.calls[i].result {
                        events(CallEvent::Ended(i, r));
                    }
                }
                self.finished.clear();
                let calls = &self.calls;
                self.live.retain(|&i| calls[i].phase != Phase::Done);
            }
            if self.calls.len() == self.plan.calls.len() && self.live.is_empty() {
                return Ok(());
            }
            if self.unsupported.is_some() {
                return Ok(());
            }
            let next = self.next_deadline();
            let second = |t: Instant| t.saturating_duration_since(self.start).as_secs();
            if second(next) > second(self.now) {
                events(CallEvent::Clock(next.saturating_duration_since(self.start)));
            }
            self.now = self.now.max(next);
            let now = self.now;
            for site in &mut self.sites {
                site.media.handle_timeout(now);
                site.streams.handle_timeout(now);
            }
            self.turn.handle_timeout(now);
            if self.anchor.wake <= now {
                self.anchor.wake = self.anchor.core.handle_timeout(now).unwrap_or(now + IDLE);
                self.flush_anchor();
            }
            self.settle();
            for k in 0..self.live.len() {
                let i = self.live[k];
                if self.calls[i].wake <= now {
                    self.step_call(i);
                }
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

    /// Makes the next planned call: its legs, its signalling connection, its first sends.
    fn start_call(&mut self) -> Result<(), String> {
        let now = self.now;
        let index = self.calls.len();
        let i = u32::try_from(index).map_err(|e| e.to_string())?;
        let site = self.plan.calls[index];
        let agent_local =
            SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 40_000));
        let leg = |e: LegError| format!("{e:?}");
        let seeded = Entropy::Seeded(self.plan.seed);
        let agent = Leg::new(
            PeerConfig {
                turn: vec![TurnCredentials {
                    server: TURN,
                    username: USER.0.to_owned(),
                    password: USER.1.to_owned(),
                    realm: self.vendor.realm.clone(),
                    transport: TurnTransport::Udp,
                }],
                answering: false,
                epoch: self.start,
                entropy: seeded.for_leg(u64::from(i), 0),
            },
            0x1000_0000 | i,
            now,
            self.unix_now(),
            &[agent_local],
        )
        .map_err(leg)?;
        let endpoint_random = seeded.for_leg(u64::from(i), 1).provider()?;
        let client = client_connection(&self.vendor.root).map_err(|e| e.to_string())?;
        let server = ServerConnection::new(
            self.vendor.server_tls.clone(),
            SignallingLimits::default(),
            self.vendor.stats.clone(),
            now,
        )
        .map_err(|e| e.to_string())?;
        // A synthetic microphone and the offer are there at once.
        let milestones = Milestones {
            local_media_us: Some(0),
            local_description_us: Some(0),
            ..Milestones::default()
        };
        self.calls.push(Call {
            index,
            site,
            agent,
            agent_local,
            call_id: format!("call-{index}"),
            anchor_open: false,
            ended: None,
            endpoint_random,
            phase: Phase::Gathering,
            agent_wake: now,
            wake: now,
            next_frame: None,
            started: now,
            talk_start: None,
            last_keepalive: None,
            client,
            server,
            awaiting: None,
            milestones,
            run_start: self.start,
            result: None,
            reported: false,
        });
        self.agents.insert(agent_local, index);
        self.live.push(index);
        self.flush_call(index);
        Ok(())
    }

    /// Calls started and not over (told or not).
    fn active(&self) -> usize {
        self.live
            .iter()
            .filter(|&&i| self.calls[i].phase != Phase::Done)
            .count()
    }

    /// The wall clock now: the simulated clock's, counted from the run's wall-clock start.
    fn unix_now(&self) -> Duration {
        self.unix_start + self.now.saturating_duration_since(self.start)
    }

    fn next_deadline(&mut self) -> Instant {
        let mut next = self.now + MAX_SLEEP;
        let engines = self
            .sites
            .iter_mut()
            .flat_map(|s| [s.media.poll_timeout(), s.streams.poll_timeout()])
            .chain([self.turn.poll_timeout()]);
        for t in engines.flatten() {
            next = next.min(t);
        }
        if let Some(t) = self.next_start() {
            next = next.min(t.max(self.now));
        }
        next = next.min(self.anchor.wake);
        for &i in &self.live {
            let c = &self.calls[i];
            if c.phase != Phase::Done {
                next = next.min(c.wake);
            }
        }
        next
    }

    /// Runs call `i`'s legs and signalling if due, moves it on, and sends what it has.
    fn step_call(&mut self, i: usize) {
        let now = self.now;
        let (talk, timeouts, dead_air) = (self.plan.talk, self.plan.timeouts, self.plan.dead_air);
        let c = &mut self.calls[i];
        if c.phase == Phase::Done {
            return;
        }
        if c.agent_wake <= now {
            c.agent.handle_timeout(now);
        }
        c.client.handle_timeout(now);
        c.server.handle_timeout(now);
        self.serve(i);
        let c = &mut self.calls[i];
        c.signal(now, &timeouts);
        c.step(now, talk, &timeouts, dead_air);
        if let Some(u) = c.needs_restart(now) {
            self.unsupported.get_or_insert(u);
        }
        self.flush_call(i);
        self.note_if_done(i);
    }

    /// Notes call `i` for telling once it is over, with both ways' figures: the anchor's of
    /// the agent's stream, the agent's of the anchor's (as the real-time session takes them
    /// from `bye`'s answer).
    fn note_if_done(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.calls[i];
        if c.phase != Phase::Done || c.reported {
            return;
        }
        c.reported = true;
        self.finished.push(i);
        if c.anchor_open {
            c.anchor_open = false;
            c.ended = self.anchor.core.close(now, &c.call_id);
        }
        let ended = c.ended.take();
        if let (Some(r), Some(ended)) = (&mut c.result, ended)
            && r.connected
        {
            let mut up = ended.received;
            // The anchor measured what arrived; what was sent is the agent's to say.
            up.packets_sent = c.agent.frames_sent();
            up.wire_bytes_sent = c.agent.wire_bytes_sent;
            up.send_pacing_error = c.agent.pacing.clone();
            let meter = std::mem::replace(&mut c.agent.meter, MediaMeter::new(self.start));
            let mut down = meter.finish(ended.frames_sent, ended.wire_bytes_sent, self.plan.codec);
            down.send_pacing_error = ended.pacing;
            r.media = Some((Box::new(up), Box::new(down)));
        }
        self.flush_anchor();
    }

    /// The endpoint's side of call `i`, as the anchor answers: `invite` opens a leg of the
    /// media server and answers with its SDP and host candidate; `bye` closes it (its figures
    /// kept for the record); the rest get `{}`.
    fn serve(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.calls[i];
        while let Some(event) = c.server.poll_event() {
            let ServerEvent::Request {
                key,
                method,
                params,
            } = event
            else {
                continue;
            };
            let answer = match method.as_str() {
                "invite" if !c.anchor_open => {
                    let anchor = &mut self.anchor;
                    (|| {
                        let invite: Invite = serde_json::from_value(params)
                            .map_err(|_| RpcError::new(-32602, "invalid invite parameters"))?;
                        let offer = Description::parse(&invite.sdp)
                            .map_err(|e| RpcError::new(400, format!("cannot answer: {e}")))?;
                        let (ice_ufrag, ice_pwd) =
                            loadgen::entropy::ice_credentials(c.endpoint_random.random())
                                .map_err(|e| RpcError::new(500, e))?;
                        let ssrc = 0x4000_0000 | (i as u32 & 0x3fff_ffff);
                        let (sdp, candidates) = crate::anchor::answer_offer(
                            &offer,
                            (&anchor.fingerprint, ANCHOR),
                            (&ice_ufrag, &ice_pwd),
                            ssrc,
                            i as u64 + 1,
                        );
                        anchor.core.open(
                            now,
                            Box::new(LegSpec {
                                call_id: c.call_id.clone(),
                                call: invite.call_context_token,
                                offer,
                                ice_ufrag,
                                ice_pwd,
                                ssrc,
                                silent_after: None,
                                consent_timeout: CONSENT_TIMEOUT,
                            }),
                        );
                        anchor.wake = now;
                        c.anchor_open = true;
                        let answer = InviteAnswer {
                            call_id: c.call_id.clone(),
                            sdp,
                            candidates,
                        };
                        serde_json::to_value(answer).map_err(|e| RpcError::new(500, e.to_string()))
                    })()
                }
                "bye" => {
                    if c.anchor_open {
                        c.anchor_open = false;
                        c.ended = self.anchor.core.close(now, &c.call_id);
                    }
                    Ok(json!({}))
                }
                _ => Ok(json!({})),
            };
            c.server.respond(key, answer);
        }
        self.flush_anchor();
    }

    /// Sends what the anchor queued through the TURN core, from the anchor's address.
    fn flush_anchor(&mut self) {
        let now = self.now;
        while let Some((to, bytes)) = self.anchor.core.poll_transmit() {
            self.turn.handle_peer_packet(now, to, ANCHOR, &bytes);
        }
        // Consent and the like: the anchor tells; virtual time has no one to tell yet.
        while self.anchor.core.poll_event().is_some() {}
    }

    /// Sends what call `i` has ready and routes until nothing moves.
    fn flush_call(&mut self, i: usize) {
        self.emit(i);
        self.settle();
    }

    /// Puts what call `i`'s legs and signalling have ready on its site's paths and into the
    /// TURN core, and sets when its legs run next.
    fn emit(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.calls[i];
        let site = &mut self.sites[c.site];
        let flow = FlowId(i as u64);
        while let Some(t) = c.agent.poll_transmit() {
            // IPv4 + UDP headers on the wire.
            let len = t.data.len() as u32 + 28;
            site.media
                .handle_input(now, flow, Direction::Up, len, t.data.to_vec());
        }
        while let Some(data) = c.client.poll_transmit() {
            let len = data.len() as u32 + TCP_HEADERS;
            site.streams
                .handle_input(now, flow, Direction::Up, len, data);
        }
        while let Some(data) = c.server.poll_transmit() {
            let len = data.len() as u32 + TCP_HEADERS;
            site.streams
                .handle_input(now, flow, Direction::Down, len, data);
        }
        c.agent_wake = c
            .agent
            .poll_timeout()
            .unwrap_or(now + MAX_SLEEP)
            .min(now + MAX_SLEEP);
        c.wake = c.next_wake();
    }

    /// Routes until nothing moves at this instant: what leaves a path without delay must
    /// reach its end now, not at its next wake-up.
    fn settle(&mut self) {
        loop {
            self.route_paths();
            let turned = self.route_turn();
            let streamed = self.route_streams();
            if !turned && !streamed {
                break;
            }
        }
    }

    /// Delivers what left the signalling streams to each end, lets both act on it, and sends
    /// their answers; `true` when anything arrived.
    fn route_streams(&mut self) -> bool {
        let now = self.now;
        let timeouts = self.plan.timeouts;
        let mut touched = Vec::new();
        for site in &mut self.sites {
            while let Some(out) = site.streams.poll_output() {
                let Output::Deliver {
                    flow,
                    direction,
                    packet,
                    ..
                } = out
                else {
                    continue;
                };
                let i = flow.0 as usize;
                let Some(c) = self.calls.get_mut(i) else {
                    continue;
                };
                match direction {
                    Direction::Up => c.server.handle_input(&packet),
                    Direction::Down => c.client.handle_input(&packet),
                }
                touched.push(i);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for &i in &touched {
            self.serve(i);
            self.calls[i].signal(now, &timeouts);
            self.emit(i);
            self.note_if_done(i);
        }
        !touched.is_empty()
    }

    /// Delivers what left the sites' paths: up to the TURN core, down to the agents.
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
                match direction {
                    Direction::Up => {
                        let five_tuple = FiveTuple {
                            transport: Transport::Udp,
                            client: c.agent_local,
                            server: TURN,
                        };
                        self.turn.handle_packet(at, five_tuple, &packet);
                    }
                    Direction::Down => {
                        c.agent
                            .handle_datagram(at, 0, TURN, BytesMut::from(&packet[..]));
                        // It acts on the datagram at once, as a woken real-time leg would.
                        c.agent_wake = c.agent_wake.min(at);
                        c.wake = c.wake.min(at);
                    }
                }
            }
        }
    }

    /// Carries out what the TURN core asks: relayed sockets (always opened), and its
    /// datagrams, down the agent's site's path or straight to a far end; `true` when it put
    /// any on a path.
    fn route_turn(&mut self) -> bool {
        let mut onto_path = false;
        let now = self.now;
        while let Some(event) = self.turn.poll_event() {
            if let Event::OpenRelay { request, .. } = event {
                self.turn.handle_relay_opened(now, request, true);
            }
        }
        while let Some(t) = self.turn.poll_transmit() {
            if t.source == TURN {
                if let Some(&i) = self.agents.get(&t.destination) {
                    let len = t.contents.len() as u32 + 28;
                    let site = &mut self.sites[self.calls[i].site];
                    site.media.handle_input(
                        now,
                        FlowId(i as u64),
                        Direction::Down,
                        len,
                        t.contents,
                    );
                    onto_path = true;
                }
            } else if t.destination == ANCHOR {
                self.anchor.core.handle_datagram(now, t.source, &t.contents);
                // What it answers goes back through TURN at once; what it starts (a keyed
                // leg's first frame) runs at its next timeout, now.
                self.anchor.wake = now;
                self.flush_anchor();
            }
        }
        onto_path
    }
}

impl Call {
    /// When the call must run next: its legs, its frame, its signalling's timers, its phase's
    /// end.
    fn next_wake(&self) -> Instant {
        let phase_end = match self.phase {
            Phase::Talking { until } | Phase::Draining { until } | Phase::Closing { until } => {
                Some(until)
            }
            _ => None,
        };
        [
            self.client.poll_timeout(),
            self.server.poll_timeout(),
            self.next_frame,
            phase_end,
        ]
        .into_iter()
        .flatten()
        .fold(self.agent_wake, Instant::min)
    }

    /// Microseconds since the call started.
    fn at(&self, now: Instant) -> Option<u64> {
        let d = now.saturating_duration_since(self.started);
        Some(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    /// Moves the call on by what its legs did and the clock says.
    fn step(&mut self, now: Instant, talk: Duration, timeouts: &Timeouts, dead_air: Duration) {
        let since_start = now.saturating_duration_since(self.started);
        // Once the call hangs up, its legs are done with: only signalling is left.
        let hanging_up = matches!(self.phase, Phase::HangingUp | Phase::Closing { .. });
        let leg_error = self.agent.error.clone();
        if let Some(e) = leg_error.filter(|_| !hanging_up && self.phase != Phase::Done) {
            let (class, detail) = loadgen::session::leg_failure(&e);
            self.finish_failed(now, class, detail);
        }
        let t = self.agent.times;
        if let Some(at) = t.ice_connected {
            self.milestones
                .ice_connected_us
                .get_or_insert(self.at(at).unwrap_or_default());
        }
        if let Some(at) = t.first_rtp {
            self.milestones
                .first_rtp_us
                .get_or_insert(self.at(at).unwrap_or_default());
        }
        match self.phase {
            Phase::Gathering
                if self.milestones.signalling_connected_us.is_none()
                    && since_start > timeouts.websocket_connect =>
            {
                let detail = "the signalling connection did not open in time".to_owned();
                self.finish_failed(now, FailureClass::SignallingConnectionFailure, detail);
            }
            Phase::Gathering if self.agent.gathering_done() => {
                if let Some(e) = self.agent.allocation_error() {
                    let (class, detail) = loadgen::session::leg_failure(&e);
                    self.finish_failed(now, class, detail);
                } else {
                    if self.milestones.ice_collected_us.is_none() {
                        self.milestones.ice_collected_us = self.at(now);
                    }
                    self.invite(now, timeouts);
                }
            }
            Phase::Gathering if since_start > timeouts.ice_collection => {
                let detail = format!("no relay candidate within {:?}", timeouts.ice_collection);
                self.finish_failed(now, FailureClass::IceCollectionTimeout, detail);
            }
            Phase::Connecting if t.connected.is_some() => {
                self.milestones.dtls_connected_us = t.connected.and_then(|at| self.at(at));
                self.phase = Phase::Talking { until: now + talk };
                self.talk_start = Some(now);
                self.last_keepalive = Some(now);
                self.next_frame = Some(now);
            }
            Phase::Connecting
                if self.milestones.accepted_us.is_some_and(|a| {
                    since_start.as_micros() > u128::from(a) + timeouts.connect.as_micros()
                }) =>
            {
                let (class, detail) = if t.ice_connected.is_some() {
                    let progress = self.agent.dtls_progress();
                    let detail = format!("DTLS did not complete in time: {progress}");
                    (FailureClass::DtlsHandshakeFailure, detail)
                } else {
                    let detail = "no candidate pair connected".to_owned();
                    (FailureClass::IceConnectionFailed, detail)
                };
                self.finish_failed(now, class, detail);
            }
            Phase::Talking { until } if now >= until => {
                self.next_frame = None;
                self.phase = Phase::Draining { until: now + DRAIN };
            }
            Phase::Talking { .. } => self.talking(now, timeouts, dead_air),
            Phase::Draining { until } if now >= until => self.hang_up(now, timeouts),
            Phase::Closing { until } if now >= until => {
                // The endpoint's Close did not come within the wait, as
                // `SignallingClient::close` gives up: the call itself is over.
                self.finish_completed(now);
            }
            _ => {}
        }
        if let Some(due) = self.next_frame.filter(|&d| d <= now) {
            // The simulated generator is never late: pacing error 0 by construction.
            self.agent.send_frame_due(now, due);
            self.next_frame = Some(due + FRAME);
        }
    }

    /// While talking: the signalling keep-alive, and dead air on a path that is up.
    fn talking(&mut self, now: Instant, timeouts: &Timeouts, dead_air: Duration) {
        if self
            .last_keepalive
            .is_some_and(|t| now.saturating_duration_since(t) >= timeouts.keepalive)
        {
            self.last_keepalive = Some(now);
            // Twice the period, as the real-time session waits.
            if let Err(e) = self.client.ping(now, timeouts.keepalive * 2) {
                return self.finish_failed(now, e.class(), e.to_string());
            }
        }
        let talk_start = self.talk_start.unwrap_or(now);
        let last = self
            .agent
            .meter
            .last_arrival()
            .unwrap_or(talk_start)
            .max(talk_start);
        let silent = now.saturating_duration_since(last);
        let path_up = self
            .agent
            .last_stun()
            .is_some_and(|t| now.saturating_duration_since(t) < loadgen::session::PATH_SILENT);
        if silent > dead_air && path_up {
            self.finish_failed(
                now,
                FailureClass::MediaTimeout,
                format!("no RTP for {silent:?}"),
            );
        }
    }

    /// A real-time agent would restart ICE here (disconnected for the CCP's retry interval):
    /// virtual time does not model restarts yet, so the run cannot go on honestly.
    fn needs_restart(&self, now: Instant) -> Option<Unsupported> {
        let since = self.agent.times.ice_disconnected?;
        (self.phase != Phase::Done
            && now.saturating_duration_since(since) >= loadgen::session::RESTART_AFTER)
            .then(|| {
                Unsupported(format!(
                    "call {} was ICE-disconnected for {:?}: a real agent restarts ICE here, \
                     and virtual time does not model ICE restarts yet; run this scenario in \
                     real time",
                    self.index,
                    loadgen::session::RESTART_AFTER
                ))
            })
    }

    /// Acts on what signalling brought, at both ends.
    fn signal(&mut self, now: Instant, timeouts: &Timeouts) {
        while let Some(event) = self.client.poll_event() {
            if self.phase == Phase::Done {
                return;
            }
            match event {
                Signalled::Connected => {
                    self.milestones.signalling_connected_us = self.at(now);
                    if self.phase == Phase::Gathering && self.agent.gathering_done() {
                        self.invite(now, timeouts);
                    }
                }
                Signalled::Response { id, result } if self.awaiting.as_ref() == Some(&id) => {
                    self.awaiting = None;
                    self.answered(now, timeouts, result);
                }
                Signalled::Closed if matches!(self.phase, Phase::Closing { .. }) => {
                    self.finish_completed(now);
                }
                Signalled::Failed(e) => match self.phase {
                    // Hanging up: the call is over whatever becomes of its connection.
                    Phase::HangingUp | Phase::Closing { .. } => self.finish_completed(now),
                    _ => self.finish_failed(now, e.class(), e.to_string()),
                },
                _ => {}
            }
        }
    }
    /// Sends `invite` once the candidates are in and the connection is open.
    fn invite(&mut self, now: Instant, timeouts: &Timeouts) {
        if self.phase != Phase::Gathering || self.milestones.signalling_connected_us.is_none() {
            return;
        }
        let invite = Invite {
            sdp: self.agent.offer(),
            candidates: self
                .agent
                .local_candidates()
                .iter()
                .cloned()
                .map(to_wire)
                .collect(),
            call_context_token: format!("{}", self.agent_local),
        };
        let params = serde_json::to_value(invite).unwrap_or_default();
        self.milestones.invite_sent_us = self.at(now);
        self.request(
            now,
            "invite",
            params,
            timeouts.invite_answer,
            Phase::Inviting,
        );
    }

    /// Sends `bye` after the talk time.
    fn hang_up(&mut self, now: Instant, timeouts: &Timeouts) {
        let params = json!({ "callContextToken": format!("{}", self.agent_local) });
        self.milestones.hangup_us = self.at(now);
        self.request(now, "bye", params, timeouts.ack, Phase::HangingUp);
    }

    fn request(
        &mut self,
        now: Instant,
        method: &str,
        params: Value,
        timeout: Duration,
        then: Phase,
    ) {
        match self.client.request(now, method, params, timeout) {
            Ok(id) => {
                self.awaiting = Some(id);
                self.phase = then;
            }
            Err(e) => self.finish_failed(now, e.class(), e.to_string()),
        }
    }

    /// The answer to the phase's request.
    fn answered(
        &mut self,
        now: Instant,
        timeouts: &Timeouts,
        result: Result<Value, SignallingError>,
    ) {
        match (self.phase, result) {
            (Phase::Inviting, Ok(v)) => {
                self.milestones.answer_received_us = self.at(now);
                let answer: InviteAnswer = match serde_json::from_value(v) {
                    Ok(a) => a,
                    Err(e) => {
                        let detail = format!("invite result: {e}");
                        return self.finish_failed(
                            now,
                            FailureClass::SignallingHandshakeFailure,
                            detail,
                        );
                    }
                };
                if let Err(e) = self.agent.accept(now, &answer.sdp) {
                    let class = FailureClass::SetRemoteDescriptionFailure;
                    return self.finish_failed(now, class, format!("{e:?}"));
                }
                if answer.candidates.is_empty() {
                    let detail = "the answer carried no ICE candidate".to_owned();
                    return self.finish_failed(now, FailureClass::NoRemoteIceCandidate, detail);
                }
                for c in answer.candidates {
                    let _ = self.agent.add_remote_candidate(now, &from_wire(c));
                }
                self.agent_wake = now;
                self.request(now, "accept", json!({}), timeouts.ack, Phase::Accepting);
            }
            (Phase::Accepting, Ok(_)) => {
                self.milestones.accepted_us = self.at(now);
                self.phase = Phase::Connecting;
            }
            (Phase::HangingUp, _) => {
                self.client.close();
                self.phase = Phase::Closing {
                    until: now + CLOSE_WAIT,
                };
            }
            (_, Err(e)) => self.finish_failed(now, e.class(), e.to_string()),
            (_, Ok(_)) => {}
        }
    }

    fn finish_failed(&mut self, now: Instant, class: FailureClass, detail: String) {
        let state = self.session_state();
        self.client.close();
        self.finish(now, state, Some((class, detail)));
    }

    fn finish_completed(&mut self, now: Instant) {
        self.finish(now, SessionState::Disconnected, None);
    }

    /// Where the session is, as a record names it.
    fn session_state(&self) -> SessionState {
        match self.phase {
            Phase::Gathering => SessionState::ConnectSignalingAndIceCollection,
            Phase::Inviting => SessionState::InviteAnswer,
            Phase::Accepting => SessionState::Accept,
            Phase::Connecting => SessionState::ConnectContact,
            Phase::Talking { .. } | Phase::Draining { .. } => SessionState::Talking,
            Phase::HangingUp | Phase::Closing { .. } => SessionState::CleanUp,
            Phase::Done => SessionState::Disconnected,
        }
    }

    fn finish(
        &mut self,
        now: Instant,
        last_state: SessionState,
        failure: Option<(FailureClass, String)>,
    ) {
        self.agent.close(now);
        self.milestones.ended_us = self.at(now);
        let connected = self.agent.times.connected.is_some();
        // Both ways' figures come when the anchor's leg is closed (`World::note_if_done`).
        let media = None;
        let relay_transport = self.agent.relay_transport().filter(|_| connected);
        self.result = Some(CallResult {
            relay_transport,
            started: self.started.saturating_duration_since(self.run_start),
            milestones: self.milestones,
            last_state,
            connected,
            failure,
            media,
        });
        self.phase = Phase::Done;
        self.next_frame = None;
    }
}
