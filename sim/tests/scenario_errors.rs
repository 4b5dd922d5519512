//! Broken scenario files are rejected with every error at once, each as
//! FILE:LINE:COLUMN: FIELD: MESSAGE; every shipped scenario is valid.

use sim::scenario::Scenario;

const GOOD: &str = r#"[run]
seed = 1

[agents]
calls = 10

[turn]
urls = ["turn:turn.sim.local:3478?transport=udp"]

[[site]]
name = "hq"
path = ["office-lan"]
"#;

fn errors(text: &str) -> Vec<String> {
    match Scenario::parse("broken.toml", "broken", text) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// Replaces `from` in the good file by `to` (which must be found).
fn broken(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn the_good_file_is_good() {
    let s = Scenario::parse("good.toml", "good", GOOD).unwrap();
    assert_eq!(s.name, "good");
    assert_eq!(s.agents.calls, 10);
    assert_eq!(s.agents.concurrency, 10);
    assert_eq!(s.threshold, 0.02);
    assert_eq!(s.sites[0].path.segments.len(), 1);
    assert_eq!(s.recording, None, "nothing recorded unless asked");
    let recorded = format!("{GOOD}\n[recording]\nrecord = \"agent\"\n");
    let s = Scenario::parse("good.toml", "good", &recorded).unwrap();
    assert_eq!(s.recording, Some(sim::scenario::Sides::Agent));
}

#[test]
fn table_of_broken_files() {
    let cases: &[(&str, String, &[&str])] = &[
        (
            "unknown field",
            broken("seed = 1", "seed = 1\nsede = 2"),
            &[
                "broken.toml:3:1: run.sede: unknown field `sede` (did you mean `seed`?); expected one of: confidence, name, seed, threshold",
            ],
        ),
        (
            "wrong type",
            broken("calls = 10", "calls = \"ten\""),
            &["broken.toml:5:9: agents.calls: expected an integer from 1 to 1000000, found string"],
        ),
        (
            "out of range",
            broken("calls = 10", "calls = 10\nconcurrency = 0"),
            &[
                "broken.toml:6:15: agents.concurrency: expected an integer from 1 to 100000, found 0",
            ],
        ),
        (
            "out-of-range percentage",
            broken("seed = 1", "seed = 1\nthreshold = \"150%\""),
            &[
                "broken.toml:3:13: run.threshold: a percentage must be from 0% to 100%, found \"150%\"",
            ],
        ),
        (
            "unknown profile",
            broken("[\"office-lan\"]", "[\"office-lan\", \"hom-wifi\"]"),
            &[
                "broken.toml:12:23: site[0].path[1]: unknown profile or segment `hom-wifi` (did you mean `home-wifi`?); profiles: direct-connect, office-lan, hub-and-spoke, vdi, remote-vpn, home-wifi",
            ],
        ),
        (
            "missing TURN endpoint",
            broken(
                "[turn]\nurls = [\"turn:turn.sim.local:3478?transport=udp\"]\n",
                "",
            ),
            &[
                "broken.toml:1:1: turn: missing field `turn`: a [turn] table naming the TURN server, e.g. urls = [\"turn:turn.sim.local:3478?transport=udp\"]",
            ],
        ),
        (
            "bad TURN URL",
            broken(
                "turn:turn.sim.local:3478?transport=udp",
                "turn:turn.sim.local:3478?transport=sctp",
            ),
            &[
                "broken.toml:8:9: turn.urls[0]: unknown TURN URL parameter \"transport=sctp\" (expected transport=udp or transport=tcp)",
            ],
        ),
        (
            "segment errors, all at once",
            format!(
                "{GOOD}\n[segment.wan]\ndelay = 5\njitter = {{ amount = \"5ms\", distribution = \"gaussian\" }}\nqueue = 10\nmtu = 20\n"
            ),
            &[
                "broken.toml:15:9: segment.wan.delay: expected a string, found integer",
                "broken.toml:16:43: segment.wan.jitter.distribution: unknown distribution \"gaussian\"; expected uniform, normal, pareto or paretonormal",
                "broken.toml:17:9: segment.wan.queue: a queue needs a `rate` to drain it",
                "broken.toml:18:7: segment.wan.mtu: expected an integer from 68 to 65535, found 20",
            ],
        ),
        (
            "shares that do not add up",
            broken("name = \"hq\"\n", "name = \"hq\"\nshare = 0.4\n")
                + "\n[[site]]\nname = \"branch\"\nshare = 0.5\npath = [\"vdi\"]\n",
            &["broken.toml:10:1: site: the sites' shares must add up to 1, they add up to 0.9"],
        ),
        (
            "a share missing with several sites",
            format!("{GOOD}\n[[site]]\nname = \"branch\"\nshare = 0.5\npath = [\"vdi\"]\n"),
            &[
                "broken.toml:10:1: site[0].share: missing field `share`: with several sites, each needs its share of the agents",
            ],
        ),
        (
            "plain WebSocket signalling",
            broken(
                "[turn]",
                "[signalling]\nurl = \"ws://sig.example/rtc\"\n\n[turn]",
            ),
            &[
                "broken.toml:8:7: signalling.url: ws://sig.example/rtc: plain WebSocket (ws://) is not supported; softphone signalling runs over TLS (wss://)",
            ],
        ),
        (
            "signalling port not a number",
            broken(
                "[turn]",
                "[signalling]\nurl = \"wss://sig.example:https/\"\n\n[turn]",
            ),
            &[
                "broken.toml:8:7: signalling.url: expected a secure WebSocket URL like wss://host:port/path, found wss://sig.example:https/",
            ],
        ),
        (
            "unknown recording side",
            broken("[turn]", "[recording]\nrecord = \"everyone\"\n\n[turn]"),
            &[
                "broken.toml:8:10: recording.record: unknown side \"everyone\"; expected \"agent\", \"customer\" or \"both\"",
            ],
        ),
        (
            "recording without its sides",
            broken("[turn]", "[recording]\nrecrod = \"both\"\n\n[turn]"),
            &[
                "broken.toml:7:1: recording.record: missing field `record`: which sides to record: record = \"agent\", \"customer\" or \"both\"",
                "broken.toml:8:1: recording.recrod: unknown field `recrod` (did you mean `record`?); expected one of: record",
            ],
        ),
        (
            "syntax error",
            broken("[agents]", "[agents"),
            &["broken.toml:4:8: TOML syntax: unclosed table, expected `]`"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, text, expected) in cases {
        let got = errors(text);
        if got != *expected {
            failures.push(format!(
                "{what}:\n  expected {expected:#?}\n  got      {got:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_shipped_scenario_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 8, "only {n} scenarios");
}

#[test]
fn policies_reach_the_sites() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let s = Scenario::load(&dir.join("udp-3478-blocked.toml")).unwrap();
    assert!(
        s.sites[0]
            .policy
            .blocks(sim::scenario::Transport::Udp, 3478)
    );
    let s = Scenario::load(&dir.join("dns-restricted.toml")).unwrap();
    assert!(!s.sites[0].policy.resolves("turn.sim.local"));
    let s = Scenario::load(&dir.join("stateless-firewall.toml")).unwrap();
    assert!(!s.sites[0].policy.admits_inbound_udp(50_000));
    // An override of a profile keeps the rest of it.
    let s = Scenario::load(&dir.join("remote-vpn.toml")).unwrap();
    let vpn = &s.sites[0].path.segments[1];
    assert_eq!(vpn.up.mtu, Some(1400));
    assert_eq!(vpn.up.outages.len(), 1);
}
