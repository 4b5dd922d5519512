//! `report.html`: the run's report for people, one self-contained file.
//!
//! The page carries everything inline — CSS, the charts as SVG — and fetches nothing: its
//! Content-Security-Policy (`default-src 'none'`) forbids any request, it has no script, and
//! its fonts are the reader's own (`system-ui`, then `sans-serif`). It can be mailed, attached
//! to a ticket or opened from a file share as is. The one exception: when the run recorded
//! calls, the worst calls' rows carry an `<audio>` player of their recording, which the policy
//! lets load from the run folder beside the page (`media-src 'self'`) and nothing else.
//!
//! Reading order: the verdict in words, the key figures, what went wrong with the vendor's
//! remedy for each cause, the charts, the per-site and media tables, the calls worth a look
//! (every failed call, the worst MOS, the slowest setups), and last the JSON line of each of
//! those calls — embedded, because a link to `calls.jsonl#L12` does not work for a file opened
//! locally (browsers have no line anchors in plain text) nor for a report sent on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::charts::{self, Chart, DIRECTIONS, SiteRow, phase_label};
use crate::distribution::Distribution;
use crate::guidance::{Diagnosis, diagnose};
use crate::output::{SummaryFile, utc_datetime};
use crate::record::{CallRecord, FailureClass, SetupPhase};
use crate::verdict::Verdict;

/// How many calls each "worst" table lists.
const WORST: usize = 5;
/// Failed calls listed open; beyond this the list is folded (a run where everything failed).
const FAILED_OPEN: usize = 25;

/// The report of `file` over `records` (in `calls.jsonl` order: record *i* is line *i* + 1),
/// with `charts` from [`charts::charts`].
pub fn report_html(file: &SummaryFile, records: &[CallRecord], charts: &[Chart]) -> String {
    let mut page = Page::default();
    let s = &file.summary;
    let verdict = file.verdict;
    let title = format!(
        "{}: {}",
        file.scenario,
        verdict_word(verdict, s.outcomes.attempts())
    );
    // Recordings play from the run folder beside the page: the one thing it may load.
    let media = if records.iter().any(|r| r.recording.is_some()) {
        "; media-src 'self'"
    } else {
        ""
    };
    let _ = write!(
        page.out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"icon\" href=\"data:,\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; img-src data:{media}\">\n\
         <title>{} — softphone network test</title>\n<style>{CSS}</style>\n</head>\n\
         <body>\n<main>\n",
        esc(&title)
    );
    header(&mut page, file, records);
    verdict_section(&mut page, file);
    key_figures(&mut page, file, records);
    problems(&mut page, file, records);
    charts_section(&mut page, charts);
    sites_section(&mut page, file, records);
    tables(&mut page, file);
    outliers(&mut page, records);
    call_records(&mut page, records);
    footer(&mut page, file, records, charts);
    page.out.push_str("</main>\n</body>\n</html>\n");
    page.out
}

/// A before/after comparison of two runs (e.g. across a network change) as one self-contained
/// page: both verdicts with their intervals on the same kind of axis, the figures side by side,
/// and whether the error rates differ significantly (pooled two-proportion z-test at 5 %).
/// `before` and `after` name each run (its folder) and give its summary.
pub fn comparison_html(before: (&str, &SummaryFile), after: (&str, &SummaryFile)) -> String {
    let (a, b) = (before.1, after.1);
    let (ea, eb) = (&a.error_rate, &b.error_rate);
    let heading = format!("{} → {}", before.0, after.0);
    let mut out = page_head(
        &format!("{heading} — softphone network test comparison"),
        "comparison",
        &heading,
    );
    let sentence = match crate::verdict::ProportionTest::new(
        eb.errors,
        eb.attempts,
        ea.errors,
        ea.attempts,
    ) {
        Some(t) if t.significant(0.05) => format!(
            "The error rate went from {} to {}, a change of {:+.2} points: <strong>a significant \
             difference</strong> at 5 % (two-proportion z-test, z = {:.2}, p = {:.3}).",
            pct(ea.rate),
            pct(eb.rate),
            t.difference * 100.0,
            t.z,
            t.p_value
        ),
        Some(t) => format!(
            "The error rate went from {} to {}, a change of {:+.2} points: <strong>not \
             significant</strong> at 5 %, it may be chance (two-proportion z-test, z = {:.2}, \
             p = {:.3}). More calls in each run would tell.",
            pct(ea.rate),
            pct(eb.rate),
            t.difference * 100.0,
            t.z,
            t.p_value
        ),
        None => "Both runs have the same all-or-nothing error rate (or no calls): no test \
                 applies."
            .to_owned(),
    };
    let _ = writeln!(
        out,
        "<section class=\"compare-summary\"><p>{sentence}</p></section>"
    );
    out.push_str("<section class=\"compare\">\n");
    for (name, f) in [before, after] {
        let class = match f.verdict {
            _ if f.error_rate.attempts == 0 => "unsure",
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive | Verdict::Invalid => "unsure",
        };
        let _ = writeln!(
            out,
            "<div class=\"verdict {class}\"><p class=\"kicker\">{}</p><p class=\"word\">{}</p>\
             <p>{} of {} calls failed or dropped ({}), {:.0} % interval {} – {}, threshold {}.</p>\
             {}</div>",
            esc(name),
            verdict_word(f.verdict, f.error_rate.attempts),
            f.error_rate.errors,
            f.error_rate.attempts,
            pct(f.error_rate.rate),
            f.error_rate.confidence * 100.0,
            pct(f.error_rate.lower),
            pct(f.error_rate.upper),
            threshold_pct(f.threshold),
            if f.error_rate.attempts > 0 {
                gauge(f)
            } else {
                String::new()
            }
        );
    }
    out.push_str(
        "</section>\n<table>\n<thead><tr><th></th><th class=\"num\">before</th>\
         <th class=\"num\">after</th></tr></thead>\n<tbody>\n",
    );
    let q = |d: &Distribution, q: f64| d.quantile(q);
    let first = |f: &SummaryFile| f.summary.setup.get(&SetupPhase::FirstRtp).cloned();
    let mut row = |label: &str, x: String, y: String| {
        let _ = writeln!(
            out,
            "<tr><td>{label}</td><td class=\"num\">{x}</td><td class=\"num\">{y}</td></tr>"
        );
    };
    row("calls", ea.attempts.to_string(), eb.attempts.to_string());
    row(
        "failed + dropped",
        ea.errors.to_string(),
        eb.errors.to_string(),
    );
    row("error rate", pct(ea.rate), pct(eb.rate));
    row(
        "time to first audio p95",
        ms(first(a).and_then(|d| q(&d, 0.95))),
        ms(first(b).and_then(|d| q(&d, 0.95))),
    );
    for (k, dir) in DIRECTIONS.iter().enumerate() {
        let side = |f: &SummaryFile| {
            if k == 0 {
                f.summary.agent_to_anchor.clone()
            } else {
                f.summary.anchor_to_agent.clone()
            }
        };
        let (da, db) = (side(a), side(b));
        let loss = |d: &crate::summary::DirectionSummary| {
            if d.packets_expected == 0 {
                "–".to_owned()
            } else {
                pct(d.loss_percent() / 100.0)
            }
        };
        row(&format!("{} loss", dir.name), loss(&da), loss(&db));
        row(
            &format!("{} jitter p95", dir.name),
            ms(q(&da.jitter, 0.95)),
            ms(q(&db.jitter, 0.95)),
        );
        row(
            &format!("{} one-way delay p95", dir.name),
            ms(q(&da.one_way_delay, 0.95)),
            ms(q(&db.one_way_delay, 0.95)),
        );
        row(
            &format!("{} MOS p50", dir.name),
            mos(q(&da.mos, 0.5)),
            mos(q(&db.mos, 0.5)),
        );
    }
    let mut classes: BTreeSet<FailureClass> = a.summary.failures.keys().copied().collect();
    classes.extend(b.summary.failures.keys().copied());
    for c in classes {
        let n = |f: &SummaryFile| f.summary.failures.get(&c).copied().unwrap_or(0).to_string();
        row(&format!("<code>{c}</code>"), n(a), n(b));
    }
    out.push_str("</tbody>\n</table>\n</main>\n</body>\n</html>\n");
    out
}

