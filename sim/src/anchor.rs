//! The media anchor: the far end of every call, standing for the vendor's region. It answers
//! invites arriving through the signalling endpoint with a host leg on loopback (the vendor's
//! media servers are hosts the agent's TURN relay sends to), plays a 20 ms stream back to the agent, measures the agent's stream, and hands its
//! measurement back in the `bye` result so that the agent's record holds both directions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loadgen::driver::DrivenPeer;
use loadgen::peer::{Peer, PeerConfig};
use loadgen::session::{from_wire, to_wire};
use loadgen::signalling::{CallRef, Invite, InviteAnswer, RpcError};
use reports::emodel::Codec;
use reports::record::MediaStats;
use rtc::peer_connection::sdp::RTCSessionDescription;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

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

/// What a leg hands back when its call ends: its measurement of the agent's stream, the frames
/// and wire bytes it sent, and its pacing error.
type Ended = (MediaStats, u64, u64, reports::Distribution);

struct LiveCall {
    stop: oneshot::Sender<oneshot::Sender<Ended>>,
}

/// Serves the signalling endpoint's requests until its channel closes. Run it on a tokio
/// runtime; each call's leg is its own task.
pub async fn serve(
    config: AnchorConfig,
    mut requests: mpsc::UnboundedReceiver<Incoming>,
    stats: Arc<AnchorStats>,
) {
    let mut calls: HashMap<String, LiveCall> = HashMap::new();
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
                next += 1;
                let call_id = format!("call-{next}");
                let (stop_tx, stop_rx) = oneshot::channel();
                calls.insert(call_id.clone(), LiveCall { stop: stop_tx });
                let (config, stats) = (config.clone(), stats.clone());
                tokio::spawn(async move {
                    let ssrc = 0x4000_0000 | (next as u32 & 0x3fff_ffff);
                    run_leg(config, invite, call_id, ssrc, req.reply, stop_rx, stats).await;
                });
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
                let Some(call) = calls.remove(&call_id) else {
                    let _ = req.reply.send(Err(RpcError::new(404, "call not found")));
                    continue;
                };
                stats.ended.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = oneshot::channel();
                let _ = call.stop.send(tx);
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
fn known_call(params: &Value, calls: &HashMap<String, LiveCall>) -> bool {
    params
        .get("callId")
        .and_then(Value::as_str)
        .is_some_and(|id| calls.contains_key(id))
}

async fn run_leg(
    config: AnchorConfig,
    invite: Invite,
    call_id: String,
    ssrc: u32,
    reply: oneshot::Sender<Result<Value, RpcError>>,
    mut stop: oneshot::Receiver<oneshot::Sender<Ended>>,
    stats: Arc<AnchorStats>,
) {
    let now = Instant::now();
    let leg = PeerConfig {
        turn: Vec::new(),
        answering: true,
        epoch: config.epoch,
    };
    let fail =
        |stats: &AnchorStats, reply: oneshot::Sender<Result<Value, RpcError>>, why: String| {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(Err(RpcError::new(500, why)));
        };
    let Ok(peer) = Peer::new(leg, ssrc, now) else {
        return fail(&stats, reply, "anchor leg".into());
    };
    let Ok(offer) = RTCSessionDescription::offer(invite.sdp) else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        let _ = reply.send(Err(RpcError::new(400, "the offer is not SDP")));
        return;
    };
    let Ok(mut driven) = DrivenPeer::new(peer) else {
        return fail(&stats, reply, "anchor socket".into());
    };
    let answer = match driven.peer.answer(now, offer) {
        Ok(a) => a,
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(Err(RpcError::new(
                400,
                format!("cannot answer the offer: {e:?}"),
            )));
            return;
        }
    };
    for c in invite.candidates {
        let _ = driven.peer.add_remote_candidate(now, from_wire(c));
    }
    let candidates: Vec<_> = driven
        .peer
        .local_candidates()
        .iter()
        .cloned()
        .map(to_wire)
        .collect();
    if candidates.is_empty() {
        return fail(&stats, reply, "the anchor has no host candidate".into());
    }
    stats.answered.fetch_add(1, Ordering::Relaxed);
    let answer = InviteAnswer {
        call_id,
        sdp: answer.sdp,
        candidates,
    };
    let _ = reply.send(serde_json::to_value(answer).map_err(|e| RpcError::new(500, e.to_string())));

    // Play 20 ms frames once connected, until `bye`.
    let mut next_frame: Option<Instant> = None;
    let mut silent_at = None;
    let done = loop {
        let due = next_frame.unwrap_or_else(|| Instant::now() + Duration::from_millis(20));
        tokio::select! {
            ask = &mut stop => break ask.ok(),
            _ = driven.drive_until(Instant::now() + Duration::from_secs(3600), Some(due), |_| false) => {}
        }
        let now = Instant::now();
        if driven.peer.times.connected.is_some() {
            let connected = *silent_at.get_or_insert(now);
            let first =
                *next_frame.get_or_insert_with(|| loadgen::clock::next_slot(config.epoch, now));
            if now >= first {
                let silent = matches!(config.behaviour, AnchorBehaviour::GoSilentAfter(d) if now >= connected + d);
                if !silent {
                    driven.peer.send_frame_due(now, first);
                }
                next_frame = Some(first + Duration::from_millis(20));
            }
        }
    };
    let now = Instant::now();
    driven.peer.close(now);
    let sent = driven.peer.frames_sent();
    let meter = std::mem::replace(
        &mut driven.peer.meter,
        loadgen::measure::MediaMeter::new(config.epoch),
    );
    if let Some(tx) = done {
        // What the agent sent is the agent's to report; it fills `packets_sent` in.
        let received = meter.received();
        let _ = tx.send((
            meter.finish(received, 0, config.codec),
            sent,
            driven.peer.wire_bytes_sent,
            driven.peer.pacing.clone(),
        ));
    }
}
