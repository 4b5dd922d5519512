//! The report's charts, drawn with `plotters` as standalone SVG documents.
//!
//! Every chart is an SVG document whose text stays `<text>` elements in the generic
//! `sans-serif` family: no font files, no font libraries, nothing fetched when it is shown. The
//! same document is written as `charts/<id>.svg` beside `report.html` and inlined into the
//! report. Bitmaps (PNG) are not drawn: plotters' bitmap backend needs a font rasteriser and a
//! font file to draw text, and a browser prints or screenshots the SVG as well.
//!
//! Colours are fixed across charts (the Okabe–Ito palette, readable with colour-vision
//! deficiencies): agent → anchor is always blue, anchor → agent always orange, the threshold and
//! failed calls always vermilion.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::distribution::Distribution;
use crate::output::SummaryFile;
use crate::record::{CallRecord, MediaStats, Outcome, SetupPhase};
use crate::verdict::ErrorRate;

/// One chart of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chart {
    /// Stable identifier: the file stem (`charts/<id>.svg`) and the HTML anchor.
    pub id: &'static str,
    /// The chart's title, as drawn in it.
    pub title: String,
    /// What the chart shows and how to read it, one paragraph for the report.
    pub caption: String,
    /// The SVG document.
    pub svg: String,
}

/// A chart could not be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("drawing the {chart} chart: {message}")]
pub struct ChartError {
    /// The chart's id.
    pub chart: &'static str,
    /// What the drawing library reported.
    pub message: String,
}

/// Every chart the run's data supports, in report order.
///
/// Charts without data are left out rather than drawn empty: no media charts when no call
/// connected, no failure chart when nothing failed, no site comparison for one site.
pub fn charts(file: &SummaryFile, records: &[CallRecord]) -> Result<Vec<Chart>, ChartError> {
    let s = &file.summary;
    let mut out = Vec::new();
    if s.setup.values().any(|d| !d.is_empty()) {
        out.push(setup_cdf(file)?);
    }
    let directions = [
        (DIRECTIONS[0], &s.agent_to_anchor),
        (DIRECTIONS[1], &s.anchor_to_agent),
    ];
    if directions.iter().any(|(_, d)| !d.jitter.is_empty()) {
        out.push(distribution_chart(
            &DistributionSpec {
                id: "jitter",
                title: "Jitter (RFC 3550 interarrival), per stream each second",
                x_desc: "jitter (ms)",
                scale: 1000.0,
                unit: "ms",
                fixed: None,
                what: "RFC 3550 interarrival jitter sampled once a second on every stream",
            },
            directions.map(|(d, s)| (d, &s.jitter)),
        )?);
    }
    if directions.iter().any(|(_, d)| !d.one_way_delay.is_empty()) {
        out.push(distribution_chart(
            &DistributionSpec {
                id: "delay",
                title: "One-way network delay, every packet",
                x_desc: "one-way delay (ms)",
                scale: 1000.0,
                unit: "ms",
                fixed: None,
                what: "the one-way network delay of every RTP packet (send time carried in the \
                       packet, same host clock)",
            },
            directions.map(|(d, s)| (d, &s.one_way_delay)),
        )?);
    }
    if directions.iter().any(|(_, d)| !d.mos.is_empty()) {
        out.push(distribution_chart(
            &DistributionSpec {
                id: "mos",
                title: "MOS (ITU-T G.107 E-model), per stream",
                x_desc: "MOS (1 bad … 4.5 best)",
                scale: 100.0,
                unit: "",
                fixed: Some((1.0, 4.6, 0.1)),
                what: "the estimated conversational MOS of every call direction (E-model from \
                       delay, loss and burstiness)",
            },
            directions.map(|(d, s)| (d, &s.mos)),
        )?);
    }
    if !records.is_empty() {
        out.push(error_rate_over_time(file, records)?);
        out.push(timeline(records)?);
    }
    let sites = site_rows(records, file.error_rate.confidence);
    if sites.len() > 1 {
        out.push(site_comparison(&sites, file.threshold)?);
    }
    if !s.failures.is_empty() {
        out.push(failure_classes(file)?);
    }
    Ok(out)
}

/// The names and colours of the two media directions, in the order of the summary's fields.
pub const DIRECTIONS: [Direction; 2] = [
    Direction {
        name: "agent → anchor",
        color: BLUE_,
    },
    Direction {
        name: "anchor → agent",
        color: ORANGE,
    },
];

/// A media direction as the charts show it.
#[derive(Debug, Clone, Copy)]
pub struct Direction {
    /// Its name, e.g. "agent → anchor".
    pub name: &'static str,
    color: RGBColor,
}

impl Direction {
    /// Its colour as CSS (`#rrggbb`), so the report's tables match the charts.
    pub fn css(&self) -> String {
        css(self.color)
    }
}

/// A person's name for a setup phase, with where it starts and ends.
pub fn phase_label(phase: SetupPhase) -> &'static str {
    match phase {
        SetupPhase::SignallingConnect => "signalling connect",
        SetupPhase::IceCollection => "ICE collection (TURN allocation)",
        SetupPhase::InviteAnswer => "invite → answer",
        SetupPhase::IceConnected => "answer → ICE connected",
        SetupPhase::DtlsConnected => "ICE → DTLS connected",
        SetupPhase::FirstRtp => "call start → first audio",
    }
}

// The Okabe–Ito palette (Okabe & Ito, "Color Universal Design", 2008).
const BLUE_: RGBColor = RGBColor(0, 114, 178);
const ORANGE: RGBColor = RGBColor(230, 159, 0);
const GREEN_: RGBColor = RGBColor(0, 158, 115);
const VERMILION: RGBColor = RGBColor(213, 94, 0);
const PURPLE: RGBColor = RGBColor(204, 121, 167);
const SKY: RGBColor = RGBColor(86, 180, 233);
const INK: RGBColor = RGBColor(34, 34, 34);
const GREY: RGBColor = RGBColor(110, 110, 110);
const GRID: RGBColor = RGBColor(228, 228, 228);

const PHASE_COLORS: [RGBColor; 6] = [SKY, GREEN_, PURPLE, ORANGE, BLUE_, INK];

