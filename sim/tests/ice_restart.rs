//! ICE restart end to end (`sim run`): a 12 s blackout mid-call takes the agents' ICE to
//! `disconnected`, and they restart it as the CCP's library does (fresh credentials, new TURN
//! allocations, an `invite` with `iceRestart: true`, `accept`), after which media comes back on
//! the new pair and the call completes; a 2 s blackout beside it is ridden out without one.
//! Both ways: in real time and in virtual time.
#![allow(clippy::disallowed_methods)] // real sockets, real clock
mod common;

use reports::Outcome;

const SCENARIO: &str = r#"
[run]
seed = 21
threshold = "50%"

[agents]
calls = 4
concurrency = 4
ramp = "20/s"
call_duration = "30s"

[turn]
urls = ["turn:turn.sim.local:3478?transport=udp"]

[segment.handover]
profile = "office-lan"
outages = [{ at = "6s", duration = "12s" }]

[segment.rekey]
profile = "office-lan"
outages = [{ at = "6s", duration = "2s" }]

[[site]]
name = "wifi"
share = 0.5
path = ["handover"]

[[site]]
name = "vpn"
share = 0.5
path = ["rekey"]
"#;

/// In real time and in virtual time, with the same assertions.
#[test]
fn a_long_outage_is_recovered_by_an_ice_restart_and_a_short_one_without() {
    for clock in [common::Clock::Real, common::Clock::Virtual] {
        recovered(clock);
    }
}

fn recovered(clock: common::Clock) {
    let (dir, records) = common::run_scenario_on(clock, "ice-restart", SCENARIO);
    assert_eq!(records.len(), 4);
    let mut restarted = 0u64;
    for r in &records {
        assert_eq!(r.outcome, Outcome::Completed, "{r:?}");
        let lost = r.anchor_to_agent.as_ref().unwrap().packets_lost;
        let ice = r.ice;
        match r.identity.site.as_str() {
            "wifi" => {
                restarted += 1;
                assert_eq!(ice.connections_lost, 1, "{ice:?}");
                assert_eq!((ice.restart_attempts, ice.restart_successes), (1, 1));
                assert_eq!(
                    ice.restart_invite_retries, 0,
                    "the path was back for the invite"
                );
                // ICE goes `disconnected` 5 s after the last check answered (3–7 s into the
                // blackout: checks go every 2 s), restarts 3 s later, and its allocation's
                // retransmission (250 ms doubling to 1.6 s) lands within 1.6 s of the path's
                // return: connected again 12 − 7 = 5 s to 12 − 3 + 1.6 + 1 (signalling and
                // checks) ≈ 11.6 s after the disconnection.
                let recovered = ice.recovered_ms.unwrap();
                assert!((5_000..12_000).contains(&recovered), "{recovered} ms");
                // The restart's own time: from its start (the path still down for up to
                // 12 − 6 = 6 s) to `accept`.
                let restart = ice.restart_time_ms.unwrap();
                assert!(restart < 8_000, "{restart} ms");
                // The blackout's 600 frames at least, and what the recovery added (≤ 4 s).
                assert!((600..=800).contains(&lost), "{lost} lost");
            }
            _ => {
                // 2 s is within ICE's 5 s disconnected timeout, or at worst a disconnection
                // healed before the 3 s the library waits: no restart.
                assert_eq!(ice.restart_attempts, 0, "{ice:?}");
                assert_eq!(ice.recovered_ms, None);
                assert!((100..=150).contains(&lost), "{lost} lost");
            }
        }
    }
    assert!(restarted >= 1, "no call at the Wi-Fi site");
    let restarts = common::component_total(&dir, "anchor", "ice_restarts");
    assert_eq!(restarts, restarted, "the anchor's count of restarts");
    let _ = std::fs::remove_dir_all(&dir);
}
