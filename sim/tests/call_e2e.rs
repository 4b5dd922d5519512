//! Whole calls end to end on loopback: the agent's session (WebSocket/TLS signalling, TURN over
//! an impairment relay, DTLS-SRTP media) against the signalling endpoint and the media anchor —
//! a clean call, and each failure path giving exactly its class.
#![allow(clippy::disallowed_methods)] // real sockets, real clock

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use loadgen::leg::TurnTransport;
use loadgen::session::{CallSpec, Timeouts, TurnName, TurnServer, run_call};
use loadgen::signalling::Endpoint;
use reports::emodel::Codec;
use reports::{CallIdentity, CallKind, FailureClass, Outcome, Shard};
use sim::anchor::AnchorBehaviour;
use sim::netem::{Path, SegmentModel};
use sim::relay::{TcpRelay, TcpRelayConfig, UdpRelay, UdpRelayConfig};
use sim::run::VendorSide;
use sim::scenario::{Policy, PortRule, Transport};

const NAME: &str = "signalling.sim.local";

struct Stack {
    vendor: VendorSide,
    turn: SocketAddr,
    endpoint: Endpoint,
    epoch: Instant,
    relay: Option<UdpRelay>,
}

fn stack(behaviour: AnchorBehaviour, policy: Option<Policy>) -> Stack {
    let epoch = Instant::now();
    let vendor = VendorSide::start(
        1,
        &[NAME.to_owned()],
        "127.0.0.1:0".parse().unwrap(),
        epoch,
        Codec::OPUS,
        behaviour,
        None,
        &sim::run::Deployed::default(),
    )
    .unwrap();
    let turn = vendor.turn_addr();
    let endpoint = Endpoint {
        url: format!("wss://{NAME}:{}/rtc", vendor.signalling_addr().port()),
        addr: vendor.signalling_addr(),
        roots: vec![vendor.certificate.clone()],
    };
    let relay = policy.map(|policy| {
        UdpRelay::start(UdpRelayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: turn,
            path: Path::symmetric(vec![SegmentModel::new().delay(Duration::from_millis(5))]),
            seed: 1,
            policy,
            server_port: None,
        })
        .unwrap()
    });
    Stack {
        vendor,
        turn,
        endpoint,
        epoch,
        relay,
    }
}

fn spec(s: &Stack, talk: Duration) -> CallSpec {
    CallSpec {
        identity: CallIdentity {
            run: "test".into(),
            call: "c1".into(),
            agent: "agent-1".into(),
            scenario: "e2e".into(),
            site: "hq".into(),
            profile: "office-lan".into(),
            kind: CallKind::Inbound,
            shard: Shard::WHOLE,
        },
        signalling: Ok(s.endpoint.clone()),
        turn: vec![TurnServer {
            url: "turn:turn.sim.local:3478?transport=udp".into(),
            addr: TurnName::fixed(Ok(s.relay.as_ref().map_or(s.turn, UdpRelay::local_addr))),
            transport: TurnTransport::Udp,
        }],
        turn_username: "agent".into(),
        turn_password: s.vendor.password.clone(),
        turn_realm: "sim.local".into(),
        timeouts: Timeouts {
            websocket_connect: Duration::from_secs(2),
            ice_collection: Duration::from_secs(2),
            invite_answer: Duration::from_secs(1),
            ..Timeouts::default()
        },
        talk,
        dead_air: Duration::from_secs(1),
        codec: Codec::OPUS,
        epoch: s.epoch,
        ssrc: 0x1234,
        hangup: None,
    }
}

fn run(spec: CallSpec) -> reports::CallRecord {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let record = rt.block_on(run_call(spec));
    println!("{}", serde_json::to_string(&record).unwrap());
    record.check().unwrap();
    record
}

