//! One call's record: identity, setup milestones, outcome and media figures; stored as JSON Lines.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::distribution::Distribution;

/// The version of the [`CallRecord`] JSON layout. Bumped on any change a reader would notice;
/// readers refuse versions they do not know rather than guess. Version 2 added
/// [`CallRecord::relay_transport`], version 3 [`CallRecord::recording`], version 4 the ICE
/// restart's figures in [`IceCounters`], version 5 [`CallRecord::conference`], version 6
/// [`Failure::own_lateness`]; older records still read (without them).
pub const SCHEMA_VERSION: u32 = 6;

/// The oldest record version this build reads.
pub const OLDEST_SCHEMA_VERSION: u32 = 1;

/// One call, as the agent and the anchor saw it: one line of `calls.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRecord {
    /// Always [`SCHEMA_VERSION`] when written by this version.
    pub schema_version: u32,
    /// Who placed the call, where and in which run.
    pub identity: CallIdentity,
    /// Wall-clock start of the call, milliseconds since the Unix epoch: the origin of every
    /// milestone.
    pub started_unix_ms: u64,
    /// When each step of the session was reached.
    pub milestones: Milestones,
    /// `disconnected` for a call that ended normally; for a failed or dropped call, the state it
    /// was in when it failed (e.g. `connect_signaling_and_ice_collection`).
    pub last_state: SessionState,
    /// How the call ended.
    pub outcome: Outcome,
    /// Why it failed or dropped; `None` for completed calls, `Some` otherwise.
    pub failure: Option<Failure>,
    /// ICE connection losses and restarts during the call.
    pub ice: IceCounters,
    /// How the agent reached the TURN relay that carried its media (`udp`, `tcp` or `tls`);
    /// `None` when no media flowed, or in a version 1 record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_transport: Option<RelayTransport>,
    /// Media received by the anchor, sent by the agent.
    pub agent_to_anchor: Option<MediaStats>,
    /// Media received by the agent, sent by the anchor.
    pub anchor_to_agent: Option<MediaStats>,
    /// The call's recording (a WAV file), relative to the run folder, when the scenario
    /// records calls and this one connected; `None` otherwise, or before version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
    /// What each party of a conference heard, when the call became one; `None` otherwise,
    /// or before version 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conference: Option<ConferenceAudio>,
}

/// What each of a conference's three parties heard of each party's test tone, measured in
/// the audio that party decoded once the anchor mixed (a party hears the other two, never
/// itself).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConferenceAudio {
    /// What the agent heard: measured by the agent.
    pub agent_heard: Heard,
    /// What the customer heard: measured at the anchor, after the customer's own codec.
    pub customer_heard: Heard,
    /// What the third party heard: measured at the anchor, after its own codec.
    pub third_party_heard: Heard,
}

/// The level (dBFS, mean over the frames measured; a full-scale sine is 0, nothing is −120)
/// of each party's test tone in what one party heard.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heard {
    /// The agent's tone.
    pub agent_db: f64,
    /// The customer's tone.
    pub customer_db: f64,
    /// The third party's tone.
    pub third_party_db: f64,
    /// 20 ms frames measured.
    pub frames: u64,
}

/// Who placed a call, in which run, through which path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallIdentity {
    /// The run this call belongs to (the run folder's name).
    pub run: String,
    /// The call's id, unique within the run.
    pub call: String,
    /// The agent that placed or took the call.
    pub agent: String,
    /// The scenario's name.
    pub scenario: String,
    /// The site the agent sits at.
    pub site: String,
    /// The network profile (or chain of profiles) of the site's path, e.g. `office-lan`.
    pub profile: String,
    /// What kind of call it was.
    pub kind: CallKind,
    /// Which load-generator shard placed it.
    pub shard: Shard,
}

/// One shard of a load split over several generators: `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// This shard, 0-based.
    pub index: u32,
    /// How many shards the run has (1 when not sharded).
    pub count: u32,
}