/// The head of a page that loads nothing (inline style, images as data), up to its header.
fn page_head(title: &str, kicker: &str, heading: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"icon\" href=\"data:,\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; img-src data:\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n\
         </head>\n<body>\n<main>\n<header>\n<p class=\"kicker\">Softphone network test · \
         {}</p>\n<h1>{}</h1>\n</header>\n",
        esc(title),
        esc(kicker),
        esc(heading)
    )
}

#[derive(Default)]
struct Page {
    out: String,
    /// Records linked from the page (index into the records), embedded at the end.
    linked: BTreeSet<usize>,
}

impl Page {
    /// A link to record `i`'s embedded JSON line.
    fn call_link(&mut self, i: usize, r: &CallRecord) -> String {
        self.linked.insert(i);
        format!(
            "<a href=\"#{}\"><code>{}</code></a>",
            anchor(&r.identity.call),
            esc(&r.identity.call)
        )
    }
}

fn anchor(call: &str) -> String {
    let safe: String = call
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("call-{safe}")
}

/// HTML-escapes text for element content and attribute values.
/// A cell with a player for `r`'s recording (a path relative to the run folder), or a dash.
fn listen(r: &CallRecord) -> String {
    match &r.recording {
        Some(path) => format!(
            "<td class=\"listen\"><audio controls preload=\"metadata\" src=\"{}\"></audio> \
             <a href=\"{}\">wav</a></td>",
            esc(path),
            esc(path)
        ),
        None => "<td>—</td>".to_owned(),
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes `text` and sets its `backticked` spans as code (host names, commands).
fn with_code(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", esc(part));
        } else {
            out.push_str(&esc(part));
        }
    }
    out
}

fn verdict_word(v: Verdict, attempts: u64) -> &'static str {
    match v {
        _ if attempts == 0 => "NO CALLS",
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Inconclusive => "INCONCLUSIVE",
        Verdict::Invalid => "INVALID",
    }
}

/// A fraction as a percentage with sensible decimals: 0.0713 → "7.13 %", 0.2611 → "26.1 %".
fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p == 0.0 {
        "0 %".to_owned()
    } else if p >= 10.0 {
        format!("{p:.1} %")
    } else {
        format!("{p:.2} %")
    }
}

/// A threshold as written in scenarios: 0.02 → "2 %", 0.025 → "2.5 %".
fn threshold_pct(x: f64) -> String {
    let p = x * 100.0;
    let s = format!("{p:.2}");
    format!("{} %", s.trim_end_matches('0').trim_end_matches('.'))
}

fn ms(us: Option<u64>) -> String {
    match us {
        None => "–".to_owned(),
        Some(us) => {
            let v = us as f64 / 1000.0;
            if v >= 100.0 {
                format!("{v:.0} ms")
            } else if v >= 10.0 {
                format!("{v:.1} ms")
            } else {
                format!("{v:.2} ms")
            }
        }
    }
}

fn mos(centi: Option<u64>) -> String {
    centi.map_or("–".to_owned(), |v| format!("{:.2}", v as f64 / 100.0))
}

