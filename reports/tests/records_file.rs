//! Reading `calls.jsonl`: a run killed mid-write keeps every complete record and names the
//! damaged line; corruption elsewhere and unknown schema versions are clear errors.

mod common;

use std::path::Path;

use reports::record::{RecordsError, append_record, parse_records, read_records};

fn jsonl(n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        append_record(&mut out, &common::completed_call(i)).unwrap();
    }
    out
}

#[test]
fn round_trip_through_a_file() {
    let dir = std::env::temp_dir().join(format!("reports-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("calls.jsonl");
    std::fs::write(&path, jsonl(5)).unwrap();
    let file = read_records(&path).unwrap();
    assert_eq!(file.records.len(), 5);
    assert_eq!(file.records[4], common::completed_call(4));
    assert_eq!(file.truncated, None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn last_line_cut_mid_write_keeps_complete_records() {
    let mut bytes = jsonl(3);
    let fourth = jsonl(4).split_off(bytes.len());
    // The run died a third of the way through writing the fourth record.
    bytes.extend_from_slice(&fourth[..fourth.len() / 3]);
    let file = parse_records(bytes.as_slice(), Path::new("calls.jsonl")).unwrap();
    assert_eq!(file.records.len(), 3);
    let damaged = file.truncated.expect("the cut line is reported");
    assert_eq!(damaged.line, 4);
    assert!(damaged.reason.contains("EOF"), "{damaged}");
}

#[test]
fn corruption_before_the_last_line_is_an_error_naming_it() {
    let mut bytes = jsonl(2);
    bytes.extend_from_slice(b"{\"schema_version\":1,\"identity\":\n");
    bytes.extend(jsonl(1));
    let err = parse_records(bytes.as_slice(), Path::new("runs/x/calls.jsonl")).unwrap_err();
    assert!(
        matches!(err, RecordsError::Malformed { ref damage, .. } if damage.line == 3),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("runs/x/calls.jsonl:line 3"),
        "{err}"
    );
}

#[test]
fn unknown_schema_version_is_a_clear_error() {
    let mut bytes = jsonl(1);
    let line = String::from_utf8(jsonl(1)).unwrap().replace(
        &format!("\"schema_version\":{}", reports::SCHEMA_VERSION),
        "\"schema_version\":7",
    );
    bytes.extend_from_slice(line.as_bytes());
    let err = parse_records(bytes.as_slice(), Path::new("calls.jsonl")).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            RecordsError::UnsupportedSchema {
                line: 2,
                found: 7,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("schema_version 7 is not supported"), "{msg}");
}

#[test]
fn unknown_fields_and_inconsistent_outcomes_are_damage() {
    let good = String::from_utf8(jsonl(1)).unwrap();
    let extra = good.replacen("{", "{\"surprise\":true,", 1);
    let file = parse_records(format!("{good}{extra}").as_bytes(), Path::new("f")).unwrap();
    assert_eq!(file.records.len(), 1);
    assert!(file.truncated.unwrap().reason.contains("surprise"));

    let failed_without_class = good.replace("\"outcome\":\"completed\"", "\"outcome\":\"failed\"");
    let file = parse_records(failed_without_class.as_bytes(), Path::new("f")).unwrap();
    assert!(
        file.truncated
            .unwrap()
            .reason
            .contains("without a failure class")
    );
}

#[test]
fn blank_lines_and_missing_files() {
    let mut bytes = b"\n\n".to_vec();
    bytes.extend(jsonl(2));
    bytes.extend_from_slice(b"\n   \n");
    assert_eq!(
        parse_records(bytes.as_slice(), Path::new("f"))
            .unwrap()
            .records
            .len(),
        2
    );
    let err = read_records(Path::new("/nonexistent/calls.jsonl")).unwrap_err();
    assert!(matches!(err, RecordsError::Io { .. }));
    assert!(
        err.to_string().starts_with("/nonexistent/calls.jsonl: "),
        "{err}"
    );
}

#[test]
fn version_1_records_still_read_without_a_relay_transport() {
    let line = String::from_utf8(jsonl(1))
        .unwrap()
        .replace(
            &format!("\"schema_version\":{}", reports::SCHEMA_VERSION),
            "\"schema_version\":1",
        )
        .replace(",\"relay_transport\":\"udp\"", "");
    assert!(line.contains("\"schema_version\":1") && !line.contains("relay_transport"));
    let file = parse_records(line.as_bytes(), Path::new("calls.jsonl")).unwrap();
    assert_eq!(file.records.len(), 1);
    assert_eq!(file.records[0].relay_transport, None);
}