impl Shard {
    /// The one shard of an unsharded run.
    pub const WHOLE: Self = Self { index: 0, count: 1 };
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The call kinds of DESIGN §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CallKind {
    /// Customer → queue → agent offered → accept.
    Inbound,
    /// The agent dials out.
    Outbound,
    /// The agent bridges a third party and leaves; the customer leg must survive.
    Transfer,
    /// Three parties mixed at the anchor.
    Conference,
    /// The agent does not accept: the contact ends in the missed state.
    Missed,
    /// The agent's page closes mid-call and logs in again.
    PanicLogout,
    /// The call is held and resumed.
    HoldResume,
}

impl CallKind {
    /// Every kind, in a stable order.
    pub const ALL: [Self; 7] = [
        Self::Inbound,
        Self::Outbound,
        Self::Transfer,
        Self::Conference,
        Self::Missed,
        Self::PanicLogout,
        Self::HoldResume,
    ];

    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Transfer => "transfer",
            Self::Conference => "conference",
            Self::Missed => "missed",
            Self::PanicLogout => "panic_logout",
            Self::HoldResume => "hold_resume",
        }
    }
}

/// The states of the softphone session (DESIGN §4, after connect-rtc-js).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SessionState {
    /// Opening the microphone (a synthetic source here).
    GrabLocalMedia,
    /// Creating the SDP offer.
    CreateOffer,
    /// Applying the offer locally; starts ICE gathering.
    SetLocalDescription,
    /// Connecting the signalling WebSocket while gathering ICE candidates (the TURN allocation).
    ConnectSignalingAndIceCollection,
    /// `invite` sent, waiting for the answer.
    InviteAnswer,
    /// Applying the answer, sending `accept`.
    Accept,
    /// Waiting for ICE and DTLS to connect and media to flow.
    ConnectContact,
    /// Media flowing both ways.
    Talking,
    /// Hanging up: `bye`, closing the peer connection.
    CleanUp,
    /// Ended normally.
    Disconnected,
    /// Ended with a failure.
    Failed,
}

/// How a call ended. The error rate counts `Failed` and `Dropped` (DESIGN §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Connected and ended as the call kind intended.
    Completed,
    /// Never connected.
    Failed,
    /// Connected, then lost (media timeout or ICE failure mid-call).
    Dropped,
}

impl Outcome {
    /// Every outcome, in a stable order.
    pub const ALL: [Self; 3] = [Self::Completed, Self::Failed, Self::Dropped];

    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
        }
    }

    /// Whether the error rate counts this outcome.
    pub const fn is_error(self) -> bool {
        !matches!(self, Self::Completed)
    }
}

/// Why a call failed or dropped: its class and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// The failure class.
    pub class: FailureClass,
    /// What the agent or anchor observed, for a person (e.g. the TURN error code).
    pub detail: String,
    /// The message the CCP would show or log, when it has one ([`FailureClass::ccp_message`]).
    pub ccp_message: Option<String>,
    /// When the failure began while one of the simulator's own components was late, which and
    /// how ([`crate::overload::LateSpan::describe`]): the failure may be the simulator's, not
    /// the network's. `None` otherwise, or before version 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_lateness: Option<String>,
}

/// The failure classes of DESIGN §4. A call carries exactly one, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureClass {
    /// The signalling WebSocket could not be opened within its timeout (3 tries in 10 s).
    SignallingConnectionFailure,
    /// The signalling server refused or did not answer the invite handshake.
    SignallingHandshakeFailure,
    /// No relay candidate was gathered within the ICE collection timeout (8 s): TURN unreachable.
    IceCollectionTimeout,
    /// The answer carried no ICE candidate.
    NoRemoteIceCandidate,
    /// The answer's SDP could not be parsed.
    InvalidRemoteSdp,
    /// The answer's SDP parsed but could not be applied.
    SetRemoteDescriptionFailure,
    /// The signalling server answered 403.
    AccessDenied,
    /// The signalling server answered 486: the agent is on another call.
    UserBusy,
    /// The signalling server answered 404: the contact is gone.
    CallNotFound,
    /// ICE checks failed: no candidate pair connected.
    IceConnectionFailed,
    /// The DTLS handshake failed or timed out.
    DtlsHandshakeFailure,
    /// The TURN server rejected the credentials (401 after authenticating, 441).
    TurnAuthFailure,
    /// The TURN server refused the allocation (403, 486, 508, …).
    TurnAllocationFailure,
    /// No RTP for the scenario's dead-air limit: a dropped call.
    MediaTimeout,
    /// The transfer's customer leg did not survive the agent leaving.
    TransferFailure,
    /// The conference did not mix all three parties.
    ConferenceFailure,
}