fn duration(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.1} s")
    } else if secs < 7200.0 {
        format!("{:.0} min {:.0} s", (secs / 60.0).floor(), secs % 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

fn header(page: &mut Page, file: &SummaryFile, records: &[CallRecord]) {
    let s = &file.summary;
    let out = &mut page.out;
    let _ = writeln!(
        out,
        "<header>\n<p class=\"kicker\">Softphone network test · report</p>\n<h1>{}</h1>",
        esc(&file.scenario)
    );
    let mut facts = Vec::new();
    match s.runs.len() {
        0 => {}
        1 => facts.push(format!(
            "run <code>{}</code>",
            esc(s.runs.first().map_or("", String::as_str))
        )),
        n => facts.push(format!("{n} runs merged")),
    }
    facts.push(format!("{} calls", s.outcomes.attempts()));
    if let (Some(a), Some(b)) = (s.first_start_unix_ms, s.last_end_unix_ms) {
        facts.push(format!(
            "{} – {} UTC ({})",
            utc_datetime(a, ' '),
            &utc_datetime(b, ' ')[11..],
            duration(b.saturating_sub(a) as f64 / 1000.0)
        ));
    }
    let mut sites: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in records {
        sites
            .entry(&r.identity.site)
            .or_default()
            .insert(&r.identity.profile);
    }
    if !sites.is_empty() {
        let list: Vec<String> = sites
            .iter()
            .map(|(site, profiles)| {
                let p: Vec<&str> = profiles.iter().copied().collect();
                format!("{} ({})", esc(site), esc(&p.join(", ")))
            })
            .collect();
        facts.push(format!(
            "{} {}",
            if list.len() == 1 { "site" } else { "sites" },
            list.join(", ")
        ));
    }
    let _ = writeln!(out, "<p class=\"facts\">{}</p>", facts.join(" · "));
    if s.runs.len() > 1 || s.shards.len() > 1 {
        let runs: Vec<String> = s
            .runs
            .iter()
            .map(|r| format!("<code>{}</code>", esc(r)))
            .collect();
        let shards: Vec<String> = s.shards.iter().map(ToString::to_string).collect();
        let declared: BTreeSet<u32> = s.shards.iter().map(|sh| sh.count).collect();
        let missing = match (declared.len(), declared.first()) {
            (1, Some(&count)) if (s.shards.len() as u32) < count => format!(
                " <strong>Only {} of the {count} shards are here:</strong> the figures cover \
                 part of the load.",
                s.shards.len()
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "<p class=\"merged\">Merged report: {} run{} ({}), {} shard{} ({}). Counts and \
             histograms were added exactly, as if one run had placed every call.{missing}</p>",
            s.runs.len(),
            if s.runs.len() == 1 { "" } else { "s" },
            runs.join(", "),
            s.shards.len(),
            if s.shards.len() == 1 { "" } else { "s" },
            shards.join(", ")
        );
    }
    out.push_str("</header>\n");
}

fn verdict_section(page: &mut Page, file: &SummaryFile) {
    let e = &file.error_rate;
    let conf = format!("{:.0} %", e.confidence * 100.0);
    let threshold = threshold_pct(file.threshold);
    let counted = format!(
        "{} of {} calls failed or dropped ({})",
        e.errors,
        e.attempts,
        pct(e.rate)
    );
    let (class, headline, body) = match file.verdict {
        _ if e.attempts == 0 => (
            "unsure",
            "No call was placed: there is nothing to judge.".to_owned(),
            String::new(),
        ),
        Verdict::Pass => (
            "pass",
            "The network carried the calls well enough.".to_owned(),
            format!(
                "{counted}. With {conf} confidence the error rate is at most {}, below the \
                 {threshold} threshold.",
                pct(e.upper)
            ),
        ),
        Verdict::Fail => (
            "fail",
            "The network does not carry calls reliably enough.".to_owned(),
            format!(
                "{counted}. With {conf} confidence the error rate is at least {}, above the \
                 {threshold} threshold.",
                pct(e.lower)
            ),
        ),
        Verdict::Invalid => (
            "invalid",
            "The simulator itself fell behind: this run cannot judge the network.".to_owned(),
            format!(
                "{counted}. Its own components were late (below), so its failures and jitter \
                 may be its own. Place fewer calls at once on this machine, or shard the load \
                 over machines."
            ),
        ),
        Verdict::Inconclusive => {
            let settle = match file.calls_needed {
                Some(n) => format!(
                    " If calls keep failing at this rate, about <strong>{} more calls</strong> \
                     ({n} in all) would settle it: {}.",
                    n.saturating_sub(e.attempts),
                    if e.rate < file.threshold {
                        "a pass"
                    } else {
                        "a fail"
                    }
                ),
                None => " The observed rate equals the threshold: more calls at this rate will \
                          not settle it."
                    .to_owned(),
            };
            (
                "unsure",
                "Not enough calls yet to tell.".to_owned(),
                format!(
                    "{counted}. The {conf} interval, {} – {}, still straddles the {threshold} \
                     threshold.{settle}",
                    pct(e.lower),
                    pct(e.upper)
                ),
            )
        }
    };
    let out = &mut page.out;
    let _ = writeln!(
        out,
        "<section id=\"verdict\" class=\"verdict {class}\">\n\
         <p class=\"word\">{}</p>\n<p class=\"headline\">{headline}</p>\n<p>{body}</p>",
        verdict_word(file.verdict, e.attempts)
    );
    if e.attempts > 0 {
        out.push_str(&gauge(file));
    }
    if file.interrupted {
        out.push_str(
            "<p class=\"note\">The run was stopped before all its calls were placed (or its \
             record file was cut short): the figures cover the calls that ended.</p>\n",
        );
    }
    for warning in file.warnings() {
        let _ = writeln!(out, "<p class=\"note warning\">{}</p>", esc(&warning));
    }
    let spans = &file.own_lateness.spans;
    if !spans.is_empty() {
        let _ = writeln!(
            out,
            "<details class=\"note\"><summary>When the simulator's own components were late \
             ({} stretches)</summary><ul>",
            spans.len()
        );
        for span in spans.iter().take(crate::output::LATE_SPANS_SHOWN) {
            let _ = writeln!(out, "<li>{}</li>", esc(&span.describe()));
        }
        out.push_str("</ul></details>\n");
    }
    let _ = writeln!(
        out,
        "<p class=\"method\">Error rate = (failed + dropped) ÷ calls, with its {conf} Wilson \
         score interval. Pass when the whole interval is below the threshold, fail when it is \
         wholly above, inconclusive otherwise. The vendor's guidance: place more than 200 test \
         calls and treat an error rate above 2 % as a sign of trouble.</p>\n</section>"
    );
}

/// The error rate, its interval and the threshold on one axis: a picture of the verdict.
fn gauge(file: &SummaryFile) -> String {
    let e = &file.error_rate;
    let (w, h, left, right) = (640.0, 66.0, 24.0, 604.0);
    let top = (file.threshold * 2.5).max(e.upper * 1.15).clamp(0.01, 1.0);
    let x = |v: f64| left + (right - left) * (v / top).clamp(0.0, 1.0);
    let color = match file.verdict {
        Verdict::Pass => "#009e73",
        Verdict::Fail => "#d55e00",
        Verdict::Inconclusive => "#b07800",
        Verdict::Invalid => "#6b6b6b",
    };
    let mut svg = format!(
        "<svg class=\"gauge\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"error rate {} \
         with interval {} to {}, threshold {}\">",
        pct(e.rate),
        pct(e.lower),
        pct(e.upper),
        threshold_pct(file.threshold)
    );
    let _ = write!(
        svg,
        "<line x1=\"{left}\" x2=\"{right}\" y1=\"30\" y2=\"30\" stroke=\"#bbb\" \
         stroke-width=\"2\"/>"
    );
    // Ticks at round percentages.
    let step = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25]
        .into_iter()
        .find(|s| top / s <= 6.0)
        .unwrap_or(0.25);
    let mut t = 0.0;
    while t <= top + 1e-9 {
        let _ = write!(
            svg,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"26\" y2=\"34\" stroke=\"#bbb\"/>\
             <text x=\"{0:.1}\" y=\"54\" text-anchor=\"middle\" class=\"tick\">{1}</text>",
            x(t),
            threshold_pct(t)
        );
        t += step;
    }
    let _ = write!(
        svg,
        "<rect x=\"{:.1}\" y=\"22\" width=\"{:.1}\" height=\"16\" rx=\"3\" fill=\"{color}\" \
         fill-opacity=\"0.3\" stroke=\"{color}\"/>\
         <circle cx=\"{:.1}\" cy=\"30\" r=\"6\" fill=\"{color}\"/>",
        x(e.lower),
        (x(e.upper) - x(e.lower)).max(2.0),
        x(e.rate)
    );
    let tx = x(file.threshold);
    let _ = write!(
        svg,
        "<line x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"10\" y2=\"42\" stroke=\"#d55e00\" \
         stroke-width=\"2.5\" stroke-dasharray=\"5 3\"/>\
         <text x=\"{tx:.1}\" y=\"11\" text-anchor=\"{}\" class=\"tick thr\">threshold {}</text>",
        // Keep the label inside the picture when the threshold sits near an end.
        if tx > right - 50.0 {
            "end"
        } else if tx < left + 50.0 {
            "start"
        } else {
            "middle"
        },
        threshold_pct(file.threshold)
    );
    svg.push_str("</svg>\n");
    svg
}

fn merged(a: &Distribution, b: &Distribution) -> Distribution {
    let mut m = a.clone();
    // Both come from one summary, same unit: merging cannot fail; keep `a` if it did.
    if m.merge(b).is_err() {
        return a.clone();
    }
    m
}

fn key_figures(page: &mut Page, file: &SummaryFile, records: &[CallRecord]) {
    let s = &file.summary;
    let (up, down) = (&s.agent_to_anchor, &s.anchor_to_agent);
    let first = s.setup.get(&SetupPhase::FirstRtp);
    let both_mos = merged(&up.mos, &down.mos);
    let expected = up.packets_expected + down.packets_expected;
    let lost = up.packets_lost + down.packets_lost;
    let late = up.late_lost + down.late_lost;
    let worst = |f: &dyn Fn(&crate::summary::DirectionSummary) -> Option<u64>| f(up).max(f(down));
    let mut tiles: Vec<(String, String, String)> = vec![
        (
            "calls".into(),
            s.outcomes.attempts().to_string(),
            format!("{} completed", s.outcomes.completed),
        ),
        (
            "failed · dropped".into(),
            format!("{} · {}", s.outcomes.failed, s.outcomes.dropped),
            if s.failures.is_empty() {
                "no failure".into()
            } else {
                format!(
                    "{} failure class{}",
                    s.failures.len(),
                    if s.failures.len() == 1 { "" } else { "es" }
                )
            },
        ),
        (
            "time to first audio".into(),
            ms(first.and_then(|d| d.quantile(0.5))),
            match first.and_then(|d| d.quantile(0.95)) {
                Some(p95) => format!("median · p95 {}", ms(Some(p95))),
                None => "no call got audio".into(),
            },
        ),
        (
            "MOS".into(),
            mos(both_mos.quantile(0.5)),
            match both_mos.quantile(0.05) {
                Some(p5) => format!("median · p5 {}", mos(Some(p5))),
                None => "no audio".into(),
            },
        ),
        (
            "network loss".into(),
            if expected == 0 {
                "–".into()
            } else {
                pct(lost as f64 / expected as f64)
            },
            if expected == 0 {
                "no media".into()
            } else {
                format!(
                    "+ {} late (jitter buffer)",
                    pct(late as f64 / expected as f64)
                )
            },
        ),
        (
            "jitter".into(),
            ms(worst(&|d| d.jitter.quantile(0.95))),
            if up.jitter.is_empty() && down.jitter.is_empty() {
                "no audio".into()
            } else {
                "p95, worse direction".into()
            },
        ),
        (
            "one-way delay".into(),
            ms(worst(&|d| d.one_way_delay.quantile(0.95))),
            if up.one_way_delay.is_empty() && down.one_way_delay.is_empty() {
                "no audio".into()
            } else {
                "p95, worse direction".into()
            },
        ),
    ];
    let sites: BTreeSet<&str> = records.iter().map(|r| r.identity.site.as_str()).collect();
    // How the agents reached the relay: a fallback to TCP or TLS is worth seeing at once.
    let mut relays: BTreeMap<&str, u64> = BTreeMap::new();
    for t in records.iter().filter_map(|r| r.relay_transport) {
        *relays.entry(t.as_str()).or_default() += 1;
    }
    let relays: Vec<String> = relays
        .iter()
        .map(|(t, n)| format!("{n} over {t}"))
        .collect();
    tiles.push((
        "sites".into(),
        sites.len().to_string(),
        format!(
            "{} call kind{}{}",
            s.by_kind.len(),
            if s.by_kind.len() == 1 { "" } else { "s" },
            if relays.is_empty() {
                String::new()
            } else {
                format!(" · TURN {}", relays.join(", "))
            }
        ),
    ));
    if let Some(tile) = ice_tile(records) {
        tiles.push(tile);
    }
    let out = &mut page.out;
    out.push_str("<section class=\"tiles\" aria-label=\"key figures\">\n");
    for (k, v, sub) in tiles {
        let _ = writeln!(
            out,
            "<div class=\"tile\"><div class=\"k\">{k}</div><div class=\"v\">{v}</div>\
             <div class=\"sub\">{}</div></div>",
            esc(&sub)
        );
    }
    out.push_str("</section>\n");
}

/// ICE paths lost mid-call and the restarts that brought them back (the CCP's session-report
/// figures), when any call lost its path: restarts that succeeded of those attempted, and how
/// long the path took to come back after `disconnected`.
fn ice_tile(records: &[CallRecord]) -> Option<(String, String, String)> {
    let lost: u64 = records
        .iter()
        .map(|r| u64::from(r.ice.connections_lost))
        .sum();
    if lost == 0 {
        return None;
    }
    let attempts: u64 = records
        .iter()
        .map(|r| u64::from(r.ice.restart_attempts))
        .sum();
    let successes: u64 = records
        .iter()
        .map(|r| u64::from(r.ice.restart_successes))
        .sum();
    let mut back: Vec<u64> = records.iter().filter_map(|r| r.ice.recovered_ms).collect();
    back.sort_unstable();
    let secs = |ms: u64| format!("{:.1} s", ms as f64 / 1000.0);
    let recovered = match (back.get(back.len() / 2), back.last()) {
        (Some(&p50), Some(&max)) => {
            format!(" · back in {} (median), {} at most", secs(p50), secs(max))
        }
        _ => String::new(),
    };
    Some((
        "ICE restarts".into(),
        format!("{successes} of {attempts}"),
        format!("succeeded · path lost {lost}×{recovered}"),
    ))
}

/// Failed calls grouped by their likely cause.
struct Problem<'a> {
    diagnosis: Diagnosis,
    calls: Vec<usize>,
    classes: BTreeSet<FailureClass>,
    sites: BTreeMap<&'a str, u64>,
    ccp_messages: BTreeSet<&'a str>,
}

fn problems(page: &mut Page, file: &SummaryFile, records: &[CallRecord]) {
    let mut groups: BTreeMap<&'static str, Problem<'_>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let Some(f) = &r.failure else { continue };
        let d = diagnose(f.class, &f.detail);
        let p = groups.entry(d.cause).or_insert_with(|| Problem {
            diagnosis: d,
            calls: Vec::new(),
            classes: BTreeSet::new(),
            sites: BTreeMap::new(),
            ccp_messages: BTreeSet::new(),
        });
        p.calls.push(i);
        p.classes.insert(f.class);
        *p.sites.entry(&r.identity.site).or_default() += 1;
        if let Some(m) = &f.ccp_message {
            p.ccp_messages.insert(m);
        }
    }
    let mut groups: Vec<Problem<'_>> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        b.calls
            .len()
            .cmp(&a.calls.len())
            .then(a.diagnosis.cause.cmp(b.diagnosis.cause))
    });
    let attempts = file.error_rate.attempts.max(1) as f64;
    page.out
        .push_str("<section id=\"problems\">\n<h2>What went wrong, and what to change</h2>\n");
    if groups.is_empty() {
        page.out.push_str(
            "<p>No call failed or dropped. Quality figures below show how well the calls \
             sounded.</p>\n</section>\n",
        );
        return;
    }
    let _ = writeln!(
        page.out,
        "<p>The failed and dropped calls, grouped by their most likely cause (from the failure \
         class the softphone reported and what it saw), largest first. Causes and remedies \
         follow Amazon Connect's network guide; <code>{{region}}</code> stands for the Region \
         of your instance.</p>"
    );
    for p in &groups {
        let d = &p.diagnosis;
        let classes: Vec<String> = p
            .classes
            .iter()
            .map(|c| format!("<code>{c}</code>"))
            .collect();
        let sites: Vec<String> = p
            .sites
            .iter()
            .map(|(s, n)| format!("{} ({n})", esc(s)))
            .collect();
        let examples: Vec<String> = p
            .calls
            .iter()
            .take(3)
            .map(|&i| page.call_link(i, &records[i]))
            .collect();
        let out = &mut page.out;
        let _ = writeln!(
            out,
            "<article class=\"problem\">\n<h3>{} <span class=\"count\">{} call{} · {} of all</span></h3>\n\
             <p class=\"meta\">{} {} · {} {} · e.g. {}</p>",
            esc(d.cause),
            p.calls.len(),
            if p.calls.len() == 1 { "" } else { "s" },
            pct(p.calls.len() as f64 / attempts),
            if p.classes.len() == 1 {
                "class"
            } else {
                "classes"
            },
            classes.join(", "),
            if p.sites.len() == 1 { "site" } else { "sites" },
            sites.join(", "),
            examples.join(", ")
        );
        if p.ccp_messages.is_empty() {
            out.push_str(
                "<p class=\"ccp none\">The softphone shows the agent no specific message for \
                 this.</p>\n",
            );
        }
        for m in &p.ccp_messages {
            let _ = writeln!(
                out,
                "<blockquote class=\"ccp\"><span>The agent's softphone says</span>{}</blockquote>",
                esc(m)
            );
        }
        let _ = writeln!(
            out,
            "<p><strong>Likely cause.</strong> {}</p>\n<p><strong>What to change.</strong> {}</p>",
            with_code(d.explanation),
            with_code(d.remedy)
        );
        if !d.references.is_empty() {
            let refs: Vec<String> = d
                .references
                .iter()
                .map(|r| format!("<a href=\"{}\">{}</a>", esc(r.url), esc(r.title)))
                .collect();
            let _ = writeln!(
                out,
                "<p class=\"ref\">Amazon Connect Administrator Guide: {}</p>",
                refs.join("; ")
            );
        }
        out.push_str("</article>\n");
    }
    page.out.push_str("</section>\n");
}

