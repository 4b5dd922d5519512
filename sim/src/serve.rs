//! `sim serve --out DIR`: a run folder for calls placed by any client — the CCP's softphone
//! library in a browser, our `loadgen`, a third party's — from what the anchor measured on its
//! own. Each call's record is appended to `calls.jsonl` as it ends; the whole folder (summary,
//! CSV, JUnit, Markdown, HTML with charts) is written when the server stops.
//!
//! A record written here is the anchor's view: its clock starts when the invite arrives
//! (`invite_sent_us` is 0), and of the milestones it knows only DTLS connected, the client's
//! first RTP packet and the end. `agent_to_anchor` is the anchor's measurement of the client's
//! stream (RFC 3550 jitter and loss from arrival times and RTP timestamps; delay too when the
//! client stamped its frames); `anchor_to_agent` is the client's, from its RTCP reception
//! reports (loss, jitter, and half the round trip as the one-way delay).

use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use reports::output::SummaryFile;
use reports::{
    CallIdentity, CallKind, CallRecord, Failure, FailureClass, Milestones, Outcome, RunSummary,
    SCHEMA_VERSION, SessionState, Shard,
};

use crate::anchor::{AnchorStats, EndedCall};
use crate::run::VendorSide;

/// The scenario name of a served run's records and summary.
pub const SCENARIO: &str = "serve";

/// Writes a served run's folder as calls end.
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    run: String,
    jsonl: File,
    records: Vec<CallRecord>,
}

impl Recorder {
    /// Creates `dir` (and its `calls.jsonl`, empty) for the calls of `vendor`'s anchor, which
    /// keeps its ended calls from now on.
    ///
    /// # Errors
    /// The folder or the file could not be created.
    pub fn create(dir: &Path, vendor: &VendorSide) -> io::Result<Self> {
        vendor.anchor_stats.keep_ended_calls();
        std::fs::create_dir_all(dir)?;
        let jsonl = File::create(dir.join("calls.jsonl"))?;
        let run = dir
            .file_name()
            .map_or_else(|| SCENARIO.to_owned(), |n| n.to_string_lossy().into_owned());
        Ok(Self {
            dir: dir.to_owned(),
            run,
            jsonl,
            records: Vec::new(),
        })
    }

    /// Takes the calls that ended since the last time from the anchor, appends their records
    /// to `calls.jsonl`, and returns how many.
    ///
    /// # Errors
    /// `calls.jsonl` could not be written (the records are kept for the summary regardless).
    pub fn take(&mut self, stats: &AnchorStats) -> io::Result<usize> {
        let ended: Vec<EndedCall> = match stats.ended_calls.lock() {
            Ok(mut calls) => calls.drain(..).collect(),
            Err(_) => return Ok(0),
        };
        let mut written = Ok(());
        for e in &ended {
            let r = record(e, &self.run);
            if written.is_ok() {
                written = serde_json::to_string(&r)
                    .map_err(io::Error::other)
                    .and_then(|line| writeln!(self.jsonl, "{line}"));
            }
            self.records.push(r);
        }
        written.map(|()| ended.len())
    }

    /// The calls recorded so far.
    pub fn records(&self) -> &[CallRecord] {
        &self.records
    }

    /// Writes the rest of the folder: the summary against the 2 % threshold with the vendor
    /// side's own counters, and every report.
    ///
    /// # Errors
    /// The folder could not be written.
    pub fn finish(mut self, vendor: &VendorSide) -> Result<(PathBuf, SummaryFile), String> {
        self.take(&vendor.anchor_stats)
            .map_err(|e| format!("{}: {e}", self.dir.join("calls.jsonl").display()))?;
        let mut summary = RunSummary::new();
        for r in &self.records {
            // Invariant: records are built here with the units the crate chose.
            let _ = summary.add(r);
        }
        let mut file = SummaryFile::new(SCENARIO, summary, 0.02, 0.95, false);
        vendor.count_into(&mut file.components);
        file.settle_verdict();
        crate::report::write(&self.dir, &self.records, &file).map_err(|e| e.to_string())?;
        Ok((self.dir, file))
    }
}

