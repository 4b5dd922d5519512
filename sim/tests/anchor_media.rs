//! The anchor's media server against an agent's leg on loopback: ICE-lite checks answered only with the leg's credentials, the DTLS client's
//! certificate held to the offer's fingerprint, media measured both ways.
#![allow(clippy::disallowed_methods)] // real sockets, real clock
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use loadgen::leg::PeerConfig;
use loadgen::peer::Peer;
use loadgen::sdp::{self, Description, Local};
use reports::emodel::Codec;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use sim::anchor::media::{CONSENT_TIMEOUT, Ended, LegEvent, LegSpec, MediaServer};
use turn_server::wire::{self, Class, IntegrityKind, MessageBuilder, Method, TransactionId};

const UFRAG: &str = "anch0001";
const PWD: &str = "0123456789abcdef0123456789abcdef";

/// Opens a leg for a host-leg agent's offer (after `tamper`), hands the agent the answer and the
/// server's candidate, and drives the agent, sending frames once connected, for `talk`.
fn call(tamper: impl FnOnce(&mut Description), talk: Duration) -> (MediaServer, Peer) {
    call_with_consent(tamper, talk, CONSENT_TIMEOUT)
}

/// [`call`] with the leg's consent timeout.
fn call_with_consent(
    tamper: impl FnOnce(&mut Description),
    talk: Duration,
    consent_timeout: Duration,
) -> (MediaServer, Peer) {
    let epoch = Instant::now();
    let media = MediaServer::start([127, 0, 0, 1].into(), epoch, Codec::OPUS, None).unwrap();
    let now = Instant::now();
    let config = PeerConfig {
        turn: Vec::new(),
        answering: false,
        epoch,
        entropy: loadgen::entropy::Entropy::Os,
    };
    let mut agent = Peer::new(config, 0x1234, now).unwrap();
    let offer = agent.leg.offer();
    let mut parsed = Description::parse(&offer).unwrap();
    tamper(&mut parsed);
    let mid = parsed.sections[parsed.audio].mid.clone();
    let answer = sdp::answer(
        &parsed,
        &Local {
            ice_ufrag: UFRAG,
            ice_pwd: PWD,
            fingerprint: media.fingerprint(),
            ssrc: 0x4000_0001,
            address: media.address(),
            ice_lite: true,
        },
        1,
    );
    media.open(LegSpec {
        call_id: "call-1".into(),
        call: "c1".into(),
        offer: parsed,
        ice_ufrag: UFRAG.into(),
        ice_pwd: PWD.into(),
        ssrc: 0x4000_0001,
        silent_after: None,
        consent_timeout,
    });
    agent.leg.accept(now, &answer).unwrap();
    agent
        .leg
        .add_remote_candidate(
            now,
            &RTCIceCandidateInit {
                candidate: sdp::host_candidate(media.address()),
                sdp_mid: mid,
                sdp_mline_index: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
    common::talk(&mut agent, talk);
    (media, agent)
}

fn close(media: &MediaServer) -> Ended {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    media.close("call-1".into(), tx);
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(ended) => return ended,
            Err(_) if start.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("the leg's figures never came: {e}"),
        }
    }
}

#[test]
fn a_full_ice_agent_connects_and_media_flows_both_ways() {
    let (media, agent) = call(|_| {}, Duration::from_secs(3));
    assert!(
        agent.leg.times.ice_connected.is_some(),
        "ICE never connected"
    );
    assert!(agent.leg.times.connected.is_some(), "DTLS never connected");
    // ~2.9 s of 20 ms frames each way after a setup well under 100 ms on loopback.
    let to_agent = agent.leg.meter.received();
    assert!(to_agent >= 100, "the agent received {to_agent} frames");
    assert!(
        agent.leg.meter.rtcp_reports >= 1,
        "no sender report reached the agent"
    );
    let ended = close(&media);
    // The agent's reception reports of the anchor's stream: the far end's view.
    let far = ended
        .far_end
        .clone()
        .expect("the agent's reception reports");
    assert!(far.rtcp_reports >= 1, "{far:?}");
    assert!(
        far.packets_expected + 50 >= ended.frames_sent && far.packets_expected <= ended.frames_sent,
        "the agent reported {} expected of {} sent (its last report is up to a second old)",
        far.packets_expected,
        ended.frames_sent
    );
    assert_eq!(far.packets_lost, 0);
    assert!(ended.connected_after.is_some() && ended.first_rtp_after.is_some());
    let (to_anchor, anchor_sent, wire_bytes, pacing) = (
        ended.received,
        ended.frames_sent,
        ended.wire_bytes_sent,
        ended.pacing,
    );
    assert!(to_anchor.packets_received >= 100, "{to_anchor:?}");
    assert_eq!(to_anchor.packets_lost, 0);
    assert!(anchor_sent >= to_agent, "{anchor_sent} < {to_agent}");
    // Every frame counted with its headers: RTP 12, the stamp's extension 12 (our agent
    // offered it), the Opus frame, SRTP's tag (at least 10), UDP and IP 28.
    let least: u64 = (0..anchor_sent)
        .map(|f| loadgen::audio::opus_frame(f).len() as u64 + 12 + 12 + 10 + 28)
        .sum();
    assert!(
        wire_bytes >= least,
        "{wire_bytes} for {anchor_sent} frames, at least {least}"
    );
    // The anchor measured the agent's one-way delay from its stamps, in the header extension.
    assert!(
        to_anchor.one_way_delay.len() >= 100,
        "stamped frames: {}",
        to_anchor.one_way_delay.len()
    );
    assert!(!pacing.is_empty());
    assert_eq!(media.counters.dtls_failures.load(Ordering::Relaxed), 0);
}

