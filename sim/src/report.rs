//! `sim report`: re-render a run folder from its call records, merge the folders of several
//! runs or shards into one (counts and histograms add exactly), and compare two runs.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use reports::charts::charts;
use reports::html::{comparison_html, report_html};
use reports::output::{SummaryFile, calls_csv, junit_xml, summary_md};
use reports::record::{DamagedLine, RecordsError, read_records};
use reports::{CallRecord, ProportionTest, RunSummary};

/// A run folder as read back.
#[derive(Debug)]
pub struct RunFolder {
    /// Where it is.
    pub dir: PathBuf,
    /// Its `summary.json`.
    pub summary: SummaryFile,
    /// Its call records.
    pub records: Vec<CallRecord>,
    /// The last line of `calls.jsonl` when it was cut off (the run was killed).
    pub truncated: Option<DamagedLine>,
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The call records could not be read.
    #[error(transparent)]
    Records(#[from] RecordsError),
    /// The runs cannot be merged.
    #[error("{0}")]
    Mismatch(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::File {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Reads a run folder.
pub fn load(dir: &Path) -> Result<RunFolder, ReportError> {
    let path = dir.join("summary.json");
    let text = fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
    let summary: SummaryFile = serde_json::from_str(&text).map_err(|e| file_err(&path, e))?;
    let file = read_records(&dir.join("calls.jsonl"))?;
    Ok(RunFolder {
        dir: dir.to_owned(),
        summary,
        records: file.records,
        truncated: file.truncated,
    })
}

/// Writes a run folder's derived files (`summary.json`, `calls.csv`, `junit.xml`,
/// `summary.md`, `report.html` and `charts/*.svg`) for `records` into `out`.
///
/// `records` must be in `calls.jsonl` order: the report names each call's line.
pub fn write(out: &Path, records: &[CallRecord], file: &SummaryFile) -> Result<(), ReportError> {
    fs::create_dir_all(out).map_err(|e| file_err(out, e))?;
    let put = |name: &str, contents: &str| {
        fs::write(out.join(name), contents).map_err(|e| file_err(&out.join(name), e))
    };
    put(
        "summary.json",
        &serde_json::to_string_pretty(file).map_err(|e| file_err(out, e))?,
    )?;
    put("calls.csv", &calls_csv(records))?;
    put("junit.xml", &junit_xml(&file.scenario, records))?;
    put("summary.md", &summary_md(file))?;
    let charts = charts(file, records).map_err(|e| file_err(&out.join("charts"), e))?;
    write_charts(&out.join("charts"), &charts)?;
    put("report.html", &report_html(file, records, &charts))
}

/// Writes each chart as `<dir>/<id>.svg`, and removes the SVG files of charts this report no
/// longer has (a re-render after a change must not leave a stale chart beside the new ones).
pub(crate) fn write_charts(
    dir: &Path,
    charts: &[reports::charts::Chart],
) -> Result<(), ReportError> {
    fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let keep: Vec<String> = charts.iter().map(|c| format!("{}.svg", c.id)).collect();
    for entry in fs::read_dir(dir).map_err(|e| file_err(dir, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".svg") && !keep.contains(&name) {
            fs::remove_file(entry.path()).map_err(|e| file_err(&entry.path(), e))?;
        }
    }
    for c in charts {
        let path = dir.join(format!("{}.svg", c.id));
        fs::write(&path, &c.svg).map_err(|e| file_err(&path, e))?;
    }
    Ok(())
}

/// Re-renders a run folder from its `calls.jsonl` (e.g. after a killed run, or with a newer
/// version of the tool), keeping its scenario, threshold and confidence.
pub fn render(dir: &Path, out: &Path) -> Result<SummaryFile, ReportError> {
    let run = load(dir)?;
    let summary =
        RunSummary::from_records(&run.records).map_err(|e| ReportError::Mismatch(e.to_string()))?;
    let s = &run.summary;
    let mut file = SummaryFile::new(
        &s.scenario,
        summary,
        s.threshold,
        s.error_rate.confidence,
        s.interrupted || run.truncated.is_some(),
    );
    // The components' counters and lateness were taken from the running simulator: no record
    // holds them.
    file.components = s.components.clone();
    file.own_lateness = s.own_lateness.clone();
    file.late_parts = s.late_parts.clone();
    file.settle_verdict();
    write(out, &run.records, &file)?;
    if out != dir {
        copy_records(&run.records, out)?;
    }
    Ok(file)
}

/// Merges the folders of several runs or shards of one scenario into `out`: records concatenate,
/// the summaries add (exactly: the same as summarising all records at once).
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<SummaryFile, ReportError> {
    let runs: Vec<RunFolder> = dirs.iter().map(|d| load(d)).collect::<Result<_, _>>()?;
    let Some(first) = runs.first() else {
        return Err(ReportError::Mismatch("nothing to merge".into()));
    };
    let (threshold, confidence) = (first.summary.threshold, first.summary.error_rate.confidence);
    let mut summary = RunSummary::new();
    let mut records = Vec::new();
    let mut interrupted = false;
    let mut components = reports::Components::new();
    let mut own_lateness = reports::OwnLateness::default();
    let mut late_parts = Vec::new();
    for run in &runs {
        let s = &run.summary;
        if s.threshold != threshold || s.error_rate.confidence != confidence {
            return Err(ReportError::Mismatch(format!(
                "{} uses threshold {} and confidence {}, {} uses {} and {}: merge runs judged alike",
                run.dir.display(),
                s.threshold,
                s.error_rate.confidence,
                first.dir.display(),
                threshold,
                confidence
            )));
        }
        summary
            .merge(&s.summary)
            .map_err(|e| ReportError::Mismatch(e.to_string()))?;
        records.extend(run.records.iter().cloned());
        interrupted |= s.interrupted || run.truncated.is_some();
        components.merge(&s.components);
        own_lateness.merge(&s.own_lateness);
        // A part's late senders would vanish into the histogram of the parts that kept time.
        late_parts.extend(s.late_parts_as(&run.dir.display().to_string()));
    }
    let names: Vec<&str> = summary.scenarios.iter().map(String::as_str).collect();
    let mut file = SummaryFile::new(
        &names.join("+"),
        summary,
        threshold,
        confidence,
        interrupted,
    );
    file.components = components;
    file.own_lateness = own_lateness;
    file.late_parts = late_parts;
    file.settle_verdict();
    write(out, &records, &file)?;
    copy_records(&records, out)?;
    Ok(file)
}

/// Writes `records` as `out`'s `calls.jsonl`, through a temporary file renamed over it, so
/// that a file already there stays whole until the new one is.
pub(crate) fn copy_records(records: &[CallRecord], out: &Path) -> Result<(), ReportError> {
    let path = out.join("calls.jsonl");
    reports::record::rewrite_records(&path, records).map_err(|e| file_err(&path, e))
}

/// Compares run `a` (before) with run `b` (after): error rates with their intervals, whether
/// the difference is significant (pooled two-proportion z-test at 5 %), and the media figures.
pub fn compare(a: &Path, b: &Path) -> Result<String, ReportError> {
    let (ra, rb) = (load(a)?, load(b)?);
    let (ea, eb) = (&ra.summary.error_rate, &rb.summary.error_rate);
    let pct = |x: f64| format!("{:.2} %", x * 100.0);
    let mut out = String::new();
    let _ = writeln!(out, "# {} → {}\n", a.display(), b.display());
    let _ = writeln!(out, "| | before | after |\n|---|---:|---:|");
    let _ = writeln!(out, "| calls | {} | {} |", ea.attempts, eb.attempts);
    let _ = writeln!(out, "| failed + dropped | {} | {} |", ea.errors, eb.errors);
    let _ = writeln!(out, "| error rate | {} | {} |", pct(ea.rate), pct(eb.rate));
    let _ = writeln!(
        out,
        "| {:.0} % interval | {} – {} | {} – {} |",
        ea.confidence * 100.0,
        pct(ea.lower),
        pct(ea.upper),
        pct(eb.lower),
        pct(eb.upper)
    );
    let _ = writeln!(
        out,
        "| verdict | {} | {} |",
        ra.summary.verdict.as_str(),
        rb.summary.verdict.as_str()
    );
    for (name, da, db) in [
        (
            "agent → anchor",
            &ra.summary.summary.agent_to_anchor,
            &rb.summary.summary.agent_to_anchor,
        ),
        (
            "anchor → agent",
            &ra.summary.summary.anchor_to_agent,
            &rb.summary.summary.anchor_to_agent,
        ),
    ] {
        let q = |d: &reports::Distribution, q: f64, scale: f64| {
            d.quantile(q)
                .map_or("–".into(), |v| format!("{:.2}", v as f64 / scale))
        };
        let _ = writeln!(
            out,
            "| {name} loss | {:.2} % | {:.2} % |",
            da.loss_percent(),
            db.loss_percent()
        );
        let _ = writeln!(
            out,
            "| {name} jitter p95 ms | {} | {} |",
            q(&da.jitter, 0.95, 1000.0),
            q(&db.jitter, 0.95, 1000.0)
        );
        let _ = writeln!(
            out,
            "| {name} MOS p50 | {} | {} |",
            q(&da.mos, 0.5, 100.0),
            q(&db.mos, 0.5, 100.0)
        );
    }
    out.push('\n');
    match ProportionTest::new(eb.errors, eb.attempts, ea.errors, ea.attempts) {
        Some(t) => {
            let _ = writeln!(
                out,
                "The error rate changed by {:+.2} points: {} (two-proportion z-test, z = {:.2}, p = {:.3}).",
                t.difference * 100.0,
                if t.significant(0.05) {
                    "a significant difference at 5 %"
                } else {
                    "not significant at 5 %: it may be chance"
                },
                t.z,
                t.p_value
            );
        }
        None => {
            let _ = writeln!(
                out,
                "Both runs have the same all-or-nothing error rate: no test applies."
            );
        }
    }
    Ok(out)
}

/// [`compare`] as a self-contained HTML page (both verdicts with their intervals, the figures
/// side by side, the two-proportion test), for the meeting that decides on a network change.
pub fn compare_html(a: &Path, b: &Path) -> Result<String, ReportError> {
    let (ra, rb) = (load(a)?, load(b)?);
    Ok(comparison_html(
        (&a.display().to_string(), &ra.summary),
        (&b.display().to_string(), &rb.summary),
    ))
}