/// The call record of a call the anchor ended.
#[must_use]
pub fn record(e: &EndedCall, run: &str) -> CallRecord {
    let failed = |class, detail: String| {
        (
            Outcome::Failed,
            Some(Failure {
                class,
                detail,
                ccp_message: None,
                own_lateness: None,
            }),
        )
    };
    let (outcome, failure) = if e.connected_us.is_none() {
        // Never connected at the anchor: the handshake did not finish on the pair ICE
        // nominated, or no check nominated one.
        match &e.dtls_progress {
            Some(p) => failed(
                FailureClass::DtlsHandshakeFailure,
                format!("DTLS did not complete at the anchor: {p}"),
            ),
            _ => failed(
                FailureClass::IceConnectionFailed,
                "no ICE check of the client's reached the anchor's leg".into(),
            ),
        }
    } else if e.ended_by == "abandoned" {
        (
            Outcome::Dropped,
            Some(Failure {
                class: FailureClass::MediaTimeout,
                detail: "the client went away: its signalling closed and its ICE checks stopped \
                         (consent lapsed, RFC 7675)"
                    .into(),
                ccp_message: None,
                own_lateness: None,
            }),
        )
    } else {
        (Outcome::Completed, None)
    };
    CallRecord {
        schema_version: SCHEMA_VERSION,
        identity: CallIdentity {
            run: run.to_owned(),
            call: e.call_id.clone(),
            agent: e.call_context_token.clone(),
            scenario: SCENARIO.to_owned(),
            site: "external".into(),
            profile: "external".into(),
            kind: CallKind::Inbound,
            shard: Shard { index: 0, count: 1 },
        },
        started_unix_ms: e.started_unix_ms,
        milestones: Milestones {
            invite_sent_us: Some(0),
            dtls_connected_us: e.connected_us,
            first_rtp_us: e.first_rtp_us,
            ended_us: Some(e.duration_us),
            ..Milestones::default()
        },
        last_state: match outcome {
            Outcome::Completed => SessionState::Disconnected,
            Outcome::Dropped => SessionState::Talking,
            _ => SessionState::ConnectContact,
        },
        outcome,
        failure,
        // The anchor sees a browser's restarts (its invites), not their timing or its ICE
        // state: those are the client's to report.
        ice: reports::record::IceCounters {
            restart_attempts: e.ice_restarts,
            restart_successes: e.ice_restarts,
            ..Default::default()
        },
        relay_transport: None,
        // A call that never connected carried no media to measure.
        agent_to_anchor: e.connected_us.is_some().then(|| e.agent_to_anchor.clone()),
        anchor_to_agent: e.anchor_to_agent.clone(),
        recording: e.recording.clone(),
        // A browser's conference is heard in the browser: the anchor alone cannot say.
        conference: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // a meter needs an epoch; no clock is read otherwise
    fn ended(connected: bool, dtls: Option<&str>) -> EndedCall {
        let stats = loadgen::measure::MediaMeter::new(std::time::Instant::now()).finish(
            0,
            0,
            reports::emodel::Codec::OPUS,
        );
        EndedCall {
            call_id: "a1".into(),
            call_context_token: "c1".into(),
            ended_by: "bye",
            started_unix_ms: 1,
            duration_us: 5_000_000,
            connected_us: connected.then_some(300_000),
            first_rtp_us: connected.then_some(320_000),
            agent_to_anchor: stats,
            anchor_to_agent: None,
            anchor_sent: 0,
            anchor_wire_bytes: 0,
            dtls_progress: dtls.map(str::to_owned),
            recording: connected.then(|| "recordings/c1.wav".to_owned()),
            ice_restarts: 0,
        }
    }

    #[test]
    fn a_call_the_anchor_never_connected_is_a_failure_with_what_it_got_to() {
        let r = record(
            &ended(
                false,
                Some("last sent flight 4 at 0.05 s (3 expiries of its timer)"),
            ),
            "run",
        );
        r.check().unwrap();
        assert_eq!(r.outcome, Outcome::Failed);
        let f = r.failure.unwrap();
        assert_eq!(f.class, FailureClass::DtlsHandshakeFailure);
        assert!(f.detail.contains("last sent flight 4"), "{}", f.detail);
        assert_eq!(r.agent_to_anchor, None, "no media was measured");

        let r = record(&ended(false, None), "run");
        assert_eq!(r.failure.unwrap().class, FailureClass::IceConnectionFailed);

        let r = record(&ended(true, None), "run");
        r.check().unwrap();
        assert_eq!(r.outcome, Outcome::Completed);
        assert_eq!(r.recording.as_deref(), Some("recordings/c1.wav"));
        assert!(r.agent_to_anchor.is_some());
    }
}
