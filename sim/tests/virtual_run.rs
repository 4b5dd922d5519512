//! `sim run --virtual-time` on scenarios: the same scenario and seed give byte-identical run
//! folders, and an impaired scenario measures the same network in virtual time as in real time.
#![allow(clippy::disallowed_methods)] // the real-time run: real sockets, the real clock

use std::path::{Path, PathBuf};
use std::time::Duration;

use reports::record::read_records;
use reports::{CallRecord, Outcome};
use sim::run::RunOptions;
use sim::scenario::Scenario;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sim-virtual-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A shipped scenario.
fn shipped(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name);
    Scenario::load(&path).unwrap()
}

fn options(out: &Path) -> RunOptions {
    RunOptions {
        out: Some(out.to_owned()),
        plain_progress: true,
        ..RunOptions::default()
    }
}

/// 40 ms each way with 4 ms of jitter and 1 % loss: a WAN that shows in every figure.
fn impaired(calls: u32) -> Scenario {
    let text = format!(
        r#"
[run]
seed = 9
threshold = "50%"

[agents]
calls = {calls}
concurrency = {calls}
ramp = "50/s"
call_duration = "10s"

[turn]
urls = ["turn:turn.sim.local:3478?transport=udp"]

[segment.wan]
delay = "40ms"
jitter = {{ amount = "4ms", distribution = "normal" }}
loss = "1%"

[[site]]
name = "branch"
path = ["wan"]
"#
    );
    Scenario::parse("impaired.toml", "impaired", &text).unwrap()
}