#[test]
fn a_leg_whose_agent_goes_away_stops_sending_when_consent_lapses() {
    // Our agents check every 2 s: a 3 s timeout holds while the agent is there.
    let consent = Duration::from_secs(3);
    let talk = Duration::from_secs(4);
    let started = Instant::now();
    let (mut media, agent) = call_with_consent(|_| {}, talk, consent);
    let mut events = media.take_events().unwrap();
    assert!(
        agent.leg.meter.received() >= 150,
        "media flowed while the agent checked"
    );
    assert!(
        events.try_recv().is_err(),
        "consent held while the agent checked"
    );
    // The page closes: no more checks, no more media from the agent.
    let gone = Instant::now();
    drop(agent);
    let lost = loop {
        match events.try_recv() {
            Ok(event) => break event,
            Err(_) if gone.elapsed() < consent + Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("consent never lapsed: {e}"),
        }
    };
    let lost_after = gone.elapsed();
    assert_eq!(
        lost,
        LegEvent::ConsentLost {
            call_id: "call-1".into()
        }
    );
    // The last check came at most 2 s before the page closed.
    assert!(
        lost_after >= consent - Duration::from_secs(2),
        "lapsed {lost_after:?} after the agent went"
    );
    assert_eq!(media.counters.consent_lost.load(Ordering::Relaxed), 1);
    // Nothing is sent after the lapse: a second later the leg has sent no more than 20 ms
    // frames up to the lapse.
    let lapsed_at = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let anchor_sent = close(&media).frames_sent;
    let most = u64::try_from(lapsed_at.as_millis() / 20).unwrap() + 5;
    assert!(
        anchor_sent <= most,
        "{anchor_sent} frames sent, at most {most} before the lapse"
    );
}

#[test]
fn a_certificate_that_does_not_match_the_offered_fingerprint_is_refused() {
    let (media, agent) = call(
        |offer| offer.fingerprint = vec!["00"; 32].join(":"),
        Duration::from_secs(2),
    );
    assert!(
        agent.leg.times.ice_connected.is_some(),
        "ICE never connected"
    );
    assert!(agent.leg.times.connected.is_none(), "DTLS connected anyway");
    assert_eq!(agent.leg.meter.received(), 0);
    assert_eq!(media.counters.dtls_failures.load(Ordering::Relaxed), 1);
}

fn binding_request(username: &str, key: &str, use_candidate: bool) -> Vec<u8> {
    let mut m = MessageBuilder::new(Method::BINDING, Class::Request, TransactionId([7; 12]));
    m.attribute(wire::attr::USERNAME, username.as_bytes());
    if use_candidate {
        m.attribute(0x0025, &[]);
    }
    m.integrity(IntegrityKind::Sha1, key.as_bytes());
    m.finish_with_fingerprint()
}

#[test]
fn checks_are_answered_only_with_the_legs_credentials() {
    let epoch = Instant::now();
    let media = MediaServer::start([127, 0, 0, 1].into(), epoch, Codec::OPUS, None).unwrap();
    let agent_offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:agnt\r\n\
        a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 AA:BB\r\n\
        a=setup:actpass\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n";
    let consent_timeout = CONSENT_TIMEOUT;
    media.open(LegSpec {
        call_id: "call-1".into(),
        call: "c1".into(),
        offer: Description::parse(agent_offer).unwrap(),
        ice_ufrag: UFRAG.into(),
        ice_pwd: PWD.into(),
        ssrc: 1,
        silent_after: None,
        consent_timeout,
    });
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let me: SocketAddr = socket.local_addr().unwrap();
    let mut buf = [0u8; 1500];
    let answered = |request: &[u8], buf: &mut [u8]| {
        socket.send_to(request, media.address()).unwrap();
        socket.recv_from(buf).ok().map(|(n, _)| n)
    };
    let user = format!("{UFRAG}:agnt");
    for (what, request) in [
        (
            "a wrong password",
            binding_request(&user, "not-the-password", true),
        ),
        (
            "another agent's ufrag",
            binding_request(&format!("{UFRAG}:evil"), PWD, true),
        ),
        ("an unknown leg", binding_request("nobody:agnt", PWD, true)),
        (
            "a truncated message",
            binding_request(&user, PWD, true)[..30].to_vec(),
        ),
    ] {
        assert_eq!(answered(&request, &mut buf), None, "{what} was answered");
    }
    assert_eq!(media.counters.dropped.load(Ordering::Relaxed), 4);

    let n = answered(&binding_request(&user, PWD, true), &mut buf).expect("no answer");
    let packet = wire::StunPacket::new_checked(&buf[..n]).unwrap();
    assert_eq!(packet.class(), Class::Success);
    let repr = wire::StunRepr::parse(&packet).unwrap();
    assert!(repr.fingerprint);
    assert!(repr.verify_integrity(packet.message(), PWD.as_bytes()));
    let mapped = packet
        .attributes()
        .find(|a| a.kind == wire::attr::XOR_MAPPED_ADDRESS)
        .and_then(|a| wire::decode_xor_address(a.value, &packet.transaction_id()));
    assert_eq!(mapped, Some(me));
}
