//! The media anchor: the far end of every call, standing for the vendor's region. It answers
//! invites arriving through the signalling endpoint with a leg on its media server (a host on
//! loopback the agent's TURN relay sends to, as a vendor's media servers are), plays a 20 ms
//! stream back to the agent, measures the agent's stream, and hands its measurement back in the
//! `bye` result so that the agent's record holds both directions.

mod bridge;
pub(crate) mod desk;
#[allow(clippy::disallowed_methods)] // an edge: its thread, socket and the real clock
pub mod media;
pub(crate) mod media_core;
pub mod recording;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loadgen::signalling::RpcError;
use reports::emodel::Codec;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use self::desk::{Desk, Ending, Media, Reply};
use self::media::{LegEvent, LegSpec, MediaServer};

use crate::signalling::Signal;

/// How the anchor behaves (faults for failure-path tests and scenarios).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnchorBehaviour {
    /// Answers every invite.
    #[default]
    Answer,
    /// Never answers invites (a dead contact-routing service).
    NeverAnswer,
    /// Refuses invites with this JSON-RPC error code (403, 486, 404 …).
    Refuse(i64),
    /// Answers, then stops sending media after this long (media stops mid-call).
    GoSilentAfter(Duration),
    /// Answers, then refuses every mid-call request (hold, resume, transfer, conference) with
    /// this JSON-RPC error code (a contact-control service in trouble).
    RefuseMidCall(i64),
}

/// The anchor's configuration.
#[derive(Debug, Clone)]
pub struct AnchorConfig {
    /// The instant media stamps count from (shared with the agents).
    pub epoch: Instant,
    /// The codec, for the E-model.
    pub codec: Codec,
    /// Behaviour.
    pub behaviour: AnchorBehaviour,
    /// How long after the agent's last ICE check a leg's consent lapses
    /// ([`media::CONSENT_TIMEOUT`], RFC 7675's 30 s; shorter only in tests).
    pub consent_timeout: Duration,
}

/// Counters of the anchor.
#[derive(Debug, Default)]
pub struct AnchorStats {
    /// Invites received.
    pub invites: AtomicU64,
    /// Calls answered.
    pub answered: AtomicU64,
    /// Calls ended with `bye`.
    pub ended: AtomicU64,
    /// First invites answered with an error: bad parameters (no contact, no offer), an offer
    /// the leg cannot answer, no credentials or socket for the leg.
    pub failed: AtomicU64,
    /// ICE restarts answered (an agent's path went down mid-call and came back).
    pub restarts: AtomicU64,
    /// Calls ended by the anchor because their agent was gone: its leg lost consent and its
    /// signalling connection had closed.
    pub abandoned: AtomicU64,
    /// What the anchor measured of each call that ended, whichever client placed it, once
    /// [`AnchorStats::keep_ended_calls`] asked for them (the latest [`MAX_ENDED`]; older ones
    /// are dropped and counted in `ended_dropped`). A reader drains it (`sim serve`).
    pub ended_calls: std::sync::Mutex<std::collections::VecDeque<EndedCall>>,
    /// Whether ended calls are kept: off by default, so that a run whose agents hold their own
    /// records (`sim run`) keeps no second copy of each call's histograms.
    keeping: std::sync::atomic::AtomicBool,
    /// Ended calls dropped from `ended_calls` past [`MAX_ENDED`].
    pub ended_dropped: AtomicU64,
}

/// Ended calls the anchor keeps for a reader that has not drained them yet (`sim serve` drains
/// every 250 ms).
pub const MAX_ENDED: usize = 1_000;

/// What the anchor measured of one call, on its own: the stream it received (RFC 3550
/// interarrival jitter and loss from arrival times and RTP timestamps, one-way delay too when
/// the client stamped its frames) and what it sent.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndedCall {
    /// The anchor's id of the call.
    pub call_id: String,
    /// The invite's `callContextToken`.
    pub call_context_token: String,
    /// How it ended: `bye`, `disconnectContact` (from the client), or `abandoned` (its leg
    /// lost consent after its signalling closed).
    pub ended_by: &'static str,
    /// When the invite arrived, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// From the invite to the end, microseconds.
    pub duration_us: u64,
    /// From the invite to the leg's DTLS handshake done, microseconds (`None`: never).
    pub connected_us: Option<u64>,
    /// From the invite to the client's first RTP packet, microseconds.
    pub first_rtp_us: Option<u64>,
    /// The client's stream as the anchor received it.
    pub agent_to_anchor: reports::record::MediaStats,
    /// The anchor's stream as the client reported it in RTCP reception reports.
    pub anchor_to_agent: Option<reports::record::MediaStats>,
    /// Frames the anchor sent.
    pub anchor_sent: u64,
    /// Bytes the anchor sent, every header counted.
    pub anchor_wire_bytes: u64,
    /// What the leg's DTLS handshake got to, when ICE nominated a pair but the handshake did
    /// not complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtls_progress: Option<String>,
    /// The call's recording, relative to the run folder, when the anchor records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
    /// ICE restarts the client made on the call.
    pub ice_restarts: u32,
}

