//! One real call through our TURN server with no impairment: the agent relay-only, the anchor a
//! host on loopback, ICE and DTLS connected, SRTP media both ways, no loss, near-zero jitter, MOS at the codec's maximum.
#![allow(clippy::disallowed_methods)] // real sockets, real clock

use std::time::{Duration, Instant};

use loadgen::pair::PairedCall;
use loadgen::peer::{LegError, PeerConfig, TurnCredentials};
use reports::emodel::Codec;
use turn_server::io::{self, Settings};

fn turn_server() -> io::Running {
    io::start(Settings::loopback("agent", "agent-pw", "sim.local")).unwrap()
}

fn credentials(server: std::net::SocketAddr, password: &str) -> TurnCredentials {
    TurnCredentials {
        server,
        username: "agent".into(),
        password: password.into(),
        realm: "sim.local".into(),
    }
}

#[test]
fn one_call_through_turn_without_impairment() {
    let server = turn_server();
    let turn = server.bound.udp[0];
    let epoch = Instant::now();
    // The agent relay-only through TURN, the anchor a host on loopback, as in `sim run`.
    let agent = PeerConfig {
        turn: Some(credentials(turn, "agent-pw")),
        answering: false,
        epoch,
    };
    let anchor = PeerConfig {
        turn: None,
        answering: true,
        epoch,
    };
    let mut call = PairedCall::new(agent, anchor).unwrap();
    call.connect(Duration::from_secs(10)).unwrap();
    assert!(
        call.agent
            .local_candidate()
            .unwrap()
            .candidate
            .contains("typ relay")
    );
    let t = call.agent.times;
    assert!(t.allocated.is_some() && t.ice_connected.is_some() && t.connected.is_some());

    call.talk(Duration::from_secs(3));
    assert!(call.agent.rtcp_sent >= 2 && call.anchor.rtcp_sent >= 2);
    let (to_anchor, to_agent) = call.finish(Codec::OPUS);
    for (dir, m) in [("agent→anchor", &to_anchor), ("anchor→agent", &to_agent)] {
        println!(
            "{dir}: sent {} received {} lost {} jitter p50 {:?} µs delay p50 {:?} µs MOS {:.2}",
            m.packets_sent,
            m.packets_received,
            m.packets_lost,
            m.jitter.quantile(0.5),
            m.one_way_delay.quantile(0.5),
            m.mos
        );
        assert_eq!(m.packets_sent, 150, "{dir}");
        assert_eq!(m.packets_received, 150, "{dir}");
        assert_eq!(m.packets_lost, 0, "{dir}");
        // Loopback, no impairment: the only jitter is this test's own 1 ms scheduling.
        assert!(
            m.jitter.quantile(0.99).unwrap() < 2_000,
            "{dir} jitter {:?}",
            m.jitter
        );
        // The codec's maximum with a 30 ms jitter buffer and 20 ms packetisation: R ≈ 92.9.
        assert!(m.mos > 4.3, "{dir} MOS {}", m.mos);
        // Sender and receiver reports flow both ways (at least one per second of a 3 s call).
        assert!(
            m.rtcp_reports >= 2,
            "{dir}: {} RTCP reports",
            m.rtcp_reports
        );
    }
    let snapshot = server.stop();
    // The agent's allocation carried the call: 150 frames each way plus ICE and RTCP.
    let c = &snapshot.counters;
    assert!(
        c.client_to_peer.packets >= 150 && c.peer_to_client.packets >= 150,
        "{snapshot:?}"
    );
}

#[test]
fn wrong_turn_password_is_an_auth_failure() {
    let server = turn_server();
    let turn = server.bound.udp[0];
    let epoch = Instant::now();
    let config = |password: &str| PeerConfig {
        turn: Some(credentials(turn, password)),
        answering: false,
        epoch,
    };
    let mut call = PairedCall::new(config("wrong"), config("agent-pw")).unwrap();
    let err = call.connect(Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.side, "agent");
    assert!(matches!(err.error, Some(LegError::TurnAuth(_))), "{err:?}");
}

#[test]
fn unreachable_turn_server_fails_allocation() {
    // A port nobody listens on: the allocation times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let turn = silent.local_addr().unwrap();
    let epoch = Instant::now();
    let config = PeerConfig {
        turn: Some(credentials(turn, "agent-pw")),
        answering: false,
        epoch,
    };
    let mut call = PairedCall::new(config.clone(), config).unwrap();
    let err = call.connect(Duration::from_secs(20)).unwrap_err();
    assert_eq!(err.step, "allocate", "{err:?}");
}