/// Endpoints named in the CCP's messages.
#[derive(Debug, Clone, Copy)]
pub struct CcpEndpoints<'a> {
    /// The signalling URL, e.g. `wss://rtc.example:443/`.
    pub signalling: &'a str,
    /// The TURN URL, e.g. `turn:TurnNlb-xxx.elb.us-east-1.amazonaws.com:3478?transport=udp`.
    pub turn: &'a str,
}

impl FailureClass {
    /// Every class, in a stable order.
    pub const ALL: [Self; 16] = [
        Self::SignallingConnectionFailure,
        Self::SignallingHandshakeFailure,
        Self::IceCollectionTimeout,
        Self::NoRemoteIceCandidate,
        Self::InvalidRemoteSdp,
        Self::SetRemoteDescriptionFailure,
        Self::AccessDenied,
        Self::UserBusy,
        Self::CallNotFound,
        Self::IceConnectionFailed,
        Self::DtlsHandshakeFailure,
        Self::TurnAuthFailure,
        Self::TurnAllocationFailure,
        Self::MediaTimeout,
        Self::TransferFailure,
        Self::ConferenceFailure,
    ];

    /// The stable snake_case name, as in files and CCP logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SignallingConnectionFailure => "signalling_connection_failure",
            Self::SignallingHandshakeFailure => "signalling_handshake_failure",
            Self::IceCollectionTimeout => "ice_collection_timeout",
            Self::NoRemoteIceCandidate => "no_remote_ice_candidate",
            Self::InvalidRemoteSdp => "invalid_remote_sdp",
            Self::SetRemoteDescriptionFailure => "set_remote_description_failure",
            Self::AccessDenied => "access_denied",
            Self::UserBusy => "user_busy",
            Self::CallNotFound => "call_not_found",
            Self::IceConnectionFailed => "ice_connection_failed",
            Self::DtlsHandshakeFailure => "dtls_handshake_failure",
            Self::TurnAuthFailure => "turn_auth_failure",
            Self::TurnAllocationFailure => "turn_allocation_failure",
            Self::MediaTimeout => "media_timeout",
            Self::TransferFailure => "transfer_failure",
            Self::ConferenceFailure => "conference_failure",
        }
    }

    /// The text the CCP shows or logs for this failure, where it has one.
    ///
    /// From amazon-connect-streams (`publishSoftphoneFailureLogs` in `softphone.js`) and the
    /// Amazon Connect administrator guide ("Set up your network", DNS resolution): a TURN server
    /// the browser cannot reach surfaces in the CCP as "Failed to establish softphone
    /// connection…"; the other texts are the softphone error messages the CCP publishes.
    pub fn ccp_message(self, at: CcpEndpoints<'_>) -> Option<String> {
        Some(match self {
            Self::IceCollectionTimeout
            | Self::TurnAllocationFailure
            | Self::IceConnectionFailed => {
                format!(
                    "Failed to establish softphone connection. Try again or contact your \
                     administrator with the following: Browser unable to establish media channel \
                     with {}",
                    at.turn
                )
            }
            Self::SignallingConnectionFailure => {
                format!("URL {} cannot be reached.", at.signalling)
            }
            Self::SignallingHandshakeFailure => {
                format!(
                    "Handshaking with Signalling Server {} failed.",
                    at.signalling
                )
            }
            Self::UserBusy => "Softphone call UserBusy error.".to_owned(),
            _ => return None,
        })
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Instants at which the session reached each step, microseconds after
/// [`CallRecord::started_unix_ms`]; `None` for steps never reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Milestones {
    /// Local media (microphone) obtained.
    pub local_media_us: Option<u64>,
    /// Local description applied: ICE gathering and the signalling connect start here.
    pub local_description_us: Option<u64>,
    /// Signalling WebSocket open (TLS and upgrade done).
    pub signalling_connected_us: Option<u64>,
    /// ICE gathering done (the relay candidate from the TURN allocation).
    pub ice_collected_us: Option<u64>,
    /// `invite` sent.
    pub invite_sent_us: Option<u64>,
    /// Answer received.
    pub answer_received_us: Option<u64>,
    /// `accept` acknowledged.
    pub accepted_us: Option<u64>,
    /// ICE connected (a candidate pair nominated).
    pub ice_connected_us: Option<u64>,
    /// DTLS handshake done, SRTP keys in place.
    pub dtls_connected_us: Option<u64>,
    /// First RTP packet received by the agent.
    pub first_rtp_us: Option<u64>,
    /// Hang-up started.
    pub hangup_us: Option<u64>,
    /// Session ended (disconnected or failed).
    pub ended_us: Option<u64>,
}