fn charts_section(page: &mut Page, charts: &[Chart]) {
    if charts.is_empty() {
        return;
    }
    let out = &mut page.out;
    out.push_str("<section id=\"charts\">\n<h2>Charts</h2>\n");
    for c in charts {
        let svg = c.svg.replacen(
            "<svg ",
            &format!(
                "<svg class=\"chart\" role=\"img\" aria-label=\"{}\" ",
                esc(&c.title)
            ),
            1,
        );
        let _ = writeln!(
            out,
            "<figure id=\"chart-{}\" class=\"chart\">\n{}\n<figcaption>{} \
             <span class=\"file\">charts/{}.svg</span></figcaption>\n</figure>",
            c.id,
            svg.trim(),
            esc(&c.caption),
            c.id
        );
    }
    out.push_str("</section>\n");
}

fn sites_section(page: &mut Page, file: &SummaryFile, records: &[CallRecord]) {
    let rows: Vec<SiteRow> = charts::site_rows(records, file.error_rate.confidence);
    if rows.len() < 2 {
        return;
    }
    let out = &mut page.out;
    let _ = writeln!(
        out,
        "<section id=\"sites\">\n<h2>Sites</h2>\n<table>\n<thead><tr><th>site</th><th>profile</th>\
         <th class=\"num\">calls</th><th class=\"num\">errors</th><th class=\"num\">error rate</th>\
         <th class=\"num\">{:.0} % interval</th><th>verdict</th><th class=\"num\">MOS p50</th>\
         <th class=\"num\">first audio p95</th></tr></thead>\n<tbody>",
        file.error_rate.confidence * 100.0
    );
    for r in rows {
        let e = &r.error_rate;
        let v = e.verdict(file.threshold);
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{} – {}</td><td class=\"v-{}\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&r.site),
            esc(&r.profile),
            e.attempts,
            e.errors,
            pct(e.rate),
            pct(e.lower),
            pct(e.upper),
            v.as_str(),
            v.as_str(),
            r.mos.map_or("–".into(), |m| format!("{:.2}", m.1)),
            r.first_audio_ms
                .map_or("–".into(), |(_, p95)| format!("{p95:.0} ms")),
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn tables(page: &mut Page, file: &SummaryFile) {
    let s = &file.summary;
    let out = &mut page.out;
    out.push_str(
        "<section id=\"figures\">\n<h2>Figures</h2>\n<h3>Call setup</h3>\n<table>\n<thead><tr>\
         <th>phase</th><th class=\"num\">calls</th><th class=\"num\">p50</th>\
         <th class=\"num\">p95</th><th class=\"num\">p99</th><th class=\"num\">max</th></tr></thead>\n<tbody>\n",
    );
    for phase in SetupPhase::ALL {
        let Some(d) = s.setup.get(&phase) else {
            continue;
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            phase_label(phase),
            d.len(),
            ms(d.quantile(0.5)),
            ms(d.quantile(0.95)),
            ms(d.quantile(0.99)),
            ms(d.max())
        );
    }
    out.push_str(
        "</tbody>\n</table>\n<h3>Media</h3>\n<table>\n<thead><tr><th>direction</th>\
         <th class=\"num\">streams</th><th class=\"num\">loss</th><th class=\"num\">late loss</th>\
         <th class=\"num\">jitter p50 · p95 · p99</th><th class=\"num\">one-way delay p50 · p95 · p99</th>\
         <th class=\"num\">MOS p5 · p50</th></tr></thead>\n<tbody>\n",
    );
    for (dir, d) in [
        (DIRECTIONS[0], &s.agent_to_anchor),
        (DIRECTIONS[1], &s.anchor_to_agent),
    ] {
        let three = |x: &Distribution| {
            format!(
                "{} · {} · {}",
                ms(x.quantile(0.5)),
                ms(x.quantile(0.95)),
                ms(x.quantile(0.99))
            )
        };
        let late = if d.packets_expected == 0 {
            "–".to_owned()
        } else {
            pct(d.late_lost as f64 / d.packets_expected as f64)
        };
        let _ = writeln!(
            out,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{late}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{} · {}</td></tr>",
            dir.css(),
            dir.name,
            d.streams,
            if d.packets_expected == 0 {
                "–".to_owned()
            } else {
                pct(d.loss_percent() / 100.0)
            },
            three(&d.jitter),
            three(&d.one_way_delay),
            mos(d.mos.quantile(0.05)),
            mos(d.mos.quantile(0.5))
        );
    }
    out.push_str("</tbody>\n</table>\n");
    components_table(out, &file.components);
    out.push_str("</section>\n");
}

/// What the simulator's own components counted, non-zero counters only (folded: it is for
/// the engineer who wants to know why, not for the meeting).
fn components_table(out: &mut String, components: &crate::Components) {
    if components.is_empty() {
        return;
    }
    out.push_str(
        "<h3>The simulator's components</h3>\n<details class=\"fold\"><summary>What the TURN \
         server, the signalling endpoint, the media anchor and each emulated path counted\
         </summary>\n<table>\n<thead><tr><th>component</th><th>counter</th>\
         <th class=\"num\">count</th></tr></thead>\n<tbody>\n",
    );
    for (name, counters) in components.iter() {
        // The component's name on its first row only: the table reads as one group each.
        for (i, (counter, value)) in counters.iter().filter(|(_, v)| **v > 0).enumerate() {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td><td class=\"num\">{value}</td></tr>",
                if i == 0 { esc(name) } else { String::new() },
                esc(counter)
            );
        }
    }
    out.push_str("</tbody>\n</table>\n</details>\n");
}

/// How the call's media reached the TURN server (`udp`, `tcp`, `tls`): a relay over TCP or TLS
/// explains more delay and jitter, and a longer setup after the UDP attempt timed out.
fn relay(r: &CallRecord) -> &'static str {
    r.relay_transport.map_or("–", crate::RelayTransport::as_str)
}