/// The colour of the threshold and of failed calls, as CSS.
pub const THRESHOLD_CSS: &str = "#d55e00";

const WIDTH: u32 = 900;
const FONT: &str = "sans-serif";
/// Font sizes as plotters takes them: SVG font-size is this / 1.24 (14 → 11.3 px).
const TITLE_SIZE: f64 = 21.0;
const LABEL_SIZE: f64 = 16.0;
const LEGEND_SIZE: f64 = 16.0;

fn css(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws one chart of `height` px into an SVG document.
fn draw(
    id: &'static str,
    height: u32,
    f: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        let result = root
            .fill(&WHITE)
            .map_err(Into::into)
            .and_then(|()| f(&root))
            .and_then(|()| root.present().map_err(Into::into));
        result.map_err(|e| ChartError {
            chart: id,
            message: e.to_string(),
        })?;
    }
    Ok(svg)
}

/// The mesh every chart shares: labelled grid lines only, light grey, labels in ink.
macro_rules! mesh {
    ($chart:expr) => {
        $chart
            .configure_mesh()
            .label_style(text(LABEL_SIZE))
            .axis_desc_style(text(LABEL_SIZE))
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .axis_style(GREY)
    };
}

/// How a legend entry is drawn.
#[derive(Clone, Copy)]
enum Mark {
    Line(RGBColor),
    Dashed(RGBColor),
    Band(RGBColor),
    Bar(RGBColor),
    Dot(RGBColor),
    Ring(RGBColor),
    Triangle(RGBColor),
    Cross(RGBColor),
}

const LEGEND_ROW: u32 = 26;

/// Left edge of the plot in single-panel charts (margin + y label area), where legends start.
const PLOT_LEFT: i32 = 78;

/// The columns a legend gets: `wanted`, or one when its longest label would not fit.
fn legend_columns(entries: &[(Mark, String)], wanted: usize) -> usize {
    let wanted = wanted.max(1);
    let col_w = (f64::from(WIDTH) - f64::from(PLOT_LEFT) - 14.0) / wanted as f64;
    // Text is LEGEND_SIZE / 1.24 px; a sans-serif character is about 0.56 em wide on average.
    let char_w = LEGEND_SIZE / 1.24 * 0.56;
    let longest = entries
        .iter()
        .map(|(_, l)| l.chars().count())
        .max()
        .unwrap_or(0);
    if longest as f64 * char_w + 40.0 > col_w {
        1
    } else {
        wanted
    }
}

/// The height of the legend strip of `entries` laid out by [`legend`].
fn legend_height(entries: &[(Mark, String)], wanted: usize) -> u32 {
    entries.len().div_ceil(legend_columns(entries, wanted)) as u32 * LEGEND_ROW + 12
}

/// Draws a legend strip under a chart, so that no legend box hides data: in `wanted` columns
/// when the labels fit, starting at the plot's left edge.
fn legend(area: &Area<'_>, entries: &[(Mark, String)], wanted: usize) -> DrawResult {
    let (w, _) = area.dim_in_pixel();
    let left = PLOT_LEFT;
    let columns = legend_columns(entries, wanted);
    let col_w = (w as i32 - left - 14) / columns as i32;
    for (i, (mark, label)) in entries.iter().enumerate() {
        let x = left + (i % columns) as i32 * col_w;
        let y = 4 + (i / columns) as i32 * LEGEND_ROW as i32 + LEGEND_ROW as i32 / 2;
        match *mark {
            Mark::Line(c) => area.draw(&PathElement::new(
                vec![(x, y), (x + 22, y)],
                c.stroke_width(3),
            ))?,
            Mark::Dashed(c) => {
                for dx in [0, 9, 18] {
                    area.draw(&PathElement::new(
                        vec![(x + dx, y), (x + dx + 5, y)],
                        c.stroke_width(2),
                    ))?;
                }
            }
            Mark::Band(c) => {
                area.draw(&Rectangle::new(
                    [(x, y - 7), (x + 22, y + 7)],
                    c.mix(0.2).filled(),
                ))?;
            }
            Mark::Bar(c) => {
                area.draw(&Rectangle::new(
                    [(x + 4, y - 7), (x + 18, y + 7)],
                    c.filled(),
                ))?;
            }
            Mark::Dot(c) => area.draw(&Circle::new((x + 11, y), 5, c.filled()))?,
            Mark::Ring(c) => area.draw(&Circle::new((x + 11, y), 5, c.stroke_width(2)))?,
            Mark::Triangle(c) => area.draw(&TriangleMarker::new((x + 11, y), 7, c.filled()))?,
            Mark::Cross(c) => area.draw(&Cross::new((x + 11, y), 6, c.stroke_width(3)))?,
        }
        area.draw(&Text::new(
            label.clone(),
            (x + 30, y),
            text(LEGEND_SIZE).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// Round values from the 1–2–5 series between `lo` and `hi`, as ticks of a log axis (fewer
/// when the range spans many decades).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for mults in [&[1.0, 2.0, 5.0][..], &[1.0, 3.0], &[1.0]] {
        out.clear();
        let mut decade = 10f64.powf(lo.log10().floor());
        while decade <= hi {
            for m in mults {
                let v = decade * m;
                if v >= lo * 0.999 && v <= hi * 1.001 {
                    out.push(v);
                }
            }
            decade *= 10.0;
        }
        if out.len() <= 12 {
            break;
        }
    }
    out
}

/// A chart builder with the title, margins and label areas every single-panel chart uses.
fn framed<'a, 'c>(area: &'a Area<'c>, title: &str) -> ChartBuilder<'a, 'static, SVGBackend<'c>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, title_style())
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(64);
    builder
}

fn text(size: f64) -> TextStyle<'static> {
    (FONT, size).into_font().color(&INK)
}

fn title_style() -> TextStyle<'static> {
    (FONT, TITLE_SIZE)
        .into_font()
        .style(FontStyle::Bold)
        .color(&INK)
}

