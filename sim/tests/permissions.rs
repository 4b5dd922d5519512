//! TURN permissions as a browser keeps them (RFC 8656 §9): one CreatePermission per peer
//! address when the call starts, and one refresh per peer before the permission's 5 minutes
//! run out. The agent's clock is moved past the refresh point (its TURN client is sans-I/O: the
//! time is what the leg is given) while the server keeps real time, so the refresh arrives well
//! inside the permission's lifetime there; the server counts every request.
#![allow(clippy::disallowed_methods)] // real sockets, real clock
mod common;

use std::time::{Duration, Instant};

use loadgen::pair::PairedCall;
use turn_server::io::{self, Settings};

fn create_permissions(server: &io::Running) -> u64 {
    let snapshot = server.handle().snapshot_blocking().expect("a snapshot");
    let mut c = reports::Components::new();
    c.add("turn", snapshot.totals());
    c.get("turn", "requests.create_permission")
}

#[test]
fn one_permission_per_peer_refreshed_before_it_expires() {
    let server = io::start(Settings::loopback("agent", "agent-pw", "sim.local")).unwrap();
    let epoch = Instant::now();
    let (agent, anchor) = common::agent_and_anchor(server.bound.udp[0], epoch);
    let mut call = PairedCall::new(agent, anchor).unwrap();
    call.connect(Duration::from_secs(15)).unwrap();
    call.talk(Duration::from_millis(500));
    assert_eq!(create_permissions(&server), 1, "one peer, one request");

    // 125 s later for the agent: past its client's refresh (every 120 s), inside the 300 s
    // a permission lives. Each peer's permission is refreshed once, and only once however
    // often the leg is driven.
    let later = Instant::now() + Duration::from_secs(125);
    for i in 0..200 {
        call.agent.drive(later + Duration::from_millis(i));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        create_permissions(&server),
        2,
        "one refresh of the one peer's permission"
    );
    // And again one refresh period on.
    let later = later + Duration::from_secs(121);
    for i in 0..200 {
        call.agent.drive(later + Duration::from_millis(i));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(create_permissions(&server), 3);
    drop(server);
}