#[test]
fn a_clean_call_completes_with_media_both_ways() {
    let s = stack(AnchorBehaviour::Answer, Some(Policy::default()));
    let r = run(spec(&s, Duration::from_secs(2)));
    assert_eq!(r.outcome, Outcome::Completed, "{:?}", r.failure);
    let m = r.milestones;
    for (name, v) in [
        ("signalling", m.signalling_connected_us),
        ("ice collected", m.ice_collected_us),
        ("answer", m.answer_received_us),
        ("ice", m.ice_connected_us),
        ("dtls", m.dtls_connected_us),
        ("first rtp", m.first_rtp_us),
    ] {
        assert!(v.is_some(), "{name} missing");
    }
    let up = r
        .agent_to_anchor
        .expect("the anchor's measurement came back in bye");
    let down = r
        .anchor_to_agent
        .expect("the agent measured the anchor's stream");
    for (dir, d) in [("up", &up), ("down", &down)] {
        assert!(d.packets_sent >= 90, "{dir}: {} sent", d.packets_sent);
        assert_eq!(d.packets_lost, 0, "{dir}");
        // 5 ms each way through the relay.
        let delay = d.one_way_delay.quantile(0.5).unwrap();
        assert!((4_900..10_000).contains(&delay), "{dir}: {delay} µs");
        assert!(d.mos > 4.2, "{dir}: MOS {}", d.mos);
    }
}

#[test]
fn an_anchor_that_never_answers_is_a_handshake_failure() {
    let s = stack(AnchorBehaviour::NeverAnswer, None);
    let r = run(spec(&s, Duration::from_secs(1)));
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(
        r.failure.unwrap().class,
        FailureClass::SignallingHandshakeFailure
    );
}

#[test]
fn a_busy_agent_is_user_busy() {
    let s = stack(AnchorBehaviour::Refuse(486), None);
    let r = run(spec(&s, Duration::from_secs(1)));
    let f = r.failure.unwrap();
    assert_eq!(f.class, FailureClass::UserBusy);
    assert_eq!(
        f.ccp_message.as_deref(),
        Some("Softphone call UserBusy error.")
    );
}

#[test]
fn blocked_udp_3478_is_an_ice_collection_timeout_with_the_ccp_message() {
    let policy = Policy {
        block: vec![PortRule {
            transport: Transport::Udp,
            ports: None,
        }],
        ..Policy::default()
    };
    let s = stack(AnchorBehaviour::Answer, Some(policy));
    let r = run(spec(&s, Duration::from_secs(1)));
    assert_eq!(
        r.last_state,
        reports::SessionState::ConnectSignalingAndIceCollection
    );
    let f = r.failure.unwrap();
    assert_eq!(f.class, FailureClass::IceCollectionTimeout, "{}", f.detail);
    let msg = f.ccp_message.unwrap();
    assert!(
        msg.starts_with("Failed to establish softphone connection."),
        "{msg}"
    );
    assert!(
        msg.ends_with("turn:turn.sim.local:3478?transport=udp"),
        "{msg}"
    );
    assert_eq!(r.outcome, Outcome::Failed);
}

#[test]
fn an_unresolvable_turn_name_is_an_ice_collection_timeout() {
    let s = stack(AnchorBehaviour::Answer, None);
    let mut sp = spec(&s, Duration::from_secs(1));
    sp.turn[0].addr = TurnName::fixed(Err(
        "turn.sim.local: the site's DNS does not resolve this name".into(),
    ));
    let r = run(sp);
    // Signalling connected in its own time, not when ICE collection gave up beside it.
    assert!(
        r.milestones
            .phase_us(reports::SetupPhase::SignallingConnect)
            .unwrap()
            < 1_000_000
    );
    let f = r.failure.unwrap();
    assert_eq!(f.class, FailureClass::IceCollectionTimeout);
    assert!(f.detail.contains("DNS"), "{}", f.detail);
}

#[test]
fn wrong_turn_credentials_are_a_turn_auth_failure() {
    let s = stack(AnchorBehaviour::Answer, None);
    let mut sp = spec(&s, Duration::from_secs(1));
    sp.turn_password = "wrong".into();
    let r = run(sp);
    assert_eq!(r.failure.unwrap().class, FailureClass::TurnAuthFailure);
}

#[test]
fn refused_signalling_is_a_connection_failure() {
    let s = stack(AnchorBehaviour::Answer, None);
    let mut sp = spec(&s, Duration::from_secs(1));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    sp.signalling = Ok(Endpoint {
        url: format!("wss://{NAME}:{}/rtc", addr.port()),
        addr,
        roots: s.endpoint.roots.clone(),
    });
    let r = run(sp);
    let f = r.failure.unwrap();
    assert_eq!(f.class, FailureClass::SignallingConnectionFailure);
    assert!(f.ccp_message.unwrap().contains("cannot be reached"));
}

