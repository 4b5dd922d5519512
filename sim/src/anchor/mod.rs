//! The media anchor: the far end of every call, standing for the vendor's region. It answers
//! invites arriving through the signalling endpoint with a leg on its media server (a host on
//! loopback the agent's TURN relay sends to, as a vendor's media servers are), plays a 20 ms
//! stream back to the agent, measures the agent's stream, and hands its measurement back in the
//! `bye` result so that the agent's record holds both directions.

pub mod media;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loadgen::signalling::{CallRef, Candidate, Invite, InviteAnswer, RpcError};
use reports::emodel::Codec;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use self::media::{LegSpec, MediaServer};
use loadgen::sdp::{self, Description, Local};

use crate::signalling::Incoming;

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
}

impl AnchorStats {
    /// Its counters, named as in `summary.json`'s `components`.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        reports::components::snapshot(&[
            ("invites", &self.invites),
            ("answered", &self.answered),
            ("ended", &self.ended),
            ("failed", &self.failed),
        ])
    }
}

/// Serves the signalling endpoint's requests until its channel closes, with every call's media
/// on `media`. Run it on a tokio runtime.
pub async fn serve(
    config: AnchorConfig,
    media: MediaServer,
    mut requests: mpsc::UnboundedReceiver<Incoming>,
    stats: Arc<AnchorStats>,
) {
    let mut calls: HashSet<String> = HashSet::new();
    let mut next = 0u64;
    let mut held = Vec::new();
    while let Some(req) = requests.recv().await {
        match req.method.as_str() {
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
                let (ice_ufrag, ice_pwd) = loadgen::media::ice_credentials();
                let ssrc = 0x4000_0000 | (next as u32 & 0x3fff_ffff);
                let audio = &offer.sections[offer.audio];
                let answer = sdp::answer(
                    &offer,
                    &Local {
                        ice_ufrag: &ice_ufrag,
                        ice_pwd: &ice_pwd,
                        fingerprint: media.fingerprint(),
                        ssrc,
                        address: media.address(),
                        ice_lite: true,
                    },
                    next,
                );
                let candidates = vec![Candidate {
                    candidate: sdp::host_candidate(media.address()),
                    sdp_mid: audio.mid.clone(),
                    sdp_m_line_index: u16::try_from(offer.audio).ok(),
                }];
                // The leg is open before the agent can have the answer, so no check of its
                // arrives at an unknown leg.
                media.open(LegSpec {
                    call_id: call_id.clone(),
                    offer,
                    ice_ufrag,
                    ice_pwd,
                    ssrc,
                    silent_after: match config.behaviour {
                        AnchorBehaviour::GoSilentAfter(d) => Some(d),
                        _ => None,
                    },
                });
                calls.insert(call_id.clone());
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
            "accept" => {
                let _ = req.reply.send(Ok(Value::Null));
            }
            // Without a call: the agent's persistent connection, nothing to do. With one (an
            // agent back after its page closed): the contact is still up — media does not come
            // back, and `disconnectContact` ends it as `bye` would.
            "connectContact" | "disconnectContact" if req.params.get("callId").is_none() => {
                let _ = req.reply.send(Ok(Value::Null));
            }
            "connectContact" => {
                let known = known_call(&req.params, &calls);
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
                let known = known_call(&req.params, &calls);
                let reply = match config.behaviour {
                    AnchorBehaviour::RefuseMidCall(code) => Err(RpcError::new(
                        code,
                        format!("{} refused by the anchor", req.method),
                    )),
                    _ if !known => Err(RpcError::new(404, "call not found")),
                    _ => Ok(json!({ "state": match req.method.as_str() {
                        "hold" => "held",
                        "resume" => "connected",
                        "transfer" => "transferred",
                        _ => "conferenced",
                    }})),
                };
                let _ = req.reply.send(reply);
            }
            "bye" | "disconnectContact" => {
                let Ok(CallRef { call_id }) = serde_json::from_value(req.params) else {
                    let _ = req.reply.send(Err(RpcError::new(
                        -32602,
                        format!("invalid {} parameters", req.method),
                    )));
                    continue;
                };
                if !calls.remove(&call_id) {
                    let _ = req.reply.send(Err(RpcError::new(404, "call not found")));
                    continue;
                }
                stats.ended.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = oneshot::channel();
                media.close(call_id, tx);
                let reply = req.reply;
                tokio::spawn(async move {
                    let result = match tokio::time::timeout(Duration::from_secs(1), rx).await {
                        Ok(Ok((m, sent, wire_bytes, pacing))) => json!({
                            "agentToAnchor": m,
                            "anchorSent": sent,
                            "anchorWireBytes": wire_bytes,
                            "anchorPacing": pacing,
                        }),
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

/// Whether `params` name a call the anchor has up.
fn known_call(params: &Value, calls: &HashSet<String>) -> bool {
    params
        .get("callId")
        .and_then(Value::as_str)
        .is_some_and(|id| calls.contains(id))
}
