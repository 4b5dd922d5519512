//! One softphone call, as the CCP's softphone library runs it (DESIGN §4): the session state
//! machine with its timeouts, milestones and failure classes, ending in a [`CallRecord`].
//!
//! `GrabLocalMedia → CreateOffer → SetLocalDescription → ConnectSignalingAndIceCollection →
//! InviteAnswer → Accept → ConnectContact → Talking → CleanUp → Disconnected | Failed`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reports::emodel::Codec;
use reports::record::{CcpEndpoints, ConferenceAudio, IceCounters, MediaStats};
use reports::{
    CallIdentity, CallRecord, Failure, FailureClass, Milestones, Outcome, SCHEMA_VERSION,
    SessionState,
};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use serde_json::{Value, json};

use crate::driver::DrivenPeer;
use crate::leg::{LegError, PeerConfig, TurnCredentials, TurnTransport};
use crate::peer::Peer;
use crate::signalling::{
    Candidate, Endpoint, Invite, InviteAnswer, SignallingClient, SignallingError,
};

pub mod core;
pub use self::core::{Session, SessionEvent};

/// Session timeouts (the CCP's defaults: 10 s, 8 s, 5 s, 2 s).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Signalling WebSocket connect, retries included.
    pub websocket_connect: Duration,
    /// ICE candidate collection (the TURN allocation).
    pub ice_collection: Duration,
    /// `invite` → answer.
    pub invite_answer: Duration,
    /// `accept` and `bye` acknowledgement.
    pub ack: Duration,
    /// ICE and DTLS after the answer.
    pub connect: Duration,
    /// While talking, the signalling connection is pinged this often, and its pong awaited
    /// twice as long (an outage that ICE survives must not end the call here): a connection
    /// stalled without a FIN or RST is found within three times this.
    pub keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            websocket_connect: Duration::from_secs(10),
            ice_collection: Duration::from_secs(8),
            invite_answer: Duration::from_secs(5),
            ack: Duration::from_secs(2),
            connect: Duration::from_secs(10),
            keepalive: Duration::from_secs(10),
        }
    }
}

/// Everything one call needs.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// Who, where, which run.
    pub identity: CallIdentity,
    /// The signalling endpoint, or why its name did not resolve.
    pub signalling: Result<Endpoint, String>,
    /// The TURN servers, as the agent is given them (a browser's `iceServers`).
    pub turn: Vec<TurnServer>,
    /// TURN username.
    pub turn_username: String,
    /// TURN password.
    pub turn_password: String,
    /// TURN realm.
    pub turn_realm: String,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Talk time once connected.
    pub talk: Duration,
    /// No RTP for this long drops the call.
    pub dead_air: Duration,
    /// The codec.
    pub codec: Codec,
    /// The instant media stamps count from (shared with the anchor, same host).
    pub epoch: Instant,
    /// The SSRC of the agent's stream.
    pub ssrc: u32,
    /// Becomes `true` when the run is stopping: a talking call hangs up at once.
    pub hangup: Option<tokio::sync::watch::Receiver<bool>>,
}

/// One TURN server as the agent is given it.
#[derive(Debug, Clone)]
pub struct TurnServer {
    /// The URL (for the CCP's messages), e.g. `turn:turn.example.com:3478?transport=udp`.
    pub url: String,
    /// Its name, looked up when the call gathers and again at each ICE restart.
    pub addr: TurnName,
    /// UDP, TCP or TLS.
    pub transport: TurnTransport,
}

/// A TURN server's name as the agent resolves it: each lookup may answer differently (a
/// load balancer's name rotates its addresses and drops a failed node's), so a browser that
/// gathers again for an ICE restart may reach another node than the call started on.
#[derive(Clone)]
pub struct TurnName(Arc<dyn Fn() -> Result<SocketAddr, String> + Send + Sync>);

impl TurnName {
    /// A name that always resolves as `resolved` (an address, or why it does not resolve).
    pub fn fixed(resolved: Result<SocketAddr, String>) -> Self {
        Self(Arc::new(move || resolved.clone()))
    }

    /// A name looked up by `lookup` each time.
    pub fn new(lookup: impl Fn() -> Result<SocketAddr, String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(lookup))
    }

    /// Looks the name up now.
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        (self.0)()
    }
}

impl std::fmt::Debug for TurnName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnName(..)")
    }
}

/// Looks up every TURN server of `spec` now: the credentials of those that resolve, and each
/// URL with its answer (for a failure's detail).
pub(crate) fn resolve_turn(spec: &CallSpec) -> (Vec<TurnCredentials>, String) {
    let mut servers = Vec::new();
    let mut answers = Vec::new();
    for t in &spec.turn {
        match t.addr.resolve() {
            Ok(server) => {
                answers.push(format!("{} ({server})", t.url));
                servers.push(TurnCredentials {
                    server,
                    username: spec.turn_username.clone(),
                    password: spec.turn_password.clone(),
                    realm: spec.turn_realm.clone(),
                    transport: t.transport.clone(),
                });
            }
            Err(e) => answers.push(format!("{} ({e})", t.url)),
        }
    }
    (servers, answers.join(", "))
}