/// The setup phases whose durations the summary keeps (DESIGN §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SetupPhase {
    /// Local description → signalling WebSocket open.
    SignallingConnect,
    /// Local description → ICE gathering done (TURN allocation included).
    IceCollection,
    /// `invite` sent → answer received ("handshaking" in the CCP's report).
    InviteAnswer,
    /// Answer received → ICE connected.
    IceConnected,
    /// ICE connected → DTLS connected.
    DtlsConnected,
    /// Call start → first RTP packet: what the agent perceives as setup time.
    FirstRtp,
}

impl SetupPhase {
    /// Every phase, in the order a call goes through them.
    pub const ALL: [Self; 6] = [
        Self::SignallingConnect,
        Self::IceCollection,
        Self::InviteAnswer,
        Self::IceConnected,
        Self::DtlsConnected,
        Self::FirstRtp,
    ];

    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SignallingConnect => "signalling_connect",
            Self::IceCollection => "ice_collection",
            Self::InviteAnswer => "invite_answer",
            Self::IceConnected => "ice_connected",
            Self::DtlsConnected => "dtls_connected",
            Self::FirstRtp => "first_rtp",
        }
    }
}

impl Milestones {
    /// The duration of `phase` in microseconds, when both its ends were reached in order.
    pub fn phase_us(&self, phase: SetupPhase) -> Option<u64> {
        let (from, to) = match phase {
            SetupPhase::SignallingConnect => {
                (self.local_description_us, self.signalling_connected_us)
            }
            SetupPhase::IceCollection => (self.local_description_us, self.ice_collected_us),
            SetupPhase::InviteAnswer => (self.invite_sent_us, self.answer_received_us),
            SetupPhase::IceConnected => (self.answer_received_us, self.ice_connected_us),
            SetupPhase::DtlsConnected => (self.ice_connected_us, self.dtls_connected_us),
            SetupPhase::FirstRtp => (Some(0), self.first_rtp_us),
        };
        to?.checked_sub(from?)
    }
}

/// How an agent reached its TURN server: the `turn:`/`turns:` URL's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayTransport {
    /// `turn:…?transport=udp`.
    Udp,
    /// `turn:…?transport=tcp`.
    Tcp,
    /// `turns:…` (TLS over TCP).
    Tls,
}

