//! The anchor's call handling as a sans-I/O core: what it answers to each signalling request
//! (`invite` and an ICE restart's, `accept`, `hold`, `resume`, `transfer`, `conference`,
//! `connectContact`, `disconnectContact`, `bye`), which calls it has up and how a request names
//! them, and when a call whose agent is gone ends. It tells the media server what to do
//! through [`Media`] and takes instants from its caller: the real-time edge (`anchor::serve`,
//! a tokio task) and virtual time drive the same desk.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use loadgen::sdp::{self, Description, Local};
use loadgen::signalling::{Candidate, Invite, InviteAnswer, RpcError};
use serde_json::{Value, json};

use super::media::{Ended, LegSpec, Restart};
use super::{AnchorBehaviour, AnchorStats};

/// The media server as the desk commands it (its real-time handle or its core).
pub(crate) trait Media {
    /// Its certificate's fingerprint (in every answer).
    fn fingerprint(&self) -> &str;
    /// Where it listens (every answer's one candidate).
    fn address(&self) -> SocketAddr;
    /// Opens a call's leg.
    fn open(&mut self, spec: LegSpec);
    /// Gives a call's leg an ICE restart's new credentials.
    fn restart(&mut self, restart: Restart);
    /// Mixes a conference into a call's leg from now on.
    fn conference(&mut self, call_id: &str);
}

/// What the desk answers a request with.
#[derive(Debug)]
pub(crate) enum Reply {
    /// This result or error, now.
    Answer(Result<Value, RpcError>),
    /// Nothing, ever (the anchor lets invites ring: [`AnchorBehaviour::NeverAnswer`]).
    Withheld,
    /// The call ends: its leg is to be closed, and the request answered with
    /// [`ended_result`] of what the leg hands back (`null` when it hands back nothing).
    Close(Ending),
}

/// A call that ends, for its edge to close.
#[derive(Debug)]
pub(crate) struct Ending {
    /// The anchor's id of the call.
    pub call_id: String,
    /// What the desk knew of it.
    pub call: Call,
    /// `bye`, `disconnectContact`, or `abandoned`.
    pub ended_by: &'static str,
}

/// A call the anchor has up, and how a request can name it.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// The signalling connection its invite came on.
    pub connection: u64,
    /// Its invite's `callContextToken`.
    pub token: String,
    /// Its invite's `contactId`, when the client gave one (persistent-connection mode).
    contact: Option<String>,
    /// Its number, in the order the invites came.
    number: u64,
    /// Its leg's SSRC.
    ssrc: u32,
    /// Its leg lost the agent's consent (RFC 7675) and sends nothing more.
    consent_lost: bool,
    /// When its invite came (the leg opens at the same moment).
    pub invited: Instant,
    /// The same, on the wall clock, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
}

/// The anchor's calls and what it answers.
#[derive(Debug)]
pub(crate) struct Desk {
    behaviour: AnchorBehaviour,
    consent_timeout: Duration,
    /// The calls up, by the anchor's id.
    up: HashMap<String, Call>,
    /// Invites answered so far (each call's number).
    next: u64,
    /// Signalling connections that have closed and still had a call.
    gone: HashSet<u64>,
}

impl Desk {
    /// A desk that behaves so, its legs' consent lapsing after `consent_timeout`.
    pub(crate) fn new(behaviour: AnchorBehaviour, consent_timeout: Duration) -> Self {
        Self {
            behaviour,
            consent_timeout,
            up: HashMap::new(),
            next: 0,
            gone: HashSet::new(),
        }
    }

