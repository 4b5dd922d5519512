//! Virtual time, first part: the media path on one simulated clock, in one process, with no
//! sockets. Each call is an agent's relay-only [`Leg`] and a far end's host [`Leg`] (standing
//! for the anchor's media); the agent's datagrams cross the scenario's path ([`Netem`]) to the
//! TURN core ([`turn_server::Server`]), which relays them to the far end; the far end's come
//! back the same way. Every one of them is the same sans-I/O core the real-time run drives on
//! sockets — real ICE, real DTLS handshakes, real SRTP — so a minute of calls takes what the
//! CPU needs for their crypto and bookkeeping, not a minute.
//!
//! Not yet here (DESIGN §3's promise, issue 16): signalling and the agent's session state
//! machine, and the anchor's own media server. What it has is replayable: the path and every
//! leg draw from the run's seed ([`Entropy::Seeded`]), so one seed gives the same figures.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use loadgen::entropy::Entropy;
use loadgen::leg::{Leg, LegError, PeerConfig, TurnCredentials, TurnTransport};
use reports::emodel::Codec;
use reports::record::MediaStats;
use turn_server::auth::{Credentials, Secret};
use turn_server::policy::PeerPolicy;
use turn_server::server::{Config, Event, FiveTuple, Server, Transport};

use crate::netem::{Direction, FlowId, Netem, Output, Path};

/// The TURN server's listener in the simulated network (TEST-NET-1, RFC 5737).
const TURN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 3478));
/// Media frame interval.
const FRAME: Duration = Duration::from_millis(20);
/// The longest a leg goes undriven, as in the real-time driver (`loadgen::driver`): `rtc`'s
/// TURN client does not always report its next deadline.
const MAX_SLEEP: Duration = Duration::from_millis(10);
/// How long a call may take to connect (ICE and DTLS) before it counts as failed.
const CONNECT_LIMIT: Duration = Duration::from_secs(15);
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

/// How one call ended.
#[derive(Debug, Clone)]
pub enum CallOutcome {
    /// It connected and talked: the media figures each way, agent → far end first, and the
    /// simulated time from its start to DTLS connected.
    Completed {
        /// Agent → far end.
        up: Box<MediaStats>,
        /// Far end → agent.
        down: Box<MediaStats>,
        /// Start to DTLS connected on the agent's leg.
        setup: Duration,
    },
    /// A leg failed, or it did not connect within 15 s of simulated time.
    Failed(String),
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
    /// Allocating; the candidates are not exchanged yet.
    Gathering,
    /// Candidates exchanged; ICE and DTLS under way.
    Connecting,
    /// Frames flow both ways until `until`.
    Talking { until: Instant },
    /// The last frames are on their way; ends at `until`.
    Draining { until: Instant },
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
    outcome: Option<CallOutcome>,
}

