//! The anchor and an agent that goes away: a leg whose agent stops checking loses consent and
//! stops sending; while the agent's signalling is still open the call stays up (its `bye`
//! still ends it), and once the signalling has closed too the call is ended as abandoned.
#![allow(clippy::disallowed_methods)] // real sockets, real clock
mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use loadgen::leg::PeerConfig;
use loadgen::peer::Peer;
use loadgen::signalling::{InviteAnswer, RpcError};
use reports::emodel::Codec;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use serde_json::{Value, json};
use sim::anchor::media::MediaServer;
use sim::anchor::{AnchorBehaviour, AnchorConfig, AnchorStats};
use sim::signalling::{Incoming, Signal};
use tokio::sync::{mpsc, oneshot};

/// Our agents check every 2 s: a 3 s consent holds while the agent is there.
const CONSENT: Duration = Duration::from_secs(3);

struct Anchor {
    tx: mpsc::UnboundedSender<Signal>,
    stats: Arc<AnchorStats>,
    epoch: Instant,
}

fn anchor() -> Anchor {
    let epoch = Instant::now();
    let media = MediaServer::start([127, 0, 0, 1].into(), epoch, Codec::OPUS, None).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(AnchorStats::default());
    let config = AnchorConfig {
        epoch,
        codec: Codec::OPUS,
        behaviour: AnchorBehaviour::Answer,
        consent_timeout: CONSENT,
    };
    let s = stats.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(sim::anchor::serve(config, media, rx, s));
    });
    Anchor { tx, stats, epoch }
}

impl Anchor {
    fn request(&self, connection: u64, method: &str, params: Value) -> Result<Value, RpcError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Signal::Request(Incoming {
                connection,
                method: method.into(),
                params,
                reply,
            }))
            .unwrap();
        answer.blocking_recv().unwrap()
    }

    /// An agent on signalling `connection` that invites with `token` and talks for 3 s.
    fn talking_agent(&self, connection: u64, token: &str) -> Peer {
        let config = PeerConfig {
            turn: Vec::new(),
            answering: false,
            epoch: self.epoch,
            entropy: loadgen::entropy::Entropy::Os,
        };
        let mut agent = Peer::new(config, 0x1234, Instant::now()).unwrap();
        let offer = agent.leg.offer();
        let answer = self
            .request(
                connection,
                "invite",
                json!({ "sdp": offer, "candidates": [], "callContextToken": token }),
            )
            .unwrap();
        let answer: InviteAnswer = serde_json::from_value(answer).unwrap();
        let now = Instant::now();
        agent.leg.accept(now, &answer.sdp).unwrap();
        for c in answer.candidates {
            agent
                .leg
                .add_remote_candidate(
                    now,
                    &RTCIceCandidateInit {
                        candidate: c.candidate,
                        sdp_mid: c.sdp_mid,
                        sdp_mline_index: c.sdp_m_line_index,
                        ..Default::default()
                    },
                )
                .unwrap();
        }
        // The library's `accept` carries nothing.
        assert_eq!(self.request(connection, "accept", json!({})), Ok(json!({})));
        common::talk(&mut agent, Duration::from_secs(3));
        assert!(agent.leg.meter.received() >= 100, "media flowed");
        agent
    }

    fn abandoned(&self) -> u64 {
        self.stats.abandoned.load(Ordering::Relaxed)
    }
}

#[test]
fn a_call_whose_agent_and_signalling_are_gone_is_ended() {
    let a = anchor();
    let agent = a.talking_agent(1, "token-1");
    // The page closes: the agent stops, its WebSocket goes.
    drop(agent);
    a.tx.send(Signal::Closed { connection: 1 }).unwrap();
    let gone = Instant::now();
    while a.abandoned() == 0 && gone.elapsed() < CONSENT + Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(a.abandoned(), 1, "ended within the consent timeout");
    // Nothing is left of it.
    let bye = a.request(2, "bye", json!({ "callContextToken": "token-1" }));
    assert_eq!(bye.map_err(|e| e.code), Err(404));
}

#[test]
fn while_its_signalling_is_open_a_call_outlives_its_leg_until_bye() {
    let a = anchor();
    let agent = a.talking_agent(1, "token-2");
    drop(agent);
    std::thread::sleep(CONSENT + Duration::from_secs(1));
    assert_eq!(a.abandoned(), 0, "signalling is still open");
    // The library's `bye` names the call by its token; the anchor's figures come back.
    let bye = a
        .request(1, "bye", json!({ "callContextToken": "token-2" }))
        .unwrap();
    assert!(
        bye["agentToAnchor"]["packets_received"].as_u64() >= Some(100),
        "{bye}"
    );
    // Closing the connection now ends nothing more.
    a.tx.send(Signal::Closed { connection: 1 }).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(a.abandoned(), 0);
}