impl EndedCall {
    /// What the anchor measured of the call `ending`, whose leg handed back `e` at `now`.
    fn new(ending: Ending, e: media::Ended, now: Instant) -> Self {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let call = ending.call;
        Self {
            call_id: ending.call_id,
            call_context_token: call.token,
            ended_by: ending.ended_by,
            started_unix_ms: call.started_unix_ms,
            duration_us: micros(now.saturating_duration_since(call.invited)),
            connected_us: e.connected_after.map(micros),
            first_rtp_us: e.first_rtp_after.map(micros),
            agent_to_anchor: e.received,
            anchor_to_agent: e.far_end,
            anchor_sent: e.frames_sent,
            anchor_wire_bytes: e.wire_bytes_sent,
            dtls_progress: e.dtls_progress,
            recording: e.recording,
            ice_restarts: e.ice_restarts,
        }
    }
}

impl AnchorStats {
    /// From now on, keeps what the anchor measured of every call that ends in `ended_calls`.
    pub fn keep_ended_calls(&self) {
        self.keeping.store(true, Ordering::Relaxed);
    }

    /// Keeps an ended call if asked to, dropping the oldest past [`MAX_ENDED`].
    fn keep(&self, call: EndedCall) {
        if !self.keeping.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut calls) = self.ended_calls.lock() else {
            return;
        };
        if calls.len() == MAX_ENDED {
            calls.pop_front();
            self.ended_dropped.fetch_add(1, Ordering::Relaxed);
        }
        calls.push_back(call);
    }
}

impl AnchorStats {
    /// Its counters, named as in `summary.json`'s `components`.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        reports::components::snapshot(&[
            ("invites", &self.invites),
            ("answered", &self.answered),
            ("ended", &self.ended),
            ("failed", &self.failed),
            ("abandoned", &self.abandoned),
            ("ice_restarts", &self.restarts),
        ])
    }
}

/// Serves the signalling endpoint's requests until its channel closes, with every call's media
/// on `media`. Run it on a tokio runtime.
#[allow(clippy::disallowed_methods)] // the anchor's edge: the real clock
pub async fn serve(
    config: AnchorConfig,
    mut media: MediaServer,
    mut requests: mpsc::UnboundedReceiver<Signal>,
    stats: Arc<AnchorStats>,
) {
    let mut desk = Desk::new(config.behaviour, config.consent_timeout);
    let mut held = Vec::new();
    let mut legs = media.take_events();
    loop {
        let signal = tokio::select! {
            signal = requests.recv() => match signal {
                Some(s) => s,
                None => break,
            },
            Some(event) = async {
                match legs.as_mut() {
                    Some(l) => l.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let LegEvent::ConsentLost { call_id } = event;
                if let Some(ending) = desk.consent_lost(&call_id) {
                    abandon(ending, &media, &stats);
                }
                continue;
            }
        };
        let req = match signal {
            Signal::Request(req) => req,
            Signal::Closed { connection } => {
                for ending in desk.connection_closed(connection) {
                    abandon(ending, &media, &stats);
                }
                continue;
            }
        };
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let reply = desk.request(
            Instant::now(),
            unix_ms,
            req.connection,
            &req.method,
            req.params,
            &mut media,
            &mut os_ice_credentials,
            &stats,
        );
        match reply {
            Reply::Answer(answer) => {
                let _ = req.reply.send(answer);
            }
            Reply::Withheld => held.push(req.reply),
            Reply::Close(ending) => {
                let (tx, rx) = oneshot::channel();
                media.close(ending.call_id.clone(), tx);
                let (reply, stats) = (req.reply, stats.clone());
                tokio::spawn(async move {
                    let result = match tokio::time::timeout(Duration::from_secs(1), rx).await {
                        Ok(Ok(ended)) => {
                            let result = desk::ended_result(&ended);
                            stats.keep(EndedCall::new(ending, ended, Instant::now()));
                            result
                        }
                        _ => Value::Null,
                    };
                    let _ = reply.send(Ok(result));
                });
            }
        }
    }
    drop(held);
}

/// Fresh ICE credentials from the OS's randomness (the anchor is a real-time server).
fn os_ice_credentials() -> Result<(String, String), RpcError> {
    let crypto = loadgen::entropy::Entropy::Os.provider();
    crypto
        .and_then(|c| loadgen::entropy::ice_credentials(c.random()))
        .map_err(|e| RpcError::new(500, format!("no ICE credentials: {e}")))
}

/// Ends a call whose agent is gone (its leg lost consent, its signalling closed), keeping what
/// the anchor measured of it.
#[allow(clippy::disallowed_methods)] // the anchor's edge: the real clock
fn abandon(ending: Ending, media: &MediaServer, stats: &Arc<AnchorStats>) {
    stats.abandoned.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    media.close(ending.call_id.clone(), tx);
    let stats = stats.clone();
    tokio::spawn(async move {
        if let Ok(Ok(ended)) = tokio::time::timeout(Duration::from_secs(1), rx).await {
            stats.keep(EndedCall::new(ending, ended, Instant::now()));
        }
    });
}

impl Media for MediaServer {
    fn fingerprint(&self) -> &str {
        Self::fingerprint(self)
    }

    fn address(&self) -> std::net::SocketAddr {
        Self::address(self)
    }

    fn open(&mut self, spec: LegSpec) {
        Self::open(self, spec);
    }

    fn restart(&mut self, restart: media::Restart) {
        Self::restart(self, restart);
    }

    fn conference(&mut self, call_id: &str) {
        Self::conference(self, call_id.to_owned());
    }
}
