//! The media anchor: the far end of every call, standing for the vendor's region. It answers
//! invites arriving through the signalling endpoint with a leg on its media server (a host on
//! loopback the agent's TURN relay sends to, as a vendor's media servers are), plays a 20 ms
//! stream back to the agent, measures the agent's stream, and hands its measurement back in the
//! `bye` result so that the agent's record holds both directions.

mod bridge;
#[allow(clippy::disallowed_methods)] // an edge: its thread, socket and the real clock
pub mod media;
pub(crate) mod media_core;
pub mod recording;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loadgen::signalling::{Candidate, Invite, InviteAnswer, RpcError};
use reports::emodel::Codec;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use self::media::{LegEvent, LegSpec, MediaServer};
use loadgen::sdp::{self, Description, Local};

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
    /// Invites that could not be answered (no socket, bad SDP).
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
    #[allow(clippy::disallowed_methods)] // the anchor's edge: a call's duration on the real clock
    fn new(call_id: String, call: Call, ended_by: &'static str, e: media::Ended) -> Self {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Self {
            call_id,
            call_context_token: call.token,
            ended_by,
            started_unix_ms: call.started_unix_ms,
            duration_us: micros(call.invited.elapsed()),
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

/// A call the anchor has up, and how a request can name it.
#[derive(Debug, Clone)]
struct Call {
    /// The signalling connection its invite came on.
    connection: u64,
    /// Its invite's `callContextToken`.
    token: String,
    /// Its invite's `contactId`, when the client gave one (persistent-connection mode).
    contact: Option<String>,
    /// Its number, in the order the invites came.
    number: u64,
    /// Its leg's SSRC.
    ssrc: u32,
    /// Its leg lost the agent's consent (RFC 7675) and sends nothing more.
    consent_lost: bool,
    /// When its invite came (the leg opens at the same moment).
    invited: Instant,
    /// The same, on the wall clock, milliseconds since the Unix epoch.
    started_unix_ms: u64,
}

/// The calls up, found the ways the CCP's library names them: by our `callId`, by `contactId`
/// (ours, or the client's from its invite), by `callContextToken`, or — for the library's
/// `accept {}` and its `bye` without a token — as the latest call on the connection.
#[derive(Debug, Default)]
struct Calls {
    up: HashMap<String, Call>,
}

impl Calls {
    fn find(&self, params: &Value, connection: u64) -> Option<String> {
        let text = |k: &str| {
            params
                .get(k)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
        };
        if let Some(id) = text("callId") {
            return self.up.contains_key(id).then(|| id.to_owned());
        }
        if let Some(contact) = text("contactId") {
            return self
                .up
                .iter()
                .find(|(id, c)| id.as_str() == contact || c.contact.as_deref() == Some(contact))
                .map(|(id, _)| id.clone());
        }
        let latest = |keep: &dyn Fn(&Call) -> bool| {
            self.up
                .iter()
                .filter(|(_, c)| keep(c))
                .max_by_key(|(_, c)| c.number)
                .map(|(id, _)| id.clone())
        };
        match text("callContextToken") {
            Some(token) => latest(&|c| c.token == token),
            None => latest(&|c| c.connection == connection),
        }
    }

    /// Forgets closed connections that no call is on any more.
    fn forget_closed(&self, gone: &mut HashSet<u64>) {
        if !gone.is_empty() {
            gone.retain(|c| self.up.values().any(|call| call.connection == *c));
        }
    }

    /// Whether `params` name a call at all (any of the keys a call is found by).
    fn named(params: &Value) -> bool {
        ["callId", "contactId"].iter().any(|k| {
            params
                .get(k)
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
        })
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
    let mut calls = Calls::default();
    let mut next = 0u64;
    let mut held = Vec::new();
    let mut legs = media.take_events();
    // Signalling connections that have closed and still had a call.
    let mut gone: HashSet<u64> = HashSet::new();
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
                if let Some(call) = calls.up.get_mut(&call_id) {
                    call.consent_lost = true;
                    if gone.contains(&call.connection) {
                        abandon(&mut calls, &call_id, &media, &stats);
                        calls.forget_closed(&mut gone);
                    }
                }
                continue;
            }
        };
        let req = match signal {
            Signal::Request(req) => req,
            // The agent's signalling is gone. A call whose leg still has consent stays up (a
            // page closed mid-call keeps the contact, and the agent may log in again and
            // name it); once its leg has lost consent too, the agent is gone and the call
            // ends.
            Signal::Closed { connection } => {
                let dead: Vec<String> = calls
                    .up
                    .iter()
                    .filter(|(_, c)| c.connection == connection && c.consent_lost)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in dead {
                    abandon(&mut calls, &id, &media, &stats);
                }
                if calls.up.values().any(|c| c.connection == connection) {
                    gone.insert(connection);
                }
                continue;
            }
        };
        match req.method.as_str() {
            // An ICE restart names its contact and brings a new offer: the leg takes new
            // credentials, the answer keeps everything else the call agreed.
            "invite" if req.params.get("iceRestart").and_then(Value::as_bool) == Some(true) => {
                let reply = restart(&req.params, &mut calls, req.connection, &media);
                if reply.is_ok() {
                    stats.restarts.fetch_add(1, Ordering::Relaxed);
                }
                let _ = req.reply.send(reply);
            }
            "invite" => {
                stats.invites.fetch_add(1, Ordering::Relaxed);
                match config.behaviour {
                    AnchorBehaviour::NeverAnswer => {
                        held.push(req);
                        continue;
                    }
                    AnchorBehaviour::Refuse(code) => {
                        let _ = req
                            .reply
                            .send(Err(RpcError::new(code, "refused by the anchor")));
                        continue;
                    }
                    _ => {}
                }
                let contact = req
                    .params
                    .get("contactId")
                    .and_then(Value::as_str)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned);
                let Ok(invite) = serde_json::from_value::<Invite>(req.params) else {
                    let _ = req
                        .reply
                        .send(Err(RpcError::new(-32602, "invalid invite parameters")));
                    continue;
                };
                let offer = match Description::parse(&invite.sdp) {
                    // The anchor is the DTLS server: an offer that insists on it too leaves no
                    // client (RFC 5763 §5).
                    Ok(offer) if offer.setup == "passive" => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        let _ = req.reply.send(Err(RpcError::new(
                            400,
                            "cannot answer: a=setup:passive leaves no DTLS client",
                        )));
                        continue;
                    }
                    Ok(offer) => offer,
                    Err(e) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        let _ = req
                            .reply
                            .send(Err(RpcError::new(400, format!("cannot answer: {e}"))));
                        continue;
                    }
                };
                next += 1;
                let call_id = format!("call-{next}");
                let (ice_ufrag, ice_pwd) = match os_ice_credentials() {
                    Ok(credentials) => credentials,
                    Err(e) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        let _ = req.reply.send(Err(e));
                        continue;
                    }
                };
                let ssrc = 0x4000_0000 | (next as u32 & 0x3fff_ffff);
                let (answer, candidates) = answer_offer(
                    &offer,
                    (media.fingerprint(), media.address()),
                    (&ice_ufrag, &ice_pwd),
                    ssrc,
                    next,
                );
                // The leg is open before the agent can have the answer, so no check of its
                // arrives at an unknown leg.
                media.open(LegSpec {
                    call_id: call_id.clone(),
                    call: invite.call_context_token.clone(),
                    offer,
                    ice_ufrag,
                    ice_pwd,
                    ssrc,
                    silent_after: match config.behaviour {
                        AnchorBehaviour::GoSilentAfter(d) => Some(d),
                        _ => None,
                    },
                    consent_timeout: config.consent_timeout,
                });
                calls.up.insert(
                    call_id.clone(),
                    Call {
                        connection: req.connection,
                        token: invite.call_context_token,
                        contact,
                        number: next,
                        ssrc,
                        consent_lost: false,
                        invited: Instant::now(),
                        started_unix_ms: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    },
                );
                stats.answered.fetch_add(1, Ordering::Relaxed);
                let answer = InviteAnswer {
                    call_id,
                    sdp: answer,
                    candidates,
                };
                let _ = req.reply.send(
                    serde_json::to_value(answer).map_err(|e| RpcError::new(500, e.to_string())),
                );
            }
            // The library sends `accept` with no parameters and takes any answer as its ack.
            "accept" => {
                let _ = req.reply.send(Ok(json!({})));
            }
            // Without a contact named: the agent's persistent connection, nothing to do. With
            // one (an agent back after its page closed): the contact is still up — media does
            // not come back, and `disconnectContact` ends it as `bye` would.
            "connectContact" | "disconnectContact" if !Calls::named(&req.params) => {
                let _ = req.reply.send(Ok(json!({})));
            }
            "connectContact" => {
                let found = calls.find(&req.params, req.connection);
                if let Some(call) = found.as_ref().and_then(|id| calls.up.get_mut(id)) {
                    // The agent is back, on this connection.
                    call.connection = req.connection;
                }
                let known = found.is_some();
                let _ = req.reply.send(if known {
                    Ok(json!({ "state": "connected" }))
                } else {
                    Err(RpcError::new(404, "call not found"))
                });
            }
            // Mid-call contact control. The third party of a transfer or a conference is
            // bridged or mixed into the agent's media session at the anchor, so the agent's
            // leg carries on as it is; the reply says what the contact became.
            "hold" | "resume" | "transfer" | "conference" => {
                let known = calls.find(&req.params, req.connection).is_some();
                let reply = match config.behaviour {
                    AnchorBehaviour::RefuseMidCall(code) => Err(RpcError::new(
                        code,
                        format!("{} refused by the anchor", req.method),
                    )),
                    _ if !known => Err(RpcError::new(404, "call not found")),
                    _ => {
                        if req.method == "conference"
                            && let Some(id) = calls.find(&req.params, req.connection)
                        {
                            media.conference(id);
                        }
                        Ok(json!({ "state": match req.method.as_str() {
                            "hold" => "held",
                            "resume" => "connected",
                            "transfer" => "transferred",
                            _ => "conferenced",
                        }}))
                    }
                };
                let _ = req.reply.send(reply);
            }
            "bye" | "disconnectContact" => {
                let Some(call_id) = calls.find(&req.params, req.connection) else {
                    let _ = req.reply.send(Err(RpcError::new(404, "call not found")));
                    continue;
                };
                let Some(call) = calls.up.remove(&call_id) else {
                    continue;
                };
                calls.forget_closed(&mut gone);
                stats.ended.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = oneshot::channel();
                media.close(call_id.clone(), tx);
                let (reply, stats) = (req.reply, stats.clone());
                let ended_by = if req.method == "bye" {
                    "bye"
                } else {
                    "disconnectContact"
                };
                tokio::spawn(async move {
                    let result = match tokio::time::timeout(Duration::from_secs(1), rx).await {
                        Ok(Ok(ended)) => {
                            let mut result = json!({
                                "agentToAnchor": ended.received,
                                "anchorSent": ended.frames_sent,
                                "anchorWireBytes": ended.wire_bytes_sent,
                                "anchorPacing": ended.pacing,
                                "anchorDtls": ended.dtls_progress,
                            });
                            if let Some((customer, third_party)) = ended.conference {
                                result["anchorConference"] = json!({
                                    "customerHeard": customer,
                                    "thirdPartyHeard": third_party,
                                });
                            }
                            stats.keep(EndedCall::new(call_id, call, ended_by, ended));
                            result
                        }
                        _ => Value::Null,
                    };
                    let _ = reply.send(Ok(result));
                });
            }
            _ => {
                let _ = req.reply.send(Err(RpcError::new(-32601, "unknown method")));
            }
        }
    }
    drop(held);
}