    /// Answers `method` with `params`, which came on signalling connection `connection` at
    /// `now` (`unix_ms` on the wall clock); new ICE credentials come from `credentials`.
    #[allow(clippy::too_many_arguments)] // a request's parts, and what answering it needs
    pub(crate) fn request(
        &mut self,
        now: Instant,
        unix_ms: u64,
        connection: u64,
        method: &str,
        params: Value,
        media: &mut dyn Media,
        credentials: &mut dyn FnMut() -> Result<(String, String), RpcError>,
        stats: &AnchorStats,
    ) -> Reply {
        let answer = match method {
            // An ICE restart names its contact and brings a new offer: the leg takes new
            // credentials, the answer keeps everything else the call agreed.
            "invite" if params.get("iceRestart").and_then(Value::as_bool) == Some(true) => {
                let reply = self.restart(&params, connection, media, credentials);
                if reply.is_ok() {
                    stats.restarts.fetch_add(1, Ordering::Relaxed);
                }
                reply
            }
            "invite" => {
                stats.invites.fetch_add(1, Ordering::Relaxed);
                match self.behaviour {
                    AnchorBehaviour::NeverAnswer => return Reply::Withheld,
                    AnchorBehaviour::Refuse(code) => {
                        return Reply::Answer(Err(RpcError::new(code, "refused by the anchor")));
                    }
                    _ => {}
                }
                let answer = self.invite(now, unix_ms, connection, params, media, credentials);
                let counter = match answer {
                    Ok(_) => &stats.answered,
                    Err(_) => &stats.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                answer
            }
            // The library sends `accept` with no parameters and takes any answer as its ack.
            "accept" => Ok(json!({})),
            // Without a contact named: the agent's persistent connection, nothing to do. With
            // one (an agent back after its page closed): the contact is still up — media does
            // not come back, and `disconnectContact` ends it as `bye` would.
            "connectContact" | "disconnectContact" if !named(&params) => Ok(json!({})),
            "connectContact" => {
                let found = self.find(&params, connection);
                match found.as_ref().and_then(|id| self.up.get_mut(id)) {
                    Some(call) => {
                        // The agent is back, on this connection.
                        call.connection = connection;
                        Ok(json!({ "state": "connected" }))
                    }
                    None => Err(RpcError::new(404, "call not found")),
                }
            }
            // Mid-call contact control. The third party of a transfer or a conference is
            // bridged or mixed into the agent's media session at the anchor, so the agent's
            // leg carries on as it is; the reply says what the contact became.
            "hold" | "resume" | "transfer" | "conference" => {
                let found = self.find(&params, connection);
                match (self.behaviour, found) {
                    (AnchorBehaviour::RefuseMidCall(code), _) => Err(RpcError::new(
                        code,
                        format!("{method} refused by the anchor"),
                    )),
                    (_, None) => Err(RpcError::new(404, "call not found")),
                    (_, Some(id)) => {
                        if method == "conference" {
                            media.conference(&id);
                        }
                        Ok(json!({ "state": match method {
                            "hold" => "held",
                            "resume" => "connected",
                            "transfer" => "transferred",
                            _ => "conferenced",
                        }}))
                    }
                }
            }
            "bye" | "disconnectContact" => {
                let Some(call_id) = self.find(&params, connection) else {
                    return Reply::Answer(Err(RpcError::new(404, "call not found")));
                };
                let Some(call) = self.up.remove(&call_id) else {
                    return Reply::Answer(Err(RpcError::new(404, "call not found")));
                };
                self.forget_closed();
                stats.ended.fetch_add(1, Ordering::Relaxed);
                let ended_by = if method == "bye" {
                    "bye"
                } else {
                    "disconnectContact"
                };
                return Reply::Close(Ending {
                    call_id,
                    call,
                    ended_by,
                });
            }
            _ => Err(RpcError::new(-32601, "unknown method")),
        };
        Reply::Answer(answer)
    }

    /// Signalling connection `connection` closed. A call whose leg still has consent stays up
    /// (a page closed mid-call keeps the contact, and the agent may log in again and name
    /// it); once its leg has lost consent too, the agent is gone and the call ends: those
    /// calls, to be closed.
    pub(crate) fn connection_closed(&mut self, connection: u64) -> Vec<Ending> {
        let dead: Vec<String> = self
            .up
            .iter()
            .filter(|(_, c)| c.connection == connection && c.consent_lost)
            .map(|(id, _)| id.clone())
            .collect();
        let ended = dead.iter().filter_map(|id| self.abandon(id)).collect();
        if self.up.values().any(|c| c.connection == connection) {
            self.gone.insert(connection);
        }
        ended
    }

    /// Call `call_id`'s leg lost consent: the call, to be closed, when its signalling has
    /// closed too.
    pub(crate) fn consent_lost(&mut self, call_id: &str) -> Option<Ending> {
        let call = self.up.get_mut(call_id)?;
        call.consent_lost = true;
        if !self.gone.contains(&call.connection) {
            return None;
        }
        let ended = self.abandon(call_id);
        self.forget_closed();
        ended
    }

    fn abandon(&mut self, call_id: &str) -> Option<Ending> {
        let call = self.up.remove(call_id)?;
        Some(Ending {
            call_id: call_id.to_owned(),
            call,
            ended_by: "abandoned",
        })
    }

    /// A new call: a leg of the media server, and the answer with its SDP and host candidate.
    fn invite(
        &mut self,
        now: Instant,
        unix_ms: u64,
        connection: u64,
        params: Value,
        media: &mut dyn Media,
        credentials: &mut dyn FnMut() -> Result<(String, String), RpcError>,
    ) -> Result<Value, RpcError> {
        let contact = params
            .get("contactId")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        let invite = serde_json::from_value::<Invite>(params)
            .map_err(|_| RpcError::new(-32602, "invalid invite parameters"))?;
        let offer = match Description::parse(&invite.sdp) {
            // The anchor is the DTLS server: an offer that insists on it too leaves no client
            // (RFC 5763 §5).
            Ok(offer) if offer.setup == "passive" => {
                return Err(RpcError::new(
                    400,
                    "cannot answer: a=setup:passive leaves no DTLS client",
                ));
            }
            Ok(offer) => offer,
            Err(e) => return Err(RpcError::new(400, format!("cannot answer: {e}"))),
        };
        let (ice_ufrag, ice_pwd) = credentials()?;
        self.next += 1;
        let number = self.next;
        let call_id = format!("call-{number}");
        let ssrc = 0x4000_0000 | (number as u32 & 0x3fff_ffff);
        let answer = invite_answer(
            &offer,
            &*media,
            (&ice_ufrag, &ice_pwd),
            (ssrc, number),
            &call_id,
        )?;
        // The leg is open before the agent can have the answer, so no check of its arrives at
        // an unknown leg.
        media.open(LegSpec {
            call_id: call_id.clone(),
            call: invite.call_context_token.clone(),
            offer,
            ice_ufrag,
            ice_pwd,
            ssrc,
            silent_after: match self.behaviour {
                AnchorBehaviour::GoSilentAfter(d) => Some(d),
                _ => None,
            },
            consent_timeout: self.consent_timeout,
        });
        self.up.insert(
            call_id.clone(),
            Call {
                connection,
                token: invite.call_context_token,
                contact,
                number,
                ssrc,
                consent_lost: false,
                invited: now,
                started_unix_ms: unix_ms,
            },
        );
        Ok(answer)
    }

    /// Answers an ICE restart's invite for the call it names (RFC 8445 §9.1: both sides take
    /// new credentials; the DTLS role, fingerprint, SSRC and codec stay).
    fn restart(
        &mut self,
        params: &Value,
        connection: u64,
        media: &mut dyn Media,
        credentials: &mut dyn FnMut() -> Result<(String, String), RpcError>,
    ) -> Result<Value, RpcError> {
        let Some(call_id) = self.find(params, connection) else {
            return Err(RpcError::new(404, "call not found"));
        };
        let (ssrc, number) = (self.up[&call_id].ssrc, self.up[&call_id].number);
        let invite = serde_json::from_value::<Invite>(params.clone())
            .map_err(|_| RpcError::new(-32602, "invalid invite parameters"))?;
        let offer = Description::parse(&invite.sdp)
            .map_err(|e| RpcError::new(400, format!("cannot answer the ICE restart: {e}")))?;
        let (ice_ufrag, ice_pwd) = credentials()?;
        let answer = invite_answer(
            &offer,
            &*media,
            (&ice_ufrag, &ice_pwd),
            (ssrc, number),
            &call_id,
        )?;
        if let Some(call) = self.up.get_mut(&call_id) {
            call.consent_lost = false;
        }
        media.restart(Restart {
            call_id: call_id.clone(),
            offer,
            ice_ufrag,
            ice_pwd,
        });
        Ok(answer)
    }

    /// The calls up, found the ways the CCP's library names them: by our `callId`, by
    /// `contactId` (ours, or the client's from its invite), by `callContextToken`, or — for
    /// the library's `accept {}` and its `bye` without a token — as the latest call on the
    /// connection.
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
    fn forget_closed(&mut self) {
        if !self.gone.is_empty() {
            let up = &self.up;
            self.gone
                .retain(|c| up.values().any(|call| call.connection == *c));
        }
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

/// What `bye` (or `disconnectContact`) answers: the anchor's measurement of the agent's
/// stream, what it sent, and what a conference's parties heard.
pub(crate) fn ended_result(ended: &Ended) -> Value {
    let mut result = json!({
        "agentToAnchor": ended.received,
        "anchorSent": ended.frames_sent,
        "anchorWireBytes": ended.wire_bytes_sent,
        "anchorPacing": ended.pacing,
        "anchorDtls": ended.dtls_progress,
    });
    if let Some((customer, third_party)) = &ended.conference {
        result["anchorConference"] = json!({
            "customerHeard": customer,
            "thirdPartyHeard": third_party,
        });
    }
    result
}

/// The result of an invite (a first one or an ICE restart's) for call `call_id`: the anchor's
/// answer to `offer` from `media`, with ICE credentials `(ufrag, pwd)` and the call's `ssrc`
/// and `number`.
fn invite_answer(
    offer: &Description,
    media: &dyn Media,
    credentials: (&str, &str),
    (ssrc, number): (u32, u64),
    call_id: &str,
) -> Result<Value, RpcError> {
    let (sdp, candidates) = answer_offer(
        offer,
        (media.fingerprint(), media.address()),
        credentials,
        ssrc,
        number,
    );
    serde_json::to_value(InviteAnswer {
        call_id: call_id.to_owned(),
        sdp,
        candidates,
    })
    .map_err(|e| RpcError::new(500, e.to_string()))
}

/// The anchor's answer to `offer` and its one host candidate, for a leg of the media server
/// whose certificate has `fingerprint` and that listens on `address` (ICE-lite), with ICE
/// credentials `(ufrag, pwd)` and `ssrc` (the call's `number` as the SDP session id).
pub(crate) fn answer_offer(
    offer: &Description,
    (fingerprint, address): (&str, SocketAddr),
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
