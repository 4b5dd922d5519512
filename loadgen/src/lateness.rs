//! How late this process's own media senders were, counted as they send.
//!
//! Every 20 ms frame the agents or the anchor send is due at an instant; the precise timer
//! ([`crate::clock`]) or the anchor's `ppoll` wakes the sender, and how far past that instant it
//! sends is the simulator's own lateness, which the receivers would measure as the network's
//! jitter. The per-call records keep its distribution; these process-wide counters keep its
//! timing, so that a monitor reading them at intervals can say *when* the simulator fell behind
//! (`sim::overload`). They only ever grow: several monitors (parallel runs in one test process)
//! each take differences of their own snapshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Which of the simulator's senders a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The agents' legs (the load generator).
    Agents,
    /// The anchor's media server (the customer's side).
    Anchor,
}

impl Sender {
    /// Both senders, agents first.
    pub const ALL: [Self; 2] = [Self::Agents, Self::Anchor];

    /// A stable name for a person.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Agents => "agents' senders",
            Self::Anchor => "anchor's senders",
        }
    }

    const fn index(self) -> usize {
        match self {
            Self::Agents => 0,
            Self::Anchor => 1,
        }
    }
}

/// Lower bounds of the lateness buckets, µs: a frame counts in every bucket it reaches, so a
/// difference of two snapshots gives how many frames of an interval were at least that late.
pub const LATE_BOUNDS_US: [u64; 6] = [2_000, 5_000, 10_000, 20_000, 50_000, 100_000];

struct Counters {
    frames: AtomicU64,
    late: [AtomicU64; LATE_BOUNDS_US.len()],
}

static COUNTERS: [Counters; 2] = [const {
    Counters {
        frames: AtomicU64::new(0),
        late: [const { AtomicU64::new(0) }; LATE_BOUNDS_US.len()],
    }
}; 2];

/// Counts one frame `sender` sent `late` after it was due.
pub fn record(sender: Sender, late: Duration) {
    let c = &COUNTERS[sender.index()];
    c.frames.fetch_add(1, Ordering::Relaxed);
    let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
    for (bound, count) in LATE_BOUNDS_US.iter().zip(&c.late) {
        if us < *bound {
            break;
        }
        count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The counters of one sender at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Frames sent so far.
    pub frames: u64,
    /// Frames at least [`LATE_BOUNDS_US`]`[i]` late, so far.
    pub late: [u64; LATE_BOUNDS_US.len()],
}

impl Snapshot {
    /// The counters of `sender` now.
    pub fn of(sender: Sender) -> Self {
        let c = &COUNTERS[sender.index()];
        Self {
            frames: c.frames.load(Ordering::Relaxed),
            late: std::array::from_fn(|i| c.late[i].load(Ordering::Relaxed)),
        }
    }

    /// What was counted between `earlier` and this snapshot.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            frames: self.frames.saturating_sub(earlier.frames),
            late: std::array::from_fn(|i| self.late[i].saturating_sub(earlier.late[i])),
        }
    }

    /// The largest bucket bound some frame reached, µs (`None`: none was 2 ms late).
    pub fn worst_bound_us(&self) -> Option<u64> {
        LATE_BOUNDS_US
            .iter()
            .zip(&self.late)
            .rev()
            .find(|(_, n)| **n > 0)
            .map(|(b, _)| *b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_frame_counts_in_every_bucket_it_reaches_and_differences_isolate_an_interval() {
        // The counters are process-wide: other tests may send meanwhile, so only this test's
        // own sender is looked at, and only through differences.
        let before = Snapshot::of(Sender::Anchor);
        record(Sender::Anchor, Duration::from_micros(300));
        record(Sender::Anchor, Duration::from_millis(12));
        let d = Snapshot::of(Sender::Anchor).since(&before);
        assert!(d.frames >= 2);
        assert!(d.late[0] >= 1 && d.late[1] >= 1 && d.late[2] >= 1);
        assert!(d.worst_bound_us() >= Some(10_000));
        let quiet = Snapshot::default().since(&Snapshot::default());
        assert_eq!(quiet.worst_bound_us(), None);
    }
}