/// The anchor's answer to `offer` for a leg with ICE credentials `(ufrag, pwd)` and `ssrc` (the
/// call's `number` as the SDP session id), and its one candidate: the media server's address,
/// ICE-lite.
/// Fresh ICE credentials from the OS's randomness (the anchor is a real-time server).
fn os_ice_credentials() -> Result<(String, String), RpcError> {
    let crypto = loadgen::entropy::Entropy::Os.provider();
    crypto
        .and_then(|c| loadgen::entropy::ice_credentials(c.random()))
        .map_err(|e| RpcError::new(500, format!("no ICE credentials: {e}")))
}

/// The anchor's answer to `offer` and its one host candidate, for a leg of the media server
/// whose certificate has `fingerprint` and that listens on `address`.
pub(crate) fn answer_offer(
    offer: &Description,
    (fingerprint, address): (&str, std::net::SocketAddr),
    (ice_ufrag, ice_pwd): (&str, &str),
    ssrc: u32,
    number: u64,
) -> (String, Vec<Candidate>) {
    let local = Local {
        ice_ufrag,
        ice_pwd,
        fingerprint,
        ssrc,
        address,
        ice_lite: true,
    };
    let answer = sdp::answer(offer, &local, number);
    let candidates = vec![Candidate {
        candidate: sdp::host_candidate(address),
        sdp_mid: offer.sections[offer.audio].mid.clone(),
        sdp_m_line_index: u16::try_from(offer.audio).ok(),
    }];
    (answer, candidates)
}

