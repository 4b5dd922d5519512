//! `sim run` end to end on small scenarios: the run folder's files, the verdict, and the site
//! policies of the shipped situations giving their failure classes.
#![allow(clippy::disallowed_methods)] // real sockets, real clock
mod common;

use reports::record::read_records;
use reports::{FailureClass, Outcome, RelayTransport, Verdict};
use sim::run::{RunOptions, run};
use sim::scenario::Scenario;

fn scenario(site_extra: &str) -> Scenario {
    scenario_with_turn(r#"["turn:turn.sim.local:3478?transport=udp"]"#, site_extra)
}

fn scenario_with_turn(urls: &str, site_extra: &str) -> Scenario {
    let text = format!(
        r#"
[run]
seed = 5
threshold = "50%"

[agents]
calls = 3
concurrency = 3
ramp = "50/s"
call_duration = "2s"
timeouts = {{ ice_collection = "1500ms", websocket_connect = "2s" }}

[turn]
urls = {urls}

[[site]]
name = "hq"
path = ["office-lan"]
{site_extra}
"#
    );
    Scenario::parse("test.toml", "test", &text).unwrap()
}

fn run_in(dir: &std::path::Path, s: &Scenario) -> sim::run::RunOutcome {
    run(
        s,
        &RunOptions {
            out: Some(dir.to_owned()),
            plain_progress: true,
            ..RunOptions::default()
        },
    )
    .unwrap()
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sim-run-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn a_clean_run_writes_its_folder_and_passes() {
    let dir = temp("clean");
    let outcome = run_in(&dir, &scenario(""));
    for f in [
        "calls.jsonl",
        "summary.json",
        "calls.csv",
        "junit.xml",
        "summary.md",
        "report.html",
        "charts/setup-cdf.svg",
    ] {
        assert!(dir.join(f).metadata().unwrap().len() > 0, "{f}");
    }
    let records = read_records(&dir.join("calls.jsonl")).unwrap();
    assert_eq!(records.records.len(), 3);
    assert!(
        records
            .records
            .iter()
            .all(|r| r.relay_transport == Some(RelayTransport::Udp))
    );
    assert!(
        records
            .records
            .iter()
            .all(|r| r.outcome == Outcome::Completed),
        "{:?}",
        records
            .records
            .iter()
            .map(|r| &r.failure)
            .collect::<Vec<_>>()
    );
    // 0 of 3 against a 50 % threshold: the Wilson upper bound is 56 % — inconclusive, honestly;
    // or `invalid` when the simulator itself fell behind (a CI machine's host taking its CPUs
    // for a while: seen on a clean clone), and then only with the faults that say so.
    match outcome.summary.verdict {
        Verdict::Inconclusive => {}
        Verdict::Invalid => {
            let faults = outcome.summary.own_faults();
            assert!(!faults.is_empty(), "invalid with no fault of its own named");
            eprintln!("the simulator fell behind: {faults:?}");
        }
        v => panic!("a clean run of 3 calls said {v:?}"),
    }
    assert_eq!(outcome.summary.summary.outcomes.completed, 3);

    // What the components counted: every allocation made and released, nothing dropped or
    // unsent anywhere, the agents' last datagrams counted as the calls' tails at the anchor.
    let c = &outcome.summary.components;
    for (component, counter, expected) in [
        ("turn", "allocations_created", 3),
        ("turn", "allocations_deleted", 3),
        ("turn", "channels_bound", 3),
        ("signalling", "connections", 3),
        ("signalling", "malformed", 0),
        ("anchor", "invites", 3),
        ("anchor", "ended", 3),
        ("anchor", "dropped_datagrams", 0),
        ("anchor", "dtls_failures", 0),
        ("path hq → signalling", "accepted", 3),
        (TO_TURN, "flows", 3),
    ] {
        assert_eq!(c.get(component, counter), expected, "{component} {counter}");
    }
    assert!(c.send_failures().is_empty(), "{:?}", c.send_failures());
    for (component, counters) in c.iter() {
        for (counter, n) in counters {
            assert!(
                !counter.starts_with("dropped.") || *n == 0,
                "{component} {counter} {n}"
            );
        }
    }
    // Both directions crossed the path, and the server relayed the media (a frame every 20 ms
    // of a 2 s call, in each direction, at the least).
    assert!(c.get(TO_TURN, "to_server") >= 3 * 100, "{c:?}");
    assert!(c.get(TO_TURN, "to_agents") >= 3 * 100, "{c:?}");
    assert!(
        c.get("turn", "relayed_packets.client_to_peer") >= 3 * 100,
        "{c:?}"
    );
    assert!(
        c.get("turn", "relayed_packets.peer_to_client") >= 3 * 100,
        "{c:?}"
    );
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        md.contains("| turn | allocations_created 3, allocations_deleted 3,"),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The site's path to the scenario's one TURN URL, as `components` names it.
const TO_TURN: &str = "path hq → turn:turn.sim.local:3478?transport=udp";

fn classes(dir: &std::path::Path) -> Vec<FailureClass> {
    read_records(&dir.join("calls.jsonl"))
        .unwrap()
        .records
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| f.class))
        .collect()
}

#[test]
fn udp_3478_blocked_fails_every_call_with_the_ccp_message() {
    let dir = temp("udp");
    let outcome = run_in(&dir, &scenario("policy = { block = [\"udp/3478\"] }"));
    assert_eq!(classes(&dir), vec![FailureClass::IceCollectionTimeout; 3]);
    assert!((outcome.summary.error_rate.rate - 1.0).abs() < 1e-12);
    // The components say why: the firewall dropped what the agents sent, the server saw none.
    let c = &outcome.summary.components;
    assert!(c.get(TO_TURN, "dropped.policy") >= 3, "{c:?}");
    assert_eq!(c.get(TO_TURN, "to_server"), 0, "{c:?}");
    assert_eq!(c.get("turn", "allocations_created"), 0, "{c:?}");
    // 3 of 3 is not yet proof against 50 %: the Wilson interval reaches down to 44 %.
    assert_eq!(outcome.summary.verdict, Verdict::Inconclusive);
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert!(junit.contains(
        "Browser unable to establish media channel with turn:turn.sim.local:3478?transport=udp"
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_udp_3478_blocked_agents_fall_back_to_turn_over_tcp_and_tls() {
    // A browser allocates on every TURN URL at once; with UDP blocked only the stream ones
    // answer, and the call goes on with them once ICE collection times out.
    let urls = r#"["turn:turn.sim.local:3478?transport=udp", "turn:turn.sim.local:3478?transport=tcp", "turns:turn.sim.local:443"]"#;
    let blocked = "policy = { block = [\"udp/3478\"] }";
    // With TCP and TLS both open, ICE prefers the relay reached over TCP.
    for (name, urls, carried) in [
        ("tcp-tls", urls.to_owned(), RelayTransport::Tcp),
        (
            "tls",
            r#"["turn:turn.sim.local:3478?transport=udp", "turns:turn.sim.local:443"]"#.to_owned(),
            RelayTransport::Tls,
        ),
    ] {
        // In real time, then in virtual time (TURN over TCP and TLS through the same cores).
        for virtual_time in [false, true] {
            let name = format!("{name}{}", if virtual_time { "-virtual" } else { "" });
            let dir = temp(&name);
            let s = scenario_with_turn(&urls, blocked);
            if virtual_time {
                let options = RunOptions {
                    out: Some(dir.clone()),
                    plain_progress: true,
                    ..RunOptions::default()
                };
                sim::virtual_time::scenario::run(&s, &options).unwrap();
            } else {
                run_in(&dir, &s);
            }
            let records = read_records(&dir.join("calls.jsonl")).unwrap().records;
            assert_eq!(records.len(), 3);
            for r in &records {
                assert_eq!(r.outcome, Outcome::Completed, "{name}: {:?}", r.failure);
                assert_eq!(r.relay_transport, Some(carried), "{name}");
                // The UDP allocation never answers: collection lasts the whole 1.5 s timeout.
                let collected = r.milestones.ice_collected_us.unwrap();
                let started = r.milestones.local_description_us.unwrap();
                assert!(collected - started >= 1_400_000, "{name}: {collected} µs");
                let m = r.anchor_to_agent.as_ref().unwrap();
                assert!(m.packets_received > 50, "{name}: {m:?}");
            }
            // The site's paths say why, in either driver: every datagram to UDP 3478 dropped
            // by the firewall, every call's TLS connection carried.
            let udp = "path hq → turn:turn.sim.local:3478?transport=udp";
            let dropped = common::component_total(&dir, udp, "dropped.policy");
            assert!(dropped >= 3, "{name}: {dropped} dropped by policy");
            assert_eq!(common::component_total(&dir, udp, "to_server"), 0, "{name}");
            let tls = "path hq → turns:turn.sim.local:443";
            assert_eq!(common::component_total(&dir, tls, "accepted"), 3, "{name}");
            // Its allocations' answers at least; the media too when the call went over it.
            let least = if carried == RelayTransport::Tls {
                10_000
            } else {
                1
            };
            assert!(
                common::component_total(&dir, tls, "bytes_down") >= least,
                "{name}"
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[test]
fn no_setup_waits_for_a_dtls_retransmission() {
    // ICE → DTLS is two round trips on the office LAN (~50 ms); a lost first DTLS flight costs
    // a retransmission timeout (~200 ms more). Twenty calls, none may show one.
    let text = r#"
[run]
seed = 9
threshold = "50%"

[agents]
calls = 20
concurrency = 10
ramp = "50/s"
call_duration = "1s"

[turn]
urls = ["turn:turn.sim.local:3478?transport=udp"]

[[site]]
name = "hq"
path = ["office-lan"]
"#;
    let dir = temp("dtls");
    run_in(&dir, &Scenario::parse("test.toml", "test", text).unwrap());
    let records = read_records(&dir.join("calls.jsonl")).unwrap().records;
    assert_eq!(records.len(), 20);
    for r in &records {
        let m = &r.milestones;
        let dtls = m.dtls_connected_us.unwrap() - m.ice_connected_us.unwrap();
        assert!(
            dtls < 150_000,
            "{}: ICE → DTLS took {dtls} µs",
            r.identity.call
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restricted_dns_and_stateless_firewall_fail_their_way() {
    let dir = temp("dns");
    run_in(&dir, &scenario("policy = { unresolvable = [\"turn.*\"] }"));
    assert_eq!(classes(&dir), vec![FailureClass::IceCollectionTimeout; 3]);
    let dir2 = temp("fw");
    run_in(
        &dir2,
        &scenario("policy = { inbound_udp_allow = [\"3478\"] }"),
    );
    // Replies never come back in: the allocation itself times out.
    assert_eq!(classes(&dir2), vec![FailureClass::IceCollectionTimeout; 3]);
    let _ = (
        std::fs::remove_dir_all(&dir),
        std::fs::remove_dir_all(&dir2),
    );
}

#[test]
fn a_stalled_signalling_connection_is_found_by_the_keep_alive() {
    let dir = temp("stall");
    let mut s = scenario(r#"policy = { stalls_websocket_after = "2s" }"#);
    s.agents.call_duration = std::time::Duration::from_secs(12);
    s.agents.timeouts.keepalive = std::time::Duration::from_secs(1);
    let started = std::time::Instant::now();
    run_in(&dir, &s);
    let records = read_records(&dir.join("calls.jsonl")).unwrap().records;
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r.outcome, Outcome::Dropped, "{r:?}");
        let f = r.failure.as_ref().unwrap();
        assert_eq!(f.class, FailureClass::SignallingConnectionFailure);
        assert!(f.detail.contains("stalled"), "{}", f.detail);
        // Connected before the stall, and dropped within three keep-alive periods of it (the
        // stall counts from the WebSocket's opening, a little before the talking starts).
        let hangup_s = r.milestones.hangup_us.unwrap() as f64 / 1e6;
        let first_rtp_s = r.milestones.first_rtp_us.unwrap() as f64 / 1e6;
        assert!(first_rtp_s < 2.0, "{first_rtp_s}");
        assert!((2.0..5.5).contains(&hangup_s), "dropped at {hangup_s} s");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(12),
        "not left to run out"
    );
    let stalled = common::component_total(&dir, "proxy", "stalled");
    assert_eq!(stalled, 3, "the proxies' count of stalls");
}