#[test]
fn media_stopping_mid_call_is_a_dropped_call() {
    let s = stack(
        AnchorBehaviour::GoSilentAfter(Duration::from_millis(800)),
        None,
    );
    let r = run(spec(&s, Duration::from_secs(5)));
    assert_eq!(r.outcome, Outcome::Dropped);
    assert_eq!(r.failure.unwrap().class, FailureClass::MediaTimeout);
}

#[test]
fn a_missed_call_rings_out_without_media() {
    let s = stack(AnchorBehaviour::Answer, None);
    let mut sp = spec(&s, Duration::from_secs(1));
    sp.identity.kind = CallKind::Missed;
    let r = run(sp);
    assert_eq!(r.outcome, Outcome::Completed, "{:?}", r.failure);
    assert!(r.milestones.answer_received_us.is_some());
    assert!(
        r.milestones.accepted_us.is_none(),
        "a missed call is never accepted"
    );
    assert!(r.agent_to_anchor.is_none() && r.anchor_to_agent.is_none());
}

#[test]
fn hold_and_resume_keep_the_call_up() {
    let s = stack(AnchorBehaviour::Answer, Some(Policy::default()));
    let mut sp = spec(&s, Duration::from_secs(3));
    sp.identity.kind = CallKind::HoldResume;
    let r = run(sp);
    assert_eq!(r.outcome, Outcome::Completed, "{:?}", r.failure);
    // Media flowed through the hold (hold music): no gap longer than the dead-air limit.
    let down = r.anchor_to_agent.unwrap();
    assert!(down.packets_received >= 140, "{}", down.packets_received);
}

#[test]
fn transfer_and_conference_keep_the_agents_media_unbroken() {
    // Signalling 100 ms away each way: a session that waited for the mid-call answer before
    // sending its next frame would send one 200 ms late; frames must keep their pace instead.
    let s = stack(AnchorBehaviour::Answer, Some(Policy::default()));
    let slow = TcpRelay::start(TcpRelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: s.endpoint.addr,
        path: Path::symmetric(vec![SegmentModel::new().delay(Duration::from_millis(100))]),
        seed: 1,
        policy: Policy::default(),
        reset_after: None,
        server_port: None,
    })
    .unwrap();
    for kind in [CallKind::Transfer, CallKind::Conference] {
        let mut sp = spec(&s, Duration::from_secs(3));
        sp.identity.kind = kind;
        if let Ok(e) = &mut sp.signalling {
            e.addr = slow.local_addr();
        }
        sp.timeouts.ack = Duration::from_secs(2);
        let r = run(sp);
        assert_eq!(r.outcome, Outcome::Completed, "{kind:?}: {:?}", r.failure);
        let up = r.agent_to_anchor.unwrap();
        // A transferring agent leaves at two thirds of the 3 s: 100 frames; a conference runs
        // the whole call: 150.
        let frames = if kind == CallKind::Transfer { 100 } else { 150 };
        assert!(
            up.packets_sent.abs_diff(frames) <= 1,
            "{kind:?}: {} frames",
            up.packets_sent
        );
        assert_eq!(up.packets_lost, 0, "{kind:?}");
        // No frame waited for the 200 ms round trip (half of it leaves room for a busy machine).
        let late = up.send_pacing_error.quantile(1.0).unwrap();
        assert!(late < 100_000, "{kind:?}: a frame was {late} µs late");
    }
}

#[test]
fn a_refused_transfer_or_conference_fails_with_its_class() {
    let s = stack(AnchorBehaviour::RefuseMidCall(500), Some(Policy::default()));
    for (kind, class) in [
        (CallKind::Transfer, FailureClass::TransferFailure),
        (CallKind::Conference, FailureClass::ConferenceFailure),
    ] {
        let mut sp = spec(&s, Duration::from_secs(2));
        sp.identity.kind = kind;
        let r = run(sp);
        assert_eq!(r.failure.as_ref().map(|f| f.class), Some(class), "{kind:?}");
        // Connected before the refusal: the call was dropped, not failed at setup.
        assert_eq!(r.outcome, Outcome::Dropped, "{kind:?}");
    }
}

