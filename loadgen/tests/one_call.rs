//! One real call through our TURN server with no impairment: both legs relay-only, ICE and DTLS
//! connected, SRTP media both ways, no loss, near-zero jitter, MOS at the codec's maximum.
#![allow(clippy::disallowed_methods)] // real sockets, real clock

use std::collections::HashMap;
use std::time::{Duration, Instant};

use loadgen::peer::{Peer, PeerConfig};
use reports::emodel::Codec;
use turn_server::auth::{Credentials, Secret};
use turn_server::io::{self, Settings};
use turn_server::{Config, Faults};

fn turn_server() -> io::Running {
    let mut users = HashMap::new();
    users.insert("agent".to_owned(), Secret("agent-pw".into()));
    let mut core = Config {
        realm: "sim.local".into(),
        credentials: Credentials {
            users,
            static_auth_secret: None,
        },
        ..Config::default()
    };
    core.peer_policy.allow.push("127.0.0.0/8".parse().unwrap());
    io::start(Settings {
        core,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls_listen: vec![],
        tls_files: None,
        metrics: None,
        faults: Faults::default(),
    })
    .unwrap()
}

fn drive_until(
    agent: &mut Peer,
    anchor: &mut Peer,
    limit: Duration,
    mut done: impl FnMut(&Peer, &Peer) -> bool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        let now = Instant::now();
        agent.drive(now);
        anchor.drive(now);
        if done(agent, anchor) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn one_call_through_turn_without_impairment() {
    let server = turn_server();
    let turn = server.bound.udp[0];
    let epoch = Instant::now();
    let config = |answering| PeerConfig {
        turn,
        username: "agent".into(),
        password: "agent-pw".into(),
        realm: "sim.local".into(),
        answering,
        epoch,
    };
    let mut agent = Peer::new(config(false), 0x1111, Instant::now()).unwrap();
    let mut anchor = Peer::new(config(true), 0x2222, Instant::now()).unwrap();

    let offer = agent.offer(Instant::now()).unwrap();
    let answer = anchor.answer(Instant::now(), offer).unwrap();
    agent.accept(Instant::now(), answer).unwrap();
    assert!(
        drive_until(&mut agent, &mut anchor, Duration::from_secs(5), |a, b| a
            .local_candidate()
            .is_some()
            && b.local_candidate().is_some()),
        "allocations: agent {:?} anchor {:?}",
        agent.error,
        anchor.error
    );
    let (ca, cb) = (
        agent.local_candidate().unwrap().clone(),
        anchor.local_candidate().unwrap().clone(),
    );
    assert!(ca.candidate.contains("typ relay"), "{}", ca.candidate);
    agent.add_remote_candidate(Instant::now(), cb).unwrap();
    anchor.add_remote_candidate(Instant::now(), ca).unwrap();
    assert!(
        drive_until(&mut agent, &mut anchor, Duration::from_secs(10), |a, b| a
            .times
            .connected
            .is_some()
            && b.times.connected.is_some()),
        "connect: agent {:?} {:?}, anchor {:?} {:?}",
        agent.times,
        agent.error,
        anchor.times,
        anchor.error
    );

    // 3 s of 20 ms frames each way.
    let frames = 150;
    let start = Instant::now();
    let mut sent = 0;
    while sent < frames {
        let due = start + Duration::from_millis(20) * sent;
        let now = Instant::now();
        if now >= due {
            agent.send_frame(now);
            anchor.send_frame(now);
            sent += 1;
        }
        agent.drive(now);
        anchor.drive(now);
        std::thread::sleep(Duration::from_millis(1));
    }
    drive_until(
        &mut agent,
        &mut anchor,
        Duration::from_millis(500),
        |a, b| a.meter.received() >= u64::from(frames) && b.meter.received() >= u64::from(frames),
    );

    let (agent_sent, anchor_sent) = (agent.frames_sent(), anchor.frames_sent());
    let to_anchor = std::mem::replace(&mut anchor.meter, loadgen::measure::MediaMeter::new(epoch))
        .finish(agent_sent, agent.wire_bytes_sent, Codec::OPUS);
    let to_agent = std::mem::replace(&mut agent.meter, loadgen::measure::MediaMeter::new(epoch))
        .finish(anchor_sent, anchor.wire_bytes_sent, Codec::OPUS);
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
        assert_eq!(m.packets_sent, u64::from(frames), "{dir}");
        assert_eq!(m.packets_received, u64::from(frames), "{dir}");
        assert_eq!(m.packets_lost, 0, "{dir}");
        // Loopback, no impairment: the only jitter is this test's own 1 ms scheduling.
        assert!(
            m.jitter.quantile(0.99).unwrap() < 2_000,
            "{dir} jitter {:?}",
            m.jitter
        );
        assert!(m.mos > 4.3, "{dir} MOS {}", m.mos);
    }
    agent.close(Instant::now());
    anchor.close(Instant::now());
    let snapshot = server.stop();
    println!("{snapshot:?}");
}