/// Value formatting for axis labels: no trailing zeros, at most `decimals`.
fn tick(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

fn q_ms(d: &Distribution, q: f64) -> Option<f64> {
    d.quantile(q).map(|v| v as f64 / 1000.0)
}

fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) if v >= 10.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.2} ms"),
    }
}

fn setup_cdf(file: &SummaryFile) -> Result<Chart, ChartError> {
    let phases: Vec<(SetupPhase, &Distribution)> = file
        .summary
        .setup
        .iter()
        .filter(|(_, d)| !d.is_empty())
        .map(|(p, d)| (*p, d))
        .collect();
    let lo = phases
        .iter()
        .filter_map(|(_, d)| d.min())
        .min()
        .map_or(0.1, |v| (v as f64 / 1000.0 * 0.8).max(0.1));
    let hi = phases
        .iter()
        .filter_map(|(_, d)| d.max())
        .max()
        .map_or(1.0, |v| v as f64 / 1000.0 * 1.25);
    let (lo, hi) = (lo, hi.max(lo * 10.0));
    let title = "Call setup time by phase (cumulative)";
    let entries: Vec<(Mark, String)> = phases
        .iter()
        .enumerate()
        .map(|(i, (phase, d))| {
            (
                Mark::Line(PHASE_COLORS[i % PHASE_COLORS.len()]),
                format!(
                    "{} · p50 {} · p95 {}",
                    phase_label(*phase),
                    fmt_ms(q_ms(d, 0.5)),
                    fmt_ms(q_ms(d, 0.95))
                ),
            )
        })
        .collect();
    let legend_h = legend_height(&entries, 2);
    let svg = draw("setup-cdf", 400 + legend_h, |root| {
        let (plot, key) = root.split_vertically(400);
        let mut chart = framed(&plot, title).build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
            0.0..1.0,
        )?;
        mesh!(chart)
            .x_desc("duration of the phase (ms, log scale)")
            .y_desc("share of calls")
            .y_labels(6)
            .x_label_formatter(&|v| tick(*v, 1))
            .y_label_formatter(&|v| format!("{:.0} %", v * 100.0))
            .draw()?;
        for (i, (_, d)) in phases.iter().enumerate() {
            let color = PHASE_COLORS[i % PHASE_COLORS.len()];
            let mut points = Vec::new();
            let mut prev = 0.0;
            for v in d.histogram().iter_recorded() {
                let x = (v.value_iterated_to() as f64 / 1000.0).clamp(lo, hi);
                points.push((x, prev));
                prev = v.quantile_iterated_to();
                points.push((x, prev));
            }
            chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
        }
        legend(&key, &entries, 2)
    })?;
    let first = file.summary.setup.get(&SetupPhase::FirstRtp);
    Ok(Chart {
        id: "setup-cdf",
        title: title.to_owned(),
        caption: format!(
            "How long each step of call setup took, over the calls that reached it: a curve's \
             height at a duration is the share of calls whose phase took at most that long. The \
             agent hears the caller at \"call start → first audio\"{}. A curve with a long tail \
             to the right points at the phase to look at.",
            first
                .filter(|d| !d.is_empty())
                .map_or(String::new(), |d| format!(
                    " (p50 {}, p95 {})",
                    fmt_ms(q_ms(d, 0.5)),
                    fmt_ms(q_ms(d, 0.95))
                ))
        ),
        svg,
    })
}

struct DistributionSpec {
    id: &'static str,
    title: &'static str,
    x_desc: &'static str,
    /// Divides recorded values into the axis unit (µs → ms: 1000; centi → MOS: 100).
    scale: f64,
    unit: &'static str,
    /// A fixed linear axis (lo, hi, bin width) in axis units, for bounded figures such as MOS;
    /// `None`: a log axis from the smallest value to the 99.9th percentile, 10 bins a decade.
    fixed: Option<(f64, f64, f64)>,
    what: &'static str,
}

/// Bins per decade on log axes.
const LOG_BINS: f64 = 10.0;