impl RelayTransport {
    /// `udp`, `tcp` or `tls`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// ICE connection health during the call (the CCP's session report fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceCounters {
    /// Times the ICE connection went to `disconnected` or `failed` after connecting.
    pub connections_lost: u32,
    /// ICE restarts attempted.
    pub restart_attempts: u32,
    /// ICE restarts whose signalling completed (the CCP's `iceRestartSuccesses`).
    pub restart_successes: u32,
    /// Invites a restart retried (the CCP's `iceRestartInviteRetries`).
    #[serde(default)]
    pub restart_invite_retries: u32,
    /// From the restart's start to its `accept` acknowledged, ms (the CCP's
    /// `iceRestartTimeMillis`); `None` without a successful restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_time_ms: Option<u64>,
    /// From ICE `disconnected` to connected again after a restart, ms: how long the path was
    /// gone as the agent saw it (media resumes with it); `None` when it never came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_ms: Option<u64>,
}

/// The media figures of one direction of a call, measured at its receiver (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaStats {
    /// RTP packets the sender sent.
    pub packets_sent: u64,
    /// Bytes the sender put on the wire for them, every header counted (IP, UDP, TURN framing,
    /// SRTP, RTP).
    pub wire_bytes_sent: u64,
    /// RTP packets expected from sequence numbers (RFC 3550 A.1).
    pub packets_expected: u64,
    /// Distinct RTP packets received.
    pub packets_received: u64,
    /// Duplicate RTP packets received.
    pub duplicates: u64,
    /// Packets lost in the network: expected − distinct received.
    pub packets_lost: u64,
    /// Packets that arrived too late for the jitter buffer ("late loss").
    pub late_lost: u64,
    /// Loss bursts: length in consecutive packets → number of bursts.
    pub loss_bursts: BTreeMap<u32, u64>,
    /// RFC 3550 interarrival jitter sampled once a second, µs.
    pub jitter: Distribution,
    /// One-way network delay of every packet (send instant carried in the payload), µs.
    pub one_way_delay: Distribution,
    /// Mean delay the jitter buffer added, ms.
    pub jitter_buffer_delay_ms: f64,
    /// RTCP reports received from the sender.
    pub rtcp_reports: u64,
    /// How late the sender sent each frame against its 20 ms schedule, µs: the simulator's own
    /// contribution to the jitter measured downstream (empty when the sender is not ours).
    #[serde(default = "micros")]
    pub send_pacing_error: Distribution,
    /// E-model transmission rating of this direction.
    pub r_factor: f64,
    /// E-model MOS (conversational quality, estimated) of this direction.
    pub mos: f64,
}

fn micros() -> Distribution {
    Distribution::new(crate::distribution::Unit::Micros)
}

impl MediaStats {
    /// Network loss as a percentage of expected packets.
    pub fn loss_percent(&self) -> f64 {
        if self.packets_expected == 0 {
            0.0
        } else {
            100.0 * self.packets_lost as f64 / self.packets_expected as f64
        }
    }
}

impl CallRecord {
    /// The record's directions that carried media, agent → anchor first.
    pub fn directions(&self) -> impl Iterator<Item = &MediaStats> {
        self.agent_to_anchor
            .iter()
            .chain(self.anchor_to_agent.iter())
    }

    /// Checks the invariants a reader relies on: a failure class exactly when the outcome is an
    /// error; milestones not after the end.
    pub fn check(&self) -> Result<(), String> {
        match (self.outcome.is_error(), &self.failure) {
            (true, None) => {
                return Err(format!(
                    "outcome {} without a failure class",
                    self.outcome.as_str()
                ));
            }
            (false, Some(f)) => {
                return Err(format!("completed call with failure class {}", f.class));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Appends one record as a JSON line and flushes, so that a run killed at any moment keeps every
/// call that ended before it.
pub fn append_record(out: &mut impl Write, record: &CallRecord) -> io::Result<()> {
    let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// Writes `records` as the JSON Lines file `path`, through a temporary file beside it renamed
/// over it, so that a file already there stays whole until the new one is.
///
/// # Errors
/// The temporary file could not be written or renamed.
pub fn rewrite_records(path: &Path, records: &[CallRecord]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = io::BufWriter::new(std::fs::File::create(&tmp)?);
    for r in records {
        append_record(&mut f, r)?;
    }
    drop(f);
    std::fs::rename(&tmp, path)
}

/// The records of a JSON Lines file, and the damaged last line if a run died writing it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordFile {
    /// Every complete record, in file order.
    pub records: Vec<CallRecord>,
    /// The last line, when it was cut off mid-write (the run was killed).
    pub truncated: Option<DamagedLine>,
}

/// A line that could not be read as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedLine {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column where reading failed.
    pub column: usize,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for DamagedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.reason
        )
    }
}

/// Why a record file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordsError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line before the last is not a valid record: the file is corrupt, not merely cut short.
    #[error("{path}:{damage}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Where and what.
        damage: DamagedLine,
    },
    /// A record was written by a version of this tool whose format we do not know.
    #[error(
        "{path}:{line}: schema_version {found} is not supported (this build reads versions {OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION}); \
         use the version of the tool that wrote the file"
    )]
    UnsupportedSchema {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The version found.
        found: u64,
    },
}

