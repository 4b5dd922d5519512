//! `sim report`: two runs' folders merged equal one summary over the union of their records
//! (counts and histogram percentiles exactly) and the merged report says which runs and shards it
//! holds; a re-render reproduces a folder, report.html and its charts included; a comparison
//! says whether the error rates differ significantly.
#![allow(clippy::disallowed_methods)] // real sockets, real clock

use std::path::PathBuf;

use reports::{RunSummary, Shard};
use sim::report::{compare, compare_html, load, merge, render};
use sim::run::{RunOptions, run};
use sim::scenario::Scenario;

fn scenario(seed: u64, policy: &str) -> Scenario {
    let text = format!(
        r#"
[run]
seed = {seed}
threshold = "10%"
[agents]
calls = 3
concurrency = 3
ramp = "50/s"
call_duration = "1s"
timeouts = {{ ice_collection = "1s" }}
[turn]
urls = ["turn:turn.sim.local:3478?transport=udp"]
[[site]]
name = "hq"
path = ["office-lan"]
{policy}
"#
    );
    Scenario::parse("t.toml", "t", &text).unwrap()
}

fn folder(name: &str, s: &Scenario) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sim-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    run(
        s,
        &RunOptions {
            out: Some(dir.clone()),
            plain_progress: true,
            ..RunOptions::default()
        },
    )
    .unwrap();
    dir
}

