//! The run summary: counts and distributions over calls, mergeable exactly across shards.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::distribution::{Distribution, MergeError, Unit};
use crate::record::{CallKind, CallRecord, FailureClass, MediaStats, Outcome, SetupPhase, Shard};
use crate::verdict::ErrorRate;

/// The version of the [`RunSummary`] JSON layout.
pub const SUMMARY_SCHEMA_VERSION: u32 = 1;

/// Counts and distributions over a set of calls.
///
/// Built by [`RunSummary::add`] one record at a time, or by [`RunSummary::merge`] from the
/// summaries of shards: both give the same summary for the same records, in any order and any
/// split (counts add, sets unite, histograms add bucket by bucket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSummary {
    /// Always [`SUMMARY_SCHEMA_VERSION`] when written by this version.
    pub schema_version: u32,
    /// The runs whose calls are counted (one, or several after a merge).
    pub runs: BTreeSet<String>,
    /// The scenarios of those runs.
    pub scenarios: BTreeSet<String>,
    /// The load-generator shards whose calls are counted.
    pub shards: BTreeSet<Shard>,
    /// Start of the earliest call, ms since the Unix epoch.
    pub first_start_unix_ms: Option<u64>,
    /// End of the latest call, ms since the Unix epoch.
    pub last_end_unix_ms: Option<u64>,
    /// Outcomes of every call.
    pub outcomes: OutcomeCounts,
    /// Failed and dropped calls by failure class.
    pub failures: BTreeMap<FailureClass, u64>,
    /// Failed and dropped calls whose failure began while one of the simulator's own
    /// components was late ([`crate::Failure::own_lateness`]).
    #[serde(default)]
    pub failed_while_late: u64,
    /// Outcomes per call kind.
    pub by_kind: BTreeMap<CallKind, OutcomeCounts>,
    /// Outcomes per site.
    pub by_site: BTreeMap<String, OutcomeCounts>,
    /// Durations of each setup phase, µs, over the calls that went through it.
    pub setup: BTreeMap<SetupPhase, Distribution>,
    /// Media from the agents to the anchor.
    pub agent_to_anchor: DirectionSummary,
    /// Media from the anchor to the agents.
    pub anchor_to_agent: DirectionSummary,
}

/// Calls by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeCounts {
    /// Connected and ended as intended.
    pub completed: u64,
    /// Never connected.
    pub failed: u64,
    /// Connected, then lost.
    pub dropped: u64,
}

impl OutcomeCounts {
    /// All calls attempted.
    pub fn attempts(&self) -> u64 {
        self.completed + self.failed + self.dropped
    }

    /// Calls that count against the error rate: failed + dropped.
    pub fn errors(&self) -> u64 {
        self.failed + self.dropped
    }

    /// The error rate with its Wilson interval at `confidence`.
    pub fn error_rate(&self, confidence: f64) -> ErrorRate {
        ErrorRate::new(self.errors(), self.attempts(), confidence)
    }

    fn count(&mut self, outcome: Outcome) {
        *match outcome {
            Outcome::Completed => &mut self.completed,
            Outcome::Failed => &mut self.failed,
            Outcome::Dropped => &mut self.dropped,
        } += 1;
    }

    fn add(&mut self, other: &Self) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.dropped += other.dropped;
    }
}

/// Media figures of one direction over all calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionSummary {
    /// Streams (call directions) that carried media.
    pub streams: u64,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// Bytes on the wire, every header counted.
    pub wire_bytes_sent: u64,
    /// RTP packets expected from sequence numbers.
    pub packets_expected: u64,
    /// Distinct RTP packets received.
    pub packets_received: u64,
    /// Packets lost in the network.
    pub packets_lost: u64,
    /// Packets lost to the jitter buffer (late).
    pub late_lost: u64,
    /// Duplicate packets.
    pub duplicates: u64,
    /// RFC 3550 jitter, once a second per stream, µs.
    pub jitter: Distribution,
    /// One-way delay of every packet, µs.
    pub one_way_delay: Distribution,
    /// Network loss per stream, basis points (1/100 %).
    pub loss: Distribution,
    /// Loss burst lengths, packets (one value per burst).
    pub burst_length: Distribution,
    /// MOS per stream, hundredths.
    pub mos: Distribution,
    /// The senders' pacing error, every frame, µs.
    #[serde(default = "micros")]
    pub send_pacing_error: Distribution,
}

fn micros() -> Distribution {
    Distribution::new(Unit::Micros)
}

