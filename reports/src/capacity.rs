//! Capacity sweeps: one scenario run at each value of one field, and where it stops carrying
//! calls (`sim sweep`, `sweep.json`).
//!
//! Each point is a short run of the scenario with the field set to one value. A point is
//! *good* when its error rate's Wilson interval lies wholly below the threshold and its MOS p5
//! is at or above the target; *bad* when the interval lies wholly above, or MOS p5 falls
//! below the target; *unsure* when the interval straddles the threshold (too few calls); and
//! *invalid* when the simulator itself fell behind ([`crate::Verdict::Invalid`]). The knee is
//! the last good value before the first bad or invalid one, in the direction the field makes
//! things worse.

use serde::{Deserialize, Serialize};

use crate::output::SummaryFile;
use crate::record::SetupPhase;
use crate::summary::DirectionSummary;
use crate::verdict::{ErrorRate, Verdict};

/// Version of the `sweep.json` layout.
pub const SWEEP_FILE_VERSION: u32 = 1;

/// The MOS p5 a point must keep, unless the sweep sets another: the top of the E-model's
/// "satisfied" band for narrowband is 3.6 (ITU-T G.107 Annex B, R 70).
pub const DEFAULT_MOS_TARGET: f64 = 3.6;

/// Bytes around each relayed Opus payload on the agent's link: RTP header 12, SRTP
/// authentication tag 10 (`AES_CM_128_HMAC_SHA1_80`), TURN ChannelData 4, UDP 8, IPv4 20.
pub const HEADERS: [(&str, u64); 5] = [
    ("RTP", 12),
    ("SRTP tag", 10),
    ("ChannelData", 4),
    ("UDP", 8),
    ("IPv4", 20),
];

/// Packets per second of a 20 ms frame stream.
pub const PACKETS_PER_SECOND: f64 = 50.0;

/// What one point of a sweep showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointStatus {
    /// Error-rate interval wholly below the threshold, MOS p5 at or above the target.
    Good,
    /// Error-rate interval wholly above the threshold, or MOS p5 below the target.
    Bad,
    /// The interval straddles the threshold: more calls per point would tell.
    Unsure,
    /// The simulator itself fell behind: the point says nothing of the network.
    Invalid,
}

/// One value of the swept field and what its run gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepPoint {
    /// The value, in the field's unit (e.g. 40 calls, 2.5 for `2.5Mbit`).
    pub value: f64,
    /// The value as written into the scenario (`40`, `"2.5Mbit"`).
    pub written: String,
    /// The run folder, relative to the sweep's folder.
    pub run: String,
    /// The error rate with its interval.
    pub error_rate: ErrorRate,
    /// The run's verdict.
    pub verdict: Verdict,
    /// MOS p5 of the worse direction (`None`: no media).
    pub mos_p5: Option<f64>,
    /// Set-up time p95, ms: invite sent → DTLS connected, summed by phase p95s (`None`: no
    /// call connected).
    pub setup_p95_ms: Option<f64>,
    /// Bits per second one call sends on the agent's link, each way, every header counted.
    pub bits_per_second_per_call: Option<f64>,
    /// Average bytes per packet on that link (media, RTCP and ICE consent together).
    pub bytes_per_packet: Option<f64>,
    /// What the point shows.
    pub status: PointStatus,
    /// Whether the point came from bisection near the knee rather than the grid.
    pub refined: bool,
}

/// The phases from `invite` sent to DTLS connected, one after the other. Not `first_rtp`: it
/// counts from the call's start, so it holds every phase before it.
const INVITE_TO_DTLS: [SetupPhase; 3] = [
    SetupPhase::InviteAnswer,
    SetupPhase::IceConnected,
    SetupPhase::DtlsConnected,
];

/// Set-up p95 in ms, `invite` sent → DTLS connected: the sum of those phases' p95s (`None`
/// when none was measured).
fn setup_p95_ms(
    setup: &std::collections::BTreeMap<SetupPhase, crate::Distribution>,
) -> Option<f64> {
    let p95: Vec<u64> = INVITE_TO_DTLS
        .iter()
        .filter_map(|p| setup.get(p)?.quantile(0.95))
        .collect();
    (!p95.is_empty()).then(|| p95.iter().sum::<u64>() as f64 / 1e3)
}

