//! The run folder's files for programs and people: `summary.json`, `calls.csv`, `junit.xml` and
//! `summary.md`. Each is versioned: the JSON carries `schema_version`, the CSV's first column
//! names its version, the JUnit file follows the de-facto schema CI systems render.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::components::{Components, send_failure_warning};
use crate::overload::OwnLateness;
use crate::record::{CallRecord, FailureClass, SetupPhase};
use crate::summary::RunSummary;
use crate::verdict::{ErrorRate, Verdict};

/// Version of the `summary.json` layout. Version 2 added `components`, version 3
/// `own_lateness` and the verdict `invalid`, version 4 `late_parts`; older files still read
/// (without them).
pub const SUMMARY_FILE_VERSION: u32 = 4;
/// Version of the `calls.csv` columns.
pub const CSV_VERSION: u32 = 2;

/// `summary.json`: the verdict and the figures behind it, with the mergeable summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryFile {
    /// [`SUMMARY_FILE_VERSION`].
    pub schema_version: u32,
    /// The scenario's name.
    pub scenario: String,
    /// The error-rate threshold, a fraction.
    pub threshold: f64,
    /// The error rate and its interval.
    pub error_rate: ErrorRate,
    /// Pass, fail or inconclusive; invalid when the simulator's own components fell behind
    /// ([`SummaryFile::own_faults`]).
    pub verdict: Verdict,
    /// Attempts in total that would settle the verdict at the observed rate (`null`: none would).
    pub calls_needed: Option<u64>,
    /// Whether the run was stopped before all its calls (Ctrl-C).
    pub interrupted: bool,
    /// Counts and distributions.
    pub summary: RunSummary,
    /// What the simulator's own components counted (empty when not recorded).
    #[serde(default)]
    pub components: Components,
    /// When the simulator's own components were late (empty when not monitored).
    #[serde(default)]
    pub own_lateness: OwnLateness,
    /// In a merge, the parts (runs or shards) whose own senders kept poor time. Their calls
    /// were measured by a late generator even when the merged pacing histogram, diluted by the
    /// parts that kept time, stays under the limit (empty: none did, or not a merge).
    #[serde(default)]
    pub late_parts: Vec<LatePart>,
}

/// A part of a merge whose load generator was late ([`SummaryFile::late_parts`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatePart {
    /// The part's run folder, as the merge was given it.
    pub folder: String,
    /// Its senders' pacing error at p99, µs (above [`crate::summary::PACING_LIMIT_US`]).
    pub pacing_p99_us: u64,
}

impl SummaryFile {
    /// The summary file of `summary` against `threshold` at `confidence`.
    pub fn new(
        scenario: &str,
        summary: RunSummary,
        threshold: f64,
        confidence: f64,
        interrupted: bool,
    ) -> Self {
        let error_rate = summary.error_rate(confidence);
        Self {
            schema_version: SUMMARY_FILE_VERSION,
            scenario: scenario.to_owned(),
            threshold,
            verdict: error_rate.verdict(threshold),
            calls_needed: error_rate.calls_needed(threshold),
            error_rate,
            interrupted,
            summary,
            components: Components::new(),
            own_lateness: OwnLateness::default(),
            late_parts: Vec::new(),
        }
    }

    /// The late parts a merge holding this file as `folder` carries: this run's own, if its
    /// generator was late, and those of the parts it merged itself.
    #[must_use]
    pub fn late_parts_as(&self, folder: &str) -> Vec<LatePart> {
        let own = self.summary.generator_lateness_us().map(|p99| LatePart {
            folder: folder.to_owned(),
            pacing_p99_us: p99,
        });
        own.into_iter()
            .chain(self.late_parts.iter().cloned())
            .collect()
    }

