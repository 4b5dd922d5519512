//! Virtual time, first part: a call's signalling and media path on one simulated clock, in one
//! process, with no sockets. Each call is an agent's relay-only [`Leg`] and a far end's host
//! [`Leg`] (standing for the anchor's media), and a signalling [`Connection`] to the endpoint's
//! [`ServerConnection`]: TLS, the WebSocket and JSON-RPC (`invite` with the offer and the
//! agent's candidates, `accept`, `bye`, the close handshake) cross the path's stream form (as
//! the real-time TCP relay carries them: delay, jitter, rate and stalls, no loss), and the
//! agent's datagrams cross the scenario's path ([`Netem`]) to the TURN core
//! ([`turn_server::Server`]), which relays them to the far end; the far end's come back the same
//! way. Every one of them is the same sans-I/O core the real-time run drives on sockets — real
//! TLS, real ICE, real DTLS handshakes, real SRTP — so a minute of calls takes what the CPU
//! needs for their crypto and bookkeeping, not a minute.
//!
//! Not yet here (DESIGN §3's promise, issue 16): the agent's session state machine (its
//! call kinds, mid-call steps, ICE restarts and records) and the anchor's own media server.
//! What it has is replayable: the paths and every leg and the endpoint's certificate draw from
//! the run's seed ([`Entropy::Seeded`]), so one seed gives the same figures.

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
use reports::FailureClass;
use reports::emodel::Codec;
use reports::record::MediaStats;
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use turn_server::auth::{Credentials, Secret};
use turn_server::policy::PeerPolicy;
use turn_server::server::{Config, Event, FiveTuple, Server, Transport};

use crate::netem::{Direction, FlowId, Netem, Output, Path};
use crate::signalling::{ServerConnection, ServerEvent, SignallingLimits, SignallingStats};

/// The TURN server's listener in the simulated network (TEST-NET-1, RFC 5737).
const TURN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 3478));
/// Media frame interval.
const FRAME: Duration = Duration::from_millis(20);
/// The longest a leg goes undriven, as in the real-time driver (`loadgen::driver`): `rtc`'s
/// TURN client does not always report its next deadline.
const MAX_SLEEP: Duration = Duration::from_millis(10);
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

/// What to run: `calls` calls at once over `path`, each talking for `talk`.
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

/// A call's set-up milestones, each from its start (the CCP's timing fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Setup {
    /// The signalling WebSocket open (TCP, TLS, the upgrade).
    pub signalling_connected: Duration,
    /// ICE collection done (the TURN allocation).
    pub ice_collected: Duration,
    /// `invite` answered.
    pub answer_received: Duration,
    /// `accept` acknowledged.
    pub accepted: Duration,
    /// DTLS connected on the agent's leg (SRTP keyed).
    pub dtls_connected: Duration,
}

/// How one call ended.
#[derive(Debug, Clone)]
pub enum CallOutcome {
    /// It connected and talked: the media figures each way, agent → far end first, and its
    /// set-up milestones.
    Completed {
        /// Agent → far end.
        up: Box<MediaStats>,
        /// Far end → agent.
        down: Box<MediaStats>,
        /// When each set-up step was done.
        setup: Setup,
    },
    /// It failed: the class (as a record names it) and what happened.
    Failed(FailureClass, String),
}

/// What a virtual-time media run measured.
#[derive(Debug, Clone)]
pub struct MediaResult {
    /// Each call's outcome, in order.
    pub calls: Vec<CallOutcome>,
    /// Simulated time from the first call's start to the last one's end.
    pub simulated: Duration,
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
    agent: Leg,
    far: Leg,
    agent_local: SocketAddr,
    far_local: SocketAddr,
    phase: Phase,
    /// When each leg must run next.
    agent_wake: Instant,
    far_wake: Instant,
    next_frame: Option<Instant>,
    started: Instant,
    /// The agent's signalling connection and the endpoint's end of it.
    client: Connection,
    server: ServerConnection,
    /// The request of the phase, awaiting its answer.
    awaiting: Option<String>,
    setup: Setup,
    signalling_connected: bool,
    outcome: Option<CallOutcome>,
}

/// The simulated network and its servers: the legs, the path, the TURN core.
struct World {
    now: Instant,
    netem: Netem<Vec<u8>>,
    /// The path's stream form, for the signalling connections.
    streams: Netem<Vec<u8>>,
    turn: Server,
    timeouts: Timeouts,
    calls: Vec<Call>,
    /// Agent address → call.
    agents: HashMap<SocketAddr, usize>,
    /// Far-end address → call.
    far_ends: HashMap<SocketAddr, usize>,
}

