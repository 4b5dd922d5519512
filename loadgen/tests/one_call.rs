//! One real call through our TURN server with no impairment — the agent relay-only over UDP, TCP
//! or TLS to the server, the anchor a host on loopback: ICE and DTLS connected, SRTP media both
//! ways, no loss, near-zero jitter, MOS at the codec's maximum.
#![allow(clippy::disallowed_methods)] // real sockets, real clock

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::leg::{LegError, PeerConfig, TurnCredentials, TurnTransport};
use loadgen::pair::PairedCall;
use reports::emodel::Codec;
use turn_server::io::{self, Settings};

/// The name in the TURN server's certificate.
const TURN_NAME: &str = "turn.test";

/// A TURN server on loopback with UDP, TCP and TLS listeners, and the roots that trust its TLS
/// certificate.
fn turn_server() -> (io::Running, Arc<rustls::ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec![TURN_NAME.to_owned()]).unwrap();
    let mut settings = Settings::loopback("agent", "agent-pw", "sim.local");
    settings.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
    settings.tls_pem = Some((ck.cert.pem(), ck.signing_key.serialize_pem()));
    let roots = loadgen::signalling::tls_client_config(&[ck.cert.der().clone()]).unwrap();
    (io::start(settings).unwrap(), roots)
}

fn credentials(server: SocketAddr, password: &str) -> TurnCredentials {
    TurnCredentials {
        server,
        username: "agent".into(),
        password: password.into(),
        realm: "sim.local".into(),
        transport: TurnTransport::Udp,
    }
}

#[test]
fn one_call_through_turn_over_udp() {
    one_call_through_turn("udp");
}

#[test]
fn one_call_through_turn_over_tcp() {
    one_call_through_turn("tcp");
}

#[test]
fn one_call_through_turn_over_tls() {
    one_call_through_turn("tls");
}

fn one_call_through_turn(way: &str) {
    let (server, roots) = turn_server();
    let b = &server.bound;
    let (addr, transport) = match way {
        "udp" => (b.udp[0], TurnTransport::Udp),
        "tcp" => (b.tcp[0], TurnTransport::Tcp),
        _ => (
            b.tls[0],
            TurnTransport::Tls {
                server_name: TURN_NAME.into(),
                config: roots,
            },
        ),
    };
    let epoch = Instant::now();
    // The agent relay-only through TURN, the anchor a host on loopback, as in `sim run`.
    let agent = PeerConfig {
        turn: vec![TurnCredentials {
            transport,
            ..credentials(addr, "agent-pw")
        }],
        answering: false,
        epoch,
        entropy: loadgen::entropy::Entropy::Os,
    };
    let anchor = PeerConfig {
        turn: Vec::new(),
        answering: true,
        epoch,
        entropy: loadgen::entropy::Entropy::Os,
    };
    let mut call = PairedCall::new(agent, anchor).unwrap();
    call.connect(Duration::from_secs(10)).unwrap();
    let candidates = call.agent.leg.local_candidates();
    assert_eq!(candidates.len(), 1, "{way}: {candidates:?}");
    assert!(candidates[0].candidate.contains("typ relay"), "{way}");
    let t = call.agent.leg.times;
    assert!(t.allocated.is_some() && t.ice_connected.is_some() && t.connected.is_some());

    call.talk(Duration::from_secs(3));
    assert!(call.agent.leg.rtcp_sent >= 2 && call.anchor.leg.rtcp_sent >= 2);
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
        // Loopback, no impairment: the only jitter is this test's own 1 ms scheduling. The
        // distribution holds one estimate per receiver report (2–3 in 3 s), so its top is a
        // single sample: one scheduling stall of a loaded 2-core machine (5 tests at once,
        // each with its TLS and TURN servers) moves it to 3 ms (seen in CI). The median says
        // the steady state; the maximum only bounds a stall.
        assert!(
            m.jitter.quantile(0.5).unwrap() < 2_000 && m.jitter.max().unwrap() < 10_000,
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
    let (server, _) = turn_server();
    let turn = server.bound.udp[0];
    let epoch = Instant::now();
    let config = |password: &str| PeerConfig {
        turn: vec![credentials(turn, password)],
        answering: false,
        epoch,
        entropy: loadgen::entropy::Entropy::Os,
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
        turn: vec![credentials(turn, "agent-pw")],
        answering: false,
        epoch,
        entropy: loadgen::entropy::Entropy::Os,
    };
    let mut call = PairedCall::new(config.clone(), config).unwrap();
    let err = call.connect(Duration::from_secs(20)).unwrap_err();
    assert_eq!(err.step, "allocate", "{err:?}");
}