fn seconds_in(records: &[CallRecord], r: &CallRecord) -> String {
    let t0 = records
        .iter()
        .map(|r| r.started_unix_ms)
        .min()
        .unwrap_or(r.started_unix_ms);
    format!("{:.1} s", (r.started_unix_ms - t0) as f64 / 1000.0)
}

fn outliers(page: &mut Page, records: &[CallRecord]) {
    if records.is_empty() {
        return;
    }
    page.out.push_str(
        "<section id=\"calls\">\n<h2>Calls worth a look</h2>\n<p>Each call id links to its \
         record (its line of <code>calls.jsonl</code>) at the end of this report.</p>\n",
    );
    let mut failed: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].failure.is_some())
        .collect();
    failed.sort_by_key(|&i| (records[i].started_unix_ms, i));
    if !failed.is_empty() {
        let fold = failed.len() > FAILED_OPEN;
        let _ = writeln!(
            page.out,
            "<h3>Every failed or dropped call ({})</h3>",
            failed.len()
        );
        if fold {
            let _ = writeln!(
                page.out,
                "<details class=\"fold\"><summary>Show all {} calls</summary>",
                failed.len()
            );
        }
        let heard = failed.iter().any(|&i| records[i].recording.is_some());
        let _ = writeln!(
            page.out,
            "<table>\n<thead><tr><th>call</th><th>site</th><th>kind</th><th class=\"num\">started</th>\
             <th>outcome</th><th>class</th><th>what was seen</th>{}</tr></thead>\n<tbody>",
            if heard { "<th>recording</th>" } else { "" }
        );
        for &i in &failed {
            let r = &records[i];
            let link = page.call_link(i, r);
            let (class, detail) = r
                .failure
                .as_ref()
                .map_or(("", ""), |f| (f.class.as_str(), f.detail.as_str()));
            let _ = writeln!(
                page.out,
                "<tr><td>{link}</td><td class=\"site\">{}</td><td>{}</td><td class=\"num\">{}</td>\
                 <td>{}</td><td><code>{class}</code></td><td class=\"detail\">{}</td>{}</tr>",
                esc(&r.identity.site),
                r.identity.kind.as_str(),
                seconds_in(records, r),
                r.outcome.as_str(),
                esc(detail),
                if heard { listen(r) } else { String::new() }
            );
        }
        page.out.push_str("</tbody>\n</table>\n");
        if fold {
            page.out.push_str("</details>\n");
        }
    }
    // Worst MOS: the worse direction of each call with media.
    let mut by_mos: Vec<(usize, f64)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.directions()
                .map(|m| m.mos)
                .min_by(f64::total_cmp)
                .map(|m| (i, m))
        })
        .collect();
    by_mos.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    if !by_mos.is_empty() {
        let heard = by_mos
            .iter()
            .take(WORST)
            .any(|&(i, _)| records[i].recording.is_some());
        let _ = writeln!(
            page.out,
            "<h3>Worst MOS ({} of {} calls with audio)</h3>\n{}<table>\n<thead><tr><th>call</th>\
             <th>site</th><th>kind</th><th>relay</th><th class=\"num\">started</th><th class=\"num\">MOS</th>\
             <th class=\"num\">loss</th><th class=\"num\">jitter p95</th>\
             <th class=\"num\">delay p50</th><th>worse direction</th>{}</tr></thead>\n<tbody>",
            by_mos.len().min(WORST),
            by_mos.len(),
            if heard {
                "<p>Listen to what each call sounded like at the anchor: the customer on the \
                 left, the agent on the right, loss and late packets concealed where they \
                 happened.</p>\n"
            } else {
                ""
            },
            if heard { "<th>recording</th>" } else { "" }
        );
        for &(i, _) in by_mos.iter().take(WORST) {
            let r = &records[i];
            let (k, m) = [&r.agent_to_anchor, &r.anchor_to_agent]
                .into_iter()
                .enumerate()
                .filter_map(|(k, m)| m.as_ref().map(|m| (k, m)))
                .min_by(|a, b| a.1.mos.total_cmp(&b.1.mos))
                .expect("records in by_mos have a direction");
            let link = page.call_link(i, r);
            let _ = writeln!(
                page.out,
                "<tr><td>{link}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{:.2}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td>{}</td>{}</tr>",
                esc(&r.identity.site),
                r.identity.kind.as_str(),
                relay(r),
                seconds_in(records, r),
                m.mos,
                pct(m.loss_percent() / 100.0),
                ms(m.jitter.quantile(0.95)),
                ms(m.one_way_delay.quantile(0.5)),
                DIRECTIONS[k].name,
                if heard { listen(r) } else { String::new() }
            );
        }
        page.out.push_str("</tbody>\n</table>\n");
    }
    // Longest setup: call start → first audio, with the slowest phase named.
    let mut by_setup: Vec<(usize, u64)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.milestones
                .phase_us(SetupPhase::FirstRtp)
                .map(|us| (i, us))
        })
        .collect();
    by_setup.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if !by_setup.is_empty() {
        let _ = writeln!(
            page.out,
            "<h3>Longest setup ({} of {} calls with audio)</h3>\n<table>\n<thead><tr><th>call</th>\
             <th>site</th><th>kind</th><th>relay</th><th class=\"num\">started</th>\
             <th class=\"num\">to first audio</th><th>slowest phase</th></tr></thead>\n<tbody>",
            by_setup.len().min(WORST),
            by_setup.len()
        );
        for &(i, us) in by_setup.iter().take(WORST) {
            let r = &records[i];
            let slowest = SetupPhase::ALL
                .into_iter()
                .filter(|p| *p != SetupPhase::FirstRtp)
                .filter_map(|p| r.milestones.phase_us(p).map(|d| (p, d)))
                .max_by_key(|(_, d)| *d)
                .map_or("–".to_owned(), |(p, d)| {
                    format!("{} ({})", phase_label(p), ms(Some(d)))
                });
            let link = page.call_link(i, r);
            let _ = writeln!(
                page.out,
                "<tr><td>{link}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&r.identity.site),
                r.identity.kind.as_str(),
                relay(r),
                seconds_in(records, r),
                ms(Some(us)),
                esc(&slowest)
            );
        }
        page.out.push_str("</tbody>\n</table>\n");
    }
    page.out.push_str("</section>\n");
}

