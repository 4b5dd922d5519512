//! The run folder's files for programs and people do not change unnoticed: on a fixed set of
//! records (`tests/golden/calls.jsonl`: 60 calls at four sites, 11 failed with two classes and
//! one dropped), `summary.json`, `summary.md`, `calls.csv` and `junit.xml` equal the checked-in
//! files beside it, and `summary.json` conforms to its JSON Schema (`schema/summary.schema.json`,
//! itself checked against the draft 2020-12 meta-schema).
//!
//! After an intended change of a format, regenerate the files and review the diff:
//! `UPDATE_GOLDEN=1 cargo test -p reports --test golden`.

use std::path::{Path, PathBuf};

use reports::output::{SummaryFile, calls_csv, junit_xml, summary_md};
use reports::record::read_records;
use reports::{CallRecord, RunSummary};
use serde_json::{Value, json};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn fixture() -> (Vec<CallRecord>, SummaryFile) {
    let file = read_records(&dir().join("calls.jsonl")).unwrap();
    assert!(file.truncated.is_none());
    let summary = RunSummary::from_records(&file.records).unwrap();
    let mut summary = SummaryFile::new("fixture", summary, 0.02, 0.95, false);
    // What the components counted, with a path that failed to send (the report warns).
    summary.components.add(
        "turn",
        [
            ("allocations_created", 59),
            ("error_responses.401", 60),
            ("dropped.malformed", 0),
        ],
    );
    summary
        .components
        .add("anchor", [("invites", 49), ("dropped_datagrams", 2)]);
    summary.components.add(
        "path branch → turn:turn.example:3478?transport=udp",
        [("send_failed", 3)],
    );
    (file.records, summary)
}

/// Compares `actual` with the golden file `name`, or rewrites it under `UPDATE_GOLDEN=1`.
fn golden(name: &str, actual: &str) {
    let path = dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from {} from line {}:\n  golden: {:?}\n  actual: {:?}\n\
             If the change is intended: UPDATE_GOLDEN=1 cargo test -p reports --test golden",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        );
    }
}

fn schema() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/summary.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The schema's complaints about `instance`, one line each.
fn violations(instance: &Value) -> Vec<String> {
    let schema = schema();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn summary_json_is_golden_and_valid() {
    let (_, file) = fixture();
    let json = serde_json::to_string_pretty(&file).unwrap();
    golden("summary.json", &json);
    let value: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(violations(&value), Vec::<String>::new());
    // What the verdict says about the fixture, so a golden update cannot hide a wrong figure:
    // 12 of 60 (20 %) is a fail against 2 %.
    assert_eq!(value["verdict"], "fail");
    assert_eq!(value["error_rate"]["errors"], 12);
    assert_eq!(value["summary"]["failures"]["ice_collection_timeout"], 9);
}

#[test]
fn summary_md_is_golden() {
    let (_, file) = fixture();
    golden("summary.md", &summary_md(&file));
}

#[test]
fn calls_csv_is_golden() {
    let (records, _) = fixture();
    golden("calls.csv", &calls_csv(&records));
}

#[test]
fn junit_xml_is_golden() {
    let (records, file) = fixture();
    golden("junit.xml", &junit_xml(&file.scenario, &records));
}

#[test]
fn the_schema_is_a_draft_2020_12_schema() {
    if let Err(e) = jsonschema::meta::validate(&schema()) {
        panic!("schema/summary.schema.json is not a valid JSON Schema: {e}");
    }
}

#[test]
fn odd_summaries_conform_and_broken_ones_do_not() {
    // No calls at all, and a run where every call failed, are still valid files.
    let empty = SummaryFile::new("empty", RunSummary::new(), 0.02, 0.95, true);
    let empty = serde_json::to_value(&empty).unwrap();
    assert_eq!(violations(&empty), Vec::<String>::new());
    assert_eq!(empty["calls_needed"], Value::Null);

    let (records, _) = fixture();
    let failed: Vec<CallRecord> = records
        .into_iter()
        .filter(|r| r.failure.is_some())
        .collect();
    let all_failed = SummaryFile::new(
        "all-failed",
        RunSummary::from_records(&failed).unwrap(),
        0.02,
        0.95,
        false,
    );
    assert_eq!(
        violations(&serde_json::to_value(&all_failed).unwrap()),
        Vec::<String>::new()
    );
    // A merge holding a late shard.
    let mut merged = all_failed.clone();
    merged.late_parts.push(reports::LatePart {
        folder: "shard-3".into(),
        pacing_p99_us: 4_100,
    });
    merged.settle_verdict();
    assert_eq!(merged.verdict, reports::Verdict::Invalid);
    assert_eq!(
        violations(&serde_json::to_value(&merged).unwrap()),
        Vec::<String>::new()
    );

    // What a reader would refuse, the schema refuses too.
    let (_, file) = fixture();
    let good = serde_json::to_value(&file).unwrap();
    let broken = [
        ("/schema_version", json!(1)),
        ("/verdict", json!("maybe")),
        ("/threshold", json!(2)),
        ("/summary/setup/first_rtp/unit", json!("ms")),
        ("/summary/failures/dns_failure", json!(3)),
        (
            "/summary/agent_to_anchor/jitter/hdr",
            json!("not a histogram"),
        ),
        ("/summary/outcomes/completed", json!(-1)),
        ("/surprise", json!(true)),
        ("/components/turn", json!(5)),
        ("/components/anchor/invites", json!(-1)),
        ("/late_parts", json!([{ "folder": "shard-3" }])),
    ];
    for (pointer, value) in broken {
        let mut doc = good.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        doc.pointer_mut(if parent.is_empty() { "" } else { parent })
            .and_then(Value::as_object_mut)
            .unwrap()
            .insert(key.to_owned(), value.clone());
        assert!(
            !violations(&doc).is_empty(),
            "the schema accepts {pointer} = {value}"
        );
    }
}