/// `sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// [`SWEEP_FILE_VERSION`].
    pub schema_version: u32,
    /// The scenario's name.
    pub scenario: String,
    /// The field swept, as given (`agents.concurrency`, `segment.wan.rate`).
    pub field: String,
    /// The field's unit as written (`""` for a plain number).
    pub unit: String,
    /// The error-rate threshold, a fraction.
    pub threshold: f64,
    /// The MOS p5 each point must keep.
    pub mos_target: f64,
    /// Calls per point.
    pub calls_per_point: u32,
    /// Every point, by value.
    pub points: Vec<SweepPoint>,
    /// The knee, when the sweep found one.
    pub knee: Option<Knee>,
    /// The answer in one sentence.
    pub answer: String,
}

/// Where the scenario stops carrying calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Knee {
    /// The last good value.
    pub value: f64,
    /// The value as written.
    pub written: String,
    /// Whether larger values are worse (concurrency, loss, delay) or better (a link's rate).
    pub larger_is_worse: bool,
    /// The first value past it that was not good, as written, and why.
    pub next: Option<(String, String)>,
}

impl SweepPoint {
    /// The point of `value` (written as `written`) from its run's summary, against
    /// `mos_target`.
    pub fn new(
        value: f64,
        written: String,
        run: String,
        file: &SummaryFile,
        mos_target: f64,
    ) -> Self {
        let s = &file.summary;
        let e = file.error_rate;
        let mos_p5 = [&s.agent_to_anchor, &s.anchor_to_agent]
            .iter()
            .filter_map(|d| d.mos.quantile(0.05))
            .min()
            .map(|c| c as f64 / 100.0);
        let setup_p95_ms = setup_p95_ms(&s.setup);
        let link = |d: &DirectionSummary| {
            (d.packets_sent > 0).then(|| {
                (
                    d.wire_bytes_sent as f64 / d.packets_sent as f64,
                    d.wire_bytes_sent as f64 * 8.0 * PACKETS_PER_SECOND / d.packets_sent as f64,
                )
            })
        };
        let agent_link = link(&s.agent_to_anchor);
        let status = if file.verdict == Verdict::Invalid {
            PointStatus::Invalid
        } else if e.attempts > 0 && e.lower > file.threshold
            || mos_p5.is_some_and(|m| m < mos_target)
        {
            PointStatus::Bad
        } else if e.attempts > 0 && e.upper < file.threshold && mos_p5.is_some() {
            PointStatus::Good
        } else {
            PointStatus::Unsure
        };
        Self {
            value,
            written,
            run,
            error_rate: e,
            verdict: file.verdict,
            mos_p5,
            setup_p95_ms,
            bits_per_second_per_call: agent_link.map(|l| l.1),
            bytes_per_packet: agent_link.map(|l| l.0),
            status,
            refined: false,
        }
    }

    /// Why the point is not good, for a person.
    pub fn why(&self, threshold: f64, mos_target: f64) -> String {
        match self.status {
            PointStatus::Invalid => "the simulator itself fell behind".to_owned(),
            PointStatus::Unsure => format!(
                "its error-rate interval ({:.1}–{:.1} %) straddles {:.1} %",
                self.error_rate.lower * 100.0,
                self.error_rate.upper * 100.0,
                threshold * 100.0
            ),
            PointStatus::Bad if self.mos_p5.is_some_and(|m| m < mos_target) => format!(
                "MOS p5 falls below {mos_target} ({:.2})",
                self.mos_p5.unwrap_or(0.0)
            ),
            PointStatus::Bad => format!(
                "the error rate passes {:.1} % ({:.1} %, interval {:.1}–{:.1} %)",
                threshold * 100.0,
                self.error_rate.rate * 100.0,
                self.error_rate.lower * 100.0,
                self.error_rate.upper * 100.0
            ),
            PointStatus::Good => "it carries calls".to_owned(),
        }
    }
}

/// The calls a point needs so that a clean run (no error) proves its error rate below
/// `threshold` at `confidence`.
pub fn calls_to_prove(threshold: f64, confidence: f64) -> u64 {
    ErrorRate::new(0, 1, confidence)
        .calls_needed(threshold)
        .unwrap_or(1)
}