fn distribution_chart(
    spec: &DistributionSpec,
    dists: [(Direction, &Distribution); 2],
) -> Result<Chart, ChartError> {
    let present: Vec<(Direction, &Distribution)> =
        dists.into_iter().filter(|(_, d)| !d.is_empty()).collect();
    let scaled = |v: u64| v as f64 / spec.scale;
    // Bin edges: linear for fixed axes, geometric otherwise.
    let edges: Vec<f64> = match spec.fixed {
        Some((lo, hi, width)) => {
            let n = (((hi - lo) / width).round() as usize).max(1);
            (0..=n).map(|i| lo + width * i as f64).collect()
        }
        None => {
            let min = present
                .iter()
                .filter_map(|(_, d)| d.min())
                .min()
                .map_or(0.0, scaled);
            // The axis ends at the 99.9th percentile: a few outliers would squash the rest.
            // Values above it are gathered in the last bar.
            let max = present
                .iter()
                .filter_map(|(_, d)| d.quantile(0.999))
                .max()
                .map_or(1.0, scaled);
            let lo = 10f64.powf((min.max(0.01).log10() * LOG_BINS).floor() / LOG_BINS);
            let hi = max.max(lo * 10.0);
            let n = ((hi / lo).log10() * LOG_BINS).ceil().max(1.0) as i32;
            (0..=n)
                .map(|i| lo * 10f64.powf(f64::from(i) / LOG_BINS))
                .collect()
        }
    };
    let bins = edges.len() - 1;
    let (lo, hi) = (edges[0], edges[bins]);
    let mut shares: Vec<Vec<f64>> = Vec::new();
    let mut clipped = false;
    for (_, d) in &present {
        let mut counts = vec![0u64; bins];
        for v in d.histogram().iter_recorded() {
            let x = scaled(v.value_iterated_to());
            clipped |= x > hi;
            let i = edges[1..].partition_point(|e| *e <= x).min(bins - 1);
            counts[i] += v.count_at_value();
        }
        let total = d.len().max(1) as f64;
        shares.push(counts.iter().map(|&c| 100.0 * c as f64 / total).collect());
    }
    let top = shares
        .iter()
        .flatten()
        .fold(0.0f64, |a, &b| a.max(b))
        .max(1.0)
        * 1.12;
    let unit = spec.unit;
    let label = |dir: &Direction, d: &Distribution| {
        let q = |q: f64| d.quantile(q).map_or("–".to_owned(), |v| tick(scaled(v), 2));
        let figures = if spec.fixed.is_some() {
            // Bounded figures (MOS): the low percentiles are the bad end.
            format!("p5 {} · p50 {} · mean {}", q(0.05), q(0.5), {
                d.mean().map_or("–".into(), |m| tick(m / spec.scale, 2))
            })
        } else {
            format!("p50 {} · p95 {} · p99 {} {unit}", q(0.5), q(0.95), q(0.99))
        };
        format!("{} · {figures}", dir.name)
    };
    let entries: Vec<(Mark, String)> = present
        .iter()
        .map(|(dir, d)| (Mark::Bar(dir.color), label(dir, d)))
        .collect();
    let legend_h = legend_height(&entries, 1);
    let n = present.len().max(1) as f64;
    let svg = draw(spec.id, 380 + legend_h, |root| {
        let (plot, key) = root.split_vertically(380);
        let log = spec.fixed.is_none();
        let mut builder = framed(&plot, spec.title);
        // The same drawing on a linear or a log axis (two coordinate types).
        macro_rules! bars {
            ($x:expr) => {{
                let mut chart = builder.build_cartesian_2d($x, 0.0..top)?;
                mesh!(chart)
                    .disable_x_mesh()
                    .x_desc(spec.x_desc)
                    .y_desc("share of samples")
                    .x_label_formatter(&|v| tick(*v, 2))
                    .y_label_formatter(&|v| format!("{} %", tick(*v, 1)))
                    .draw()?;
                for (k, ((dir, _), share)) in present.iter().zip(&shares).enumerate() {
                    // Side by side within a bin, with a hairline gap; geometric on a log axis.
                    let bars = share.iter().enumerate().filter(|(_, s)| **s > 0.0);
                    chart.draw_series(bars.map(|(i, s)| {
                        let (a, b) = (edges[i], edges[i + 1]);
                        let x = |f: f64| {
                            if log {
                                a * (b / a).powf(f)
                            } else {
                                a + (b - a) * f
                            }
                        };
                        let f0 = 0.06 + 0.88 * k as f64 / n;
                        Rectangle::new([(x(f0), 0.0), (x(f0 + 0.88 / n), *s)], dir.color.filled())
                    }))?;
                }
            }};
        }
        if log {
            bars!((lo..hi).log_scale().with_key_points(log_ticks(lo, hi)));
        } else {
            bars!(lo..hi);
        }
        legend(&key, &entries, 1)
    })?;
    let mut caption = format!(
        "The distribution of {}, from the run's histograms",
        spec.what
    );
    if spec.fixed.is_some() {
        let _ = write!(caption, "; bars of {} MOS", tick(edges[1] - edges[0], 3));
    } else {
        caption.push_str("; log scale, 10 bars a decade");
    }
    caption.push_str(
        ", the two directions side by side, each bar a share of its direction's samples.",
    );
    if clipped {
        caption.push_str(
            " The axis ends at the 99.9th percentile; the last bar also holds the values above it.",
        );
    }
    Ok(Chart {
        id: spec.id,
        title: spec.title.to_owned(),
        caption,
        svg,
    })
}

/// When each call started, ended and talked, in seconds since the first call started.
struct Span {
    start: f64,
    end: f64,
    /// Middle of the talking time (first RTP → hang-up or end), when the call had media.
    talk_mid: Option<f64>,
}

fn spans(records: &[CallRecord]) -> (u64, Vec<Span>) {
    let t0 = records.iter().map(|r| r.started_unix_ms).min().unwrap_or(0);
    let spans = records
        .iter()
        .map(|r| {
            let start = (r.started_unix_ms - t0) as f64 / 1000.0;
            let m = &r.milestones;
            let end = start + m.ended_us.unwrap_or(0) as f64 / 1e6;
            let talk_mid = m.first_rtp_us.map(|first| {
                let last = m.hangup_us.or(m.ended_us).unwrap_or(first).max(first);
                start + (first + last) as f64 / 2e6
            });
            Span {
                start,
                end,
                talk_mid,
            }
        })
        .collect();
    (t0, spans)
}

fn error_rate_over_time(file: &SummaryFile, records: &[CallRecord]) -> Result<Chart, ChartError> {
    let (_, spans) = spans(records);
    let mut ends: Vec<(f64, bool)> = spans
        .iter()
        .zip(records)
        .map(|(s, r)| (s.end, r.outcome.is_error()))
        .collect();
    ends.sort_by(|a, b| a.0.total_cmp(&b.0));
    let confidence = file.error_rate.confidence;
    let mut points = Vec::with_capacity(ends.len());
    let mut errors = 0;
    for (i, (t, error)) in ends.iter().enumerate() {
        errors += u64::from(*error);
        let r = ErrorRate::new(errors, i as u64 + 1, confidence);
        points.push((*t, r.rate * 100.0, r.lower * 100.0, r.upper * 100.0));
    }
    let threshold = file.threshold * 100.0;
    let last = points.last().copied().unwrap_or((0.0, 0.0, 0.0, 100.0));
    let max_rate = points.iter().map(|p| p.1).fold(0.0, f64::max);
    // Early intervals are wide (one call: 0–79 %): the axis follows the end of the run and the
    // threshold, and the band is cut at the top.
    let top = (threshold * 2.5)
        .max(last.3 * 1.3)
        .max(max_rate * 1.15)
        .clamp(1.0, 100.0);
    let t_end = last.0.max(1e-3) * 1.02;
    let title = "Error rate as the run went on";
    let entries = [
        (
            Mark::Line(BLUE_),
            format!("error rate so far (at the end {})", pct(last.1)),
        ),
        (
            Mark::Band(BLUE_),
            format!(
                "{:.0} % Wilson interval (at the end {} – {})",
                confidence * 100.0,
                pct(last.2),
                pct(last.3)
            ),
        ),
        (
            Mark::Dashed(VERMILION),
            format!("threshold {}", plain_pct(threshold)),
        ),
    ];
    let legend_h = legend_height(&entries, 2);
    let svg = draw("error-rate", 380 + legend_h, |root| {
        let (plot, key) = root.split_vertically(380);
        let mut chart = framed(&plot, title).build_cartesian_2d(0.0..t_end, 0.0..top)?;
        mesh!(chart)
            .x_desc("time since the first call started (s); a step each time a call ended")
            .y_desc("error rate so far")
            .x_label_formatter(&|v| tick(*v, 1))
            .y_label_formatter(&|v| format!("{} %", tick(*v, 1)))
            .draw()?;
        let band: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.0, p.3.min(top)))
            .chain(points.iter().rev().map(|p| (p.0, p.2.min(top))))
            .collect();
        chart.draw_series(std::iter::once(Polygon::new(band, BLUE_.mix(0.2).filled())))?;
        let mut steps = Vec::with_capacity(points.len() * 2);
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                steps.push((p.0, points[i - 1].1));
            }
            steps.push((p.0, p.1));
        }
        chart.draw_series(LineSeries::new(steps, BLUE_.stroke_width(2)))?;
        chart.draw_series(DashedLineSeries::new(
            [(0.0, threshold), (t_end, threshold)],
            8,
            5,
            VERMILION.stroke_width(2),
        ))?;
        legend(&key, &entries, 2)
    })?;
    Ok(Chart {
        id: "error-rate",
        title: title.to_owned(),
        caption: format!(
            "The error rate (failed and dropped calls over the calls ended so far) as each call \
             ended, with its {:.0} % Wilson interval: the band narrows as calls accumulate. The \
             verdict is settled once the band lies wholly below the dashed threshold (pass) or \
             wholly above it (fail).",
            confidence * 100.0
        ),
        svg,
    })
}