fn call_records(page: &mut Page, records: &[CallRecord]) {
    if page.linked.is_empty() {
        return;
    }
    let out = &mut page.out;
    let _ = writeln!(
        out,
        "<section id=\"records\">\n<h2>Call records</h2>\n<p>The record of every call named \
         above, as in <code>calls.jsonl</code> (one JSON object per line; \
         distributions are base64 HdrHistograms). Open one to read it; \
         <code>sed -n 'Np' calls.jsonl</code> prints line N.</p>"
    );
    for &i in &page.linked {
        let r = &records[i];
        let json = serde_json::to_string(r).unwrap_or_else(|e| format!("unserialisable: {e}"));
        let _ = writeln!(
            out,
            "<details class=\"record\" id=\"{}\"><summary><code>{}</code> — line {} of \
             calls.jsonl · {} · {}</summary><pre>{}</pre></details>",
            anchor(&r.identity.call),
            esc(&r.identity.call),
            i + 1,
            esc(&r.identity.site),
            r.outcome.as_str(),
            esc(&json)
        );
    }
    out.push_str("</section>\n");
}

fn footer(page: &mut Page, file: &SummaryFile, records: &[CallRecord], charts: &[Chart]) {
    let out = &mut page.out;
    let _ = writeln!(
        out,
        "<footer>\n<h2>How to read the figures</h2>\n<ul>\n\
         <li><strong>Error rate</strong>: (failed + dropped) ÷ calls. Failed calls never \
         connected; dropped calls connected, then lost their audio. The Wilson score interval \
         ({:.0} %) is the range the true rate lies in given this many calls.</li>\n\
         <li><strong>Jitter</strong>: RFC 3550 interarrival jitter, sampled once a second per \
         stream; not the jitter-buffer delay.</li>\n\
         <li><strong>One-way delay</strong>: network delay of each packet, from the send time \
         it carries.</li>\n\
         <li><strong>Loss</strong>: packets missing from the RTP sequence; late loss: packets \
         that arrived too late for the jitter buffer.</li>\n\
         <li><strong>MOS</strong>: ITU-T G.107 E-model estimate of conversational quality from \
         delay, loss and burstiness (4.3 and above: very satisfied; below 3.6: many users \
         dissatisfied).</li>\n</ul>\n\
         <p class=\"files\">Files beside this report: <code>summary.json</code> (schema \
         version {}), <code>calls.jsonl</code> ({} records), <code>calls.csv</code>, \
         <code>junit.xml</code>, <code>summary.md</code>{}. Generated by softphone-sim \
         {}.</p>\n</footer>",
        file.error_rate.confidence * 100.0,
        file.schema_version,
        records.len(),
        if charts.is_empty() {
            String::new()
        } else {
            format!(" and {} charts in <code>charts/</code>", charts.len())
        },
        env!("CARGO_PKG_VERSION")
    );
}