impl Default for DirectionSummary {
    fn default() -> Self {
        Self {
            streams: 0,
            packets_sent: 0,
            wire_bytes_sent: 0,
            packets_expected: 0,
            packets_received: 0,
            packets_lost: 0,
            late_lost: 0,
            duplicates: 0,
            jitter: Distribution::new(Unit::Micros),
            one_way_delay: Distribution::new(Unit::Micros),
            loss: Distribution::new(Unit::BasisPoints),
            burst_length: Distribution::new(Unit::Count),
            mos: Distribution::new(Unit::Centi),
            send_pacing_error: Distribution::new(Unit::Micros),
        }
    }
}

impl DirectionSummary {
    fn add(&mut self, m: &MediaStats) -> Result<(), MergeError> {
        self.streams += 1;
        self.packets_sent += m.packets_sent;
        self.wire_bytes_sent += m.wire_bytes_sent;
        self.packets_expected += m.packets_expected;
        self.packets_received += m.packets_received;
        self.packets_lost += m.packets_lost;
        self.late_lost += m.late_lost;
        self.duplicates += m.duplicates;
        self.jitter.merge(&m.jitter)?;
        self.one_way_delay.merge(&m.one_way_delay)?;
        self.loss.record_hundredths(m.loss_percent());
        for (&len, &count) in &m.loss_bursts {
            self.burst_length.record_n(u64::from(len), count);
        }
        self.mos.record_hundredths(m.mos);
        self.send_pacing_error.merge(&m.send_pacing_error)
    }

    fn merge(&mut self, o: &Self) -> Result<(), MergeError> {
        self.streams += o.streams;
        self.packets_sent += o.packets_sent;
        self.wire_bytes_sent += o.wire_bytes_sent;
        self.packets_expected += o.packets_expected;
        self.packets_received += o.packets_received;
        self.packets_lost += o.packets_lost;
        self.late_lost += o.late_lost;
        self.duplicates += o.duplicates;
        self.jitter.merge(&o.jitter)?;
        self.one_way_delay.merge(&o.one_way_delay)?;
        self.loss.merge(&o.loss)?;
        self.burst_length.merge(&o.burst_length)?;
        self.mos.merge(&o.mos)?;
        self.send_pacing_error.merge(&o.send_pacing_error)
    }

    /// Network loss over all streams, percent of expected packets.
    pub fn loss_percent(&self) -> f64 {
        if self.packets_expected == 0 {
            0.0
        } else {
            100.0 * self.packets_lost as f64 / self.packets_expected as f64
        }
    }
}

impl Default for RunSummary {
    fn default() -> Self {
        Self::new()
    }
}

impl RunSummary {
    /// A summary of no calls.
    pub fn new() -> Self {
        Self {
            schema_version: SUMMARY_SCHEMA_VERSION,
            runs: BTreeSet::new(),
            scenarios: BTreeSet::new(),
            shards: BTreeSet::new(),
            first_start_unix_ms: None,
            last_end_unix_ms: None,
            outcomes: OutcomeCounts::default(),
            failures: BTreeMap::new(),
            failed_while_late: 0,
            by_kind: BTreeMap::new(),
            by_site: BTreeMap::new(),
            setup: SetupPhase::ALL
                .iter()
                .map(|&p| (p, Distribution::new(Unit::Micros)))
                .collect(),
            agent_to_anchor: DirectionSummary::default(),
            anchor_to_agent: DirectionSummary::default(),
        }
    }