/// Runs one call to its end and returns its record. Never panics on network input: every
/// failure becomes the record's failure class.
pub async fn run_call(spec: CallSpec) -> CallRecord {
    // The Opus loop is encoded once per process: before this call's clock starts, not in the
    // middle of its first frame (a stall its own jitter figure would show).
    crate::audio::prepare();
    let mut call = Call::new(&spec);
    let outcome = call.run(&spec).await;
    call.record(&spec, outcome)
}

struct Call {
    start: Instant,
    started_unix_ms: u64,
    milestones: Milestones,
    state: SessionState,
    peer: Option<DrivenPeer>,
    anchor_half: Option<MediaStats>,
    anchor_sent: Option<u64>,
    anchor_wire_bytes: Option<u64>,
    /// The leg was abandoned (a panic logout): it is never closed.
    abandoned: bool,
    anchor_pacing: Option<reports::Distribution>,
    connected: bool,
    /// ICE health and restarts while talking.
    ice: IceCounters,
    /// Each TURN URL and what its name resolved to when the call gathered.
    turn_answers: String,
    /// What the anchor's conference parties heard (a conference's `bye` result).
    anchor_conference: Option<AnchorConference>,
}

/// The anchor's half of a conference's audio check, in its `bye` result.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AnchorConference {
    pub(crate) customer_heard: reports::Heard,
    pub(crate) third_party_heard: reports::Heard,
}

/// A failure's class and detail.
pub(crate) type Fail = (FailureClass, String);

