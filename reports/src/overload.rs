//! When the simulator itself fell behind during a run, and whether its figures can then judge
//! the network at all.
//!
//! A monitor in the run (`sim::overload`) looks at the simulator's own components at fixed
//! windows, as the run goes: how late its media senders were, whether one of its threads was
//! busy for a whole window, whether the CPU quota of its control group held it back, whether a
//! component failed to send. Each late stretch becomes a [`LateSpan`]. A run whose own
//! lateness could have made calls fail, or made the network's jitter look worse than it is,
//! gets the verdict `invalid` ([`crate::Verdict::Invalid`]): it neither passes nor fails the
//! network, and every output says which component was late, when and by how much.

use serde::{Deserialize, Serialize};

use crate::record::CallRecord;

/// Starved time (a thread busy for whole windows, or the CPU quota throttling the process)
/// from which a run is invalid, ms: 2 s is a whole DTLS retransmission (1 s, then 2 s) or
/// 100 frames of every call sent late, enough to fail a handshake or fake a jitter figure.
pub const STARVED_LIMIT_MS: u64 = 2_000;

/// How far back from its end a failure is taken to have begun, at most, ms: the longest of the
/// default session timeouts (10 s WebSocket connect; dead air 10 s) with margin. A failure
/// began at the last milestone its call reached, or this long before it ended if later.
pub const FAILURE_ONSET_MS: u64 = 15_000;

/// What the monitor saw of the simulator's own timeliness (`summary.json`'s `own_lateness`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnLateness {
    /// The monitor's window, ms (0: the run was not monitored, e.g. a merge of older runs).
    pub window_ms: u64,
    /// Each stretch during which one component was late, by start.
    pub spans: Vec<LateSpan>,
}

/// Why a component counts as late in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateCause {
    /// More than 1 % of the frames a sender sent in the window were 2 ms or more late (its
    /// window p99 above the pacing limit).
    Pacing,
    /// One thread used 90 % or more of a core through the window: work queued behind it.
    Saturated,
    /// The control group's CPU quota stopped the process for part of the window.
    Throttled,
    /// A component could not send (full socket buffers).
    SendFailed,
}

impl LateCause {
    /// Whether the cause starves the whole process of time (counts towards
    /// [`STARVED_LIMIT_MS`]).
    pub const fn starves(self) -> bool {
        matches!(self, Self::Saturated | Self::Throttled)
    }
}

/// One stretch of consecutive windows during which one component was late for one cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateSpan {
    /// Start, ms since the Unix epoch.
    pub from_unix_ms: u64,
    /// End, ms since the Unix epoch.
    pub to_unix_ms: u64,
    /// The component: `agents' senders`, `anchor's senders`, `thread NAME (component)`,
    /// `cpu quota`, or a counter's component (`turn`, `path hq → turn:…`).
    pub component: String,
    /// Why it counts as late.
    pub cause: LateCause,
    /// The worst figure of the stretch, for a person: e.g. `frames ≥ 20 ms late`, `100 % busy`,
    /// `throttled 412 ms`, `37 sends failed`.
    pub worst: String,
}

impl LateSpan {
    /// The span's length, ms.
    pub fn duration_ms(&self) -> u64 {
        self.to_unix_ms.saturating_sub(self.from_unix_ms)
    }

    /// One line for a person: `anchor's senders 12:00:01.5–12:00:04.0 (2.5 s): pacing, frames
    /// ≥ 20 ms late`.
    pub fn describe(&self) -> String {
        format!(
            "{} {}–{} ({:.1} s): {}, {}",
            self.component,
            clock_time(self.from_unix_ms),
            clock_time(self.to_unix_ms),
            self.duration_ms() as f64 / 1e3,
            match self.cause {
                LateCause::Pacing => "pacing",
                LateCause::Saturated => "thread saturated",
                LateCause::Throttled => "CPU quota",
                LateCause::SendFailed => "send failed",
            },
            self.worst
        )
    }
}

impl OwnLateness {
    /// Adds `other`'s spans (merging runs or shards), kept in start order.
    pub fn merge(&mut self, other: &Self) {
        self.window_ms = self.window_ms.max(other.window_ms);
        self.spans.extend(other.spans.iter().cloned());
        self.spans.sort_by_key(|s| (s.from_unix_ms, s.to_unix_ms));
    }

    /// Starved time in all, ms: the union of the spans whose cause starves the process.
    pub fn starved_ms(&self) -> u64 {
        let mut starved: Vec<(u64, u64)> = self
            .spans
            .iter()
            .filter(|s| s.cause.starves())
            .map(|s| (s.from_unix_ms, s.to_unix_ms))
            .collect();
        starved.sort_unstable();
        let (mut total, mut reach) = (0, 0);
        for (from, to) in starved {
            let from = from.max(reach);
            if to > from {
                total += to - from;
                reach = to;
            }
        }
        total
    }

