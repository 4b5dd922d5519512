//! One softphone call, as the CCP's softphone library runs it (DESIGN §4): the session state
//! machine with its timeouts, milestones and failure classes, ending in a [`CallRecord`] —
//! its sans-I/O core ([`Session`], in `core.rs`), what a call is given ([`CallSpec`]), and
//! [`run_call`], which drives the core on real sockets ([`crate::driver`]). Virtual time
//! (`sim::virtual_time`) drives the same core on a simulated clock.
//!
//! `GrabLocalMedia → CreateOffer → SetLocalDescription → ConnectSignalingAndIceCollection →
//! InviteAnswer → Accept → ConnectContact → Talking → CleanUp → Disconnected | Failed`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reports::emodel::Codec;
use reports::record::CcpEndpoints;
use reports::{CallIdentity, CallRecord, Failure, FailureClass, Outcome};
use rtc::peer_connection::transport::RTCIceCandidateInit;

use crate::leg::{LegError, TurnCredentials, TurnTransport};
use crate::signalling::{Candidate, Endpoint, SignallingError};

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
pub struct TurnName(Arc<dyn Fn(Instant) -> Result<SocketAddr, String> + Send + Sync>);

impl TurnName {
    /// A name that always resolves as `resolved` (an address, or why it does not resolve).
    pub fn fixed(resolved: Result<SocketAddr, String>) -> Self {
        Self(Arc::new(move |_| resolved.clone()))
    }

    /// A name looked up by `lookup` each time, given the instant of the lookup (a load
    /// balancer's DNS stops answering a failed node some time after it failed).
    pub fn new(
        lookup: impl Fn(Instant) -> Result<SocketAddr, String> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(lookup))
    }

    /// Looks the name up at `now`.
    pub fn resolve(&self, now: Instant) -> Result<SocketAddr, String> {
        (self.0)(now)
    }
}

impl std::fmt::Debug for TurnName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnName(..)")
    }
}

/// Looks up every TURN server of `spec` at `now`: the credentials of those that resolve, and each
/// URL with its answer (for a failure's detail).
pub(crate) fn resolve_turn(spec: &CallSpec, now: Instant) -> (Vec<TurnCredentials>, String) {
    let mut servers = Vec::new();
    let mut answers = Vec::new();
    for t in &spec.turn {
        match t.addr.resolve(now) {
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

/// The anchor's half of a conference's audio check, in its `bye` result.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AnchorConference {
    pub(crate) customer_heard: reports::Heard,
    pub(crate) third_party_heard: reports::Heard,
}

/// A failure's class and detail.
pub(crate) type Fail = (FailureClass, String);

/// Runs one call to its end on real sockets and the real clock ([`Session`] driven by
/// [`crate::driver`]) and returns its record. Never panics on network input: every failure
/// becomes the record's failure class.
#[allow(clippy::disallowed_methods)] // the edge: the real clock
pub async fn run_call(spec: CallSpec) -> CallRecord {
    // The Opus loop is encoded once per process: before this call's clock starts, not in the
    // middle of its first frame (a stall its own jitter figure would show).
    crate::audio::prepare();
    let hangup = spec.hangup.clone();
    let session = Session::new(
        spec,
        crate::entropy::Entropy::Os,
        Instant::now(),
        crate::clock::unix_now(),
    );
    crate::driver::drive(session, hangup).await
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
