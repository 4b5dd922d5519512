//! Conference mixing end to end (`sim run`): a third of the way into each call the agent
//! conferences a third party in; from then on the anchor's bridge mixes, and each of the three
//! parties — agent, customer, third party, each sending its own test tone — hears the other
//! two and not itself, measured in the audio that party decoded.
#![allow(clippy::disallowed_methods)] // real sockets, real clock
mod common;

use reports::Outcome;

const SCENARIO: &str = r#"
[run]
seed = 8
threshold = "50%"

[agents]
calls = 3
concurrency = 3
ramp = "10/s"
call_duration = "9s"
mix = { conference = 1.0 }

[turn]
urls = ["turn:turn.sim.local:3478?transport=udp"]

[[site]]
name = "hq"
path = ["office-lan"]
"#;

/// In real time and in virtual time, with the same assertions.
#[test]
fn each_party_of_a_conference_hears_the_other_two_and_not_itself() {
    for clock in [common::Clock::Real, common::Clock::Virtual] {
        each_hears_the_other_two(clock);
    }
}

fn each_hears_the_other_two(clock: common::Clock) {
    let (dir, records) = common::run_scenario_on(clock, "conference", SCENARIO);
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r.outcome, Outcome::Completed, "{r:?}");
        let c = r
            .conference
            .expect("a conference's record says what its parties heard");
        for (who, heard, own) in [
            ("agent", c.agent_heard, c.agent_heard.agent_db),
            ("customer", c.customer_heard, c.customer_heard.customer_db),
            (
                "third party",
                c.third_party_heard,
                c.third_party_heard.third_party_db,
            ),
        ] {
            // The conference lasts the last two thirds of 9 s, less 200 ms of settling: 290
            // frames; the agent counts those that arrived, the anchor's parties every tick.
            assert!((250..=310).contains(&heard.frames), "{who}: {heard:?}");
            let others: Vec<f64> = [heard.agent_db, heard.customer_db, heard.third_party_db]
                .into_iter()
                .filter(|db| *db != own)
                .collect();
            // Each tone leaves at −20 dBFS; two Opus passes (the agent's through the bridge)
            // keep a steady tone within a fraction of a dB (measured: −20.0 ± 0.15), a frame
            // of the agent's missing the mix costs 0.015 dB. A party's own tone is absent:
            // the codecs' noise in its bin (measured −73 to −77 dBFS).
            for db in &others {
                assert!((db + 20.0).abs() < 3.0, "{who}: {heard:?}");
            }
            assert!(own < -50.0, "{who} hears itself: {heard:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