/// A percentage without needless decimals: 2.0 → "2 %", 2.5 → "2.5 %".
fn plain_pct(v: f64) -> String {
    format!("{} %", tick(v, 2))
}

fn pct(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.1} %")
    } else {
        format!("{v:.2} %")
    }
}

fn timeline(records: &[CallRecord]) -> Result<Chart, ChartError> {
    let (_, spans) = spans(records);
    let t_end = spans.iter().map(|s| s.end).fold(0.0, f64::max).max(1e-3) * 1.02;
    // Concurrent calls: +1 at each start, −1 at each end, as steps.
    let mut events: Vec<(f64, i64)> = spans
        .iter()
        .flat_map(|s| [(s.start, 1), (s.end, -1)])
        .collect();
    // At one instant, starts before ends: a call that failed at once shows, and the count never
    // dips below zero.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut level = 0i64;
    let mut steps = vec![(0.0, 0.0)];
    let mut peak = 0i64;
    for (t, d) in events {
        steps.push((t, level as f64));
        level += d;
        peak = peak.max(level);
        steps.push((t, level as f64));
    }
    let per_call = |f: &dyn Fn(&MediaStats) -> f64| -> [Vec<(f64, f64)>; 2] {
        let mut out = [Vec::new(), Vec::new()];
        for (s, r) in spans.iter().zip(records) {
            let Some(mid) = s.talk_mid else { continue };
            for (k, m) in [&r.agent_to_anchor, &r.anchor_to_agent]
                .into_iter()
                .enumerate()
            {
                if let Some(m) = m {
                    out[k].push((mid, f(m)));
                }
            }
        }
        out
    };
    let loss = per_call(&MediaStats::loss_percent);
    let mos = per_call(&|m: &MediaStats| m.mos);
    let loss_top = loss
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;
    let ended = |o: Outcome| -> Vec<f64> {
        spans
            .iter()
            .zip(records)
            .filter(|(_, r)| r.outcome == o)
            .map(|(s, _)| s.end)
            .collect()
    };
    let (failed, dropped) = (ended(Outcome::Failed), ended(Outcome::Dropped));
    // Without media (every call failed before audio) only the calls panel is drawn.
    let media = loss.iter().any(|l| !l.is_empty());
    let mut entries = vec![(Mark::Line(GREY), format!("calls up at once (peak {peak})"))];
    if !failed.is_empty() {
        entries.push((
            Mark::Triangle(VERMILION),
            format!("failed call, when it gave up ({})", failed.len()),
        ));
    }
    if !dropped.is_empty() {
        entries.push((
            Mark::Cross(PURPLE),
            format!("dropped call, when it dropped ({})", dropped.len()),
        ));
    }
    // agent → anchor filled, anchor → agent a ring: where both directions have the same value
    // (the usual case on a clean path), both stay visible.
    for (k, d) in DIRECTIONS.iter().enumerate() {
        if loss[k].is_empty() {
            continue;
        }
        entries.push((
            if k == 0 {
                Mark::Dot(d.color)
            } else {
                Mark::Ring(d.color)
            },
            format!("{}: loss and MOS of a call", d.name),
        ));
    }
    let legend_h = legend_height(&entries, 2);
    let dot = |at: (f64, f64), k: usize| {
        let color = DIRECTIONS[k].color;
        let style = if k == 0 {
            color.filled()
        } else {
            color.stroke_width(2)
        };
        Circle::new(at, if k == 0 { 3 } else { 5 }, style)
    };
    let title = if media {
        "Calls, loss and MOS over the run"
    } else {
        "Calls over the run"
    };
    let (calls_h, panels_h) = if media { (250, 700) } else { (300, 300) };
    let time_desc = if media {
        "time since the first call started (s); a call's dots sit at the middle of its talk time"
    } else {
        "time since the first call started (s)"
    };
    let svg = draw("timeline", panels_h + legend_h, |root| {
        let (panels, key) = root.split_vertically(panels_h);
        let (top, rest) = panels.split_vertically(calls_h);
        let y_area = 64;
        let mut c = ChartBuilder::on(&top)
            .caption(title, title_style())
            .margin_left(14)
            .margin_right(14)
            .margin_top(14)
            .x_label_area_size(if media { 0 } else { 48 })
            .y_label_area_size(y_area)
            .build_cartesian_2d(0.0..t_end, 0.0..(peak as f64 * 1.15).max(1.0))?;
        mesh!(c)
            .x_desc(time_desc)
            .y_desc("calls up")
            .y_labels(5)
            .x_label_formatter(&|v| tick(*v, 1))
            .y_label_formatter(&|v| tick(*v, 0))
            .draw()?;
        c.draw_series(AreaSeries::new(steps.clone(), 0.0, GREY.mix(0.12)))?;
        c.draw_series(LineSeries::new(steps, GREY.stroke_width(2)))?;
        c.draw_series(
            failed
                .iter()
                .map(|t| TriangleMarker::new((*t, 0.0), 7, VERMILION.filled())),
        )?;
        c.draw_series(
            dropped
                .iter()
                .map(|t| Cross::new((*t, 0.0), 6, PURPLE.stroke_width(3))),
        )?;
        if !media {
            return legend(&key, &entries, 2);
        }

        let (middle, bottom) = rest.split_vertically(200);
        let mut c = ChartBuilder::on(&middle)
            .margin_left(14)
            .margin_right(14)
            .margin_top(16)
            .x_label_area_size(0)
            .y_label_area_size(y_area)
            .build_cartesian_2d(0.0..t_end, 0.0..loss_top)?;
        mesh!(c)
            .y_desc("loss of the call")
            .y_labels(5)
            .y_label_formatter(&|v| format!("{} %", tick(*v, 1)))
            .draw()?;
        for (k, points) in loss.iter().enumerate() {
            c.draw_series(points.iter().map(|p| dot(*p, k)))?;
        }

        let mut c = ChartBuilder::on(&bottom)
            .margin_left(14)
            .margin_right(14)
            .margin_top(16)
            .margin_bottom(4)
            .x_label_area_size(48)
            .y_label_area_size(y_area)
            .build_cartesian_2d(0.0..t_end, 1.0..4.6)?;
        mesh!(c)
            .x_desc(time_desc)
            .y_desc("MOS of the call")
            .y_labels(5)
            .x_label_formatter(&|v| tick(*v, 1))
            .y_label_formatter(&|v| tick(*v, 1))
            .draw()?;
        for (k, points) in mos.iter().enumerate() {
            c.draw_series(points.iter().map(|p| dot((p.0, p.1.clamp(1.0, 4.6)), k)))?;
        }
        legend(&key, &entries, 2)
    })?;
    let caption = if media {
        "The run on one time axis, so that an outage, a VPN rekey or a burst of failures shows \
         where it happened: how many calls were up at each moment, with failed and dropped calls \
         marked when they ended; then each call's network loss and MOS, one dot per direction."
    } else {
        "How many calls were up at each moment of the run, with failed calls marked when they \
         gave up. No call carried audio, so there is no loss or MOS to place on the timeline."
    };
    Ok(Chart {
        id: "timeline",
        title: title.to_owned(),
        caption: caption.to_owned(),
        svg,
    })
}

