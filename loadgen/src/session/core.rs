//! One softphone call's session as a sans-I/O core (STYLE.md's quinn-proto shape): the state
//! machine of DESIGN §4 with its timeouts, milestones, mid-call steps, keep-alives, ICE
//! restarts, panic logout and failure classes, owning the call's media [`Leg`] and its
//! signalling [`Connection`]s — and neither a socket nor a clock.
//!
//! The caller (an edge) moves bytes and instants: it opens the wires and TCP connections the
//! session asks for ([`SessionEvent`]), passes in what they receive
//! ([`Session::handle_datagram`], [`Session::handle_signalling_input`]), sends what
//! [`Session::poll_transmit`] and [`Session::poll_signalling_transmit`] give, and calls
//! [`Session::handle_timeout`] at [`Session::poll_timeout`]. The real-time edge does it on
//! sockets and the real clock; virtual time (`sim::virtual_time`) on a simulated one.
//!
//! `GrabLocalMedia → CreateOffer → SetLocalDescription → ConnectSignalingAndIceCollection →
//! InviteAnswer → Accept → ConnectContact → Talking → CleanUp → Disconnected | Failed`

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use reports::record::{ConferenceAudio, IceCounters, MediaStats};
use reports::{CallKind, CallRecord, FailureClass, Milestones, SCHEMA_VERSION, SessionState};
use rtc::peer_connection::sdp::RTCSessionDescription;
use serde_json::{Value, json};

use super::{
    AnchorConference, CallSpec, Fail, KEEPALIVE, MidCallStep, PATH_SILENT, RESTART_AFTER,
    RESTART_INVITE_RETRIES, RESTART_RETRY_INTERVAL, failure_of, from_wire, leg_failure,
    mid_call_steps, millis, resolve_turn, to_wire,
};
use crate::entropy::Entropy;
use crate::leg::{Leg, LegError, PeerConfig, Transmit, TurnCredentials, WireKind};
use crate::signalling::{
    Connection, Event, InviteAnswer, SignallingError, host_port, tls_client_config,
};

/// The longest the leg goes undriven while no media flows, whatever its timers say: `rtc`'s
/// TURN client does not always report its next deadline (../shared/notes/rtc-relay.md found
/// set-up slow when waking only at its `poll_timeout`). While talking, each frame drives it.
const MAX_SLEEP: Duration = Duration::from_millis(10);
/// Media frame interval.
const FRAME: Duration = Duration::from_millis(20);
/// How long the agent waits for the endpoint's Close after its own (RFC 6455 §7.1.1).
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Attempts at opening the signalling WebSocket (the CCP tries 3 times within its timeout).
const DIAL_ATTEMPTS: u32 = 3;

/// What the session asks of its edge.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// Open a wire of each kind (a UDP socket, or a TCP or TLS stream to a TURN server) and
    /// answer with [`Session::handle_wires`]. With `replace`, the wires opened before close
    /// once what is queued now has been sent (an ICE restart's new allocations).
    OpenWires {
        /// The wires, in the order their local ends are to be given.
        kinds: Vec<WireKind>,
        /// Whether they replace the wires before them.
        replace: bool,
    },
    /// Open a TCP connection to the signalling endpoint at this address, then answer with
    /// [`Session::handle_signalling_open`] or [`Session::handle_signalling_error`].
    Dial(SocketAddr),
    /// Drop the signalling TCP connection (or the attempt at one), once what is queued has been
    /// sent.
    DropSignalling,
    /// The call is over: take [`Session::record`] once what is queued has been sent.
    Ended,
}

/// Where the session is.
#[derive(Debug)]
enum Phase {
    /// Waiting for the edge to open the leg's wires.
    Opening(Box<PeerConfig>),
    /// ICE collection and the signalling connect, side by side, until both have ended.
    Gathering {
        deadline: Instant,
        collected: Option<(bool, Instant)>,
        signalled: Option<Result<Instant, SignallingError>>,
    },
    /// `invite` in flight.
    Inviting,
    /// A missed call's `bye` in flight.
    Declining,
    /// The answer applied; `accept` in flight, the leg checking already.
    Accepting,
    /// ICE and DTLS until `deadline`.
    Connecting { deadline: Instant },
    /// 20 ms frames until the talk time's end.
    Talking,
    /// The talk time is over; a request sent while talking is still awaited.
    Finishing,
    /// `bye` in flight (after the talk time, or after a set-up failure).
    HangingUp,
    /// The page closed mid-call (a panic logout): logging in again on a new connection.
    Relogin,
    /// Our Close sent; the endpoint's awaited until `until`.
    Closing { until: Instant },
    /// Over.
    Done,
}

/// What a request in flight is for.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    Invite,
    Decline,
    Accept,
    /// A mid-call step's, or the keep-alive's: its failure fails the call.
    Step(&'static MidCallStep),
    /// The ICE restart's: its failure ends the restart.
    Restart,
    /// `bye` after the talk time: its answer carries the anchor's figures.
    Bye,
    /// `bye` after a failed set-up: its answer does not matter.
    FailureBye,
    ConnectContact,
    DisconnectContact,
}

/// The signalling request awaited: a JSON-RPC request's id, or the keep-alive's pong.
#[derive(Debug)]
enum Awaiting {
    Request(String, Purpose),
    Pong,
}

/// The WebSocket being opened: attempts within a deadline, a pause between them.
#[derive(Debug)]
struct Dial {
    deadline: Instant,
    timeout: Duration,
    attempt: u32,
    /// Why the latest attempt failed.
    last: String,
    /// An attempt is under way (its TCP connection, TLS and upgrade); else one starts at this
    /// instant.
    retry_at: Option<Instant>,
}

/// The talk time's bookkeeping.
#[derive(Debug)]
struct Talk {
    start: Instant,
    end: Instant,
    frame: u32,
    /// Mid-call steps sent so far.
    steps: usize,
    last_keepalive: Instant,
    /// Why the call dropped, when it did.
    dropped: Option<String>,
    /// A mid-call step's or the keep-alive's failure.
    failure: Option<Fail>,
}

/// What the anchor said of the call at its end (`bye` or `disconnectContact`).
#[derive(Debug, Default)]
struct AnchorHalf {
    received: Option<MediaStats>,
    sent: Option<u64>,
    wire_bytes: Option<u64>,
    pacing: Option<reports::Distribution>,
    conference: Option<AnchorConference>,
}

