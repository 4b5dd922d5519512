//! A TURN node fails end to end (`sim run`): the TURN name resolves to two nodes, one dies
//! mid-call, and the DNS drops it 3 s later. The calls on it lose media, go ICE
//! `disconnected`, and restart ICE as the CCP's library does; the restart looks the name up
//! again, gets the live node, and the call completes there. Calls on the live node never
//! notice; calls that start after the DNS dropped the dead node all go to the live one. Each
//! test runs in real time, then in virtual time (the same cores on a simulated clock).
#![allow(clippy::disallowed_methods)] // real sockets, real clock
mod common;

use reports::Outcome;

const SCENARIO: &str = r#"
[run]
seed = 5
threshold = "50%"

[agents]
calls = 16
concurrency = 8
ramp = "8/s"
call_duration = "20s"

[turn]
urls = ["turn:turn.sim.local:3478?transport=udp"]
nodes = 2

[[fault]]
at = "6s"
kind = "turn_node_down"
node = 1
dns_removed_after = "3s"

[[site]]
name = "hq"
path = ["office-lan"]
"#;

#[test]
fn calls_on_a_failed_turn_node_move_to_the_live_one_by_ice_restart() {
    for clock in [common::Clock::Real, common::Clock::Virtual] {
        moved_by_restart(clock, "turn-node-failure", SCENARIO, false);
    }
}

/// Over TLS, a crashed node resets its connections (`reset_streams`): the agents' TURN
/// connections close at once, and the calls recover as they do over UDP — by ICE restart once
/// ICE is `disconnected`, as the CCP's library does (a closed TURN connection does not make
/// it restart sooner).
#[test]
fn calls_on_a_crashed_turn_node_over_tls_move_by_ice_restart() {
    let text = SCENARIO
        .replace(
            r#"urls = ["turn:turn.sim.local:3478?transport=udp"]"#,
            r#"urls = ["turns:turn.sim.local:443"]"#,
        )
        .replace("node = 1\n", "node = 1\nreset_streams = true\n");
    assert!(text.contains("reset_streams = true") && text.contains("turns:"));
    for clock in [common::Clock::Real, common::Clock::Virtual] {
        moved_by_restart(clock, "turn-node-reset", &text, true);
    }
}

fn moved_by_restart(clock: common::Clock, name: &str, text: &str, over_tls: bool) {
    let (dir, records) = common::run_scenario_on(clock, name, text);
    assert_eq!(records.len(), 16);
    // The first 8 calls start within a second, their lookups alternating between the two
    // nodes: 4 on each. The last 8 start as those end (≈ 21 s in), after node 1 left the DNS.
    let (mut moved, mut untouched) = (0, 0);
    for r in &records {
        assert_eq!(r.outcome, Outcome::Completed, "{r:?}");
        let ice = r.ice;
        let index: u32 = r.identity.call[1..].parse().unwrap();
        if ice.restart_attempts == 0 {
            untouched += 1;
            assert_eq!(ice.connections_lost, 0, "{ice:?}");
            continue;
        }
        moved += 1;
        assert!(
            index < 8,
            "{} started after the fault: {ice:?}",
            r.identity.call
        );
        assert_eq!(ice.connections_lost, 1, "{ice:?}");
        assert_eq!((ice.restart_attempts, ice.restart_successes), (1, 1));
        assert_eq!(ice.restart_invite_retries, 0, "signalling was never down");
        // The live node answers the restart's allocation at once: allocation, invite, answer
        // and accept over loopback.
        let restart = ice.restart_time_ms.unwrap();
        assert!(restart < 2_000, "{restart} ms");
        // ICE is `disconnected` 5 s after the last answered check (3–7 s after the fault:
        // checks go every 2 s), restarts 3 s later, and is connected again within the
        // restart's time and one round of checks.
        let recovered = ice.recovered_ms.unwrap();
        assert!((3_000..6_000).contains(&recovered), "{recovered} ms");
        // Media was gone from the fault to the recovery: 3 + 3 s to 7 + 6 s, 300–650 frames.
        let lost = r.anchor_to_agent.as_ref().unwrap().packets_lost;
        assert!((300..=650).contains(&lost), "{lost} lost");
    }
    assert_eq!(
        (moved, untouched),
        (4, 12),
        "{clock:?}: calls moved by a restart, calls untouched"
    );
    // Node 1 held the 4 calls' first allocations; node 2 the other 4, the 4 restarts' and the
    // 8 later calls'.
    let created =
        |node| common::component_total(&dir, &format!("turn node {node}"), "allocations_created");
    assert_eq!((created(1), created(2)), (4, 16));
    if over_tls {
        // Each of its 4 connections reset.
        let reset = common::component_total(&dir, "turn node 1", "stream_connections_dropped");
        assert_eq!(reset, 4, "{clock:?}");
        assert_eq!(
            records
                .iter()
                .filter(|r| r.relay_transport == Some(reports::RelayTransport::Tls))
                .count(),
            16
        );
    } else {
        assert!(common::component_total(&dir, "turn node 1", "dropped.fault") > 0);
    }
    assert_eq!(common::component_total(&dir, "anchor", "ice_restarts"), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn until_the_dns_drops_a_dead_node_calls_and_restarts_sent_to_it_fail() {
    for clock in [common::Clock::Real, common::Clock::Virtual] {
        sent_to_a_dead_node(clock);
    }
}

fn sent_to_a_dead_node(clock: common::Clock) {
    // Node 1 dies at 3 s and stays in the DNS: the rotation keeps sending every other
    // lookup to it. Calls start at 0, 2, 4 and 6 s (ramp 0.5/s): the first has 3 s to connect
    // even on a loaded machine.
    let text = SCENARIO
        .replace("calls = 16", "calls = 4")
        .replace("concurrency = 8", "concurrency = 4")
        .replace("ramp = \"8/s\"", "ramp = \"0.5/s\"")
        .replace("call_duration = \"20s\"", "call_duration = \"15s\"")
        .replace("at = \"6s\"", "at = \"3s\"")
        .replace("dns_removed_after = \"3s\"", "dns_removed_after = \"1h\"");
    let (dir, mut records) = common::run_scenario_on(clock, "turn-node-in-dns", &text);
    records.sort_by(|a, b| a.identity.call.cmp(&b.identity.call));
    let outcomes: Vec<_> = records.iter().map(|r| r.outcome).collect();
    // c0: node 1, up when it gathered; its restart's lookup (the fifth) answers node 1 again.
    // c1, c3: node 2. c2: node 1, already dead when it gathered.
    assert_eq!(
        outcomes,
        [
            Outcome::Dropped,
            Outcome::Completed,
            Outcome::Failed,
            Outcome::Completed
        ],
        "{clock:?}: {records:#?}"
    );
    let dropped = records[0].failure.as_ref().unwrap();
    assert_eq!(dropped.class, reports::FailureClass::MediaTimeout);
    assert!(dropped.detail.contains("ICE restart"), "{dropped:?}");
    assert_eq!(
        (
            records[0].ice.restart_attempts,
            records[0].ice.restart_successes
        ),
        (1, 0)
    );
    let failed = records[2].failure.as_ref().unwrap();
    assert!(
        matches!(
            failed.class,
            reports::FailureClass::TurnAllocationFailure
                | reports::FailureClass::IceCollectionTimeout
        ),
        "{failed:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