/// Which way the field makes things worse, from the points (sorted by value): better with
/// larger values when the first non-good point lies below every good one.
fn larger_is_worse(points: &[SweepPoint]) -> bool {
    let first_good = points.iter().position(|p| p.status == PointStatus::Good);
    let first_bad = points
        .iter()
        .position(|p| matches!(p.status, PointStatus::Bad | PointStatus::Invalid));
    match (first_good, first_bad) {
        (Some(g), Some(b)) => g < b,
        _ => true,
    }
}

/// Whether larger values are worse, and the points walked from the good end.
fn from_good_end(points: &[SweepPoint]) -> (bool, Vec<&SweepPoint>) {
    let worse = larger_is_worse(points);
    let ordered = if worse {
        points.iter().collect()
    } else {
        points.iter().rev().collect()
    };
    (worse, ordered)
}

/// The knee of `points` (sorted by value): walking from the good end, the last good point
/// before the first bad or invalid one.
pub fn knee(points: &[SweepPoint], threshold: f64, mos_target: f64) -> Option<Knee> {
    let (worse, ordered) = from_good_end(points);
    let mut last_good = None;
    for (i, p) in ordered.iter().enumerate() {
        match p.status {
            PointStatus::Good => last_good = Some(i),
            PointStatus::Bad | PointStatus::Invalid => break,
            PointStatus::Unsure => {}
        }
    }
    let i = last_good?;
    let next = ordered[i + 1..]
        .iter()
        .find(|p| p.status != PointStatus::Good)
        .map(|p| (p.written.clone(), p.why(threshold, mos_target)));
    Some(Knee {
        value: ordered[i].value,
        written: ordered[i].written.clone(),
        larger_is_worse: worse,
        next,
    })
}

/// The pair of adjacent points, by value, between which the knee lies (the good one first):
/// where bisection should look next. `None` when no good point borders a bad one.
pub fn knee_bracket(points: &[SweepPoint]) -> Option<(f64, f64)> {
    let (_, ordered) = from_good_end(points);
    ordered.windows(2).find_map(|w| {
        (w[0].status == PointStatus::Good
            && matches!(w[1].status, PointStatus::Bad | PointStatus::Invalid))
        .then_some((w[0].value, w[1].value))
    })
}

/// The sweep's answer in one sentence.
pub fn answer(sweep: &SweepFile) -> String {
    let field = &sweep.field;
    let what = if field.ends_with("concurrency") {
        "concurrent calls".to_owned()
    } else {
        format!(
            "{field} (unit {})",
            if sweep.unit.is_empty() {
                "none"
            } else {
                &sweep.unit
            }
        )
    };
    match &sweep.knee {
        Some(k) => {
            let past = k
                .next
                .as_ref()
                .map_or("at every value tried".to_owned(), |(v, why)| {
                    format!("before {why} at {v}")
                });
            if field.ends_with("concurrency") {
                format!(
                    "{} carries {} concurrent calls {past}.",
                    sweep.scenario, k.written
                )
            } else if k.larger_is_worse {
                format!(
                    "{} carries its calls up to {field} = {} {past}.",
                    sweep.scenario, k.written
                )
            } else {
                format!(
                    "{} carries its calls down to {field} = {} {past}.",
                    sweep.scenario, k.written
                )
            }
        }
        None => {
            let unsure = sweep.points.iter().all(|p| p.status == PointStatus::Unsure);
            if unsure {
                format!(
                    "{}: no point proves its error rate below {:.1} % with {} calls; \
                     run more calls per point (--calls).",
                    sweep.scenario,
                    sweep.threshold * 100.0,
                    sweep.calls_per_point
                )
            } else {
                format!(
                    "{} carries calls at no value of {what} tried: the first point is already \
                     {}.",
                    sweep.scenario,
                    sweep.points.first().map_or("missing".to_owned(), |p| p
                        .why(sweep.threshold, sweep.mos_target))
                )
            }
        }
    }
}