    /// Why the run cannot judge the network for the lateness the monitor saw (`None`: it kept
    /// up). Pacing and send failures over the whole run are judged from the calls' own figures
    /// and the components' counters ([`crate::SummaryFile::own_faults`]).
    pub fn starved(&self) -> Option<String> {
        let starved = self.starved_ms();
        (starved >= STARVED_LIMIT_MS).then(|| {
            let mut worst: Vec<&LateSpan> =
                self.spans.iter().filter(|s| s.cause.starves()).collect();
            worst.sort_by_key(|s| std::cmp::Reverse(s.duration_ms()));
            let list: Vec<String> = worst.iter().take(3).map(|s| s.describe()).collect();
            format!(
                "the simulator was starved of CPU for {:.1} s in all (a run is invalid from \
                 {:.0} s: its timers fire late and its work queues up): {}",
                starved as f64 / 1e3,
                STARVED_LIMIT_MS as f64 / 1e3,
                list.join("; ")
            )
        })
    }

    /// The first span overlapping `[from, to]` (ms since the Unix epoch).
    pub fn during(&self, from_unix_ms: u64, to_unix_ms: u64) -> Option<&LateSpan> {
        self.spans
            .iter()
            .find(|s| s.from_unix_ms <= to_unix_ms && s.to_unix_ms >= from_unix_ms)
    }

    /// Marks each failed or dropped call whose failure began while a component was late
    /// ([`crate::record::Failure::own_lateness`]); returns how many it marked.
    pub fn mark(&self, records: &mut [CallRecord]) -> usize {
        let mut marked = 0;
        for r in records {
            let Some((from, to)) = failure_onset(r) else {
                continue;
            };
            let Some(span) = self.during(from, to) else {
                continue;
            };
            let describe = span.describe();
            if let Some(f) = r.failure.as_mut() {
                f.own_lateness = Some(describe);
                marked += 1;
            }
        }
        marked
    }
}

/// When a failed call's failure began and ended, ms since the Unix epoch: from the last
/// milestone it reached (or [`FAILURE_ONSET_MS`] before its end, if later) to its end.
fn failure_onset(r: &CallRecord) -> Option<(u64, u64)> {
    r.failure.as_ref()?;
    let m = &r.milestones;
    let ended = m.ended_us?;
    let reached = [
        m.local_media_us,
        m.local_description_us,
        m.signalling_connected_us,
        m.ice_collected_us,
        m.invite_sent_us,
        m.answer_received_us,
        m.accepted_us,
        m.ice_connected_us,
        m.dtls_connected_us,
        m.first_rtp_us,
        m.hangup_us,
    ]
    .into_iter()
    .flatten()
    .filter(|&t| t <= ended)
    .max()
    .unwrap_or(0);
    let onset = reached.max(ended.saturating_sub(FAILURE_ONSET_MS * 1_000));
    Some((
        r.started_unix_ms + onset / 1_000,
        r.started_unix_ms + ended.div_ceil(1_000),
    ))
}

/// `HH:MM:SS.s` UTC of `unix_ms`.
fn clock_time(unix_ms: u64) -> String {
    let day_ms = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1_000 % 60,
        day_ms / 100 % 10
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(from: u64, to: u64, cause: LateCause) -> LateSpan {
        LateSpan {
            from_unix_ms: from,
            to_unix_ms: to,
            component: "thread sim (agents)".into(),
            cause,
            worst: "100 % busy".into(),
        }
    }

    #[test]
    fn starved_time_is_the_union_of_starving_spans_and_invalidates_from_the_limit() {
        let mut own = OwnLateness {
            window_ms: 500,
            spans: vec![
                span(1_000, 2_000, LateCause::Saturated),
                span(1_500, 2_500, LateCause::Throttled),
                // Pacing alone does not starve: the calls' p99 judges it.
                span(10_000, 20_000, LateCause::Pacing),
            ],
        };
        assert_eq!(own.starved_ms(), 1_500);
        assert_eq!(own.starved(), None);
        own.spans.push(span(5_000, 5_500, LateCause::Saturated));
        assert_eq!(own.starved_ms(), 2_000);
        let why = own.starved().expect("2 s starved");
        assert!(why.contains("2.0 s in all"), "{why}");
        assert!(
            why.contains("thread sim (agents) 00:00:01.0–00:00:02.0 (1.0 s)"),
            "{why}"
        );
    }

    #[test]
    fn a_span_overlaps_an_interval_touching_it_and_none_apart() {
        let own = OwnLateness {
            window_ms: 500,
            spans: vec![span(1_000, 2_000, LateCause::Pacing)],
        };
        assert!(own.during(2_000, 3_000).is_some());
        assert!(own.during(0, 1_000).is_some());
        assert!(own.during(2_001, 3_000).is_none());
        assert!(own.during(0, 999).is_none());
    }
}