impl Call {
    fn new(_spec: &CallSpec) -> Self {
        let started_unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            start: Instant::now(),
            started_unix_ms,
            milestones: Milestones::default(),
            state: SessionState::GrabLocalMedia,
            peer: None,
            anchor_half: None,
            anchor_sent: None,
            anchor_wire_bytes: None,
            abandoned: false,
            anchor_pacing: None,
            connected: false,
            ice: IceCounters::default(),
            turn_answers: String::new(),
            anchor_conference: None,
        }
    }

    fn at(&self) -> Option<u64> {
        Some(u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    async fn run(&mut self, spec: &CallSpec) -> Result<(), Fail> {
        // GrabLocalMedia: a synthetic source, available at once.
        self.milestones.local_media_us = self.at();
        self.state = SessionState::CreateOffer;
        // A TURN name that does not resolve gives nothing to allocate from: its candidates
        // never come.
        let (turn, answers) = resolve_turn(spec);
        self.turn_answers = answers;
        let config = PeerConfig {
            turn,
            answering: false,
            epoch: spec.epoch,
            entropy: crate::entropy::Entropy::Os,
        };
        let resolved = !config.turn.is_empty();
        let now = Instant::now();
        let peer = Peer::new(config, spec.ssrc, now).map_err(|e| leg_failure(&e))?;
        let offer = peer.leg.offer();
        self.state = SessionState::SetLocalDescription;
        self.milestones.local_description_us = self.at();
        let mut driven = DrivenPeer::new(peer)
            .map_err(|e| (FailureClass::IceCollectionTimeout, e.to_string()))?;
        // A conference's parties each send a test tone, so that what each hears of the others
        // can be measured (`CallRecord::conference`).
        if spec.identity.kind == reports::CallKind::Conference {
            driven
                .peer
                .leg
                .set_signal(crate::audio::Signal::Tone(crate::audio::AGENT_TONE));
        }
        let result = self.converse(spec, &mut driven, &offer, resolved).await;
        // However the call ended, the leg's own figures go into the record.
        self.peer = Some(driven);
        result
    }

    /// Set-up on the signalling connection `client`, once ICE collection has ended: invite,
    /// accept, then ICE and DTLS on the leg `driven`. The call's id when it is connected;
    /// `None` for a missed call, declined with `bye`. The caller closes `client` unless the
    /// call goes on.
    async fn establish(
        &mut self,
        spec: &CallSpec,
        driven: &mut DrivenPeer,
        client: &mut SignallingClient,
        offer: &str,
        collected: bool,
    ) -> Result<Option<String>, Fail> {
        if !collected {
            let error = driven.peer.leg.allocation_error();
            return Err(match error {
                Some(e) => leg_failure(&e),
                None => (
                    FailureClass::IceCollectionTimeout,
                    format!(
                        "no relay candidate within {:?} from {}",
                        spec.timeouts.ice_collection, self.turn_answers
                    ),
                ),
            });
        }

        // InviteAnswer.
        self.state = SessionState::InviteAnswer;
        let invite = Invite {
            sdp: offer.to_owned(),
            candidates: driven
                .peer
                .leg
                .local_candidates()
                .iter()
                .cloned()
                .map(to_wire)
                .collect(),
            call_context_token: spec.identity.call.clone(),
        };
        self.milestones.invite_sent_us = self.at();
        let answer = client
            .invite(&invite, spec.timeouts.invite_answer)
            .await
            .map_err(|e| (e.class(), e.to_string()))?;
        self.milestones.answer_received_us = self.at();

        // A missed call: the agent lets the contact ring out and declines it.
        if spec.identity.kind == reports::CallKind::Missed {
            let _ = client.bye(&spec.identity.call, spec.timeouts.ack).await;
            return Ok(None);
        }

        // Accept: apply the answer, send `accept`.
        self.state = SessionState::Accept;
        let now = Instant::now();
        let sdp = RTCSessionDescription::answer(answer.sdp.clone())
            .map_err(|e| (FailureClass::InvalidRemoteSdp, e.to_string()))?;
        driven
            .peer
            .leg
            .accept(now, &sdp.sdp)
            .map_err(|e| (FailureClass::SetRemoteDescriptionFailure, format!("{e:?}")))?;
        if answer.candidates.is_empty() {
            return Err((
                FailureClass::NoRemoteIceCandidate,
                "the answer carried no ICE candidate".into(),
            ));
        }
        for c in answer.candidates {
            let _ = driven.peer.leg.add_remote_candidate(now, &from_wire(c));
        }
        // ICE runs while `accept` is answered, as in a browser, where the remote description
        // (applied above) starts the checks at once: left undriven, the leg sent its first
        // permission request and checks a round trip late.
        let ack = spec.timeouts.ack;
        let drive = async {
            let until = Instant::now() + ack + Duration::from_secs(1);
            driven.drive_until(until, None, |_| false).await;
            std::future::pending::<()>().await;
        };
        let accepted = tokio::select! {
            r = client.accept(ack) => r,
            () = drive => Err(SignallingError::Timeout("accept".into())),
        };
        accepted.map_err(|e| (e.class(), e.to_string()))?;
        self.milestones.accepted_us = self.at();

        // ConnectContact: ICE and DTLS.
        self.state = SessionState::ConnectContact;
        let connect_deadline = Instant::now() + spec.timeouts.connect;
        let connected = driven
            .drive_until(connect_deadline, None, |p| p.leg.times.connected.is_some())
            .await;
        let t = driven.peer.leg.times;
        self.milestones.ice_connected_us = t.ice_connected.map(|i| micros(i - self.start));
        if !connected {
            let detail = driven.peer.leg.error.clone();
            let progress = driven.peer.leg.dtls_progress();
            let _ = client.bye(&spec.identity.call, spec.timeouts.ack).await;
            return Err(if t.ice_connected.is_some() {
                (
                    FailureClass::DtlsHandshakeFailure,
                    match detail {
                        Some(e) => format!("DTLS failed ({e:?}): {progress}"),
                        None => format!("DTLS did not complete in time: {progress}"),
                    },
                )
            } else {
                (
                    FailureClass::IceConnectionFailed,
                    format!("no candidate pair connected: {detail:?}"),
                )
            });
        }
        self.milestones.dtls_connected_us = t.connected.map(|i| micros(i - self.start));
        self.connected = true;
        Ok(Some(answer.call_id))
    }

    /// The call from signalling connect and ICE collection to its end, on the leg `driven`.
    async fn converse(
        &mut self,
        spec: &CallSpec,
        driven: &mut DrivenPeer,
        offer: &str,
        resolved: bool,
    ) -> Result<(), Fail> {
        // Signalling connect and ICE collection run side by side.
        self.state = SessionState::ConnectSignalingAndIceCollection;
        let ice_deadline = Instant::now() + spec.timeouts.ice_collection;
        let signalling = async {
            let endpoint = spec
                .signalling
                .as_ref()
                .map_err(|e| SignallingError::Connect(e.clone()))?;
            let client =
                SignallingClient::connect(endpoint, spec.timeouts.websocket_connect, 3).await?;
            Ok::<_, SignallingError>((client, Instant::now()))
        };
        // Gathering ends when every allocation succeeded or failed; at the timeout the CCP goes
        // on with the candidates it has (a blocked UDP port with a working TCP fallback costs
        // the whole timeout).
        let collection = async {
            if !resolved {
                // No TURN server to allocate on (the leg would be a bare host): nothing comes.
                tokio::time::sleep_until(tokio::time::Instant::from_std(ice_deadline)).await;
                return (false, Instant::now());
            }
            driven
                .drive_until(ice_deadline, None, |p| p.leg.gathering_done())
                .await;
            (
                !driven.peer.leg.local_candidates().is_empty(),
                Instant::now(),
            )
        };
        let (client, (collected, collected_at)) = tokio::join!(signalling, collection);
        if collected {
            self.milestones.ice_collected_us = Some(micros(collected_at - self.start));
        }
        let mut client = match client {
            Ok((c, at)) => {
                // When it connected, not when ICE collection (run alongside) finished.
                self.milestones.signalling_connected_us = Some(micros(at - self.start));
                c
            }
            Err(e) => {
                return Err((e.class(), e.to_string()));
            }
        };
        let call_id = match self
            .establish(spec, driven, &mut client, offer, collected)
            .await
        {
            Ok(Some(call_id)) => call_id,
            // A missed call declined, or set-up failed: the signalling connection ends here.
            ended => {
                client.close().await;
                return ended.map(|_| ());
            }
        };

        // Talking: 20 ms frames for the talk time; dead air drops the call.
        self.state = SessionState::Talking;
        let talk_start = crate::clock::next_slot(spec.epoch, Instant::now());
        let kind = spec.identity.kind;
        // A transferring agent leaves at two thirds, the customer and the third party going on;
        // a panicking agent's page closes halfway.
        let talk_end = talk_start
            + match kind {
                reports::CallKind::Transfer => spec.talk * 2 / 3,
                reports::CallKind::PanicLogout => spec.talk / 2,
                _ => spec.talk,
            };
        let mut steps = mid_call_steps(kind).iter().peekable();
        let mut frame = 0u32;
        let mut dropped = None;
        let hung_up = || spec.hangup.as_ref().is_some_and(|h| *h.borrow());
        let mut signalling_failure: Option<Fail> = None;
        // The signalling client is idle, or held by a request in flight (a mid-call step's, the
        // keep-alive's, or an ICE restart's): media keeps its pace while signalling answers.
        enum Signalling {
            Idle(Box<SignallingClient>),
            Busy(Purpose, InFlight),
        }
        let mut signalling = Signalling::Idle(Box::new(client));
        let mut last_keepalive = Instant::now();
        let mut restart = IceRestart::default();
        while Instant::now() < talk_end && !hung_up() {
            let due = talk_start + Duration::from_millis(20) * frame;
            restart.progress(Instant::now(), driven, spec, &mut self.ice);
            signalling = match signalling {
                Signalling::Idle(c) => {
                    if let Some((method, params, timeout)) =
                        restart.request(Instant::now(), driven, &call_id, &spec.timeouts)
                    {
                        Signalling::Busy(Purpose::Restart, in_flight(c, method, params, timeout))
                    } else if let Some(step) =
                        steps.next_if(|st| talk_start.elapsed() >= spec.talk * st.thirds / 3)
                    {
                        let mut params = json!({ "callId": call_id });
                        if step.method == "transfer" || step.method == "conference" {
                            params["target"] = json!("third-party");
                        }
                        let request = in_flight(c, step.method, params, spec.timeouts.ack);
                        Signalling::Busy(Purpose::Step(step), request)
                    } else if last_keepalive.elapsed() >= spec.timeouts.keepalive {
                        last_keepalive = Instant::now();
                        // Twice the period: a network outage (a VPN rekey, a Wi-Fi handover)
                        // delays the pong as long as it lasts without breaking the connection,
                        // and ICE recovers the media from it.
                        let timeout = spec.timeouts.keepalive * 2;
                        let mut c = c;
                        Signalling::Busy(
                            Purpose::Step(&KEEPALIVE),
                            Box::pin(async move {
                                let result = c.keepalive(timeout).await.map(|()| Value::Null);
                                (*c, result)
                            }),
                        )
                    } else {
                        Signalling::Idle(c)
                    }
                }
                busy @ Signalling::Busy(..) => busy,
            };
            let drive = driven.drive_until(talk_end, Some(due), |_| false);
            if let Signalling::Busy(purpose, request) = &mut signalling {
                tokio::select! {
                    _ = drive => {}
                    (c, result) = request => {
                        let purpose = *purpose;
                        signalling = Signalling::Idle(Box::new(c));
                        match purpose {
                            // Its failure ends the restart, not the call.
                            Purpose::Restart => restart.answered(
                                Instant::now(),
                                result.as_ref(),
                                driven,
                                &mut self.ice,
                            ),
                            Purpose::Step(step) => {
                                if let Err(e) = result {
                                    signalling_failure = Some(step.failure(&e));
                                    break;
                                }
                                if step.method == "conference" {
                                    // The anchor mixes from now on.
                                    driven.peer.leg.listen();
                                }
                            }
                        }
                    }
                }
            } else {
                drive.await;
            }
            let now = Instant::now();
            if now >= due {
                driven.peer.send_frame_due(now, due);
                frame += 1;
            }
            if let Some(first) = driven.peer.leg.times.first_rtp {
                self.milestones
                    .first_rtp_us
                    .get_or_insert(micros(first - self.start));
            }
            let silent = restart.dead_air(now, driven, talk_start);
            // Dead air drops the call when the path is up and the far end sends nothing. When
            // the path itself is down (the checks go unanswered too), ICE's recovery decides:
            // disconnected, then a restart; the call is lost when that fails.
            let path_up = driven
                .peer
                .leg
                .last_stun()
                .is_some_and(|t| now.saturating_duration_since(t) < PATH_SILENT);
            if silent > spec.dead_air {
                if let Some(why) = restart.failure() {
                    dropped = Some(format!(
                        "no RTP for {silent:?}; the ICE restart failed: {why}"
                    ));
                    break;
                }
                if path_up && restart.settled() {
                    dropped = Some(format!("no RTP for {silent:?}"));
                    break;
                }
            }
            if driven.peer.leg.error.is_some() {
                dropped = Some(format!("{:?}", driven.peer.leg.error));
                break;
            }
        }
        // A request still in flight when the talk time ends has its own timeout; the client it
        // holds is needed for `bye`.
        let mut client = match signalling {
            Signalling::Idle(c) => *c,
            Signalling::Busy(purpose, request) => {
                let (c, result) = request.await;
                match purpose {
                    Purpose::Restart => {
                        restart.answered(Instant::now(), result.as_ref(), driven, &mut self.ice);
                    }
                    Purpose::Step(step) => {
                        if let Err(e) = result {
                            signalling_failure.get_or_insert(step.failure(&e));
                        }
                    }
                }
                c
            }
        };
        // A talk time that ends in dead air while ICE is still recovering (the path down, a
        // restart under way or not yet begun) is a dropped call: the customer hung up on
        // silence, whatever the restart would have done next.
        let silent = restart.dead_air(Instant::now(), driven, talk_start);
        if dropped.is_none() && signalling_failure.is_none() && !hung_up() && silent > spec.dead_air
        {
            let why = match restart.failure() {
                Some(why) => format!("the ICE restart failed: {why}"),
                None if restart.settled() => "the path was down, ICE not restarted yet".to_owned(),
                None => "the ICE restart was still under way".to_owned(),
            };
            dropped = Some(format!(
                "the talk time ended after {silent:?} without RTP; {why}"
            ));
        }
        restart.finish(&driven.peer, &mut self.ice);

        // CleanUp: `bye`, which our anchor answers with its measurement of the agent's stream.
        self.state = SessionState::CleanUp;
        self.milestones.hangup_us = self.at();
        // The contact as the library names it in persistent-connection mode.
        let contact = json!({
            "contactId": call_id,
            "persistentConnection": true,
            "callContextToken": spec.identity.call,
        });
        if kind == reports::CallKind::PanicLogout
            && signalling_failure.is_none()
            && dropped.is_none()
        {
            // The page closes: no `bye`, no close frame, the peer connection just stops. The
            // agent logs in again on a new connection: the contact must still be up, and media
            // does not come back — the agent ends the contact from the new page.
            drop(client);
            self.abandoned = true;
            let relogin = async {
                let endpoint = spec
                    .signalling
                    .as_ref()
                    .map_err(|e| (FailureClass::SignallingConnectionFailure, e.clone()))?;
                let mut client =
                    SignallingClient::connect(endpoint, spec.timeouts.websocket_connect, 3)
                        .await
                        .map_err(|e| (e.class(), format!("logging in again: {e}")))?;
                let ended = async {
                    client
                        .call("connectContact", contact.clone(), spec.timeouts.ack)
                        .await
                        .map_err(|e| {
                            (e.class(), format!("connectContact after logging in: {e}"))
                        })?;
                    client
                        .call(
                            "disconnectContact",
                            json!({ "contactId": call_id }),
                            spec.timeouts.ack,
                        )
                        .await
                        .map_err(|e| (e.class(), format!("disconnectContact: {e}")))
                }
                .await;
                client.close().await;
                ended
            };
            let ended: Result<Value, Fail> = relogin.await;
            if let Ok(v) = &ended {
                self.take_anchor_half(v, &driven.peer);
            }
            return ended.map(|_| ());
        }
        if let Ok(v) = client.bye(&spec.identity.call, spec.timeouts.ack).await {
            self.take_anchor_half(&v, &driven.peer);
        }
        client.close().await;
        if let Some(failure) = signalling_failure {
            return Err(failure);
        }
        match dropped {
            Some(detail) => Err((FailureClass::MediaTimeout, detail)),
            None => Ok(()),
        }
    }

    /// Keeps what our anchor says when the call ends (`bye` or `disconnectContact`): its
    /// measurement of the agent's stream and what it sent.
    fn take_anchor_half(&mut self, v: &Value, peer: &Peer) {
        self.anchor_half = v
            .get("agentToAnchor")
            .and_then(|m| serde_json::from_value::<MediaStats>(m.clone()).ok())
            .map(|mut m| {
                // The anchor measured what it received; what was sent is the agent's to say.
                m.packets_sent = peer.leg.frames_sent();
                m.wire_bytes_sent = peer.leg.wire_bytes_sent;
                m.send_pacing_error = peer.leg.pacing.clone();
                m
            });
        self.anchor_conference = v
            .get("anchorConference")
            .and_then(|c| serde_json::from_value::<AnchorConference>(c.clone()).ok());
        self.anchor_sent = v.get("anchorSent").and_then(Value::as_u64);
        self.anchor_wire_bytes = v.get("anchorWireBytes").and_then(Value::as_u64);
        self.anchor_pacing = v
            .get("anchorPacing")
            .and_then(|p| serde_json::from_value(p.clone()).ok());
    }

    fn record(mut self, spec: &CallSpec, result: Result<(), Fail>) -> CallRecord {
        self.milestones.ended_us = self.at();
        let (outcome, failure) = failure_of(spec, result, self.connected);
        // Where a failed call stopped says more than "Failed" (its class says why).
        let last_state = if failure.is_some() {
            self.state
        } else {
            SessionState::Disconnected
        };
        let abandoned = self.abandoned;
        let relay_transport = self
            .peer
            .as_ref()
            .filter(|_| self.connected)
            .and_then(|d| d.peer.leg.relay_transport());
        let conference = self
            .peer
            .as_ref()
            .and_then(|d| d.peer.leg.heard())
            .zip(self.anchor_conference)
            .map(|(agent_heard, anchor)| ConferenceAudio {
                agent_heard,
                customer_heard: anchor.customer_heard,
                third_party_heard: anchor.third_party_heard,
            });
        let anchor_to_agent = self.peer.take().and_then(|mut d| {
            if !abandoned {
                d.peer.close(Instant::now());
            }
            let sent_by_anchor = self
                .anchor_sent
                .unwrap_or_else(|| d.peer.leg.meter.received());
            let meter = std::mem::replace(
                &mut d.peer.leg.meter,
                crate::measure::MediaMeter::new(spec.epoch),
            );
            let pacing = self.anchor_pacing.take();
            (self.connected).then(|| {
                let mut m = meter.finish(
                    sent_by_anchor,
                    self.anchor_wire_bytes.unwrap_or(0),
                    spec.codec,
                );
                if let Some(p) = pacing {
                    m.send_pacing_error = p;
                }
                m
            })
        });
        CallRecord {
            schema_version: SCHEMA_VERSION,
            identity: spec.identity.clone(),
            started_unix_ms: self.started_unix_ms,
            milestones: self.milestones,
            last_state,
            outcome,
            failure,
            ice: self.ice,
            relay_transport,
            agent_to_anchor: self.anchor_half,
            anchor_to_agent,
            recording: None,
            conference,
        }
    }
}

/// A call's outcome and failure (with the CCP's message naming the call's endpoints) from how
/// it ended; `connected`: whether DTLS connected (a failure after it is a dropped call).
pub(crate) fn failure_of(
    spec: &CallSpec,
    result: Result<(), Fail>,
    connected: bool,
) -> (Outcome, Option<Failure>) {
    match result {
        Ok(()) => (Outcome::Completed, None),
        Err((class, detail)) => {
            let endpoints = CcpEndpoints {
                signalling: spec
                    .signalling
                    .as_ref()
                    .map_or("wss://signalling", |e| e.url.as_str()),
                turn: spec.turn.first().map_or("turn:", |t| t.url.as_str()),
            };
            let outcome = if connected {
                Outcome::Dropped
            } else {
                Outcome::Failed
            };
            (
                outcome,
                Some(Failure {
                    class,
                    detail,
                    ccp_message: class.ccp_message(endpoints),
                    own_lateness: None,
                }),
            )
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How long the leg may hear no STUN from the far end (a check or the answer to one) before
/// its path counts as down: twice the agent's consent-check interval (`rtc`'s ICE keepalive,
/// 2 s), so two checks in a row went unanswered.
pub const PATH_SILENT: Duration = Duration::from_secs(4);
/// The CCP waits this long in ICE `disconnected` before it restarts ICE (connect-rtc-js
/// `ConnectedSubstate.retryInterval`): a path back within it needs no restart.
pub const RESTART_AFTER: Duration = Duration::from_secs(3);
/// Invite retries of a restart (connect-rtc-js `InviteAnswerSubstate.maxRetries`).
pub const RESTART_INVITE_RETRIES: u32 = 3;
/// Between a restart's invite attempts (`InviteAnswerSubstate.retryInterval`).
pub(crate) const RESTART_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// A signalling request in flight while talking, with the client it holds.
type InFlight = std::pin::Pin<
    Box<dyn Future<Output = (SignallingClient, Result<Value, SignallingError>)> + Send>,
>;

/// `method` with `params` on `client`, waiting `timeout` for its answer.
fn in_flight(
    mut client: Box<SignallingClient>,
    method: &'static str,
    params: Value,
    timeout: Duration,
) -> InFlight {
    Box::pin(async move {
        let result = client.call(method, params, timeout).await;
        (*client, result)
    })
}

/// Whose request holds the signalling connection while talking.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    /// A mid-call step's or the keep-alive's: its failure fails the call.
    Step(&'static MidCallStep),
    /// The ICE restart's: its failure ends the restart.
    Restart,
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
    phase: Phase,
    /// The disconnection the latest restart answered (one restart for each).
    answered: Option<Instant>,
}

/// Where the restart is.
#[derive(Debug, Default)]
enum Phase {
    /// None under way.
    #[default]
    Idle,
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
        matches!(self.phase, Phase::Idle | Phase::Done(_) | Phase::Failed(_))
    }

    /// When the latest restart's signalling completed.
    fn done_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Done(at) => Some(at),
            _ => None,
        }
    }

    /// Why the latest restart failed.
    fn failure(&self) -> Option<&str> {
        match &self.phase {
            Phase::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// How long the call has had no RTP at `now` (talking since `talk_start`): media needs
    /// the new pair nominated first, so after a restart dead air counts from its end.
    fn dead_air(&self, now: Instant, driven: &DrivenPeer, talk_start: Instant) -> Duration {
        let mut last = driven.peer.leg.meter.last_arrival().unwrap_or(talk_start);
        if let Some(at) = self.done_at() {
            last = last.max(at);
        }
        now.saturating_duration_since(last)
    }

    /// Starts a restart when ICE has been disconnected for [`RESTART_AFTER`] (once per
    /// disconnection).
    fn progress(
        &mut self,
        now: Instant,
        driven: &mut DrivenPeer,
        spec: &CallSpec,
        ice: &mut IceCounters,
    ) {
        let Some(since) = driven.peer.leg.times.ice_disconnected else {
            return;
        };
        if now.saturating_duration_since(since) < RESTART_AFTER
            || !self.settled()
            || self.answered == Some(since)
        {
            return;
        }
        self.answered = Some(since);
        ice.restart_attempts += 1;
        let attempt = Attempt {
            started: now,
            retries: 0,
        };
        // A browser gathers anew: the TURN names are looked up again.
        let (servers, _) = resolve_turn(spec);
        self.phase = match driven.restart_ice(now, servers) {
            Ok(offer) => Phase::Gathering {
                attempt,
                offer,
                deadline: now + spec.timeouts.ice_collection,
            },
            Err(e) => Phase::Failed(format!("{e:?}")),
        };
    }

    /// The restart's next signalling request (method, parameters, timeout), when one is due
    /// and the connection is idle.
    fn request(
        &mut self,
        now: Instant,
        driven: &DrivenPeer,
        call_id: &str,
        timeouts: &Timeouts,
    ) -> Option<(&'static str, Value, Duration)> {
        match &mut self.phase {
            Phase::Gathering {
                attempt,
                offer,
                deadline,
            } => {
                if !driven.peer.leg.gathering_done() && now < *deadline {
                    return None;
                }
                let candidates: Vec<Candidate> = driven
                    .peer
                    .leg
                    .local_candidates()
                    .iter()
                    .cloned()
                    .map(to_wire)
                    .collect();
                if candidates.is_empty() {
                    self.phase = Phase::Failed("no ICE candidate from the new allocations".into());
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
                self.phase = Phase::Inviting {
                    attempt: *attempt,
                    invite: invite.clone(),
                    retry_at: None,
                };
                Some(("invite", invite, timeouts.invite_answer))
            }
            Phase::Inviting {
                invite, retry_at, ..
            } => {
                if now < (*retry_at)? {
                    return None;
                }
                *retry_at = None;
                Some(("invite", invite.clone(), timeouts.invite_answer))
            }
            Phase::Accepting { sent, .. } if !*sent => {
                *sent = true;
                Some(("accept", json!({}), timeouts.ack))
            }
            _ => None,
        }
    }

    /// Takes the result of the restart's request in flight.
    fn answered(
        &mut self,
        now: Instant,
        result: Result<&Value, &SignallingError>,
        driven: &mut DrivenPeer,
        ice: &mut IceCounters,
    ) {
        match &mut self.phase {
            Phase::Inviting {
                attempt, retry_at, ..
            } => {
                let applied = result.map_err(ToString::to_string).and_then(|v| {
                    let answer: InviteAnswer = serde_json::from_value(v.clone())
                        .map_err(|e| format!("invite result: {e}"))?;
                    let candidates: Vec<_> = answer.candidates.into_iter().map(from_wire).collect();
                    if candidates.is_empty() {
                        return Err("the answer carried no ICE candidate".into());
                    }
                    driven
                        .peer
                        .leg
                        .accept_restart(now, &answer.sdp, &candidates)
                        .map_err(|e| format!("{e:?}"))
                });
                match applied {
                    Ok(()) => {
                        self.phase = Phase::Accepting {
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
                        self.phase = Phase::Failed(format!(
                            "invite: {why} ({RESTART_INVITE_RETRIES} retries)"
                        ));
                    }
                }
            }
            Phase::Accepting { attempt, .. } => {
                self.phase = match result {
                    Ok(_) => {
                        ice.restart_successes += 1;
                        ice.restart_time_ms = Some(millis(now - attempt.started));
                        Phase::Done(now)
                    }
                    Err(e) => Phase::Failed(format!("accept: {e}")),
                };
            }
            _ => {}
        }
    }

    /// At the end of the talk time: ICE's counters, and how long the path took to come back
    /// after the disconnection the latest restart answered.
    fn finish(&self, peer: &Peer, ice: &mut IceCounters) {
        ice.connections_lost = peer.leg.times.ice_connections_lost;
        if let (Some(since), Some(back)) = (self.answered, peer.leg.times.ice_reconnected)
            && back > since
        {
            ice.recovered_ms = Some(millis(back - since));
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A signalling request a call kind makes while talking: sent at `thirds`/3 of the talk time;
/// refused or unanswered, it fails the call with `class` (or the signalling error's own class).
#[derive(Debug)]
pub(crate) struct MidCallStep {
    pub(crate) thirds: u32,
    pub(crate) method: &'static str,
    class: Option<FailureClass>,
}

impl MidCallStep {
    /// The call's failure when this step's request failed with `e`.
    pub(crate) fn failure(&self, e: &SignallingError) -> Fail {
        let class = self.class.unwrap_or_else(|| e.class());
        (class, format!("{}: {e}", self.method))
    }
}

/// The signalling keep-alive while talking: a ping every [`Timeouts::keepalive`]; a missing
/// pong means the signalling connection is gone although nothing closed it (a middlebox
/// stalled it), and the call is dropped with its class.
pub(crate) static KEEPALIVE: MidCallStep = MidCallStep {
    thirds: 0,
    method: "keep-alive",
    class: Some(FailureClass::SignallingConnectionFailure),
};

/// The mid-call steps of each kind. Hold at a third and resume at two thirds (media keeps
/// flowing: the customer hears hold music); a transfer or a conference brings in a third party
/// at a third — the anchor bridges or mixes it into the same media session, so the agent's leg
/// must carry on unbroken.
pub(crate) fn mid_call_steps(kind: reports::CallKind) -> &'static [MidCallStep] {
    use reports::CallKind;
    match kind {
        CallKind::HoldResume => &[
            MidCallStep {
                thirds: 1,
                method: "hold",
                class: None,
            },
            MidCallStep {
                thirds: 2,
                method: "resume",
                class: None,
            },
        ],
        CallKind::Transfer => &[MidCallStep {
            thirds: 1,
            method: "transfer",
            class: Some(FailureClass::TransferFailure),
        }],
        CallKind::Conference => &[MidCallStep {
            thirds: 1,
            method: "conference",
            class: Some(FailureClass::ConferenceFailure),
        }],
        _ => &[],
    }
}

/// The failure class and detail a leg error stands for.
pub fn leg_failure(e: &LegError) -> (FailureClass, String) {
    match e {
        LegError::TurnAuth(d) => (FailureClass::TurnAuthFailure, d.clone()),
        LegError::TurnAllocation(d) => (FailureClass::TurnAllocationFailure, d.clone()),
        // The CCP reports an unreachable TURN server as an ICE collection timeout.
        LegError::TurnUnreachable => (
            FailureClass::IceCollectionTimeout,
            "no answer from the TURN server".into(),
        ),
        LegError::IceFailed => (FailureClass::IceConnectionFailed, "ICE failed".into()),
        LegError::DtlsFailed => (FailureClass::DtlsHandshakeFailure, "DTLS failed".into()),
        LegError::Sdp(d) => (FailureClass::SetRemoteDescriptionFailure, d.clone()),
        LegError::Io(d) => (FailureClass::IceCollectionTimeout, d.clone()),
    }
}

/// A candidate as it goes on the wire.
pub fn to_wire(c: RTCIceCandidateInit) -> Candidate {
    Candidate {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_m_line_index: c.sdp_mline_index,
    }
}

/// A wire candidate as a leg takes it.
pub fn from_wire(c: Candidate) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_m_line_index,
        ..Default::default()
    }
}