/// Reads a `calls.jsonl` file.
///
/// Blank lines are skipped. A damaged **last** line is what a killed run leaves: every complete
/// record is returned and the damaged line is named in [`RecordFile::truncated`]. A damaged line
/// anywhere else, or a record of an unknown `schema_version`, is an error naming the line.
pub fn read_records(path: &Path) -> Result<RecordFile, RecordsError> {
    let io_err = |source| RecordsError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    parse_records(io::BufReader::new(file), path)
}

/// [`read_records`] on any reader; `path` only names the source in errors.
pub fn parse_records(reader: impl BufRead, path: &Path) -> Result<RecordFile, RecordsError> {
    let mut records = Vec::new();
    let mut damaged: Option<DamagedLine> = None;
    for (i, line) in reader.split(b'\n').enumerate() {
        let line_no = i + 1;
        let bytes = line.map_err(|source| RecordsError::Io {
            path: path.to_owned(),
            source,
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // A damaged line followed by another non-blank line is corruption, not a cut-off end.
        if let Some(damage) = damaged.take() {
            return Err(RecordsError::Malformed {
                path: path.to_owned(),
                damage,
            });
        }
        match parse_line(&bytes, line_no) {
            Ok(record) => records.push(record),
            Err(LineError::Schema(found)) => {
                return Err(RecordsError::UnsupportedSchema {
                    path: path.to_owned(),
                    line: line_no,
                    found,
                });
            }
            Err(LineError::Damaged(d)) => damaged = Some(d),
        }
    }
    Ok(RecordFile {
        records,
        truncated: damaged,
    })
}

enum LineError {
    Schema(u64),
    Damaged(DamagedLine),
}

fn parse_line(bytes: &[u8], line: usize) -> Result<CallRecord, LineError> {
    #[derive(Deserialize)]
    struct Version {
        schema_version: Option<serde_json::Value>,
    }
    let damaged = |e: serde_json::Error| {
        LineError::Damaged(DamagedLine {
            line,
            column: e.column().max(1),
            reason: e.to_string(),
        })
    };
    // Look at the version first, so that a record from a newer tool is reported as such rather
    // than as whichever field it added.
    let version: Version = serde_json::from_slice(bytes).map_err(damaged)?;
    match version.schema_version {
        Some(serde_json::Value::Number(n))
            if n.as_u64().is_some_and(|v| {
                (u64::from(OLDEST_SCHEMA_VERSION)..=u64::from(SCHEMA_VERSION)).contains(&v)
            }) => {}
        Some(serde_json::Value::Number(n)) => {
            return Err(LineError::Schema(n.as_u64().unwrap_or(u64::MAX)));
        }
        _ => {
            return Err(LineError::Damaged(DamagedLine {
                line,
                column: 1,
                reason: "missing or non-numeric schema_version".to_owned(),
            }));
        }
    }
    let record: CallRecord = serde_json::from_slice(bytes).map_err(damaged)?;
    record.check().map_err(|reason| {
        LineError::Damaged(DamagedLine {
            line,
            column: 1,
            reason,
        })
    })?;
    Ok(record)
}