/// One site's figures for the comparison chart and the report's site table.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteRow {
    /// The site's name.
    pub site: String,
    /// Its network profile(s), as the records name them.
    pub profile: String,
    /// Its error rate with the interval.
    pub error_rate: ErrorRate,
    /// MOS of its call directions: p5, p50, p95 (`None` without media).
    pub mos: Option<(f64, f64, f64)>,
    /// Call start → first audio, p50 and p95 in ms (`None` when no call got audio).
    pub first_audio_ms: Option<(f64, f64)>,
}

/// Per-site figures from the records, sites in name order.
pub fn site_rows(records: &[CallRecord], confidence: f64) -> Vec<SiteRow> {
    struct Acc<'a> {
        profiles: Vec<&'a str>,
        errors: u64,
        calls: u64,
        mos: Vec<f64>,
        first: Distribution,
    }
    let mut sites: BTreeMap<&str, Acc<'_>> = BTreeMap::new();
    for r in records {
        let a = sites.entry(&r.identity.site).or_insert_with(|| Acc {
            profiles: Vec::new(),
            errors: 0,
            calls: 0,
            mos: Vec::new(),
            first: Distribution::new(crate::distribution::Unit::Micros),
        });
        if !a.profiles.contains(&r.identity.profile.as_str()) {
            a.profiles.push(&r.identity.profile);
        }
        a.calls += 1;
        a.errors += u64::from(r.outcome.is_error());
        a.mos.extend(r.directions().map(|m| m.mos));
        if let Some(us) = r.milestones.phase_us(SetupPhase::FirstRtp) {
            a.first.record(us);
        }
    }
    sites
        .into_iter()
        .map(|(site, mut a)| {
            a.mos.sort_by(f64::total_cmp);
            let q = |q: f64| a.mos[((a.mos.len() - 1) as f64 * q).round() as usize];
            SiteRow {
                site: site.to_owned(),
                profile: a.profiles.join(", "),
                error_rate: ErrorRate::new(a.errors, a.calls, confidence),
                mos: (!a.mos.is_empty()).then(|| (q(0.05), q(0.5), q(0.95))),
                first_audio_ms: q_ms(&a.first, 0.5).zip(q_ms(&a.first, 0.95)),
            }
        })
        .collect()
}

/// Row labels for a categorical axis drawn on `-0.5..n-0.5`: the label of the row at an integer
/// tick, nothing between rows.
fn row_label(labels: &[String], v: f64) -> String {
    let i = v.round();
    if (v - i).abs() > 1e-6 || i < 0.0 {
        return String::new();
    }
    labels.get(i as usize).cloned().unwrap_or_default()
}

