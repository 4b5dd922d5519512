//! `report.html` and its charts are made for any run, without a panic and without a chart that
//! has nothing to show: no call at all, every call failed, one site, calls without media or
//! with milestones out of order, names that need escaping.

mod support;

use reports::charts::charts;
use reports::guidance::diagnose;
use reports::html::report_html;
use reports::output::SummaryFile;
use reports::record::{FailureClass, read_records};
use reports::{CallRecord, Outcome, RelayTransport, RunSummary};

fn fixture() -> Vec<CallRecord> {
    read_records(&support::golden_dir().join("calls.jsonl"))
        .unwrap()
        .records
}

/// The report of `records` and the ids of its charts.
fn report(records: &[CallRecord]) -> (String, Vec<&'static str>) {
    let summary = RunSummary::from_records(records).unwrap();
    let file = SummaryFile::new("odd", summary, 0.02, 0.95, false);
    let charts = charts(&file, records).unwrap();
    let html = report_html(&file, records, &charts);
    assert!(html.starts_with("<!doctype html>") && html.ends_with("</html>\n"));
    assert_eq!(html.matches("<figure ").count(), charts.len());
    (html, charts.iter().map(|c| c.id).collect())
}

#[test]
fn no_call_at_all() {
    let (html, charts) = report(&[]);
    assert_eq!(charts, Vec::<&str>::new());
    assert!(html.contains("NO CALLS"), "{html}");
    assert!(html.contains("No call was placed"));
    assert!(!html.contains("id=\"records\""));
}

#[test]
fn every_call_failed_at_one_site() {
    let failed: Vec<CallRecord> = fixture()
        .into_iter()
        .filter(|r| r.identity.site == "branch")
        .collect();
    assert!(failed.iter().all(|r| r.outcome == Outcome::Failed));
    let (html, charts) = report(&failed);
    // Setup got as far as signalling; no media, one site: no media or site charts.
    assert_eq!(charts, ["setup-cdf", "error-rate", "timeline", "failures"]);
    assert!(html.contains(">FAIL<"));
    assert!(html.contains("TURN unreachable on 3478/UDP"));
    assert!(html.contains("Every failed or dropped call (9)"));
    assert!(!html.contains("Worst MOS"));
}

#[test]
fn one_clean_site() {
    let mut clean: Vec<CallRecord> = fixture()
        .into_iter()
        .filter(|r| r.identity.site == "hq" && r.failure.is_none())
        .collect();
    // Version 1 records carry no relay transport: say which one each call's media took.
    for (i, r) in clean.iter_mut().enumerate() {
        r.relay_transport = Some(if i == 0 {
            RelayTransport::Tls
        } else {
            RelayTransport::Udp
        });
    }
    let (html, charts) = report(&clean);
    assert_eq!(
        charts,
        [
            "setup-cdf",
            "jitter",
            "delay",
            "mos",
            "error-rate",
            "timeline"
        ]
    );
    assert!(html.contains("No call failed or dropped."));
    // Both outlier tables (worst MOS, longest setup) name each call's relay transport.
    assert_eq!(
        html.matches("<th>relay</th>").count(),
        2,
        "worst MOS, longest setup"
    );
    assert!(html.contains("<td>udp</td>"));
    // 26 calls, none failed: too few to show < 2 %.
    assert!(html.contains(">INCONCLUSIVE<"));
    assert!(html.contains("more calls</strong>"));
}

#[test]
fn calls_without_media_or_with_odd_milestones() {
    let mut records = fixture();
    for r in &mut records[..10] {
        r.agent_to_anchor = None;
        r.anchor_to_agent = None;
    }
    // Hang-up before first RTP, no end: figures must not go negative or panic.
    records[10].milestones.hangup_us = Some(1);
    records[10].milestones.ended_us = None;
    records[11].milestones = Default::default();
    let (html, charts) = report(&records);
    assert!(charts.contains(&"timeline"));
    assert!(!html.contains("NaN") && !html.contains(" inf"));
}

#[test]
fn names_are_escaped() {
    let mut records = fixture();
    records[0].identity.site = "<script>alert(1)</script>".into();
    records[17].identity.call = "c\"><b>".into();
    let (html, _) = report(&records);
    assert!(!html.contains("<script>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains("c\"><b>"));
}

#[test]
fn every_failure_class_has_a_diagnosis() {
    for class in FailureClass::ALL {
        let d = diagnose(class, "");
        assert!(!d.cause.is_empty() && !d.explanation.is_empty() && !d.remedy.is_empty());
    }
    // The detail refines the class where the class alone is ambiguous.
    let dns = diagnose(
        FailureClass::IceCollectionTimeout,
        "no relay candidate: turn.sim.local: the site's DNS does not resolve this name",
    );
    assert_eq!(dns.cause, "DNS does not resolve the TURN names");
    let udp = diagnose(
        FailureClass::IceCollectionTimeout,
        "no answer from the TURN server",
    );
    assert!(udp.remedy.contains("3478/UDP") && udp.remedy.contains("49152–65535/UDP"));
    assert!(
        diagnose(
            FailureClass::SignallingConnectionFailure,
            "signalling connection failed: WebSocket upgrade: HTTP error: 400 Bad Request"
        )
        .remedy
        .contains("Bypass the proxy")
    );
    assert!(
        diagnose(
            FailureClass::SignallingHandshakeFailure,
            "TLS: invalid peer certificate: Expired"
        )
        .remedy
        .contains("certificate cache timeout")
    );
    assert_eq!(
        diagnose(
            FailureClass::SignallingConnectionFailure,
            "keep-alive: no pong within 10s: the signalling connection stalled with nothing \
             closing it (a proxy or firewall that drops idle connections silently)"
        )
        .cause,
        "Signalling connection stalled mid-call"
    );
}

#[test]
fn comparison_page() {
    use reports::html::comparison_html;
    let records = fixture();
    let before = SummaryFile::new(
        "before",
        RunSummary::from_records(&records).unwrap(),
        0.02,
        0.95,
        false,
    );
    let clean: Vec<CallRecord> = records
        .into_iter()
        .filter(|r| r.failure.is_none())
        .collect();
    let after = SummaryFile::new(
        "after",
        RunSummary::from_records(&clean).unwrap(),
        0.02,
        0.95,
        false,
    );
    let html = comparison_html(("runs/before", &before), ("runs/after", &after));
    std::fs::write(
        support::output_dir("comparison").join("compare.html"),
        &html,
    )
    .unwrap();
    // 0 of 48 after 12 of 60: z = −3.29, p = 0.001, significant.
    assert!(html.contains("a significant difference"), "{html}");
    assert!(html.contains(">FAIL<") && html.contains("<code>ice_collection_timeout</code>"));
    let empty = SummaryFile::new("none", RunSummary::new(), 0.02, 0.95, false);
    assert!(comparison_html(("a", &empty), ("b", &empty)).contains("no test applies"));
}