/// One softphone call, sans-I/O.
#[derive(Debug)]
pub struct Session {
    spec: CallSpec,
    entropy: Entropy,
    start: Instant,
    unix_start: Duration,
    milestones: Milestones,
    state: SessionState,
    phase: Phase,
    leg: Option<Leg>,
    /// When the leg runs next.
    leg_wake: Instant,
    offer: String,
    turn_answers: String,
    /// Whether any TURN name resolved (else nothing is gathered).
    resolved: bool,
    /// A restart's TURN servers while its wires are being opened.
    restart_wires: Option<Vec<TurnCredentials>>,
    connection: Option<Connection>,
    dial: Option<Dial>,
    awaiting: Option<Awaiting>,
    /// A connection failure with nothing awaiting it: the next request gets it.
    failed: Option<SignallingError>,
    call_id: String,
    talk: Option<Talk>,
    restart: IceRestart,
    ice: IceCounters,
    connected: bool,
    /// The leg was abandoned (a panic logout): never driven or closed again.
    abandoned: bool,
    hung_up: bool,
    anchor: AnchorHalf,
    outcome: Option<Result<(), Fail>>,
    events: VecDeque<SessionEvent>,
}

impl Session {
    /// A call of `spec` starting at `now`, the wall clock reading `unix_now` then, its leg's
    /// randomness from `entropy`. Its first event asks for the leg's wires.
    pub fn new(spec: CallSpec, entropy: Entropy, now: Instant, unix_now: Duration) -> Self {
        let mut session = Self {
            spec,
            entropy,
            start: now,
            unix_start: unix_now,
            milestones: Milestones::default(),
            state: SessionState::GrabLocalMedia,
            phase: Phase::Done,
            leg: None,
            leg_wake: now,
            offer: String::new(),
            turn_answers: String::new(),
            resolved: false,
            restart_wires: None,
            connection: None,
            dial: None,
            awaiting: None,
            failed: None,
            call_id: String::new(),
            talk: None,
            restart: IceRestart::default(),
            ice: IceCounters::default(),
            connected: false,
            abandoned: false,
            hung_up: false,
            anchor: AnchorHalf::default(),
            outcome: None,
            events: VecDeque::new(),
        };
        // GrabLocalMedia: a synthetic source, available at once.
        session.milestones.local_media_us = session.at(now);
        session.state = SessionState::CreateOffer;
        // A TURN name that does not resolve gives nothing to allocate from: its candidates
        // never come.
        let (turn, answers) = resolve_turn(&session.spec, now);
        session.turn_answers = answers;
        session.resolved = !turn.is_empty();
        let config = PeerConfig {
            turn,
            answering: false,
            epoch: session.spec.epoch,
            entropy: session.entropy,
        };
        session.events.push_back(SessionEvent::OpenWires {
            kinds: Leg::wires(&config),
            replace: false,
        });
        session.phase = Phase::Opening(Box::new(config));
        session
    }

    /// The call's media leg, once its wires are open.
    pub fn leg(&self) -> Option<&Leg> {
        self.leg.as_ref()
    }

    /// Whether the call is over ([`SessionEvent::Ended`] was given).
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// The run is stopping: a talking call hangs up at once.
    pub fn hang_up(&mut self, now: Instant) {
        self.hung_up = true;
        self.progress(now);
    }