const CSS: &str = r#"
:root { --ink:#1d1d1f; --muted:#5f6368; --line:#dfe1e5; --panel:#f5f6f8; --pass:#009e73;
  --fail:#d55e00; --unsure:#b07800; --link:#0064a8; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  "Liberation Sans", "DejaVu Sans", sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 28px 32px 48px; }
a { color: var(--link); }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono",
  "DejaVu Sans Mono", monospace; font-size: 0.9em; }
h1 { font-size: 30px; line-height: 1.2; margin: 2px 0 6px; }
h2 { font-size: 21px; margin: 36px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
.kicker { margin: 0; text-transform: uppercase; letter-spacing: .09em; font-size: 12px;
  color: var(--muted); font-weight: 600; }
.facts { margin: 0; color: var(--muted); }
.merged { background: var(--panel); padding: 8px 12px; border-radius: 6px; }
.verdict { margin: 22px 0 18px; padding: 16px 22px 12px; border-radius: 8px;
  border-left: 10px solid var(--unsure); background: #fdf8ec; }
.verdict.pass { border-color: var(--pass); background: #eef8f4; }
.verdict.fail { border-color: var(--fail); background: #fcf1ea; }
.verdict.invalid { border-color: #6b6b6b; background: #f2f2f2; }
.verdict.invalid .word { color: #4a4a4a; }
.verdict .word { margin: 0; font-size: 32px; font-weight: 800; letter-spacing: .05em;
  line-height: 1.1; }
.verdict.pass .word { color: #00785a; } .verdict.fail .word { color: #b54d00; }
.verdict.unsure .word { color: #8a5e00; }
.verdict .headline { margin: 4px 0 2px; font-size: 19px; font-weight: 600; }
.verdict p { margin: 6px 0; }
.verdict .method, .verdict .note { font-size: 13px; color: var(--muted); }
.verdict .note.warning { color: #8a4b00; font-weight: 600; }
.gauge { display: block; width: 100%; max-width: 640px; height: auto; margin: 8px 0 2px; }
.gauge .tick { font-size: 12px; fill: #555; } .gauge .thr { fill: #b54d00; font-weight: 600; }
.tiles { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; margin: 0 0 8px; }
.tile { border: 1px solid var(--line); border-radius: 8px; padding: 9px 12px 8px; }
.tile .k { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); }
.tile .v { font-size: 23px; font-weight: 700; font-variant-numeric: tabular-nums; }
.tile .sub { font-size: 13px; color: var(--muted); }
.problem { border: 1px solid var(--line); border-left: 5px solid var(--fail); border-radius: 8px;
  padding: 4px 18px 8px; margin: 14px 0; break-inside: avoid; }
.problem h3 { margin: 12px 0 4px; font-size: 17px; }
.problem .count { font-weight: 400; color: var(--muted); font-size: 14px; margin-left: 6px; }
.problem .meta { margin: 0 0 8px; font-size: 13px; color: var(--muted); }
.problem p { margin: 6px 0; }
.ccp { margin: 8px 0; padding: 8px 12px; background: var(--panel); border-radius: 6px;
  font-family: ui-monospace, Menlo, Consolas, "Liberation Mono", "DejaVu Sans Mono", monospace;
  font-size: 13px; }
.ccp span { display: block; font-family: system-ui, sans-serif; font-size: 11px;
  text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin-bottom: 2px; }
.ccp.none { font-family: inherit; color: var(--muted); }
.ref { font-size: 13px; color: var(--muted); }
figure.chart { margin: 22px 0 30px; break-inside: avoid; }
figure.chart svg { display: block; width: 100%; height: auto; border: 1px solid var(--line);
  border-radius: 6px; }
figcaption { font-size: 14px; color: #3c4043; margin-top: 6px; }
figcaption .file { color: var(--muted); font-size: 12px; margin-left: 4px; }
table { width: 100%; border-collapse: collapse; font-size: 14px; font-variant-numeric: tabular-nums;
  margin: 6px 0 12px; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
  font-weight: 600; border-bottom: 2px solid var(--line); }
.num { text-align: right; white-space: nowrap; }
td.detail { color: #3c4043; font-size: 13px; }
td.listen { white-space: nowrap; }
td.listen audio { width: 11rem; height: 1.9rem; vertical-align: middle; }
td.site { white-space: nowrap; }
td.v-pass { color: #00785a; font-weight: 600; } td.v-fail { color: #b54d00; font-weight: 600; }
td.v-inconclusive { color: #8a5e00; font-weight: 600; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
details.record { border-bottom: 1px solid var(--line); padding: 4px 0; }
details.record summary { cursor: pointer; font-size: 14px; }
details.record pre { white-space: pre-wrap; word-break: break-all; background: var(--panel);
  padding: 10px; border-radius: 6px; font-size: 12px; }
details:target { background: #eef5fb; outline: 2px solid var(--link); }
details.fold summary { cursor: pointer; color: var(--link); }
footer { margin-top: 40px; color: #3c4043; font-size: 14px; }
footer .files { color: var(--muted); }
.compare { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
.compare .verdict { margin: 0; }
.compare-summary { font-size: 17px; margin: 14px 0; }
@media (max-width: 760px) {
  .tiles { grid-template-columns: repeat(2, 1fr); } main { padding: 18px; }
}
@page { size: A4; margin: 14mm; }
@media print {
  * { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
  body { font-size: 10.5pt; } main { max-width: none; padding: 0; }
  .verdict, .tile, .problem, figure.chart, tr { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
  a { color: inherit; text-decoration: none; }
  #records { display: none; }
}
"#;

/// `sweep.html`: a capacity sweep's answer, its points and charts
/// ([`crate::capacity::SweepFile`]).
pub fn sweep_html(sweep: &crate::capacity::SweepFile, charts: &[Chart]) -> String {
    use crate::capacity::{PointStatus, bandwidth_arithmetic};
    let mut out = page_head(
        &format!("{} — capacity sweep of {}", sweep.scenario, sweep.field),
        "capacity sweep",
        &format!("{}: {}", sweep.scenario, sweep.field),
    );
    let class = if sweep.knee.is_some() {
        "pass"
    } else {
        "unsure"
    };
    let _ = writeln!(
        out,
        "<section id=\"verdict\" class=\"verdict {class}\">\n<p class=\"headline\">{}</p>\n\
         <p>{} points of {} calls each, threshold {}, MOS p5 target {}. A value carries calls \
         when its error rate's whole interval lies below the threshold and its MOS p5 holds; \
         the knee is the last such value before the first that does not.</p>\n</section>",
        esc(&sweep.answer),
        sweep.points.len(),
        sweep.calls_per_point,
        threshold_pct(sweep.threshold),
        sweep.mos_target
    );
    let concurrency = sweep.field.ends_with("concurrency");
    out.push_str(
        "<section id=\"points\">\n<h2>Points</h2>\n<table>\n<thead><tr><th>value</th>\
         <th>carries calls?</th><th>error rate (interval)</th><th>MOS p5</th>\
         <th>set-up p95</th><th>per call, each way</th>",
    );
    if concurrency {
        out.push_str("<th>all calls, each way</th>");
    }
    out.push_str("<th>run</th></tr></thead>\n<tbody>\n");
    for p in &sweep.points {
        let status = match p.status {
            PointStatus::Good => "yes",
            PointStatus::Bad => "no",
            PointStatus::Unsure => "too few calls to tell",
            PointStatus::Invalid => "invalid: the simulator fell behind",
        };
        let e = &p.error_rate;
        let kbit = p
            .bits_per_second_per_call
            .map_or("–".to_owned(), |b| format!("{:.1} kbit/s", b / 1e3));
        let _ = write!(
            out,
            "<tr><td>{}{}</td><td>{status}</td><td>{} ({} – {})</td><td>{}</td><td>{}</td>\
             <td>{kbit}</td>",
            esc(&p.written),
            if p.refined { " (bisection)" } else { "" },
            pct(e.rate),
            pct(e.lower),
            pct(e.upper),
            p.mos_p5.map_or("–".to_owned(), |m| format!("{m:.2}")),
            p.setup_p95_ms
                .map_or("–".to_owned(), |m| format!("{m:.0} ms")),
        );
        if concurrency {
            let total = p.bits_per_second_per_call.map_or("–".to_owned(), |b| {
                format!("{:.2} Mbit/s", b * p.value / 1e6)
            });
            let _ = write!(out, "<td>{total}</td>");
        }
        let _ = writeln!(
            out,
            "<td><a href=\"{0}/report.html\">{0}</a></td></tr>",
            esc(&p.run)
        );
    }
    out.push_str("</tbody>\n</table>\n");
    let at = sweep
        .knee
        .as_ref()
        .and_then(|k| sweep.points.iter().find(|p| p.value == k.value))
        .or(sweep.points.first());
    if let Some(text) = at.and_then(bandwidth_arithmetic) {
        let _ = writeln!(
            out,
            "<p class=\"method\">Bandwidth at {}: {}.</p>",
            esc(&at.map_or(String::new(), |p| p.written.clone())),
            esc(&text)
        );
    }
    out.push_str("</section>\n");
    let mut page = Page::default();
    charts_section(&mut page, charts);
    out.push_str(&page.out);
    out.push_str("</main>\n</body>\n</html>\n");
    out
}