/// Runs `run` on a simulated clock starting at `start` (any instant: nothing reads the real
/// clock), the wall clock reading `unix_start` then.
///
/// # Errors
/// A leg or the endpoint could not be created (its configuration was refused).
pub fn run_media(
    run: &MediaRun,
    start: Instant,
    unix_start: Duration,
) -> Result<MediaResult, String> {
    let leg = |e: LegError| format!("{e:?}");
    // One endpoint, one certificate, as a real endpoint has.
    let endpoint = Entropy::Seeded(run.seed).for_leg(u64::MAX, 2).provider()?;
    let (server_tls, root) = loadgen::entropy::tls_server(SIGNALLING_HOST, &endpoint)?;
    let stats = Arc::new(SignallingStats::default());
    let mut config = Config {
        // Every peer is in the simulated network's documentation ranges.
        peer_policy: PeerPolicy {
            allow: Vec::new(),
            deny: Vec::new(),
        },
        relay_ipv4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        seed: run.seed,
        nonce_key: [7; 32],
        // Every agent allocates as the one user.
        user_quota: run.calls.max(100),
        total_quota: run.calls.max(10_000),
        ..Config::default()
    };
    config.credentials = Credentials {
        users: HashMap::from([(USER.0.to_owned(), Secret(USER.1.to_owned()))]),
        static_auth_secret: None,
    };
    let realm = config.realm.clone();
    let mut world = World {
        now: start,
        netem: Netem::new(run.path.clone(), run.seed, start),
        streams: Netem::new(
            crate::relay::tcp::stream_path(&run.path),
            run.seed ^ 0x5157_5157,
            start,
        ),
        turn: Server::new(config, start, unix_start.as_secs()),
        timeouts: Timeouts::default(),
        calls: Vec::new(),
        agents: HashMap::new(),
        far_ends: HashMap::new(),
    };
    for i in 0..run.calls {
        let agent_local = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 40_000));
        let far_local = SocketAddr::from(([198, 51, 100, 1], 20_000 + (i as u16 % 40_000)));
        let epoch = start;
        let agent = Leg::new(
            PeerConfig {
                turn: vec![TurnCredentials {
                    server: TURN,
                    username: USER.0.to_owned(),
                    password: USER.1.to_owned(),
                    realm: realm.clone(),
                    transport: TurnTransport::Udp,
                }],
                answering: false,
                epoch,
                entropy: Entropy::Seeded(run.seed).for_leg(u64::from(i), 0),
            },
            0x1000_0000 + i,
            start,
            unix_start,
            &[agent_local],
        )
        .map_err(leg)?;
        let far = Leg::new(
            PeerConfig {
                turn: Vec::new(),
                answering: true,
                epoch,
                entropy: Entropy::Seeded(run.seed).for_leg(u64::from(i), 1),
            },
            0x2000_0000 + i,
            start,
            unix_start,
            &[far_local],
        )
        .map_err(leg)?;
        let client = client_connection(&root).map_err(|e| e.to_string())?;
        let server = ServerConnection::new(
            server_tls.clone(),
            SignallingLimits::default(),
            stats.clone(),
            start,
        )
        .map_err(|e| e.to_string())?;
        let call = Call {
            agent,
            far,
            agent_local,
            far_local,
            phase: Phase::Gathering,
            agent_wake: start,
            far_wake: start,
            next_frame: None,
            started: start,
            client,
            server,
            awaiting: None,
            setup: Setup::default(),
            signalling_connected: false,
            outcome: None,
        };
        world.agents.insert(agent_local, world.calls.len());
        world.far_ends.insert(far_local, world.calls.len());
        world.calls.push(call);
    }
    for i in 0..world.calls.len() {
        world.flush_call(i);
    }
    world.run(run.talk);
    let simulated = world.now.saturating_duration_since(start);
    let calls = world
        .calls
        .iter_mut()
        .map(|c| {
            c.outcome
                .take()
                // Unreachable: the loop runs until every call is done.
                .unwrap_or(CallOutcome::Failed(
                    FailureClass::MediaTimeout,
                    "never ended".into(),
                ))
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
    /// The event loop: advance to the earliest deadline, run what is due, route what it sent,
    /// until every call is over.
    fn run(&mut self, talk: Duration) {
        while self.calls.iter().any(|c| c.phase != Phase::Done) {
            let next = self.next_deadline();
            self.now = self.now.max(next);
            let now = self.now;
            self.netem.handle_timeout(now);
            self.streams.handle_timeout(now);
            self.turn.handle_timeout(now);
            self.settle();
            for i in 0..self.calls.len() {
                self.step_call(i, talk);
            }
        }
    }

    fn next_deadline(&mut self) -> Instant {
        let mut next = self.now + MAX_SLEEP;
        let engines = [
            self.netem.poll_timeout(),
            self.streams.poll_timeout(),
            self.turn.poll_timeout(),
        ];
        for t in engines.into_iter().flatten() {
            next = next.min(t);
        }
        for c in &self.calls {
            if c.phase == Phase::Done {
                continue;
            }
            next = next.min(c.agent_wake).min(c.far_wake);
            let signalling = [
                c.client.poll_timeout(),
                c.server.poll_timeout(),
                c.next_frame,
            ];
            for t in signalling.into_iter().flatten() {
                next = next.min(t);
            }
            if let Phase::Talking { until } | Phase::Draining { until } | Phase::Closing { until } =
                c.phase
            {
                next = next.min(until);
            }
        }
        next
    }

    /// Runs call `i`'s legs and signalling if due, moves it on, and sends what it has.
    fn step_call(&mut self, i: usize, talk: Duration) {
        let now = self.now;
        let timeouts = self.timeouts;
        let c = &mut self.calls[i];
        if c.phase == Phase::Done {
            return;
        }
        if c.agent_wake <= now {
            c.agent.handle_timeout(now);
        }
        if c.far_wake <= now {
            c.far.handle_timeout(now);
        }
        c.client.handle_timeout(now);
        c.server.handle_timeout(now);
        c.signal(now, &timeouts);
        let since_start = now.saturating_duration_since(c.started);
        // Once the call hangs up, its legs are done with: only signalling is left.
        let hanging_up = matches!(c.phase, Phase::HangingUp | Phase::Closing { .. });
        let leg_error = c.agent.error.clone().or_else(|| c.far.error.clone());
        if let Some(e) = leg_error.filter(|_| !hanging_up && c.phase != Phase::Done) {
            let (class, detail) = loadgen::session::leg_failure(&e);
            c.finish_failed(now, class, detail);
        }
        match c.phase {
            Phase::Gathering
                if !c.signalling_connected && since_start > timeouts.websocket_connect =>
            {
                let detail = "the signalling connection did not open in time".to_owned();
                c.finish_failed(now, FailureClass::SignallingConnectionFailure, detail);
            }
            Phase::Gathering if c.agent.gathering_done() => {
                if let Some(e) = c.agent.allocation_error() {
                    let (class, detail) = loadgen::session::leg_failure(&e);
                    c.finish_failed(now, class, detail);
                } else {
                    if c.setup.ice_collected.is_zero() {
                        c.setup.ice_collected = since_start.max(Duration::from_nanos(1));
                    }
                    c.invite(now, &timeouts);
                }
            }
            Phase::Gathering if since_start > timeouts.ice_collection => {
                let detail = format!("no relay candidate within {:?}", timeouts.ice_collection);
                c.finish_failed(now, FailureClass::IceCollectionTimeout, detail);
            }
            Phase::Connecting if c.agent.times.connected.is_some() => {
                c.setup.dtls_connected = since_start;
                c.phase = Phase::Talking { until: now + talk };
                c.next_frame = Some(now);
            }
            Phase::Connecting if since_start > c.setup.accepted + timeouts.connect => {
                let (class, detail) = if c.agent.times.ice_connected.is_some() {
                    (FailureClass::DtlsHandshakeFailure, c.agent.dtls_progress())
                } else {
                    let detail = "no candidate pair connected".to_owned();
                    (FailureClass::IceConnectionFailed, detail)
                };
                c.finish_failed(now, class, detail);
            }
            Phase::Talking { until } if now >= until => {
                c.next_frame = None;
                c.phase = Phase::Draining { until: now + DRAIN };
            }
            Phase::Draining { until } if now >= until => c.hang_up(now, &timeouts),
            _ => {}
        }
        if let Phase::Closing { until } = c.phase
            && now >= until
        {
            // The endpoint's Close did not come within the wait, as `SignallingClient::close`
            // gives up: the call itself is over.
            c.finish_completed(now);
        }
        if let Some(due) = c.next_frame.filter(|&d| d <= now) {
            // The simulated generator is never late: pacing error 0 by construction.
            c.agent.send_frame_due(now, due);
            c.far.send_frame_due(now, due);
            c.next_frame = Some(due + FRAME);
        }
        self.flush_call(i);
    }

    /// Sends what call `i` has ready and routes until nothing moves.
    fn flush_call(&mut self, i: usize) {
        self.emit(i);
        self.settle();
    }

    /// Puts what call `i`'s legs and signalling have ready on the paths and into the TURN
    /// core, and sets when its legs run next.
    fn emit(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.calls[i];
        let flow = FlowId(i as u64);
        while let Some(t) = c.agent.poll_transmit() {
            // IPv4 + UDP headers on the wire.
            let len = t.data.len() as u32 + 28;
            self.netem
                .handle_input(now, flow, Direction::Up, len, t.data.to_vec());
        }
        while let Some(data) = c.client.poll_transmit() {
            let len = data.len() as u32 + TCP_HEADERS;
            self.streams
                .handle_input(now, flow, Direction::Up, len, data);
        }
        while let Some(data) = c.server.poll_transmit() {
            let len = data.len() as u32 + TCP_HEADERS;
            self.streams
                .handle_input(now, flow, Direction::Down, len, data);
        }
        let mut to_relay = Vec::new();
        while let Some(t) = c.far.poll_transmit() {
            to_relay.push((t.to, c.far_local, t.data));
        }
        c.agent_wake = c
            .agent
            .poll_timeout()
            .unwrap_or(now + MAX_SLEEP)
            .min(now + MAX_SLEEP);
        c.far_wake = c
            .far
            .poll_timeout()
            .unwrap_or(now + MAX_SLEEP)
            .min(now + MAX_SLEEP);
        for (relay, from, data) in to_relay {
            self.turn.handle_peer_packet(now, relay, from, &data);
        }
    }

    /// Routes until nothing moves at this instant: what leaves a path without delay must
    /// reach its end now, not at its next wake-up.
    fn settle(&mut self) {
        loop {
            self.route_path();
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
        let timeouts = self.timeouts;
        let mut touched = Vec::new();
        while let Some(out) = self.streams.poll_output() {
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
        touched.sort_unstable();
        touched.dedup();
        for &i in &touched {
            self.calls[i].signal(now, &timeouts);
            self.emit(i);
        }
        !touched.is_empty()
    }

    /// Delivers what left the path: up to the TURN core, down to the agents.
    fn route_path(&mut self) {
        while let Some(out) = self.netem.poll_output() {
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
                }
            }
        }
    }

    /// Carries out what the TURN core asks: relayed sockets (always opened), and its
    /// datagrams, down the path to an agent or straight to a far end; `true` when it put any
    /// on the path.
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
                    self.netem.handle_input(
                        now,
                        FlowId(i as u64),
                        Direction::Down,
                        len,
                        t.contents,
                    );
                    onto_path = true;
                }
            } else if let Some(&i) = self.far_ends.get(&t.destination) {
                let c = &mut self.calls[i];
                c.far
                    .handle_datagram(now, 0, t.source, BytesMut::from(&t.contents[..]));
                c.far_wake = now;
            }
        }
        onto_path
    }
}