#[test]
fn the_same_scenario_and_seed_give_byte_identical_run_folders() {
    let scenario = shipped("ci-50.toml");
    let (a, b) = (temp("a"), temp("b"));
    let small = |out: &Path| RunOptions {
        calls: Some(12),
        call_duration: Some(Duration::from_secs(2)),
        ..options(out)
    };
    let first = sim::virtual_time::scenario::run(&scenario, &small(&a)).unwrap();
    sim::virtual_time::scenario::run(&scenario, &small(&b)).unwrap();
    assert_eq!(first.summary.error_rate.attempts, 12);
    for file in [
        "calls.jsonl",
        "summary.json",
        "calls.csv",
        "junit.xml",
        "summary.md",
        "report.html",
    ] {
        let (x, y) = (
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
        );
        assert!(!x.is_empty(), "{file} is empty");
        assert!(x == y, "{file} differs between two runs of one seed");
    }
    // Another seed is another run.
    let c = temp("c");
    let other = RunOptions {
        seed: Some(51),
        ..small(&c)
    };
    sim::virtual_time::scenario::run(&scenario, &other).unwrap();
    assert_ne!(
        std::fs::read(a.join("calls.jsonl")).unwrap(),
        std::fs::read(c.join("calls.jsonl")).unwrap()
    );
    for d in [a, b, c] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The calls' own work shared across threads changes no byte of a run folder: 24 calls of
/// the capacity soak (set up in step over a clean path, so they share frame instants), on one
/// thread and on three.
#[test]
fn the_thread_count_changes_no_byte() {
    let scenario = shipped("capacity-200.toml");
    let (a, b) = (temp("one-thread"), temp("three-threads"));
    let on = |out: &Path, threads| RunOptions {
        calls: Some(24),
        call_duration: Some(Duration::from_secs(2)),
        threads: Some(threads),
        ..options(out)
    };
    let one = sim::virtual_time::scenario::run(&scenario, &on(&a, 1)).unwrap();
    sim::virtual_time::scenario::run(&scenario, &on(&b, 3)).unwrap();
    assert_eq!(one.summary.error_rate.attempts, 24);
    for file in ["calls.jsonl", "summary.json", "report.html"] {
        let (x, y) = (
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
        );
        assert!(x == y, "{file} differs between one thread and three");
    }
    for d in [a, b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Every shipped scenario runs in virtual time: every TURN transport, several nodes and their
/// faults, every site policy, recording. Four calls each, each call as its scenario makes it.
#[test]
fn every_shipped_scenario_runs_in_virtual_time() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let scenario = shipped(&name);
        let out = temp(&format!("shipped-{name}"));
        let options = RunOptions {
            calls: Some(4),
            call_duration: Some(Duration::from_secs(3)),
            ..options(&out)
        };
        sim::virtual_time::scenario::run(&scenario, &options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let records = read_records(&out.join("calls.jsonl")).unwrap().records;
        assert_eq!(records.len(), 4, "{name}");
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// Every call kind of DESIGN §4 runs in virtual time as the real-time agents run it: its
/// mid-call steps answered by the anchor's desk, a conference mixed by the anchor (each party
/// hears the other two), a transfer leaving at two thirds, a panic logout logging in again on
/// a new connection to end the contact, a missed call declined after the answer.
#[test]
fn every_call_kind_completes_in_virtual_time() {
    let text = r#"
[run]
seed = 4
threshold = "50%"

[agents]
calls = 28
concurrency = 28
ramp = "50/s"
call_duration = "6s"
mix = { inbound = 0.15, outbound = 0.15, transfer = 0.15, conference = 0.15, missed = 0.15, panic_logout = 0.15, hold_resume = 0.1 }

[turn]
urls = ["turn:turn.sim.local:3478?transport=udp"]

[[site]]
name = "hq"
path = ["office-lan"]
"#;
    // Seed 4 draws every kind among the 28 calls (the last assertion checks it).
    let scenario = Scenario::parse("kinds.toml", "kinds", text).unwrap();
    let dir = temp("kinds");
    sim::virtual_time::scenario::run(&scenario, &options(&dir)).unwrap();
    let records = read_records(&dir.join("calls.jsonl")).unwrap().records;
    assert_eq!(records.len(), 28);
    let mut kinds = std::collections::BTreeSet::new();
    for r in &records {
        let kind = r.identity.kind;
        kinds.insert(format!("{kind:?}"));
        assert_eq!(r.outcome, Outcome::Completed, "{kind:?}: {:?}", r.failure);
        let m = &r.milestones;
        let talked = m
            .hangup_us
            .unwrap_or(0)
            .saturating_sub(m.dtls_connected_us.unwrap_or(0));
        match kind {
            reports::CallKind::Missed => {
                // Declined once answered: never accepted, no media.
                assert!(
                    m.answer_received_us.is_some() && m.accepted_us.is_none(),
                    "{m:?}"
                );
                assert!(r.agent_to_anchor.is_none(), "{r:?}");
            }
            reports::CallKind::Conference => {
                let c = r.conference.as_ref().expect("a conference's audio check");
                // Each party hears the other two, and not itself.
                for (heard, own) in [
                    (&c.agent_heard, c.agent_heard.agent_db),
                    (&c.customer_heard, c.customer_heard.customer_db),
                    (&c.third_party_heard, c.third_party_heard.third_party_db),
                ] {
                    let others = [heard.agent_db, heard.customer_db, heard.third_party_db]
                        .into_iter()
                        .filter(|&db| db > -40.0)
                        .count();
                    assert!(others == 2 && own < -40.0, "{c:?}");
                }
            }
            reports::CallKind::Transfer => {
                // The agent leaves at two thirds of the talk time.
                assert!((3_900_000..4_200_000).contains(&talked), "{m:?}");
            }
            reports::CallKind::PanicLogout => {
                // The page closes halfway; the anchor's figures come from disconnectContact.
                assert!((2_900_000..3_200_000).contains(&talked), "{m:?}");
                assert!(r.agent_to_anchor.is_some(), "{r:?}");
            }
            _ => {
                assert!((5_900_000..6_200_000).contains(&talked), "{m:?}");
                assert!(r.agent_to_anchor.is_some() && r.anchor_to_agent.is_some());
            }
        }
    }
    assert_eq!(kinds.len(), 7, "{kinds:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// One direction's figures of each call that has them (up: agent → anchor).
fn direction(
    records: &[CallRecord],
    up: bool,
) -> impl Iterator<Item = &reports::record::MediaStats> {
    records.iter().filter_map(move |r| {
        if up {
            r.agent_to_anchor.as_ref()
        } else {
            r.anchor_to_agent.as_ref()
        }
    })
}

/// Pooled loss of one direction: (lost, expected).
fn loss(records: &[CallRecord], up: bool) -> (u64, u64) {
    direction(records, up).fold((0, 0), |(l, e), m| {
        (l + m.packets_lost, e + m.packets_expected)
    })
}

/// Each call's mean of one direction's figure (µs).
fn per_call(
    records: &[CallRecord],
    up: bool,
    f: fn(&reports::record::MediaStats) -> Option<f64>,
) -> Vec<f64> {
    direction(records, up).filter_map(f).collect()
}

/// A set-up phase's duration in a call's milestones (µs).
type Phase = dyn Fn(&reports::Milestones) -> Option<u64>;

fn mean_and_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var)
}

#[test]
fn an_impaired_scenario_measures_the_same_network_in_virtual_and_real_time() {
    const CALLS: u32 = 10;
    let scenario = impaired(CALLS);
    let (real_dir, virtual_dir) = (temp("real"), temp("virtual"));
    let real = sim::run::run(&scenario, &options(&real_dir)).unwrap();
    let simulated = sim::virtual_time::scenario::run(&scenario, &options(&virtual_dir)).unwrap();
    let r = read_records(&real_dir.join("calls.jsonl")).unwrap().records;
    let v = read_records(&virtual_dir.join("calls.jsonl"))
        .unwrap()
        .records;
    // Error rate: every call completes both ways (1 % loss breaks nothing).
    for (name, records) in [("real", &r), ("virtual", &v)] {
        assert_eq!(records.len(), CALLS as usize, "{name}");
        assert!(
            records.iter().all(|c| c.outcome == Outcome::Completed),
            "{name}: {:?}",
            records.iter().map(|c| &c.failure).collect::<Vec<_>>()
        );
    }
    assert_eq!(
        real.summary.error_rate.errors,
        simulated.summary.error_rate.errors
    );

    for up in [true, false] {
        // Loss: two binomial samples of ~5,000 packets; their difference within 4.5 standard
        // errors of the pooled rate.
        let ((lr, er), (lv, ev)) = (loss(&r, up), loss(&v, up));
        let (pr, pv) = (lr as f64 / er as f64, lv as f64 / ev as f64);
        let p = (lr + lv) as f64 / (er + ev) as f64;
        let se = (p * (1.0 - p) * (1.0 / er as f64 + 1.0 / ev as f64)).sqrt();
        assert!(
            (pr - pv).abs() < 4.5 * se,
            "loss {}: real {pr:.4} of {er}, virtual {pv:.4} of {ev}, se {se:.4}",
            if up { "up" } else { "down" }
        );

        // Delay and jitter: each call's mean is one sample; the means of ten calls differ by
        // less than 4.5 standard errors, plus what real time adds itself (its hops on loopback
        // and its own scheduling: the bench measures the simulator's own jitter p99 under
        // 1 ms, and its added delay a fraction of one).
        for (what, f, own_us) in [
            (
                "one-way delay",
                (|m: &reports::record::MediaStats| m.one_way_delay.mean())
                    as fn(&reports::record::MediaStats) -> Option<f64>,
                2_000.0,
            ),
            ("jitter", |m| m.jitter.mean(), 1_000.0),
        ] {
            let (mr, vr) = mean_and_var(&per_call(&r, up, f));
            let (mv, vv) = mean_and_var(&per_call(&v, up, f));
            let se = (vr / f64::from(CALLS) + vv / f64::from(CALLS)).sqrt();
            assert!(
                (mr - mv).abs() < 4.5 * se + own_us,
                "{what} {}: real {mr:.0} µs, virtual {mv:.0} µs, se {se:.0} µs",
                if up { "up" } else { "down" }
            );
        }
    }
    // The path's 40 ms shows in virtual time as it was put in.
    let (delay, _) = mean_and_var(&per_call(&v, true, |m| m.one_way_delay.mean()));
    assert!(
        (39_000.0..42_000.0).contains(&delay),
        "virtual one-way delay {delay:.0} µs"
    );

    // Set-up: virtual time has every round trip and no CPU time, so each phase takes at least
    // as long in real time, less the path's jitter; real time adds the CPU of the TLS and DTLS
    // handshakes (ECDHE, ECDSA, certificate checks) and of the anchor, well under 150 ms a
    // phase even in a debug build. The far end is the anchor's media server in both (its
    // core in virtual time), so the ICE phase compares too: it found that the real-time agent
    // left its leg undriven while `accept` was answered, a round trip of ICE lost.
    let median = |records: &[CallRecord], f: &Phase| {
        let mut xs: Vec<u64> = records.iter().filter_map(|c| f(&c.milestones)).collect();
        xs.sort_unstable();
        xs[xs.len() / 2] as f64
    };
    let phases: [(&str, &Phase); 5] = [
        ("signalling connected", &|m| m.signalling_connected_us),
        ("answer → ICE connected", &|m| {
            Some(m.ice_connected_us? - m.answer_received_us?)
        }),
        ("DTLS connected → first RTP", &|m| {
            Some(m.first_rtp_us?.saturating_sub(m.dtls_connected_us?))
        }),
        ("invite → answer", &|m| {
            Some(m.answer_received_us? - m.invite_sent_us?)
        }),
        ("ICE connected → DTLS connected", &|m| {
            Some(m.dtls_connected_us? - m.ice_connected_us?)
        }),
    ];
    for (phase, f) in phases {
        let (real_us, virtual_us) = (median(&r, f), median(&v, f));
        assert!(
            real_us > virtual_us - 10_000.0 && real_us < virtual_us + 150_000.0,
            "{phase}: real {real_us:.0} µs, virtual {virtual_us:.0} µs"
        );
    }
    for d in [real_dir, virtual_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Three calls from a site with `policy`, talking `talk` with a keep-alive every second.
fn with_policy(policy: &str, talk: &str) -> Scenario {
    let text = format!(
        r#"
[run]
seed = 5
threshold = "50%"

[agents]
calls = 3
concurrency = 3
ramp = "50/s"
call_duration = "{talk}"
timeouts = {{ ice_collection = "1500ms", websocket_connect = "2s", keepalive = "1s" }}

[turn]
urls = ["turn:turn.sim.local:3478?transport=udp"]

[[site]]
name = "hq"
path = ["office-lan"]
policy = {policy}
"#
    );
    Scenario::parse("policy.toml", "policy", &text).unwrap()
}

/// Each call's outcome and failure class, in call order.
fn outcomes(dir: &Path) -> Vec<(String, Outcome, Option<reports::FailureClass>)> {
    let mut v: Vec<_> = read_records(&dir.join("calls.jsonl"))
        .unwrap()
        .records
        .into_iter()
        .map(|r| (r.identity.call, r.outcome, r.failure.map(|f| f.class)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Every site policy the real-time run tests (`run.rs`, `proxy.rs`) fails calls the same
/// way in virtual time: a firewall blocking UDP 3478, a DNS that does not resolve the TURN
/// name, a stateless firewall, a proxy that breaks WebSocket upgrades, one that stalls the
/// connection, and one whose certificate cache expires mid-call.
#[test]
fn every_site_policy_fails_calls_as_in_real_time() {
    for (policy, talk) in [
        (r#"{ block = ["udp/3478"] }"#, "2s"),
        (r#"{ unresolvable = ["turn.*"] }"#, "2s"),
        (r#"{ inbound_udp_allow = ["3478"] }"#, "2s"),
        ("{ breaks_websocket_upgrade = true }", "2s"),
        (r#"{ stalls_websocket_after = "2s" }"#, "8s"),
        (r#"{ tls_cache_expiry = "3s" }"#, "6s"),
    ] {
        let scenario = with_policy(policy, talk);
        let (real, virt) = (temp("policy-real"), temp("policy-virtual"));
        sim::run::run(&scenario, &options(&real)).unwrap();
        sim::virtual_time::scenario::run(&scenario, &options(&virt)).unwrap();
        let (r, v) = (outcomes(&real), outcomes(&virt));
        assert_eq!(r.len(), 3, "{policy}");
        assert!(
            r.iter().all(|(_, o, _)| *o != Outcome::Completed),
            "{policy}: every call fails: {r:?}"
        );
        assert_eq!(r, v, "{policy}: real time, then virtual time");
        for d in [real, virt] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