#[test]
fn merge_render_and_compare() {
    let a = folder("a", &scenario(1, ""));
    let b = folder("b", &scenario(2, "policy = { block = [\"udp/3478\"] }"));
    let out = std::env::temp_dir().join(format!("sim-report-merged-{}", std::process::id()));

    let merged = merge(&[a.clone(), b.clone()], &out).unwrap();
    let union: Vec<_> = load(&a)
        .unwrap()
        .records
        .into_iter()
        .chain(load(&b).unwrap().records)
        .collect();
    let whole = RunSummary::from_records(&union).unwrap();
    assert_eq!(
        merged.summary, whole,
        "merged summaries equal the summary of all records"
    );
    assert_eq!(merged.summary.outcomes.attempts(), 6);
    assert_eq!(merged.summary.outcomes.failed, 3);
    for q in [0.5, 0.95, 0.99] {
        assert_eq!(
            merged.summary.agent_to_anchor.one_way_delay.quantile(q),
            whole.agent_to_anchor.one_way_delay.quantile(q)
        );
    }
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("Merged from 2 runs"), "{md}");
    assert_eq!(load(&out).unwrap().records.len(), 6);

    // The components' counters add: 3 allocations in run a, none in b (UDP blocked), and the
    // signalling connections of both.
    let (ca, cb) = (
        load(&a).unwrap().summary.components,
        load(&b).unwrap().summary.components,
    );
    assert_eq!(merged.components.get("turn", "allocations_created"), 3);
    assert_eq!(
        merged.components.get("signalling", "connections"),
        ca.get("signalling", "connections") + cb.get("signalling", "connections")
    );
    assert_eq!(merged.components.get("signalling", "connections"), 6);

    // Re-rendering a folder reproduces its summary, and keeps the components' counters (no
    // record holds them).
    let again = render(&a, &a).unwrap();
    assert_eq!(again.summary, load(&a).unwrap().summary.summary);
    assert_eq!(again.components, ca);

    // Every folder gets report.html with its charts beside it, one SVG file per chart.
    for dir in [&a, &out] {
        let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
        let svgs = std::fs::read_dir(dir.join("charts")).unwrap().count();
        assert!(svgs >= 4, "{svgs} charts in {}", dir.display());
        assert_eq!(html.matches("<figure id=\"chart-").count(), svgs);
    }

    // The same two folders as shards 0/2 and 1/2 of one load: the merged report names them.
    for (dir, index) in [(&a, 0), (&b, 1)] {
        let mut run = load(dir).unwrap();
        let mut jsonl = std::fs::File::create(dir.join("calls.jsonl")).unwrap();
        for r in &mut run.records {
            r.identity.shard = Shard { index, count: 2 };
            reports::record::append_record(&mut jsonl, r).unwrap();
        }
        render(dir, dir).unwrap();
    }
    let sharded = merge(&[a.clone(), b.clone()], &out).unwrap();
    assert_eq!(sharded.summary.shards.len(), 2);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("Merged report: 2 runs") && html.contains("2 shards (0/2, 1/2)"),
        "the merged report does not say what it merged"
    );

    // A shard whose generator was late (1.5 % of its frames 5 ms late: p99 past the 2 ms
    // limit) merged with one that kept time (which halves that share, under 1 %): the merged
    // pacing histogram hides it, the merge must not. Both carry made-up pacing both ways, so
    // that the machine's own (a's, measured) plays no part.
    let copy = |name: &str, late_frames: bool| {
        let dir = std::env::temp_dir().join(format!("sim-report-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(a.join("summary.json"), dir.join("summary.json")).unwrap();
        let mut jsonl = std::fs::File::create(dir.join("calls.jsonl")).unwrap();
        for mut r in load(&a).unwrap().records {
            let media = r.agent_to_anchor.as_mut().expect("run a carried media");
            let frames = media.send_pacing_error.len();
            media.send_pacing_error = reports::Distribution::new(reports::Unit::Micros);
            media.send_pacing_error.record_n(100, frames);
            if late_frames {
                media
                    .send_pacing_error
                    .record_n(5_000, frames * 3 / 200 + 1);
            }
            // The anchor's senders kept time in both (their measured pacing is the machine's:
            // 3 ms at p99 once on a CI host that took the CPUs).
            let back = r.anchor_to_agent.as_mut().expect("run a carried media");
            let frames = back.send_pacing_error.len();
            back.send_pacing_error = reports::Distribution::new(reports::Unit::Micros);
            back.send_pacing_error.record_n(100, frames);
            reports::record::append_record(&mut jsonl, &r).unwrap();
        }
        drop(jsonl);
        dir
    };
    let (late, punctual) = (copy("late", true), copy("punctual", false));
    render(&punctual, &punctual).unwrap();
    let alone = render(&late, &late).unwrap();
    assert_eq!(
        alone.verdict,
        reports::Verdict::Invalid,
        "the late shard alone"
    );
    let with_late = merge(&[late.clone(), punctual.clone()], &out).unwrap();
    assert_eq!(
        with_late.summary.generator_lateness_us(),
        None,
        "the merged pacing histogram alone is under the limit"
    );
    assert_eq!(
        with_late.late_parts,
        vec![reports::LatePart {
            folder: late.display().to_string(),
            pacing_p99_us: alone.summary.generator_lateness_us().unwrap(),
        }]
    );
    assert_eq!(with_late.verdict, reports::Verdict::Invalid);
    assert!(
        with_late.own_faults()[0].starts_with(&late.display().to_string()),
        "{:?}",
        with_late.own_faults()
    );
    // A merge of that merge still carries it.
    let again = std::env::temp_dir().join(format!("sim-report-again-{}", std::process::id()));
    let nested = merge(&[out.clone(), b.clone()], &again).unwrap();
    assert_eq!(nested.late_parts, with_late.late_parts);
    assert_eq!(nested.verdict, reports::Verdict::Invalid);
    for d in [&late, &punctual, &again] {
        let _ = std::fs::remove_dir_all(d);
    }

    // 0 of 3 against 3 of 3: significant by the z-test (z = 2.45, p = 0.014).
    let text = compare(&a, &b).unwrap();
    assert!(text.contains("a significant difference at 5 %"), "{text}");
    assert!(text.contains("p = 0.014"), "{text}");
    let html = compare_html(&a, &b).unwrap();
    assert!(html.contains("a significant difference"), "{html}");
    for d in [a, b, out] {
        let _ = std::fs::remove_dir_all(d);
    }
}