/// Answers an ICE restart's invite for the call it names (RFC 8445 §9.1: both sides take new
/// credentials; the DTLS role, fingerprint, SSRC and codec stay).
fn restart(
    params: &Value,
    calls: &mut Calls,
    connection: u64,
    media: &MediaServer,
) -> Result<Value, RpcError> {
    let Some(call_id) = calls.find(params, connection) else {
        return Err(RpcError::new(404, "call not found"));
    };
    let (ssrc, number) = (calls.up[&call_id].ssrc, calls.up[&call_id].number);
    let invite = serde_json::from_value::<Invite>(params.clone())
        .map_err(|_| RpcError::new(-32602, "invalid invite parameters"))?;
    let offer = Description::parse(&invite.sdp)
        .map_err(|e| RpcError::new(400, format!("cannot answer the ICE restart: {e}")))?;
    let (ice_ufrag, ice_pwd) = os_ice_credentials()?;
    let (answer, candidates) = answer_offer(
        &offer,
        (media.fingerprint(), media.address()),
        (&ice_ufrag, &ice_pwd),
        ssrc,
        number,
    );
    if let Some(call) = calls.up.get_mut(&call_id) {
        call.consent_lost = false;
    }
    media.restart(media::Restart {
        call_id: call_id.clone(),
        offer,
        ice_ufrag,
        ice_pwd,
    });
    serde_json::to_value(InviteAnswer {
        call_id,
        sdp: answer,
        candidates,
    })
    .map_err(|e| RpcError::new(500, e.to_string()))
}

/// Ends a call whose agent is gone (its leg lost consent, its signalling closed), keeping what
/// the anchor measured of it.
fn abandon(calls: &mut Calls, call_id: &str, media: &MediaServer, stats: &Arc<AnchorStats>) {
    let Some(call) = calls.up.remove(call_id) else {
        return;
    };
    stats.abandoned.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    media.close(call_id.to_owned(), tx);
    let (stats, call_id) = (stats.clone(), call_id.to_owned());
    tokio::spawn(async move {
        if let Ok(Ok(ended)) = tokio::time::timeout(Duration::from_secs(1), rx).await {
            stats.keep(EndedCall::new(call_id, call, "abandoned", ended));
        }
    });
}