    /// Why this run's figures cannot judge the network, worst first: the load generator's
    /// senders kept poor time over the run, the process was starved of CPU, or the simulator's
    /// own components failed to send. Empty when it kept up.
    #[must_use]
    pub fn own_faults(&self) -> Vec<String> {
        let mut faults = Vec::new();
        if let Some(p99) = self.summary.generator_lateness_us() {
            faults.push(crate::summary::generator_lateness_warning(p99));
        }
        for part in &self.late_parts {
            faults.push(format!(
                "{}: {}",
                part.folder,
                crate::summary::generator_lateness_warning(part.pacing_p99_us)
            ));
        }
        if let Some(starved) = self.own_lateness.starved() {
            faults.push(starved);
        }
        let failures = self.components.send_failures();
        if !failures.is_empty() {
            faults.push(send_failure_warning(&failures));
        }
        faults
    }

    /// Sets the verdict once the components and the own lateness are in: the error rate's
    /// against the threshold, or [`Verdict::Invalid`] when [`SummaryFile::own_faults`] has any.
    pub fn settle_verdict(&mut self) {
        self.verdict = if self.own_faults().is_empty() {
            self.error_rate.verdict(self.threshold)
        } else {
            Verdict::Invalid
        };
    }

    /// The lines a terminal shows under the verdict, as `sim run` and `loadgen` print them: how
    /// many calls would settle an inconclusive run, why an invalid one is neither pass nor fail,
    /// the [`warnings`](SummaryFile::warnings), and the first late stretches (`late_shown`).
    #[must_use]
    pub fn terminal_notes(&self, late_shown: usize) -> Vec<String> {
        let mut notes = Vec::new();
        match (self.verdict, self.calls_needed) {
            (Verdict::Inconclusive, Some(n)) => {
                notes.push(format!(
                    "about {n} calls in all would settle it at this error rate"
                ));
            }
            (Verdict::Invalid, _) => notes.push(
                "invalid: the simulator's own components fell behind, so this run neither \
                 passes nor fails the network (exit status 4)"
                    .into(),
            ),
            _ => {}
        }
        notes.extend(self.warnings().into_iter().map(|w| format!("warning: {w}")));
        let spans = &self.own_lateness.spans;
        notes.extend(
            spans
                .iter()
                .take(late_shown)
                .map(|span| format!("late: {}", span.describe())),
        );
        if spans.len() > late_shown {
            notes.push(format!(
                "late: … {} more in summary.json",
                spans.len() - late_shown
            ));
        }
        notes
    }

    /// What a reader must know before trusting the figures, worst first: the
    /// [`own faults`](SummaryFile::own_faults) that make the run invalid, then how many calls
    /// failed while a component of the simulator was late. Every output (the Markdown, the
    /// HTML report, the terminal) shows these same warnings.
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = self.own_faults();
        let late = self.summary.failed_while_late;
        if late > 0 {
            warnings.push(format!(
                "{late} of the {} failed or dropped calls began failing while one of the                  simulator's own components was late (their records say which): those                  failures may be the simulator's, not the network's.",
                self.error_rate.errors
            ));
        }
        warnings
    }
}

const CSV_COLUMNS: &[&str] = &[
    "csv_version",
    "run",
    "call",
    "agent",
    "site",
    "profile",
    "kind",
    "shard",
    "started_unix_ms",
    "outcome",
    "failure_class",
    "failure_detail",
    "setup_signalling_ms",
    "setup_ice_collection_ms",
    "setup_invite_answer_ms",
    "setup_ice_connected_ms",
    "setup_dtls_ms",
    "first_rtp_ms",
    "relay_transport",
    "up_sent",
    "up_lost",
    "up_loss_pct",
    "up_jitter_p95_ms",
    "up_delay_p50_ms",
    "up_mos",
    "down_sent",
    "down_lost",
    "down_loss_pct",
    "down_jitter_p95_ms",
    "down_delay_p50_ms",
    "down_mos",
];