    /// The wires [`SessionEvent::OpenWires`] asked for are open with these local ends, or
    /// could not be opened.
    pub fn handle_wires(&mut self, now: Instant, locals: Result<Vec<SocketAddr>, LegError>) {
        if let Some(turn) = self.restart_wires.take() {
            let started = self.restart.opening.take();
            let offer = locals.and_then(|locals| match &mut self.leg {
                Some(leg) => leg.restart_ice(now, turn, &locals),
                None => Err(LegError::Io("no leg".into())),
            });
            self.restart.phase = match (offer, started) {
                (Ok(offer), Some(attempt)) => RestartPhase::Gathering {
                    attempt,
                    offer,
                    deadline: now + self.spec.timeouts.ice_collection,
                },
                (Err(e), _) => RestartPhase::Failed(format!("{e:?}")),
                (Ok(_), None) => RestartPhase::Failed("no restart under way".into()),
            };
            self.leg_wake = now;
            return self.progress(now);
        }
        let Phase::Opening(config) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return;
        };
        let unix = self.unix(now);
        let leg = locals.and_then(|l| Leg::new(*config, self.spec.ssrc, now, unix, &l));
        let mut leg = match leg {
            Ok(leg) => leg,
            Err(e) => return self.fail(now, leg_failure(&e)),
        };
        self.offer = leg.offer();
        self.state = SessionState::SetLocalDescription;
        self.milestones.local_description_us = self.at(now);
        // A conference's parties each send a test tone, so that what each hears of the others
        // can be measured (`CallRecord::conference`).
        if self.spec.identity.kind == CallKind::Conference {
            leg.set_signal(crate::audio::Signal::Tone(crate::audio::AGENT_TONE));
        }
        self.leg = Some(leg);
        self.leg_wake = now;
        // Signalling connect and ICE collection run side by side.
        self.state = SessionState::ConnectSignalingAndIceCollection;
        let deadline = now + self.spec.timeouts.ice_collection;
        let signalled = match &self.spec.signalling {
            Ok(_) => None,
            Err(e) => Some(Err(SignallingError::Connect(e.clone()))),
        };
        self.phase = Phase::Gathering {
            deadline,
            collected: None,
            signalled,
        };
        if self.spec.signalling.is_ok() {
            self.start_dial(now);
        }
        self.progress(now);
    }

    /// A datagram (or stream frame) wire `wire` received from `from`.
    pub fn handle_datagram(&mut self, now: Instant, wire: usize, from: SocketAddr, data: BytesMut) {
        if !self.leg_active() {
            return;
        }
        if let Some(leg) = &mut self.leg {
            leg.handle_datagram(now, wire, from, data);
            // It acts on what came at once, as a woken leg does.
            self.leg_wake = now;
        }
    }

    /// Wire `wire` failed (its stream closed or errored).
    pub fn handle_wire_error(&mut self, wire: usize, why: &str) {
        if let Some(leg) = &mut self.leg {
            leg.handle_wire_error(wire, why);
        }
    }

    /// Whether wire `wire` has failed (its edge may stop watching it).
    pub fn wire_failed(&self, wire: usize) -> bool {
        self.leg.as_ref().is_some_and(|l| l.wire_failed(wire))
    }

    /// The TCP connection [`SessionEvent::Dial`] asked for is open: TLS and the WebSocket
    /// upgrade start on it.
    pub fn handle_signalling_open(&mut self, now: Instant) {
        let Some(endpoint) = self.spec.signalling.as_ref().ok() else {
            return;
        };
        let connection = host_port(&endpoint.url)
            .map_err(SignallingError::Connect)
            .and_then(|(host, _)| {
                let tls = tls_client_config(&endpoint.roots).map_err(SignallingError::Connect)?;
                Connection::new(&endpoint.url, &host, tls)
            });
        match connection {
            Ok(c) => self.connection = Some(c),
            Err(e) => self.attempt_failed(now, connect_reason(e)),
        }
        self.progress(now);
    }

    /// The TCP connection [`SessionEvent::Dial`] asked for could not be opened.
    pub fn handle_signalling_error(&mut self, now: Instant, why: String) {
        self.attempt_failed(now, why);
        self.progress(now);
    }

    /// Bytes that arrived on the signalling connection.
    pub fn handle_signalling_input(&mut self, now: Instant, data: &[u8]) {
        if let Some(c) = &mut self.connection {
            c.handle_input(data);
        }
        self.progress(now);
    }

    /// The signalling connection's peer closed it (a FIN or a reset).
    pub fn handle_signalling_eof(&mut self, now: Instant) {
        if let Some(c) = &mut self.connection {
            c.handle_eof();
        }
        self.progress(now);
    }

    /// Runs what is due at `now`: the leg's timers and frames, signalling's deadlines, the
    /// session's own.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(c) = &mut self.connection {
            c.handle_timeout(now);
        }
        self.progress(now);
    }

    /// When [`Self::handle_timeout`] is due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if self.is_done() {
            return None;
        }
        let mut next = [
            self.connection.as_ref().and_then(Connection::poll_timeout),
            self.dial.as_ref().map(|d| d.retry_at.unwrap_or(d.deadline)),
            self.next_frame(),
            self.restart.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        if self.leg.is_some() && self.leg_active() {
            next = Some(next.map_or(self.leg_wake, |n| n.min(self.leg_wake)));
        }
        let phase = match self.phase {
            Phase::Gathering {
                deadline,
                collected: None,
                ..
            }
            | Phase::Connecting { deadline }
            | Phase::Closing { until: deadline } => Some(deadline),
            Phase::Talking => self.talk.as_ref().map(|t| t.end),
            _ => None,
        };
        [next, phase].into_iter().flatten().min()
    }

    /// When the next media frame is due, while talking (an edge may wake for it with a finer
    /// timer than for the rest).
    pub fn next_frame(&self) -> Option<Instant> {
        let talk = self
            .talk
            .as_ref()
            .filter(|_| matches!(self.phase, Phase::Talking))?;
        let due = talk.start + FRAME * talk.frame;
        (due < talk.end).then_some(due)
    }

    /// A datagram the leg has ready.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.leg.as_mut()?.poll_transmit()
    }

    /// Bytes the signalling connection has ready.
    pub fn poll_signalling_transmit(&mut self) -> Option<Vec<u8>> {
        self.connection.as_mut()?.poll_transmit()
    }

    /// What the session asks of its edge next.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Whether the leg runs: from its wires' opening to the end of the talk time. Once the
    /// call hangs up (or fails after the answer) the library closes its peer connection as it
    /// sends `bye` (connect-rtc-js `CleanUpState` → `_stopSession`), so nothing more leaves
    /// the leg but its allocations' release when the call ends.
    fn leg_active(&self) -> bool {
        !self.abandoned
            && matches!(
                self.phase,
                Phase::Gathering { .. }
                    | Phase::Inviting
                    | Phase::Accepting
                    | Phase::Connecting { .. }
                    | Phase::Talking
            )
    }

    /// Microseconds since the call started.
    fn at(&self, now: Instant) -> Option<u64> {
        Some(micros(now.saturating_duration_since(self.start)))
    }

    /// The wall clock at `now`.
    fn unix(&self, now: Instant) -> Duration {
        self.unix_start + now.saturating_duration_since(self.start)
    }

    /// Drives the leg if due, takes what signalling brought, and moves the call on.
    fn progress(&mut self, now: Instant) {
        if self.is_done() {
            return;
        }
        self.frames(now);
        if self.leg_active()
            && let Some(leg) = &mut self.leg
            && self.leg_wake <= now
        {
            leg.handle_timeout(now);
            let talking = self.talk.is_some() && matches!(self.phase, Phase::Talking);
            let tick = if talking { FRAME } else { MAX_SLEEP };
            self.leg_wake = leg
                .poll_timeout()
                .map_or(now + tick, |t| t.max(now))
                .min(now + tick);
        }
        self.dial_timers(now);
        self.signal(now);
        // Each step may make the next one due now (an answer applied, a phase ended).
        for _ in 0..8 {
            if !self.step(now) {
                break;
            }
            self.signal(now);
        }
    }

    /// Sends the frames due by `now` while talking.
    fn frames(&mut self, now: Instant) {
        while let Some(due) = self.next_frame().filter(|&d| d <= now) {
            if let (Some(leg), Some(talk)) = (&mut self.leg, &mut self.talk) {
                leg.send_frame_due(now, due);
                talk.frame += 1;
                // Each frame drives the leg: what arrived since the last is read.
                self.leg_wake = now;
            }
        }
    }

    fn start_dial(&mut self, now: Instant) {
        let timeout = self.spec.timeouts.websocket_connect;
        self.dial = Some(Dial {
            deadline: now + timeout,
            timeout,
            attempt: 0,
            last: "no attempt".into(),
            retry_at: Some(now),
        });
        self.dial_timers(now);
    }

    /// Starts the next attempt when it is due; gives up at the deadline.
    fn dial_timers(&mut self, now: Instant) {
        let Some(dial) = &mut self.dial else { return };
        match dial.retry_at {
            None if now >= dial.deadline => {
                // The attempt under way ran out of time.
                dial.last = format!("timed out after {:?}", dial.timeout);
                self.connection = None;
                self.events.push_back(SessionEvent::DropSignalling);
                self.dial_ended(now, None);
            }
            Some(at) if at <= now => {
                if dial.attempt >= DIAL_ATTEMPTS || now >= dial.deadline {
                    return self.dial_ended(now, None);
                }
                dial.attempt += 1;
                dial.retry_at = None;
                if let Ok(endpoint) = &self.spec.signalling {
                    self.events.push_back(SessionEvent::Dial(endpoint.addr));
                }
            }
            _ => {}
        }
    }

    /// The attempt under way failed: the next one after a pause (within the deadline).
    fn attempt_failed(&mut self, now: Instant, why: String) {
        let Some(dial) = &mut self.dial else { return };
        dial.last = why;
        self.connection = None;
        self.events.push_back(SessionEvent::DropSignalling);
        // Back off a little between tries, within the deadline.
        let pause = Duration::from_millis(250 * u64::from(dial.attempt));
        dial.retry_at = Some(if now + pause < dial.deadline {
            now + pause
        } else {
            now
        });
        if dial.attempt >= DIAL_ATTEMPTS {
            self.dial_ended(now, None);
        }
    }

    /// The WebSocket opened (`Some(now)`) or every attempt failed (`None`).
    fn dial_ended(&mut self, now: Instant, opened: Option<Instant>) {
        let Some(dial) = self.dial.take() else { return };
        let result = opened.ok_or(SignallingError::Connect(dial.last));
        match &mut self.phase {
            Phase::Gathering { signalled, .. } => *signalled = Some(result),
            Phase::Relogin => match result {
                Ok(_) => {
                    let contact = json!({
                        "contactId": self.call_id,
                        "persistentConnection": true,
                        "callContextToken": self.spec.identity.call,
                    });
                    self.request(now, "connectContact", contact, Purpose::ConnectContact);
                }
                Err(e) => {
                    let fail = (e.class(), format!("logging in again: {e}"));
                    self.finish(now, Some(fail));
                }
            },
            _ => {}
        }
    }

    /// Takes what the signalling connection brought.
    fn signal(&mut self, now: Instant) {
        while let Some(event) = self.connection.as_mut().and_then(Connection::poll_event) {
            match event {
                Event::Connected => self.dial_ended(now, Some(now)),
                Event::Response { id, result } => {
                    if let Some(Awaiting::Request(awaited, purpose)) = &self.awaiting
                        && *awaited == id
                    {
                        let purpose = *purpose;
                        self.awaiting = None;
                        self.answered(now, purpose, result);
                    }
                }
                Event::Pong => {
                    if matches!(self.awaiting, Some(Awaiting::Pong)) {
                        self.awaiting = None;
                        self.answered(now, Purpose::Step(&KEEPALIVE), Ok(Value::Null));
                    }
                }
                Event::RemoteBye => {}
                Event::Closed => {
                    if matches!(self.phase, Phase::Closing { .. }) {
                        self.finish(now, None);
                    }
                }
                Event::Failed(e) => {
                    if self.dial.is_some() {
                        self.attempt_failed(now, connect_reason(e));
                    } else if matches!(self.phase, Phase::Closing { .. }) {
                        self.finish(now, None);
                    } else {
                        match self.awaiting.take() {
                            Some(Awaiting::Request(_, purpose)) => {
                                self.answered(now, purpose, Err(e));
                            }
                            Some(Awaiting::Pong) => {
                                self.answered(now, Purpose::Step(&KEEPALIVE), Err(e));
                            }
                            None => self.failed = Some(e),
                        }
                    }
                }
            }
            if self.is_done() {
                return;
            }
        }
    }

    /// Sends `method`; its answer (or why it could not go) comes to [`Self::answered`].
    fn request(&mut self, now: Instant, method: &str, params: Value, purpose: Purpose) {
        let t = &self.spec.timeouts;
        let timeout = match purpose {
            Purpose::Invite => t.invite_answer,
            Purpose::Restart if method == "invite" => t.invite_answer,
            _ => t.ack,
        };
        match self.send(|c| c.request(now, method, params, timeout)) {
            Ok(id) => self.awaiting = Some(Awaiting::Request(id, purpose)),
            Err(e) => self.answered(now, purpose, Err(e)),
        }
    }

    /// Sends on the signalling connection with `send`: the connection's stashed failure, or
    /// that it is closed, instead when it cannot carry it.
    fn send<T>(
        &mut self,
        send: impl FnOnce(&mut Connection) -> Result<T, SignallingError>,
    ) -> Result<T, SignallingError> {
        match (&self.failed, &mut self.connection) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(c)) => send(c),
            (None, None) => Err(SignallingError::Protocol("the connection is closed".into())),
        }
    }

    /// The keep-alive: a ping, its pong awaited twice the period (a network outage — a VPN
    /// rekey, a Wi-Fi handover — delays it as long as it lasts without breaking the
    /// connection, and ICE recovers the media from it).
    fn keepalive(&mut self, now: Instant) {
        let timeout = self.spec.timeouts.keepalive * 2;
        match self.send(|c| c.ping(now, timeout)) {
            Ok(()) => self.awaiting = Some(Awaiting::Pong),
            Err(e) => self.answered(now, Purpose::Step(&KEEPALIVE), Err(e)),
        }
    }

    /// The answer to the request sent for `purpose`.
    fn answered(&mut self, now: Instant, purpose: Purpose, result: Result<Value, SignallingError>) {
        match purpose {
            Purpose::Invite => match result {
                Ok(v) => self.apply_answer(now, v),
                Err(e) => self.fail(now, (e.class(), e.to_string())),
            },
            Purpose::Decline | Purpose::FailureBye => self.close(now),
            Purpose::Accept => match result {
                Ok(_) => {
                    self.milestones.accepted_us = self.at(now);
                    // ConnectContact: ICE and DTLS.
                    self.state = SessionState::ConnectContact;
                    self.phase = Phase::Connecting {
                        deadline: now + self.spec.timeouts.connect,
                    };
                }
                Err(e) => self.fail(now, (e.class(), e.to_string())),
            },
            Purpose::Restart => {
                if let Some(leg) = &mut self.leg {
                    self.restart
                        .answered(now, result.as_ref(), leg, &mut self.ice);
                }
                if matches!(self.phase, Phase::Finishing) {
                    self.after_talk(now);
                }
            }
            Purpose::Step(step) => {
                let finishing = matches!(self.phase, Phase::Finishing);
                if let Some(talk) = &mut self.talk {
                    match result {
                        Err(e) => {
                            talk.failure.get_or_insert(step.failure(&e));
                        }
                        Ok(_) if step.method == "conference" => {
                            // The anchor mixes from now on.
                            if let Some(leg) = &mut self.leg {
                                leg.listen();
                            }
                        }
                        Ok(_) => {}
                    }
                    if finishing || talk.failure.is_some() {
                        self.after_talk(now);
                    }
                }
            }
            Purpose::Bye => {
                if let Ok(v) = &result {
                    self.take_anchor_half(v);
                }
                let talk = self.talk.as_mut();
                let outcome = match talk {
                    Some(t) => match (t.failure.take(), t.dropped.take()) {
                        (Some(failure), _) => Err(failure),
                        (None, Some(detail)) => Err((FailureClass::MediaTimeout, detail)),
                        (None, None) => Ok(()),
                    },
                    None => Ok(()),
                };
                self.outcome.get_or_insert(outcome);
                self.close(now);
            }
            Purpose::ConnectContact => match result {
                Ok(_) => {
                    let params = json!({ "contactId": self.call_id });
                    self.request(now, "disconnectContact", params, Purpose::DisconnectContact);
                }
                Err(e) => {
                    let fail = (e.class(), format!("connectContact after logging in: {e}"));
                    self.outcome.get_or_insert(Err(fail));
                    self.close(now);
                }
            },
            Purpose::DisconnectContact => {
                match result {
                    Ok(v) => {
                        self.take_anchor_half(&v);
                        self.outcome.get_or_insert(Ok(()));
                    }
                    Err(e) => {
                        let fail = (e.class(), format!("disconnectContact: {e}"));
                        self.outcome.get_or_insert(Err(fail));
                    }
                }
                self.close(now);
            }
        }
    }

    /// Applies the invite's answer and sends `accept` (or declines a missed call).
    fn apply_answer(&mut self, now: Instant, v: Value) {
        let answer: InviteAnswer = match serde_json::from_value(v) {
            Ok(a) => a,
            Err(e) => {
                let e = SignallingError::Protocol(format!("invite result: {e}"));
                return self.fail(now, (e.class(), e.to_string()));
            }
        };
        self.milestones.answer_received_us = self.at(now);
        // A missed call: the agent lets the contact ring out and declines it.
        if self.spec.identity.kind == CallKind::Missed {
            self.outcome = Some(Ok(()));
            self.phase = Phase::Declining;
            let params = json!({ "callContextToken": self.spec.identity.call });
            return self.request(now, "bye", params, Purpose::Decline);
        }
        // Accept: apply the answer, send `accept`.
        self.state = SessionState::Accept;
        let Some(leg) = &mut self.leg else { return };
        let sdp = match RTCSessionDescription::answer(answer.sdp.clone()) {
            Ok(sdp) => sdp,
            Err(e) => return self.fail(now, (FailureClass::InvalidRemoteSdp, e.to_string())),
        };
        if let Err(e) = leg.accept(now, &sdp.sdp) {
            let fail = (FailureClass::SetRemoteDescriptionFailure, format!("{e:?}"));
            return self.fail(now, fail);
        }
        if answer.candidates.is_empty() {
            let detail = "the answer carried no ICE candidate".to_owned();
            return self.fail(now, (FailureClass::NoRemoteIceCandidate, detail));
        }
        for c in answer.candidates {
            let _ = leg.add_remote_candidate(now, &from_wire(c));
        }
        self.call_id = answer.call_id;
        // ICE runs while `accept` is answered, as in a browser, where the remote description
        // starts the checks at once.
        self.leg_wake = now;
        self.phase = Phase::Accepting;
        self.request(now, "accept", json!({}), Purpose::Accept);
    }

    /// Moves the call on by the clock and its leg; `true` when it changed phase.
    fn step(&mut self, now: Instant) -> bool {
        let before = std::mem::discriminant(&self.phase);
        let timeouts = self.spec.timeouts;
        match &mut self.phase {
            Phase::Gathering {
                deadline,
                collected,
                signalled,
            } => {
                if collected.is_none() {
                    let leg = self.leg.as_ref();
                    let done = self.resolved
                        && leg.is_some_and(|l| l.gathering_done() || l.error.is_some());
                    if done || now >= *deadline {
                        let any = leg.is_some_and(|l| !l.local_candidates().is_empty());
                        *collected = Some((self.resolved && any, now));
                    }
                }
                if let Some((got, at)) = *collected
                    && let Some(signalled) = signalled.take()
                {
                    if got {
                        self.milestones.ice_collected_us = self.at(at);
                    }
                    match signalled {
                        Ok(at) => {
                            // When it connected, not when ICE collection (alongside) ended.
                            self.milestones.signalling_connected_us = self.at(at);
                            self.invite(now, got);
                        }
                        Err(e) => self.finish(now, Some((e.class(), e.to_string()))),
                    }
                }
            }
            Phase::Accepting | Phase::Connecting { .. } => self.connecting(now),
            Phase::Talking => self.talking(now, timeouts),
            Phase::Closing { until } if now >= *until => {
                // The endpoint's Close did not come within the wait: the call itself is over.
                self.finish(now, None);
            }
            _ => {}
        }
        std::mem::discriminant(&self.phase) != before
    }

    /// Sends `invite` once both have ended and the candidates came (else the call fails).
    fn invite(&mut self, now: Instant, collected: bool) {
        let Some(leg) = &self.leg else { return };
        if !collected {
            let fail = match leg.allocation_error() {
                Some(e) => leg_failure(&e),
                None => (
                    FailureClass::IceCollectionTimeout,
                    format!(
                        "no relay candidate within {:?} from {}",
                        self.spec.timeouts.ice_collection, self.turn_answers
                    ),
                ),
            };
            return self.fail(now, fail);
        }
        // InviteAnswer.
        self.state = SessionState::InviteAnswer;
        let invite = crate::signalling::Invite {
            sdp: self.offer.clone(),
            candidates: leg
                .local_candidates()
                .iter()
                .cloned()
                .map(to_wire)
                .collect(),
            call_context_token: self.spec.identity.call.clone(),
        };
        self.milestones.invite_sent_us = self.at(now);
        self.phase = Phase::Inviting;
        let params = serde_json::to_value(invite).unwrap_or_default();
        self.request(now, "invite", params, Purpose::Invite);
    }

    /// Accepting and ConnectContact: the milestones as the leg reaches them; talking once DTLS
    /// connected; a failure class when it does not by the deadline.
    fn connecting(&mut self, now: Instant) {
        let Some(leg) = &self.leg else { return };
        let t = leg.times;
        self.milestones.ice_connected_us = t.ice_connected.and_then(|i| self.at(i));
        let Phase::Connecting { deadline } = self.phase else {
            return;
        };
        if t.connected.is_some() {
            self.milestones.dtls_connected_us = t.connected.and_then(|i| self.at(i));
            self.connected = true;
            return self.start_talking(now);
        }
        if now < deadline && leg.error.is_none() {
            return;
        }
        let detail = leg.error.clone();
        let progress = leg.dtls_progress();
        let fail = if t.ice_connected.is_some() {
            let detail = match detail {
                Some(e) => format!("DTLS failed ({e:?}): {progress}"),
                None => format!("DTLS did not complete in time: {progress}"),
            };
            (FailureClass::DtlsHandshakeFailure, detail)
        } else {
            let detail = format!("no candidate pair connected: {detail:?}");
            (FailureClass::IceConnectionFailed, detail)
        };
        self.outcome = Some(Err(fail));
        self.hang_up_after_failure(now);
    }

    /// Talking: 20 ms frames for the talk time; dead air drops the call.
    fn start_talking(&mut self, now: Instant) {
        self.state = SessionState::Talking;
        let start = crate::clock::next_slot(self.spec.epoch, now);
        let talk = self.spec.talk;
        // A transferring agent leaves at two thirds, the customer and the third party going on;
        // a panicking agent's page closes halfway.
        let end = start
            + match self.spec.identity.kind {
                CallKind::Transfer => talk * 2 / 3,
                CallKind::PanicLogout => talk / 2,
                _ => talk,
            };
        self.talk = Some(Talk {
            start,
            end,
            frame: 0,
            steps: 0,
            last_keepalive: now,
            dropped: None,
            failure: None,
        });
        self.phase = Phase::Talking;
        self.leg_wake = now;
    }

    fn talking(&mut self, now: Instant, timeouts: super::Timeouts) {
        let (Some(talk), Some(leg)) = (&mut self.talk, &mut self.leg) else {
            return;
        };
        if now >= talk.end || self.hung_up {
            return self.end_talk(now);
        }
        if let Some(first) = leg.times.first_rtp {
            self.milestones
                .first_rtp_us
                .get_or_insert(micros(first.saturating_duration_since(self.start)));
        }
        // Restarts begin when ICE has been disconnected long enough.
        if let Some(turn) = self.restart.progress(now, leg, &self.spec, &mut self.ice) {
            let kinds = turn.iter().cloned().map(WireKind::Turn).collect();
            self.restart_wires = Some(turn);
            self.events.push_back(SessionEvent::OpenWires {
                kinds,
                replace: true,
            });
        }
        // The signalling connection carries one request at a time; media keeps its pace while
        // it is answered.
        if self.awaiting.is_none() {
            let steps = mid_call_steps(self.spec.identity.kind);
            if let Some((method, params)) = self.restart.request(now, leg, &self.call_id) {
                self.request(now, method, params, Purpose::Restart);
            } else if let Some(step) = steps.get(talk.steps).filter(|s| {
                now.saturating_duration_since(talk.start) >= self.spec.talk * s.thirds / 3
            }) {
                talk.steps += 1;
                let mut params = json!({ "callId": self.call_id });
                if step.method == "transfer" || step.method == "conference" {
                    params["target"] = json!("third-party");
                }
                self.request(now, step.method, params, Purpose::Step(step));
            } else if now.saturating_duration_since(talk.last_keepalive) >= timeouts.keepalive {
                talk.last_keepalive = now;
                self.keepalive(now);
            }
        }
        if !matches!(self.phase, Phase::Talking) {
            return;
        }
        let (Some(talk), Some(leg)) = (&mut self.talk, &self.leg) else {
            return;
        };
        let silent = self.restart.dead_air(now, leg, talk.start);
        // Dead air drops the call when the path is up and the far end sends nothing. When the
        // path itself is down (the checks go unanswered too), ICE's recovery decides:
        // disconnected, then a restart; the call is lost when that fails.
        let path_up = leg
            .last_stun()
            .is_some_and(|t| now.saturating_duration_since(t) < PATH_SILENT);
        if silent > self.spec.dead_air {
            if let Some(why) = self.restart.failure() {
                talk.dropped = Some(format!(
                    "no RTP for {silent:?}; the ICE restart failed: {why}"
                ));
                return self.end_talk(now);
            }
            if path_up && self.restart.settled() {
                talk.dropped = Some(format!("no RTP for {silent:?}"));
                return self.end_talk(now);
            }
        }
        if let Some(e) = &leg.error {
            talk.dropped = Some(format!("{:?}", Some(e)));
            self.end_talk(now);
        }
    }

    /// The talk time is over (or the call dropped): a request still in flight has its own
    /// timeout, and its answer is awaited first.
    fn end_talk(&mut self, now: Instant) {
        if self.awaiting.is_some() {
            self.phase = Phase::Finishing;
        } else {
            self.after_talk(now);
        }
    }

    /// CleanUp: `bye`, which our anchor answers with its measurement of the agent's stream —
    /// or, for a panic logout, the page closing and the agent logging in again.
    fn after_talk(&mut self, now: Instant) {
        let (Some(talk), Some(leg)) = (&mut self.talk, &self.leg) else {
            return;
        };
        // A talk time that ends in dead air while ICE is still recovering (the path down, a
        // restart under way or not yet begun) is a dropped call: the customer hung up on
        // silence, whatever the restart would have done next.
        let silent = self.restart.dead_air(now, leg, talk.start);
        if talk.dropped.is_none()
            && talk.failure.is_none()
            && !self.hung_up
            && silent > self.spec.dead_air
        {
            let why = match self.restart.failure() {
                Some(why) => format!("the ICE restart failed: {why}"),
                None if self.restart.settled() => {
                    "the path was down, ICE not restarted yet".to_owned()
                }
                None => "the ICE restart was still under way".to_owned(),
            };
            talk.dropped = Some(format!(
                "the talk time ended after {silent:?} without RTP; {why}"
            ));
        }
        self.restart.finish(leg, &mut self.ice);
        self.state = SessionState::CleanUp;
        let panicked = self.spec.identity.kind == CallKind::PanicLogout
            && talk.failure.is_none()
            && talk.dropped.is_none();
        self.milestones.hangup_us = self.at(now);
        if panicked {
            // The page closes: no `bye`, no close frame, the peer connection just stops. The
            // agent logs in again on a new connection: the contact must still be up, and media
            // does not come back — the agent ends the contact from the new page.
            self.abandoned = true;
            self.connection = None;
            self.failed = None;
            self.events.push_back(SessionEvent::DropSignalling);
            self.phase = Phase::Relogin;
            return self.start_dial(now);
        }
        self.phase = Phase::HangingUp;
        let params = json!({ "callContextToken": self.spec.identity.call });
        self.request(now, "bye", params, Purpose::Bye);
    }

    /// A set-up failure before the call connected: the connection (if any) closes.
    fn fail(&mut self, now: Instant, fail: Fail) {
        self.outcome.get_or_insert(Err(fail));
        self.close(now);
    }

    /// A failure after the answer: `bye` first (its answer does not matter), then the close.
    fn hang_up_after_failure(&mut self, now: Instant) {
        self.phase = Phase::HangingUp;
        let params = json!({ "callContextToken": self.spec.identity.call });
        self.request(now, "bye", params, Purpose::FailureBye);
    }

    /// Starts the close handshake (our Close, then the endpoint's within a second), or ends
    /// the call at once when there is no connection left to close.
    fn close(&mut self, now: Instant) {
        self.awaiting = None;
        match &mut self.connection {
            Some(c) if !c.is_ended() && self.failed.is_none() => {
                c.close();
                self.phase = Phase::Closing {
                    until: now + CLOSE_WAIT,
                };
            }
            _ => self.finish(now, None),
        }
    }

    /// The call is over: its leg closes (releasing its allocations) unless it was abandoned.
    fn finish(&mut self, now: Instant, fail: Option<Fail>) {
        if let Some(fail) = fail {
            self.outcome.get_or_insert(Err(fail));
        }
        self.milestones.ended_us = self.at(now);
        if !self.abandoned
            && let Some(leg) = &mut self.leg
        {
            leg.close(now);
        }
        self.dial = None;
        self.connection = None;
        self.phase = Phase::Done;
        self.events.push_back(SessionEvent::DropSignalling);
        self.events.push_back(SessionEvent::Ended);
    }

    /// Keeps what our anchor says when the call ends (`bye` or `disconnectContact`): its
    /// measurement of the agent's stream and what it sent.
    fn take_anchor_half(&mut self, v: &Value) {
        let Some(leg) = &self.leg else { return };
        self.anchor.received = v
            .get("agentToAnchor")
            .and_then(|m| serde_json::from_value::<MediaStats>(m.clone()).ok())
            .map(|mut m| {
                // The anchor measured what it received; what was sent is the agent's to say.
                m.packets_sent = leg.frames_sent();
                m.wire_bytes_sent = leg.wire_bytes_sent;
                m.send_pacing_error = leg.pacing.clone();
                m
            });
        self.anchor.conference = v
            .get("anchorConference")
            .and_then(|c| serde_json::from_value::<AnchorConference>(c.clone()).ok());
        self.anchor.sent = v.get("anchorSent").and_then(Value::as_u64);
        self.anchor.wire_bytes = v.get("anchorWireBytes").and_then(Value::as_u64);
        self.anchor.pacing = v
            .get("anchorPacing")
            .and_then(|p| serde_json::from_value(p.clone()).ok());
    }

    /// The call's record, once it is over ([`SessionEvent::Ended`]), with the wall-clock
    /// instant it started.
    pub fn record(&mut self) -> CallRecord {
        let result = self.outcome.take().unwrap_or(Ok(()));
        let (outcome, failure) = failure_of(&self.spec, result, self.connected);
        // Where a failed call stopped says more than "Failed" (its class says why).
        let last_state = if failure.is_some() {
            self.state
        } else {
            SessionState::Disconnected
        };
        let relay_transport = self
            .leg
            .as_ref()
            .filter(|_| self.connected)
            .and_then(Leg::relay_transport);
        let conference = self
            .leg
            .as_ref()
            .and_then(Leg::heard)
            .zip(self.anchor.conference)
            .map(|(agent_heard, anchor)| ConferenceAudio {
                agent_heard,
                customer_heard: anchor.customer_heard,
                third_party_heard: anchor.third_party_heard,
            });
        let (spec, anchor, connected) = (&self.spec, &mut self.anchor, self.connected);
        let anchor_to_agent = self.leg.take().and_then(|mut leg| {
            let sent_by_anchor = anchor.sent.unwrap_or_else(|| leg.meter.received());
            let meter =
                std::mem::replace(&mut leg.meter, crate::measure::MediaMeter::new(spec.epoch));
            let pacing = anchor.pacing.take();
            connected.then(|| {
                let mut m =
                    meter.finish(sent_by_anchor, anchor.wire_bytes.unwrap_or(0), spec.codec);
                if let Some(p) = pacing {
                    m.send_pacing_error = p;
                }
                m
            })
        });
        let started_unix_ms = u64::try_from(self.unix_start.as_millis()).unwrap_or(u64::MAX);
        CallRecord {
            schema_version: SCHEMA_VERSION,
            identity: self.spec.identity.clone(),
            started_unix_ms,
            milestones: self.milestones,
            last_state,
            outcome,
            failure,
            ice: self.ice,
            relay_transport,
            agent_to_anchor: self.anchor.received.take(),
            anchor_to_agent,
            recording: None,
            conference,
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Why a connection attempt failed, as the retries report it.
fn connect_reason(e: SignallingError) -> String {
    match e {
        SignallingError::Connect(reason) => reason,
        other => other.to_string(),
    }
}

/// The ICE restart while talking, as connect-rtc-js runs it (`ConnectedSubstate` →
/// `IceRestartSubstate` → `ConnectSignalingAndIceCollectionSubstate` → `InviteAnswerSubstate`
/// → `AcceptSubstate`): ICE disconnected for [`RESTART_AFTER`] → a new offer with fresh
/// credentials and new allocations (`createOffer({iceRestart: true})`) → once gathered, an
/// `invite` with `iceRestart: true` naming the contact, retried [`RESTART_INVITE_RETRIES`]
/// times → the answer applied and `accept` → checks on the new pair. One attempt per
/// disconnection, no retry of a failed one (the library goes back to `ConnectedSubstate`).
#[derive(Debug, Default)]
struct IceRestart {
    phase: RestartPhase,
    /// The disconnection the latest restart answered (one restart for each).
    answered: Option<Instant>,
    /// A restart whose new wires are being opened.
    opening: Option<Attempt>,
}

/// Where the restart is.
#[derive(Debug, Default)]
enum RestartPhase {
    /// None under way.
    #[default]
    Idle,
    /// The new wires are being opened.
    Opening,
    /// The new allocations are gathering until `deadline` (the ICE collection timeout).
    Gathering {
        attempt: Attempt,
        offer: String,
        deadline: Instant,
    },
    /// An `invite` is in flight, or due at `retry_at`.
    Inviting {
        attempt: Attempt,
        invite: Value,
        retry_at: Option<Instant>,
    },
    /// The answer is applied; `accept` is due or in flight.
    Accepting { attempt: Attempt, sent: bool },
    /// The restart's signalling completed at this instant; ICE checks the new pair.
    Done(Instant),
    /// The restart failed, and why.
    Failed(String),
}

/// One restart's bookkeeping.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// When it began.
    started: Instant,
    /// Invites retried.
    retries: u32,
}

impl IceRestart {
    /// Whether nothing is under way that could bring media back: no restart, or one whose
    /// signalling is over.
    fn settled(&self) -> bool {
        matches!(
            self.phase,
            RestartPhase::Idle | RestartPhase::Done(_) | RestartPhase::Failed(_)
        )
    }

    /// Why the latest restart failed.
    fn failure(&self) -> Option<&str> {
        match &self.phase {
            RestartPhase::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// When the restart must be looked at next (its gathering deadline, its invite's retry).
    fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            RestartPhase::Gathering { deadline, .. } => Some(deadline),
            RestartPhase::Inviting { retry_at, .. } => retry_at,
            _ => None,
        }
    }

    /// How long the call has had no RTP at `now` (talking since `talk_start`): media needs
    /// the new pair nominated first, so after a restart dead air counts from its end.
    fn dead_air(&self, now: Instant, leg: &Leg, talk_start: Instant) -> Duration {
        let mut last = leg
            .meter
            .last_arrival()
            .unwrap_or(talk_start)
            .max(talk_start);
        if let RestartPhase::Done(at) = self.phase {
            last = last.max(at);
        }
        now.saturating_duration_since(last)
    }

    /// Starts a restart when ICE has been disconnected for [`RESTART_AFTER`] (once per
    /// disconnection): the TURN servers its new wires are for (a browser gathers anew, so the
    /// TURN names are looked up again).
    fn progress(
        &mut self,
        now: Instant,
        leg: &Leg,
        spec: &CallSpec,
        ice: &mut IceCounters,
    ) -> Option<Vec<TurnCredentials>> {
        let since = leg.times.ice_disconnected?;
        if now.saturating_duration_since(since) < RESTART_AFTER
            || !self.settled()
            || self.answered == Some(since)
        {
            return None;
        }
        self.answered = Some(since);
        ice.restart_attempts += 1;
        self.opening = Some(Attempt {
            started: now,
            retries: 0,
        });
        self.phase = RestartPhase::Opening;
        Some(resolve_turn(spec, now).0)
    }

    /// The restart's next signalling request (method and parameters), when one is due and
    /// the connection is idle.
    fn request(&mut self, now: Instant, leg: &Leg, call_id: &str) -> Option<(&'static str, Value)> {
        match &mut self.phase {
            RestartPhase::Gathering {
                attempt,
                offer,
                deadline,
            } => {
                if !leg.gathering_done() && now < *deadline {
                    return None;
                }
                let candidates: Vec<_> = leg
                    .local_candidates()
                    .iter()
                    .cloned()
                    .map(to_wire)
                    .collect();
                if candidates.is_empty() {
                    self.phase =
                        RestartPhase::Failed("no ICE candidate from the new allocations".into());
                    return None;
                }
                // As the library sends it in persistent-connection mode: the contact named, no
                // context token.
                let invite = json!({
                    "sdp": offer,
                    "candidates": candidates,
                    "callContextToken": null,
                    "contactId": call_id,
                    "persistentConnection": true,
                    "iceRestart": true,
                });
                self.phase = RestartPhase::Inviting {
                    attempt: *attempt,
                    invite: invite.clone(),
                    retry_at: None,
                };
                Some(("invite", invite))
            }
            RestartPhase::Inviting {
                invite, retry_at, ..
            } => {
                if now < (*retry_at)? {
                    return None;
                }
                *retry_at = None;
                Some(("invite", invite.clone()))
            }
            RestartPhase::Accepting { sent, .. } if !*sent => {
                *sent = true;
                Some(("accept", json!({})))
            }
            _ => None,
        }
    }

    /// Takes the result of the restart's request in flight.
    fn answered(
        &mut self,
        now: Instant,
        result: Result<&Value, &SignallingError>,
        leg: &mut Leg,
        ice: &mut IceCounters,
    ) {
        match &mut self.phase {
            RestartPhase::Inviting {
                attempt, retry_at, ..
            } => {
                let applied = result.map_err(ToString::to_string).and_then(|v| {
                    let answer: InviteAnswer = serde_json::from_value(v.clone())
                        .map_err(|e| format!("invite result: {e}"))?;
                    let candidates: Vec<_> = answer.candidates.into_iter().map(from_wire).collect();
                    if candidates.is_empty() {
                        return Err("the answer carried no ICE candidate".into());
                    }
                    leg.accept_restart(now, &answer.sdp, &candidates)
                        .map_err(|e| format!("{e:?}"))
                });
                match applied {
                    Ok(()) => {
                        self.phase = RestartPhase::Accepting {
                            attempt: *attempt,
                            sent: false,
                        };
                    }
                    Err(_) if attempt.retries < RESTART_INVITE_RETRIES => {
                        attempt.retries += 1;
                        ice.restart_invite_retries += 1;
                        *retry_at = Some(now + RESTART_RETRY_INTERVAL);
                    }
                    Err(why) => {
                        self.phase = RestartPhase::Failed(format!(
                            "invite: {why} ({RESTART_INVITE_RETRIES} retries)"
                        ));
                    }
                }
            }
            RestartPhase::Accepting { attempt, .. } => {
                self.phase = match result {
                    Ok(_) => {
                        ice.restart_successes += 1;
                        ice.restart_time_ms = Some(millis(now - attempt.started));
                        RestartPhase::Done(now)
                    }
                    Err(e) => RestartPhase::Failed(format!("accept: {e}")),
                };
            }
            _ => {}
        }
    }

    /// At the end of the talk time: ICE's counters, and how long the path took to come back
    /// after the disconnection the latest restart answered.
    fn finish(&self, leg: &Leg, ice: &mut IceCounters) {
        ice.connections_lost = leg.times.ice_connections_lost;
        if let (Some(since), Some(back)) = (self.answered, leg.times.ice_reconnected)
            && back > since
        {
            ice.recovered_ms = Some(millis(back - since));
        }
    }
}