    /// The summary of `records`.
    pub fn from_records<'a>(
        records: impl IntoIterator<Item = &'a CallRecord>,
    ) -> Result<Self, MergeError> {
        let mut summary = Self::new();
        for r in records {
            summary.add(r)?;
        }
        Ok(summary)
    }

    /// Counts one call.
    ///
    /// Fails only if a record's distributions carry the wrong unit (a record from a broken
    /// writer); the summary is then left partly updated and should be discarded.
    pub fn add(&mut self, r: &CallRecord) -> Result<(), MergeError> {
        let id = &r.identity;
        self.runs.insert(id.run.clone());
        self.scenarios.insert(id.scenario.clone());
        self.shards.insert(id.shard);
        let end = r.started_unix_ms + r.milestones.ended_us.unwrap_or(0) / 1000;
        self.first_start_unix_ms = Some(
            self.first_start_unix_ms
                .map_or(r.started_unix_ms, |t| t.min(r.started_unix_ms)),
        );
        self.last_end_unix_ms = Some(self.last_end_unix_ms.map_or(end, |t| t.max(end)));
        self.outcomes.count(r.outcome);
        if let Some(f) = &r.failure {
            *self.failures.entry(f.class).or_default() += 1;
            self.failed_while_late += u64::from(f.own_lateness.is_some());
        }
        self.by_kind.entry(id.kind).or_default().count(r.outcome);
        self.by_site
            .entry(id.site.clone())
            .or_default()
            .count(r.outcome);
        for (phase, dist) in &mut self.setup {
            if let Some(us) = r.milestones.phase_us(*phase) {
                dist.record(us);
            }
        }
        if let Some(m) = &r.agent_to_anchor {
            self.agent_to_anchor.add(m)?;
        }
        if let Some(m) = &r.anchor_to_agent {
            self.anchor_to_agent.add(m)?;
        }
        Ok(())
    }

    /// Adds another summary (a shard's, another run's) into this one.
    pub fn merge(&mut self, o: &Self) -> Result<(), MergeError> {
        self.runs.extend(o.runs.iter().cloned());
        self.scenarios.extend(o.scenarios.iter().cloned());
        self.shards.extend(o.shards.iter().copied());
        self.first_start_unix_ms = min_opt(self.first_start_unix_ms, o.first_start_unix_ms);
        self.last_end_unix_ms = self.last_end_unix_ms.max(o.last_end_unix_ms);
        self.outcomes.add(&o.outcomes);
        self.failed_while_late += o.failed_while_late;
        for (class, n) in &o.failures {
            *self.failures.entry(*class).or_default() += n;
        }
        for (kind, c) in &o.by_kind {
            self.by_kind.entry(*kind).or_default().add(c);
        }
        for (site, c) in &o.by_site {
            self.by_site.entry(site.clone()).or_default().add(c);
        }
        for (phase, d) in &o.setup {
            self.setup
                .entry(*phase)
                .or_insert_with(|| Distribution::new(Unit::Micros))
                .merge(d)?;
        }
        self.agent_to_anchor.merge(&o.agent_to_anchor)?;
        self.anchor_to_agent.merge(&o.anchor_to_agent)
    }

    /// The run's error rate, (failed + dropped) / attempts, with its Wilson interval.
    pub fn error_rate(&self, confidence: f64) -> ErrorRate {
        self.outcomes.error_rate(confidence)
    }

    /// The senders' pacing error at p99 in µs when it exceeds [`PACING_LIMIT_US`] in either
    /// direction: the load generator was too busy to send on time, and the jitter and delay
    /// figures carry up to that much of its own lateness. `None` when it kept time.
    pub fn generator_lateness_us(&self) -> Option<u64> {
        [&self.agent_to_anchor, &self.anchor_to_agent]
            .iter()
            .filter_map(|d| d.send_pacing_error.quantile(0.99))
            .max()
            .filter(|&p99| p99 > PACING_LIMIT_US)
    }
}

/// The pacing error (p99, µs) above which a run's jitter figures are flagged as partly the
/// load generator's own: twice the generator's own 1 ms target, where its lateness starts to
/// move the jitter figures a person reads (reported to 0.1 ms) by whole milliseconds.
pub const PACING_LIMIT_US: u64 = 2_000;

/// What to tell a person when the generator was late by `p99_us` at p99.
pub fn generator_lateness_warning(p99_us: u64) -> String {
    format!(
        "The load generator itself was late: its send pacing error reached {:.1} ms at p99 \
         (limit {:.0} ms), so the jitter and delay figures include up to that much of its own \
         lateness. Place fewer calls at once, or split the load over machines (loadgen --shard).",
        p99_us as f64 / 1000.0,
        PACING_LIMIT_US as f64 / 1000.0
    )
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_generator_is_flagged_in_either_direction() {
        let mut s = RunSummary::new();
        assert_eq!(s.generator_lateness_us(), None, "no media, nothing to flag");
        for _ in 0..1000 {
            s.agent_to_anchor.send_pacing_error.record(200);
            s.anchor_to_agent.send_pacing_error.record(200);
        }
        assert_eq!(s.generator_lateness_us(), None, "0.2 ms keeps time");
        for _ in 0..5 {
            s.agent_to_anchor.send_pacing_error.record(1_500);
        }
        assert_eq!(
            s.generator_lateness_us(),
            None,
            "1.5 ms at p99 is tolerated"
        );
        // 2 % of one direction's frames 5 ms late: its p99 is 5 ms.
        for _ in 0..25 {
            s.anchor_to_agent.send_pacing_error.record(5_000);
        }
        let p99 = s.generator_lateness_us().expect("flagged");
        assert!((4_900..=5_100).contains(&p99), "{p99}");
        assert!(generator_lateness_warning(p99).contains("5.0 ms at p99"));
    }
}