fn site_comparison(sites: &[SiteRow], threshold: f64) -> Result<Chart, ChartError> {
    let n = sites.len();
    // Top to bottom in name order: row 0 is drawn at the top.
    let labels: Vec<String> = sites
        .iter()
        .rev()
        // No-break spaces keep the labels off the axis (SVG drops ordinary trailing spaces).
        .map(|s| format!("{} ({})\u{a0}\u{a0}", s.site, s.profile))
        .collect();
    let label_width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(4) as u32 * 8 + 16;
    let threshold = threshold * 100.0;
    let x_top = sites
        .iter()
        .map(|s| s.error_rate.upper * 100.0)
        .fold(threshold * 2.0, f64::max)
        .clamp(1.0, 100.0);
    let height = 150 + 46 * n as u32;
    let title = "Sites side by side";
    let svg = draw("sites", height, |root| {
        let root = root.titled(title, title_style())?;
        let (left, right) = root.split_horizontally(WIDTH / 2 + label_width / 2);
        let y_range = -0.6..(n as f64 - 0.4);
        let mut c = ChartBuilder::on(&left)
            .margin(10)
            .x_label_area_size(48)
            .y_label_area_size(label_width)
            .build_cartesian_2d(0.0..x_top, y_range.clone())?;
        mesh!(c)
            .disable_y_mesh()
            .set_tick_mark_size(LabelAreaPosition::Left, 0)
            .x_desc("error rate with its interval")
            .x_labels(5)
            .y_labels(n * 2 + 2)
            .x_label_formatter(&|v| format!("{} %", tick(*v, 1)))
            .y_label_formatter(&|v| row_label(&labels, *v))
            .draw()?;
        c.draw_series(DashedLineSeries::new(
            [(threshold, -0.6), (threshold, n as f64 - 0.4)],
            6,
            4,
            VERMILION.stroke_width(2),
        ))?;
        for (i, s) in sites.iter().rev().enumerate() {
            let y = i as f64;
            let e = &s.error_rate;
            let color = if e.upper < threshold / 100.0 {
                GREEN_
            } else if e.lower > threshold / 100.0 {
                VERMILION
            } else {
                ORANGE
            };
            let (lo, hi) = (e.lower * 100.0, (e.upper * 100.0).min(x_top));
            c.draw_series(std::iter::once(PathElement::new(
                vec![(lo, y), (hi, y)],
                color.stroke_width(3),
            )))?;
            c.draw_series([lo, hi].into_iter().map(|x| {
                PathElement::new(vec![(x, y - 0.15), (x, y + 0.15)], color.stroke_width(2))
            }))?;
            c.draw_series(std::iter::once(Circle::new(
                ((e.rate * 100.0).min(x_top), y),
                6,
                color.filled(),
            )))?;
        }
        let mut c = ChartBuilder::on(&right)
            .margin(10)
            .x_label_area_size(48)
            .y_label_area_size(8)
            .build_cartesian_2d(1.0..4.6, y_range)?;
        mesh!(c)
            .disable_y_mesh()
            .set_tick_mark_size(LabelAreaPosition::Left, 0)
            .x_desc("MOS of its calls: median, bar from p5 to p95")
            .y_labels(0)
            .x_label_formatter(&|v| tick(*v, 1))
            .draw()?;
        for (i, s) in sites.iter().rev().enumerate() {
            let y = i as f64;
            match s.mos {
                Some((p5, p50, p95)) => {
                    c.draw_series(std::iter::once(PathElement::new(
                        vec![(p5, y), (p95, y)],
                        BLUE_.stroke_width(3),
                    )))?;
                    c.draw_series(std::iter::once(Circle::new((p50, y), 6, BLUE_.filled())))?;
                }
                None => {
                    c.draw_series(std::iter::once(Text::new(
                        "no audio",
                        (1.1, y),
                        text(LABEL_SIZE)
                            .color(&GREY)
                            .pos(Pos::new(HPos::Left, VPos::Center)),
                    )))?;
                }
            }
        }
        Ok(())
    })?;
    Ok(Chart {
        id: "sites",
        title: title.to_owned(),
        caption: format!(
            "Each site's error rate with its interval (green: wholly below the {} threshold, \
             dashed; vermilion: wholly above; orange: not yet settled) and the MOS of its calls. \
             A site whose interval is far wider than the others had too few calls to judge alone.",
            plain_pct(threshold)
        ),
        svg,
    })
}