impl Call {
    /// Acts on what signalling brought, at both ends.
    fn signal(&mut self, now: Instant, timeouts: &Timeouts) {
        while let Some(event) = self.server.poll_event() {
            if let ServerEvent::Request {
                key,
                method,
                params,
            } = event
            {
                let answer = self.answer(now, &method, params);
                self.server.respond(key, answer);
            }
        }
        while let Some(event) = self.client.poll_event() {
            if self.phase == Phase::Done {
                return;
            }
            match event {
                Signalled::Connected => {
                    self.signalling_connected = true;
                    self.setup.signalling_connected = now.saturating_duration_since(self.started);
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

    /// The endpoint's side, as the anchor answers: `invite` with the far end's answer and
    /// candidates, `accept` and `bye` with `{}`.
    fn answer(&mut self, now: Instant, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "invite" => {
                let invite: Invite = serde_json::from_value(params)
                    .map_err(|_| RpcError::new(-32602, "invalid invite parameters"))?;
                let sdp = self
                    .far
                    .answer(now, &invite.sdp)
                    .map_err(|e| RpcError::new(400, format!("cannot answer: {e:?}")))?;
                for c in invite.candidates {
                    let _ = self.far.add_remote_candidate(now, &from_wire(c));
                }
                let candidates = self.far.local_candidates().iter().cloned().map(to_wire);
                let answer = InviteAnswer {
                    call_id: invite.call_context_token,
                    sdp,
                    candidates: candidates.collect(),
                };
                self.far_wake = now;
                serde_json::to_value(answer).map_err(|e| RpcError::new(500, e.to_string()))
            }
            _ => Ok(json!({})),
        }
    }

    /// Sends `invite` once the candidates are in and the connection is open.
    fn invite(&mut self, now: Instant, timeouts: &Timeouts) {
        if self.phase != Phase::Gathering || !self.signalling_connected {
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
        let since_start = now.saturating_duration_since(self.started);
        match (self.phase, result) {
            (Phase::Inviting, Ok(v)) => {
                self.setup.answer_received = since_start;
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
                self.setup.accepted = since_start;
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
        self.agent.close(now);
        self.far.close(now);
        self.client.close();
        self.outcome = Some(CallOutcome::Failed(class, detail));
        self.phase = Phase::Done;
        self.next_frame = None;
    }

    fn finish_completed(&mut self, now: Instant) {
        self.agent.close(now);
        self.far.close(now);
        let up = self.far.received_from(&self.agent, Codec::OPUS);
        let down = self.agent.received_from(&self.far, Codec::OPUS);
        self.outcome = Some(CallOutcome::Completed {
            up: Box::new(up),
            down: Box::new(down),
            setup: self.setup,
        });
        self.phase = Phase::Done;
    }
}
