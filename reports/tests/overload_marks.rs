//! Failed calls whose failure began while the simulator was late are marked, and only those.

mod common;

use reports::{Failure, FailureClass, LateCause, LateSpan, Outcome, OwnLateness, RunSummary};

/// A call started at `started` (Unix ms) that failed after reaching its invite at `invite_us`
/// and ended at `ended_us` (µs after its start).
fn failed(started: u64, invite_us: u64, ended_us: u64) -> reports::CallRecord {
    let mut r = common::completed_call(1);
    r.started_unix_ms = started;
    r.outcome = Outcome::Failed;
    r.failure = Some(Failure {
        class: FailureClass::SignallingHandshakeFailure,
        detail: "no answer".into(),
        ccp_message: None,
        own_lateness: None,
    });
    let m = &mut r.milestones;
    (m.local_media_us, m.local_description_us) = (Some(0), Some(0));
    (m.signalling_connected_us, m.ice_collected_us) = (Some(0), Some(0));
    m.invite_sent_us = Some(invite_us);
    (m.answer_received_us, m.accepted_us, m.ice_connected_us) = (None, None, None);
    (m.dtls_connected_us, m.first_rtp_us, m.hangup_us) = (None, None, None);
    m.ended_us = Some(ended_us);
    r
}

#[test]
fn a_failure_is_marked_when_it_began_during_a_span_and_not_when_it_began_after() {
    let own = OwnLateness {
        window_ms: 500,
        spans: vec![LateSpan {
            from_unix_ms: 100_000,
            to_unix_ms: 101_000,
            component: "cpu quota".into(),
            cause: LateCause::Throttled,
            worst: "the process stopped 300 ms of a 500 ms window".into(),
        }],
    };
    let mut records = vec![
        // Failed waiting for the answer to an invite sent at 100.5 s: during the span.
        failed(99_000, 1_500_000, 6_500_000),
        // Its invite went at 101.5 s, after the span ended.
        failed(99_000, 2_500_000, 7_500_000),
        // A failure whose last milestone is long past: taken to begin 15 s before its end
        // (at 140 s), after the span.
        failed(90_000, 1_000_000, 65_000_000),
        // The completed call is never marked, even during the span.
        common::completed_call(2),
    ];
    records[3].started_unix_ms = 100_000;
    assert_eq!(own.mark(&mut records), 1);
    let marks: Vec<Option<&str>> = records
        .iter()
        .map(|r| r.failure.as_ref().and_then(|f| f.own_lateness.as_deref()))
        .collect();
    assert_eq!(
        marks,
        [
            Some(
                "cpu quota 00:01:40.0–00:01:41.0 (1.0 s): CPU quota, the process stopped 300 ms \
                 of a 500 ms window"
            ),
            None,
            None,
            None
        ]
    );
    let summary = RunSummary::from_records(&records).unwrap();
    assert_eq!(summary.failed_while_late, 1);
    // A marked record still reads back (schema 6), and an unmarked one has no such field.
    let line = serde_json::to_string(&records[0]).unwrap();
    assert!(line.contains("\"own_lateness\":\"cpu quota"), "{line}");
    assert!(
        !serde_json::to_string(&records[1])
            .unwrap()
            .contains("own_lateness")
    );
    let back: reports::CallRecord = serde_json::from_str(&line).unwrap();
    assert_eq!(back, records[0]);
}