/// The bandwidth arithmetic of `point` for a person: measured bytes per packet broken into the
/// payload and every header, times the packet rate.
pub fn bandwidth_arithmetic(point: &SweepPoint) -> Option<String> {
    let (bytes, bps) = (point.bytes_per_packet?, point.bits_per_second_per_call?);
    let headers: u64 = HEADERS.iter().map(|(_, b)| b).sum();
    let parts: Vec<String> = HEADERS.iter().map(|(n, b)| format!("{n} {b}")).collect();
    Some(format!(
        "{bytes:.1} B per packet on the agent's link (measured; RTCP and ICE consent included) = \
         Opus payload {:.1} B + {} ({headers} B of headers); × {PACKETS_PER_SECOND:.0} packets/s \
         × 8 = {:.1} kbit/s per call each way",
        bytes - headers as f64,
        parts.join(" + "),
        bps / 1e3
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(value: f64, status: PointStatus) -> SweepPoint {
        SweepPoint {
            value,
            written: format!("{value}"),
            run: String::new(),
            error_rate: ErrorRate::new(0, 200, 0.95),
            verdict: Verdict::Pass,
            mos_p5: Some(if status == PointStatus::Bad { 3.1 } else { 4.2 }),
            setup_p95_ms: None,
            bits_per_second_per_call: Some(76_000.0),
            bytes_per_packet: Some(190.0),
            status,
            refined: false,
        }
    }

    #[test]
    fn set_up_sums_invite_to_dtls_and_not_the_cumulative_first_rtp() {
        let mut setup = std::collections::BTreeMap::new();
        for (phase, ms) in [
            (SetupPhase::SignallingConnect, 180),
            (SetupPhase::IceCollection, 175),
            (SetupPhase::InviteAnswer, 90),
            (SetupPhase::IceConnected, 370),
            (SetupPhase::DtlsConnected, 260),
            (SetupPhase::FirstRtp, 910),
        ] {
            let mut d = crate::Distribution::new(crate::distribution::Unit::Micros);
            d.record(ms * 1000);
            setup.insert(phase, d);
        }
        // 90 + 370 + 260 ms, within the histogram's 2 significant digits.
        let ms = setup_p95_ms(&setup).unwrap();
        assert!((ms - 720.0).abs() < 720.0 * 0.01, "{ms}");
        assert_eq!(setup_p95_ms(&std::collections::BTreeMap::new()), None);
    }

    #[test]
    fn the_knee_is_the_last_good_value_before_the_first_bad_one_either_way() {
        use PointStatus::*;
        let rising = [
            point(10.0, Good),
            point(20.0, Unsure),
            point(30.0, Good),
            point(40.0, Bad),
            point(50.0, Good),
        ];
        let k = knee(&rising, 0.02, 3.6).unwrap();
        assert_eq!((k.value, k.larger_is_worse), (30.0, true));
        assert_eq!(k.next.as_ref().unwrap().0, "40");
        assert!(
            k.next
                .as_ref()
                .unwrap()
                .1
                .contains("MOS p5 falls below 3.6")
        );
        assert_eq!(knee_bracket(&rising), Some((30.0, 40.0)));
        // A link's rate: bad at the low end, good above.
        let rate = [
            point(1.0, Bad),
            point(2.0, Invalid),
            point(3.0, Good),
            point(4.0, Good),
        ];
        let k = knee(&rate, 0.02, 3.6).unwrap();
        assert_eq!((k.value, k.larger_is_worse), (3.0, false));
        assert_eq!(knee_bracket(&rate), Some((3.0, 2.0)));
        // Nothing good: no knee.
        assert_eq!(
            knee(&[point(1.0, Unsure), point(2.0, Bad)], 0.02, 3.6),
            None
        );
    }

    #[test]
    fn a_clean_run_needs_about_190_calls_to_prove_a_2_percent_rate() {
        let n = calls_to_prove(0.02, 0.95);
        assert!(ErrorRate::new(0, n, 0.95).upper < 0.02);
        assert!(ErrorRate::new(0, n - 1, 0.95).upper >= 0.02);
        assert!((180..200).contains(&n), "{n}");
    }

    #[test]
    fn the_arithmetic_adds_up_to_the_measured_packet() {
        let text = bandwidth_arithmetic(&point(1.0, PointStatus::Good)).unwrap();
        assert!(text.starts_with("190.0 B per packet"), "{text}");
        assert!(text.contains("Opus payload 136.0 B + RTP 12 + SRTP tag 10 + ChannelData 4 + UDP 8 + IPv4 20 (54 B of headers)"), "{text}");
        assert!(text.ends_with("76.0 kbit/s per call each way"), "{text}");
    }
}