/// The simulated network and its servers: the legs, the path, the TURN core.
struct World {
    now: Instant,
    netem: Netem<Vec<u8>>,
    turn: Server,
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
/// A leg could not be created (its configuration was refused).
pub fn run_media(
    run: &MediaRun,
    start: Instant,
    unix_start: Duration,
) -> Result<MediaResult, LegError> {
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
        turn: Server::new(config, start, unix_start.as_secs()),
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
        )?;
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
        )?;
        let mut call = Call {
            agent,
            far,
            agent_local,
            far_local,
            phase: Phase::Gathering,
            agent_wake: start,
            far_wake: start,
            next_frame: None,
            started: start,
            outcome: None,
        };
        let offer = call.agent.offer();
        let answer = call.far.answer(start, &offer)?;
        call.agent.accept(start, &answer)?;
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
                .unwrap_or(CallOutcome::Failed("never ended".into()))
        })
        .collect();
    Ok(MediaResult { calls, simulated })
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
            self.turn.handle_timeout(now);
            self.settle();
            for i in 0..self.calls.len() {
                self.step_call(i, talk);
            }
        }
    }

    fn next_deadline(&mut self) -> Instant {
        let mut next = self.now + MAX_SLEEP;
        for t in [self.netem.poll_timeout(), self.turn.poll_timeout()]
            .into_iter()
            .flatten()
        {
            next = next.min(t);
        }
        for c in &self.calls {
            if c.phase == Phase::Done {
                continue;
            }
            next = next.min(c.agent_wake).min(c.far_wake);
            if let Some(f) = c.next_frame {
                next = next.min(f);
            }
            if let Phase::Talking { until } | Phase::Draining { until } = c.phase {
                next = next.min(until);
            }
        }
        next
    }

    /// Runs call `i`'s legs if due, moves it on, and sends what it has.
    fn step_call(&mut self, i: usize, talk: Duration) {
        let now = self.now;
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
        if let Some(e) = c.agent.error.clone().or_else(|| c.far.error.clone()) {
            c.finish_failed(now, format!("{e:?}"));
        } else {
            match c.phase {
                Phase::Gathering if c.agent.gathering_done() => {
                    if let Some(e) = c.agent.allocation_error() {
                        c.finish_failed(now, format!("{e:?}"));
                    } else {
                        let (a, b) = (
                            c.agent.local_candidates().to_vec(),
                            c.far.local_candidates().to_vec(),
                        );
                        let added = b
                            .iter()
                            .try_for_each(|x| c.agent.add_remote_candidate(now, x))
                            .and_then(|()| {
                                a.iter()
                                    .try_for_each(|x| c.far.add_remote_candidate(now, x))
                            });
                        match added {
                            Ok(()) => c.phase = Phase::Connecting,
                            Err(e) => c.finish_failed(now, format!("{e:?}")),
                        }
                    }
                }
                Phase::Connecting
                    if c.agent.times.connected.is_some() && c.far.times.connected.is_some() =>
                {
                    c.phase = Phase::Talking { until: now + talk };
                    c.next_frame = Some(now);
                }
                Phase::Gathering | Phase::Connecting
                    if now.saturating_duration_since(c.started) > CONNECT_LIMIT =>
                {
                    c.finish_failed(now, "did not connect within 15 s".into());
                }
                Phase::Talking { until } if now >= until => {
                    c.next_frame = None;
                    c.phase = Phase::Draining { until: now + DRAIN };
                }
                Phase::Draining { until } if now >= until => c.finish_completed(now),
                _ => {}
            }
        }
        if let Some(due) = c.next_frame.filter(|&d| d <= now) {
            // The simulated generator is never late: pacing error 0 by construction.
            c.agent.send_frame_due(now, due);
            c.far.send_frame_due(now, due);
            c.next_frame = Some(due + FRAME);
        }
        self.flush_call(i);
    }

    /// Sends what call `i`'s legs have ready and sets when they run next.
    fn flush_call(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.calls[i];
        let flow = FlowId(i as u64);
        while let Some(t) = c.agent.poll_transmit() {
            // IPv4 + UDP headers on the wire.
            let len = t.data.len() as u32 + 28;
            self.netem
                .handle_input(now, flow, Direction::Up, len, t.data.to_vec());
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
        self.settle();
    }

    /// Routes until nothing moves at this instant: what the TURN core sends down a path
    /// without delay leaves it at once and must reach the agent now, not at its next wake-up.
    fn settle(&mut self) {
        loop {
            self.route_path();
            if !self.route_turn() {
                break;
            }
        }
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
    fn finish_failed(&mut self, now: Instant, why: String) {
        self.agent.close(now);
        self.far.close(now);
        self.outcome = Some(CallOutcome::Failed(why));
        self.phase = Phase::Done;
        self.next_frame = None;
    }

    fn finish_completed(&mut self, now: Instant) {
        self.agent.close(now);
        self.far.close(now);
        let up = self.far.received_from(&self.agent, Codec::OPUS);
        let down = self.agent.received_from(&self.far, Codec::OPUS);
        let setup = self.agent.times.connected.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(self.started)
        });
        self.outcome = Some(CallOutcome::Completed {
            up: Box::new(up),
            down: Box::new(down),
            setup,
        });
        self.phase = Phase::Done;
    }
}
