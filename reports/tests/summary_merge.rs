//! Merging the summaries of N shards equals the summary of all their records, exactly — also
//! after each shard's summary went through its JSON file.

mod common;

use proptest::prelude::*;
use reports::{CallRecord, RunSummary};

fn summary_via_json(records: &[CallRecord]) -> RunSummary {
    let s = RunSummary::from_records(records).unwrap();
    let json = serde_json::to_string(&s).unwrap();
    serde_json::from_str(&json).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn shard_summaries_merge_to_the_whole(
        records in prop::collection::vec(common::arb_record(), 0..60),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
    ) {
        let whole = RunSummary::from_records(&records).unwrap();

        // Split at arbitrary points into up to six shards (some possibly empty).
        let mut bounds: Vec<usize> = cuts.iter().map(|i| i.index(records.len() + 1)).collect();
        bounds.extend([0, records.len()]);
        bounds.sort_unstable();
        let mut merged = RunSummary::new();
        for w in bounds.windows(2) {
            merged.merge(&summary_via_json(&records[w[0]..w[1]])).unwrap();
        }
        prop_assert_eq!(&merged, &whole);

        // And the merge order does not matter.
        let mut reversed = RunSummary::new();
        for w in bounds.windows(2).rev() {
            reversed.merge(&summary_via_json(&records[w[0]..w[1]])).unwrap();
        }
        prop_assert_eq!(&reversed, &whole);

        // Percentiles of the merged histograms equal the whole's, exactly.
        for q in [0.5, 0.95, 0.99] {
            prop_assert_eq!(merged.agent_to_anchor.one_way_delay.quantile(q), whole.agent_to_anchor.one_way_delay.quantile(q));
        }
        prop_assert_eq!(merged.outcomes.attempts(), records.len() as u64);
    }
}

#[test]
fn summary_counts_outcomes_classes_and_phases() {
    let mut calls: Vec<CallRecord> = (0..10).map(common::completed_call).collect();
    calls[3].outcome = reports::Outcome::Failed;
    calls[3].failure = Some(reports::Failure {
        class: reports::FailureClass::IceCollectionTimeout,
        detail: "no relay candidate in 8 s".into(),
        ccp_message: None,
        own_lateness: None,
    });
    calls[3].milestones.first_rtp_us = None;
    let s = RunSummary::from_records(&calls).unwrap();
    assert_eq!(
        (s.outcomes.completed, s.outcomes.failed, s.outcomes.dropped),
        (9, 1, 0)
    );
    assert_eq!(
        s.failures.get(&reports::FailureClass::IceCollectionTimeout),
        Some(&1)
    );
    let first_rtp = &s.setup[&reports::SetupPhase::FirstRtp];
    assert_eq!(first_rtp.len(), 9);
    // 95 ms to first RTP, kept to two significant digits.
    assert!(first_rtp.quantile(0.5).unwrap().abs_diff(95_000) <= 950);
    let ice = &s.setup[&reports::SetupPhase::IceCollection];
    assert!(ice.quantile(0.5).unwrap().abs_diff(6_000) <= 60);
    assert_eq!(s.agent_to_anchor.streams, 10);
    assert_eq!(s.agent_to_anchor.one_way_delay.len(), 30);
    let rate = s.error_rate(0.95);
    assert!((rate.rate - 0.1).abs() < 1e-12);
}