fn failure_classes(file: &SummaryFile) -> Result<Chart, ChartError> {
    let mut classes: Vec<(String, u64)> = file
        .summary
        .failures
        .iter()
        .map(|(c, n)| (c.as_str().to_owned(), *n))
        .collect();
    classes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let n = classes.len();
    // Largest at the top: row 0 is drawn at the bottom of the axis.
    let labels: Vec<String> = classes
        .iter()
        .rev()
        .map(|c| format!("{}\u{a0}\u{a0}", c.0))
        .collect();
    let counts: Vec<u64> = classes.iter().rev().map(|c| c.1).collect();
    let most = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let label_width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(4) as u32 * 8 + 16;
    let attempts = file.error_rate.attempts.max(1) as f64;
    let title = "Failed and dropped calls by failure class";
    let svg = draw("failures", 130 + 42 * n as u32, |root| {
        let mut c = ChartBuilder::on(root)
            .caption(title, title_style())
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(label_width)
            .build_cartesian_2d(0.0..most * 1.25, -0.6..(n as f64 - 0.4))?;
        mesh!(c)
            .disable_y_mesh()
            .set_tick_mark_size(LabelAreaPosition::Left, 0)
            .x_desc("calls")
            .x_labels(6)
            .y_labels(n * 2 + 2)
            .x_label_formatter(&|v| {
                if v.fract() == 0.0 {
                    tick(*v, 0)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| row_label(&labels, *v))
            .draw()?;
        for (i, count) in counts.iter().enumerate() {
            let y = i as f64;
            let x = *count as f64;
            c.draw_series(std::iter::once(Rectangle::new(
                [(0.0, y - 0.32), (x, y + 0.32)],
                VERMILION.filled(),
            )))?;
            c.draw_series(std::iter::once(Text::new(
                format!("{count} ({})", pct(100.0 * x / attempts)),
                (x + most * 0.015, y),
                text(LABEL_SIZE).pos(Pos::new(HPos::Left, VPos::Center)),
            )))?;
        }
        Ok(())
    })?;
    Ok(Chart {
        id: "failures",
        title: title.to_owned(),
        caption: "How many calls failed or dropped with each failure class (the names the \
                  softphone library logs), with their share of all calls."
            .to_owned(),
        svg,
    })
}

/// The charts of a capacity sweep ([`crate::capacity`]): the error rate with its interval, and
/// MOS p5, at each value swept, with the threshold, the target and the knee.
pub fn sweep_charts(sweep: &crate::capacity::SweepFile) -> Result<Vec<Chart>, ChartError> {
    use crate::capacity::PointStatus;
    let points = &sweep.points;
    if points.is_empty() {
        return Ok(Vec::new());
    }
    let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(p.value), b.max(p.value))
    });
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 0.01).max(1e-6);
    let (x0, x1) = (lo - pad, hi + pad);
    let unit = if sweep.unit.is_empty() {
        String::new()
    } else {
        format!(" ({})", sweep.unit)
    };
    let x_desc = format!("{}{unit}", sweep.field);
    let knee = sweep.knee.as_ref().map(|k| k.value);
    let colour = |s: PointStatus| match s {
        PointStatus::Good => GREEN_,
        PointStatus::Bad => VERMILION,
        PointStatus::Unsure => ORANGE,
        PointStatus::Invalid => GREY,
    };
    let status_entries = |mut entries: Vec<(Mark, String)>| {
        entries.extend([
            (Mark::Dot(GREEN_), "carries calls".to_owned()),
            (Mark::Dot(VERMILION), "does not".to_owned()),
            (Mark::Dot(ORANGE), "too few calls to tell".to_owned()),
            (Mark::Dot(GREY), "simulator fell behind".to_owned()),
        ]);
        if let Some(k) = &sweep.knee {
            entries.push((Mark::Dashed(INK), format!("knee: {}", k.written)));
        }
        entries
    };

    let threshold = sweep.threshold * 100.0;
    let top = points
        .iter()
        .map(|p| p.error_rate.upper * 100.0)
        .fold(threshold * 2.5, f64::max)
        .clamp(1.0, 100.0);
    let title = "Error rate at each value";
    let entries = status_entries(vec![(
        Mark::Dashed(VERMILION),
        format!("threshold {}", plain_pct(threshold)),
    )]);
    let legend_h = legend_height(&entries, 3);
    let error_svg = draw("sweep-error-rate", 380 + legend_h, |root| {
        let (plot, key) = root.split_vertically(380);
        let mut chart = framed(&plot, title).build_cartesian_2d(x0..x1, 0.0..top)?;
        mesh!(chart)
            .x_desc(x_desc.as_str())
            .y_desc("error rate, with its interval")
            .x_label_formatter(&|v| tick(*v, 2))
            .y_label_formatter(&|v| format!("{} %", tick(*v, 1)))
            .draw()?;
        for p in points {
            let c = colour(p.status);
            let (l, u) = (
                p.error_rate.lower * 100.0,
                (p.error_rate.upper * 100.0).min(top),
            );
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(p.value, l), (p.value, u)],
                c.stroke_width(2),
            )))?;
            chart.draw_series(std::iter::once(Circle::new(
                (p.value, p.error_rate.rate * 100.0),
                5,
                c.filled(),
            )))?;
        }
        chart.draw_series(DashedLineSeries::new(
            [(x0, threshold), (x1, threshold)],
            8,
            5,
            VERMILION.stroke_width(2),
        ))?;
        if let Some(k) = knee {
            chart.draw_series(DashedLineSeries::new(
                [(k, 0.0), (k, top)],
                6,
                4,
                INK.stroke_width(1),
            ))?;
        }
        legend(&key, &entries, 3)
    })?;

    let mos: Vec<(f64, f64, PointStatus)> = points
        .iter()
        .filter_map(|p| p.mos_p5.map(|m| (p.value, m, p.status)))
        .collect();
    let mut out = vec![Chart {
        id: "sweep-error-rate",
        title: title.to_owned(),
        caption: format!(
            "Each point is one run of the scenario at that value of {}: the dot is its error \
             rate, the bar its {:.0} % Wilson interval. A value carries calls when the whole bar \
             lies below the dashed threshold and MOS p5 holds (next chart).",
            sweep.field,
            points[0].error_rate.confidence * 100.0
        ),
        svg: error_svg,
    }];
    if !mos.is_empty() {
        let title = "MOS p5 at each value";
        let low = mos
            .iter()
            .map(|m| m.1)
            .fold(sweep.mos_target, f64::min)
            .min(sweep.mos_target - 0.3)
            .max(1.0);
        let entries = status_entries(vec![(
            Mark::Dashed(VERMILION),
            format!("target {}", sweep.mos_target),
        )]);
        let legend_h = legend_height(&entries, 3);
        let svg = draw("sweep-mos", 380 + legend_h, |root| {
            let (plot, key) = root.split_vertically(380);
            let mut chart = framed(&plot, title).build_cartesian_2d(x0..x1, (low - 0.1)..4.6)?;
            mesh!(chart)
                .x_desc(x_desc.as_str())
                .y_desc("MOS p5, the worse direction")
                .x_label_formatter(&|v| tick(*v, 2))
                .y_label_formatter(&|v| tick(*v, 1))
                .draw()?;
            chart.draw_series(LineSeries::new(
                mos.iter().map(|m| (m.0, m.1)),
                GREY.stroke_width(1),
            ))?;
            for (x, y, s) in &mos {
                chart.draw_series(std::iter::once(Circle::new(
                    (*x, *y),
                    5,
                    colour(*s).filled(),
                )))?;
            }
            chart.draw_series(DashedLineSeries::new(
                [(x0, sweep.mos_target), (x1, sweep.mos_target)],
                8,
                5,
                VERMILION.stroke_width(2),
            ))?;
            if let Some(k) = knee {
                chart.draw_series(DashedLineSeries::new(
                    [(k, low - 0.1), (k, 4.6)],
                    6,
                    4,
                    INK.stroke_width(1),
                ))?;
            }
            legend(&key, &entries, 3)
        })?;
        out.push(Chart {
            id: "sweep-mos",
            title: title.to_owned(),
            caption: format!(
                "MOS p5 (ITU-T G.107 E-model, the worst 5 % of streams) of the worse direction at \
                 each value; a value carries calls only while it stays at or above {}.",
                sweep.mos_target
            ),
            svg,
        });
    }
    Ok(out)
}