/// `calls.csv`: one row per call, the columns above (RFC 4180 quoting).
pub fn calls_csv(records: &[CallRecord]) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    for r in records {
        let id = &r.identity;
        let mut row: Vec<String> = vec![
            CSV_VERSION.to_string(),
            id.run.clone(),
            id.call.clone(),
            id.agent.clone(),
            id.site.clone(),
            id.profile.clone(),
            id.kind.as_str().to_owned(),
            id.shard.to_string(),
            r.started_unix_ms.to_string(),
            r.outcome.as_str().to_owned(),
            r.failure
                .as_ref()
                .map_or(String::new(), |f| f.class.as_str().to_owned()),
            r.failure
                .as_ref()
                .map_or(String::new(), |f| f.detail.clone()),
        ];
        for phase in SetupPhase::ALL {
            row.push(
                r.milestones
                    .phase_us(phase)
                    .map_or(String::new(), |us| format!("{:.1}", us as f64 / 1000.0)),
            );
        }
        row.push(
            r.relay_transport
                .map_or(String::new(), |t| t.as_str().to_owned()),
        );
        for m in [&r.agent_to_anchor, &r.anchor_to_agent] {
            match m {
                Some(m) => {
                    row.push(m.packets_sent.to_string());
                    row.push(m.packets_lost.to_string());
                    row.push(format!("{:.2}", m.loss_percent()));
                    row.push(
                        m.jitter
                            .quantile(0.95)
                            .map_or(String::new(), |v| format!("{:.2}", v as f64 / 1000.0)),
                    );
                    row.push(
                        m.one_way_delay
                            .quantile(0.5)
                            .map_or(String::new(), |v| format!("{:.2}", v as f64 / 1000.0)),
                    );
                    row.push(format!("{:.2}", m.mos));
                }
                None => row.extend(std::iter::repeat_n(String::new(), 6)),
            }
        }
        let cells: Vec<String> = row.iter().map(|c| csv_cell(c)).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// `junit.xml`: one testsuite per site, one testcase per call, in the dialect of the Jenkins xUnit
/// plugin's `junit-10.xsd` (which GitLab and GitHub's JUnit reporters also read).
///
/// A testcase's `classname` is `scenario.site.kind` (CI systems group by it), its `name` the
/// call id, its `time` the call's duration in seconds. Failed and dropped calls carry a
/// `<failure>` whose `type` is the failure class and whose `message` is the CCP's message (or
/// the detail). Each testsuite names its site's network profile in a `profile` property and its
/// first call's start as `timestamp` (UTC).
pub fn junit_xml(scenario: &str, records: &[CallRecord]) -> String {
    let mut sites: Vec<&str> = records.iter().map(|r| r.identity.site.as_str()).collect();
    sites.sort_unstable();
    sites.dedup();
    let failures = records.iter().filter(|r| r.failure.is_some()).count();
    // A fold from +0.0: `sum()` of no f64 is -0.0, which the schema's time pattern refuses.
    let total = records.iter().map(duration_s).fold(0.0, |a, b| a + b);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{total:.3}\">",
        xml(scenario),
        records.len()
    );
    for site in sites {
        let calls: Vec<&CallRecord> = records.iter().filter(|r| r.identity.site == site).collect();
        let failed = calls.iter().filter(|r| r.failure.is_some()).count();
        let time = calls.iter().map(|r| duration_s(r)).fold(0.0, |a, b| a + b);
        let start = calls.iter().map(|r| r.started_unix_ms).min().unwrap_or(0);
        let mut profiles: Vec<&str> = calls.iter().map(|r| r.identity.profile.as_str()).collect();
        profiles.sort_unstable();
        profiles.dedup();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\" errors=\"0\" time=\"{time:.3}\" timestamp=\"{}\">\n    <properties>\n      <property name=\"scenario\" value=\"{}\"/>\n      <property name=\"profile\" value=\"{}\"/>\n    </properties>",
            xml(site),
            calls.len(),
            utc_datetime(start, 'T'),
            xml(scenario),
            xml(&profiles.join(", "))
        );
        for r in calls {
            let _ = write!(
                out,
                "    <testcase classname=\"{}.{}.{}\" name=\"{}\" time=\"{:.3}\"",
                xml(scenario),
                xml(site),
                r.identity.kind.as_str(),
                xml(&r.identity.call),
                duration_s(r)
            );
            match &r.failure {
                None => out.push_str("/>\n"),
                Some(f) => {
                    let message = f.ccp_message.as_deref().unwrap_or(&f.detail);
                    let _ = writeln!(
                        out,
                        ">\n      <failure type=\"{}\" message=\"{}\">{} ({}): {}</failure>\n    </testcase>",
                        f.class,
                        xml(message),
                        r.outcome.as_str(),
                        f.class,
                        xml(&f.detail)
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// A Unix time in ms as `YYYY-MM-DD<sep>HH:MM:SS` in UTC (H. Hinnant's civil-from-days
/// algorithm): `sep` is `'T'` for ISO 8601, `' '` for people.
pub fn utc_datetime(unix_ms: u64, sep: char) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}{sep}{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn duration_s(r: &CallRecord) -> f64 {
    r.milestones.ended_us.unwrap_or(0) as f64 / 1e6
}

/// How many of the simulator's late stretches a page for a person lists.
pub const LATE_SPANS_SHOWN: usize = 20;

/// `summary.md`: the verdict and its figures, to paste into a ticket.
pub fn summary_md(file: &SummaryFile) -> String {
    let s = &file.summary;
    let e = &file.error_rate;
    let pct = |x: f64| format!("{:.2} %", x * 100.0);
    let mut out = String::new();
    let verdict = file.verdict.as_str().to_uppercase();
    let _ = writeln!(out, "# {}: {verdict}\n", file.scenario);
    let _ = writeln!(
        out,
        "Error rate **{}** ({} of {} calls failed or dropped), {:.0} % Wilson interval {} – {}, threshold {}.",
        pct(e.rate),
        e.errors,
        e.attempts,
        e.confidence * 100.0,
        pct(e.lower),
        pct(e.upper),
        pct(file.threshold)
    );
    match (file.verdict, file.calls_needed) {
        (Verdict::Inconclusive, Some(n)) => {
            let _ = writeln!(
                out,
                "\nThe interval straddles the threshold: about **{n} calls** in all ({} more) would settle it if errors continue at this rate.",
                n.saturating_sub(e.attempts)
            );
        }
        (Verdict::Invalid, _) => {
            let _ = writeln!(
                out,
                "\nThe simulator's own components fell behind (see the warnings below): its \
                 figures carry its own lateness, so this run neither passes nor fails the \
                 network. Place fewer calls at once on this machine, or shard the load."
            );
        }
        (Verdict::Inconclusive, None) => {
            let _ = writeln!(
                out,
                "\nThe interval straddles the threshold and the observed rate equals it: more calls will not settle it."
            );
        }
        _ => {}
    }
    if !s.failures.is_empty() {
        let _ = writeln!(
            out,
            "\nThe likely cause of each failure and the vendor's remedy, with charts: \
             `report.html` in the run folder."
        );
    }
    if file.interrupted {
        let _ = writeln!(
            out,
            "\n> The run was interrupted before all its calls were placed."
        );
    }
    if s.runs.len() > 1 || s.shards.len() > 1 {
        let runs: Vec<&str> = s.runs.iter().map(String::as_str).collect();
        let shards: Vec<String> = s.shards.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "\nMerged from {} runs ({}), shards {}.",
            runs.len(),
            runs.join(", "),
            shards.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\n| outcome | calls |\n|---|---:|\n| completed | {} |\n| failed | {} |\n| dropped | {} |",
        s.outcomes.completed, s.outcomes.failed, s.outcomes.dropped
    );
    if s.by_site.len() > 1 {
        let _ = writeln!(
            out,
            "\n| site | calls | failed | dropped | error rate | {:.0} % interval |\n|---|---:|---:|---:|---:|---:|",
            e.confidence * 100.0
        );
        for (site, c) in &s.by_site {
            let r = c.error_rate(e.confidence);
            let _ = writeln!(
                out,
                "| {site} | {} | {} | {} | {} | {} – {} |",
                c.attempts(),
                c.failed,
                c.dropped,
                pct(r.rate),
                pct(r.lower),
                pct(r.upper)
            );
        }
    }
    if !s.failures.is_empty() {
        let _ = writeln!(out, "\n| failure class | calls |\n|---|---:|");
        let mut classes: Vec<(&FailureClass, &u64)> = s.failures.iter().collect();
        classes.sort_by(|a, b| b.1.cmp(a.1));
        for (c, n) in classes {
            let _ = writeln!(out, "| `{c}` | {n} |");
        }
    }
    let _ = writeln!(
        out,
        "\n| setup phase | p50 ms | p95 ms | max ms |\n|---|---:|---:|---:|"
    );
    for (phase, d) in &s.setup {
        if d.is_empty() {
            continue;
        }
        let ms = |q: f64| {
            d.quantile(q)
                .map_or(String::new(), |v| format!("{:.1}", v as f64 / 1000.0))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            phase.as_str(),
            ms(0.5),
            ms(0.95),
            d.max()
                .map_or(String::new(), |v| format!("{:.1}", v as f64 / 1000.0))
        );
    }
    let _ = writeln!(
        out,
        "\n| media | streams | loss | jitter p95 ms | delay p50 ms | MOS p5 | MOS p50 | sender pacing p99 ms |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (name, d) in [
        ("agent → anchor", &s.agent_to_anchor),
        ("anchor → agent", &s.anchor_to_agent),
    ] {
        let q = |dist: &crate::Distribution, q: f64, scale: f64| {
            dist.quantile(q)
                .map_or(String::from("–"), |v| format!("{:.2}", v as f64 / scale))
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {:.2} % | {} | {} | {} | {} | {} |",
            d.streams,
            d.loss_percent(),
            q(&d.jitter, 0.95, 1000.0),
            q(&d.one_way_delay, 0.5, 1000.0),
            q(&d.mos, 0.05, 100.0),
            q(&d.mos, 0.5, 100.0),
            q(&d.send_pacing_error, 0.99, 1000.0)
        );
    }
    for warning in file.warnings() {
        let _ = writeln!(out, "\n> **Warning:** {warning}");
    }
    let spans = &file.own_lateness.spans;
    if !spans.is_empty() {
        let _ = writeln!(
            out,
            "\nWhen the simulator's own components were late ({} stretches{}):\n",
            spans.len(),
            if spans.len() > LATE_SPANS_SHOWN {
                format!(", the first {LATE_SPANS_SHOWN} shown; all in summary.json")
            } else {
                String::new()
            }
        );
        for span in spans.iter().take(LATE_SPANS_SHOWN) {
            let _ = writeln!(out, "- {}", span.describe());
        }
    }
    if !file.components.is_empty() {
        let _ = writeln!(
            out,
            "\n| component | what it counted (non-zero) |\n|---|---|"
        );
        for (name, counters) in file.components.iter() {
            let rows: Vec<String> = counters
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "| {name} | {} |", rows.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::OutcomeCounts;

    fn file(sites: &[(&str, u64, u64)]) -> SummaryFile {
        let mut s = RunSummary::new();
        for &(name, completed, failed) in sites {
            let c = OutcomeCounts {
                completed,
                failed,
                dropped: 0,
            };
            s.by_site.insert(name.to_owned(), c);
            s.outcomes.completed += completed;
            s.outcomes.failed += failed;
        }
        SummaryFile::new("branches", s, 0.02, 0.95, false)
    }

    #[test]
    fn a_version_1_summary_without_components_still_reads() {
        let mut doc = serde_json::to_value(file(&[("hq", 10, 0)])).unwrap();
        let fields = doc.as_object_mut().unwrap();
        assert!(fields.remove("components").is_some());
        fields.insert("schema_version".into(), 1.into());
        let read: SummaryFile = serde_json::from_value(doc).unwrap();
        assert!(read.components.is_empty());
        assert!(!summary_md(&read).contains("| component |"));
    }

    #[test]
    fn summary_md_states_the_verdict_and_splits_sites() {
        let md = summary_md(&file(&[("north", 200, 0), ("south", 180, 20)]));
        assert!(md.starts_with("# branches: FAIL\n"), "{md}");
        assert!(
            md.contains("Error rate **5.00 %** (20 of 400 calls failed or dropped)"),
            "{md}"
        );
        assert!(md.contains("| north | 200 | 0 | 0 | 0.00 % |"), "{md}");
        assert!(md.contains("| south | 200 | 20 | 0 | 10.00 % |"), "{md}");
        // One site: no site table.
        assert!(!summary_md(&file(&[("hq", 10, 0)])).contains("| site |"));
    }

    #[test]
    fn a_run_whose_simulator_fell_behind_is_invalid_whatever_its_error_rate() {
        use crate::overload::{LateCause, LateSpan};
        // 400 calls at 5 %: a fail on its error rate alone.
        let mut f = file(&[("north", 200, 0), ("south", 180, 20)]);
        f.settle_verdict();
        assert_eq!(f.verdict, Verdict::Fail);
        // A saturated agents' thread for 1.5 s: below the starved limit, still the network's.
        let span = |from: u64, to: u64| LateSpan {
            from_unix_ms: from,
            to_unix_ms: to,
            component: "thread sim (agents)".into(),
            cause: LateCause::Saturated,
            worst: "100 % of a core busy".into(),
        };
        f.own_lateness.window_ms = 500;
        f.own_lateness.spans.push(span(10_000, 11_500));
        f.settle_verdict();
        assert_eq!(f.verdict, Verdict::Fail);
        // Another second: 2.5 s starved in all.
        f.own_lateness.spans.push(span(20_000, 21_000));
        f.settle_verdict();
        assert_eq!(f.verdict, Verdict::Invalid);
        let md = summary_md(&f);
        assert!(md.starts_with("# branches: INVALID\n"), "{md}");
        assert!(md.contains("neither passes nor fails the network"), "{md}");
        assert!(md.contains("starved of CPU for 2.5 s in all"), "{md}");
        assert!(
            md.contains("- thread sim (agents) 00:00:10.0–00:00:11.5 (1.5 s): thread saturated"),
            "{md}"
        );
        // Failed sends alone make it invalid too; a clean run gets its error rate's verdict.
        let mut g = file(&[("hq", 200, 0)]);
        g.components
            .add("anchor", [(crate::components::SEND_FAILED, 3)]);
        g.settle_verdict();
        assert_eq!(g.verdict, Verdict::Invalid);
        let mut clean = file(&[("hq", 200, 0)]);
        clean.settle_verdict();
        assert_eq!(clean.verdict, clean.error_rate.verdict(clean.threshold));
        assert!(clean.own_faults().is_empty());
    }

    #[test]
    fn utc_datetime_is_civil_time() {
        assert_eq!(utc_datetime(0, 'T'), "1970-01-01T00:00:00");
        // 2000-02-29 12:34:56 UTC, a leap day in a century leap year.
        assert_eq!(utc_datetime(951_827_696_000, ' '), "2000-02-29 12:34:56");
        assert_eq!(utc_datetime(1_795_779_865_812, 'T'), "2026-11-27T11:44:25");
    }

    #[test]
    fn csv_cells_are_quoted() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
