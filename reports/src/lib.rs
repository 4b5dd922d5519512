//! The results model of the softphone media-path simulator.
//!
//! Every other crate writes into these types: a [`CallRecord`] per call (one JSON line in
//! `calls.jsonl`, appended as the call ends), a [`RunSummary`] over calls (counts and
//! [`Distribution`]s that merge exactly across shards), and the figures of DESIGN §6 computed the
//! way their standards define them:
//!
//! - [`jitter`]: RFC 3550 §6.4.1 interarrival jitter;
//! - [`loss`]: loss from RTP sequence numbers (RFC 3550 A.1), with loss bursts;
//! - [`emodel`]: the ITU-T G.107 E-model, R and MOS;
//! - [`verdict`]: the error rate's Wilson score interval and the verdict against a threshold;
//! - [`capacity`]: capacity sweeps, their knee and answer;
//! - [`overload`]: when the simulator itself fell behind, which makes a run's verdict invalid.
//!
//! ```
//! use reports::{ErrorRate, Verdict};
//!
//! // 200 calls, 1 failed: 0.5 %, but 200 calls cannot yet show it is below 2 %.
//! let rate = ErrorRate::new(1, 200, 0.95);
//! assert_eq!(rate.verdict(0.02), Verdict::Inconclusive);
//! assert!(rate.calls_needed(0.02).unwrap() > 200);
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod capacity;
pub mod charts;
pub mod components;
pub mod distribution;
pub mod emodel;
pub mod guidance;
pub mod html;
pub mod jitter;
pub mod loss;
pub mod output;
pub mod overload;
pub mod record;
pub mod summary;
pub mod verdict;

pub use components::Components;
pub use distribution::{Distribution, Unit};
pub use output::{LatePart, SummaryFile};
pub use overload::{LateCause, LateSpan, OwnLateness};
pub use record::{
    CallIdentity, CallKind, CallRecord, ConferenceAudio, Failure, FailureClass, Heard, MediaStats,
    Milestones, Outcome, RelayTransport, SCHEMA_VERSION, SessionState, SetupPhase, Shard,
};
pub use summary::{DirectionSummary, OutcomeCounts, RunSummary};
pub use verdict::{ErrorRate, ProportionTest, Verdict};