#[test]
fn after_a_panic_logout_the_contact_stays_up_until_the_agent_ends_it() {
    let s = stack(AnchorBehaviour::Answer, Some(Policy::default()));
    let mut sp = spec(&s, Duration::from_secs(2));
    sp.identity.kind = CallKind::PanicLogout;
    let r = run(sp);
    // The page closed halfway, the agent logged in again, found the contact up and ended it.
    assert_eq!(r.outcome, Outcome::Completed, "{:?}", r.failure);
    let up = r
        .agent_to_anchor
        .expect("disconnectContact returned the anchor's measurement");
    assert!(
        up.packets_sent.abs_diff(50) <= 1,
        "the page closed after 1 s: {} frames",
        up.packets_sent
    );
    assert_eq!(up.packets_lost, 0);
    let down = r.anchor_to_agent.unwrap();
    assert!(down.packets_received >= 45, "{}", down.packets_received);
}

#[test]
fn sim_serve_records_every_call_from_the_anchors_own_measurement() {
    let s = stack(AnchorBehaviour::Answer, Some(Policy::default()));
    let dir = std::env::temp_dir().join(format!("sim-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut recorder = sim::serve::Recorder::create(&dir, &s.vendor).unwrap();
    let agents: Vec<_> = (0..2)
        .map(|_| run(spec(&s, Duration::from_secs(2))))
        .collect();
    // The anchor keeps a call once its bye has been answered.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(recorder.take(&s.vendor.anchor_stats).unwrap(), 2);
    for (agent, served) in agents.iter().zip(recorder.records()) {
        assert_eq!(served.outcome, Outcome::Completed);
        served.check().unwrap();
        // The anchor's measurement of the agent's stream is the one the agent's record holds.
        let ours = served.agent_to_anchor.as_ref().unwrap();
        let theirs = agent.agent_to_anchor.as_ref().unwrap();
        assert_eq!(ours.packets_received, theirs.packets_received);
        // The agent's view of the anchor's stream, from its reception reports: what the agent
        // measured itself, up to its last report (sent once a second).
        let reported = served.anchor_to_agent.as_ref().expect("reception reports");
        let measured = agent.anchor_to_agent.as_ref().unwrap();
        assert!(reported.rtcp_reports >= 1);
        assert!(
            reported.packets_expected <= measured.packets_expected
                && reported.packets_expected + 55 >= measured.packets_expected,
            "reported {} expected, measured {}",
            reported.packets_expected,
            measured.packets_expected
        );
        assert_eq!(reported.packets_lost, 0);
        assert!(served.milestones.first_rtp_us.is_some());
        assert!(served.milestones.dtls_connected_us.is_some());
    }
    let (dir, file) = recorder.finish(&s.vendor).unwrap();
    assert_eq!(file.summary.outcomes.attempts(), 2);
    let jsonl = std::fs::read_to_string(dir.join("calls.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 2);
    for f in [
        "summary.json",
        "summary.md",
        "report.html",
        "calls.csv",
        "junit.xml",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// CreatePermission requests the TURN server received.
fn create_permissions(s: &Stack) -> u64 {
    let mut c = reports::Components::new();
    s.vendor.count_into(&mut c);
    c.get("turn", "requests.create_permission")
}

#[test]
fn one_create_permission_per_peer_as_a_browser_asks() {
    // Clean: the one peer (the anchor) gets one CreatePermission, whatever the agent sends
    // while it is in flight.
    let s = stack(AnchorBehaviour::Answer, Some(Policy::default()));
    let r = run(spec(&s, Duration::from_secs(1)));
    assert_eq!(r.outcome, Outcome::Completed, "{:?}", r.failure);
    assert_eq!(create_permissions(&s), 1, "one request, no duplicates");

    // 80 ms each way and 5 % loss: ICE checks go every 50 ms while the request crosses, but
    // only the one transaction and its retransmissions reach the server (each lost with 5 %,
    // so more than three would take several losses in a row).
    let mut s = stack(AnchorBehaviour::Answer, None);
    let lossy = UdpRelay::start(UdpRelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: s.turn,
        path: Path::symmetric(vec![
            SegmentModel::new()
                .delay(Duration::from_millis(80))
                .loss(sim::netem::Loss::Random(0.05)),
        ]),
        seed: 11,
        policy: Policy::default(),
        server_port: None,
    })
    .unwrap();
    s.relay = Some(lossy);
    let mut sp = spec(&s, Duration::from_secs(1));
    sp.timeouts.ice_collection = Duration::from_secs(5);
    sp.timeouts.invite_answer = Duration::from_secs(5);
    let r = run(sp);
    assert_eq!(r.outcome, Outcome::Completed, "{:?}", r.failure);
    let n = create_permissions(&s);
    assert!(
        (1..=3).contains(&n),
        "{n} CreatePermission requests for one peer"
    );
}
