//! Precise sleeping for async code: tokio's timers fire on a 1 ms wheel, which alone would put up
//! to a millisecond of jitter on every 20 ms frame the simulator sends and then measure it as the
//! network's. One thread keeps the deadlines of every sleeping task, waits for the earliest with
//! a nanosecond futex timeout and a 1 µs timer slack, and wakes the task when it is due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A deadline and the task to wake at it.
struct Entry {
    at: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The deadlines, and the one the timer thread sleeps until.
#[derive(Default)]
struct Deadlines {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    /// `None` while the thread waits with no deadline at all.
    sleeping_until: Option<Instant>,
}

struct Timer {
    deadlines: Mutex<Deadlines>,
    changed: Condvar,
}

/// The timer, its thread started on first use; `None` if the thread could not start.
fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
    *TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            deadlines: Mutex::new(Deadlines::default()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("precise-timer".into())
            .spawn(move || run(timer))
            .ok()
            .map(|_| timer)
    })
}

impl Timer {
    /// Adds a deadline. The thread is woken only when it sleeps past the new deadline: a
    /// 20 ms frame schedule registers later deadlines than the earliest one almost always, so
    /// registering costs no context switch.
    fn register(&self, at: Instant, waker: Waker) {
        let mut d = self
            .deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        d.seq += 1;
        let seq = d.seq;
        d.heap.push(Reverse(Entry { at, seq, waker }));
        if d.sleeping_until.is_none_or(|t| at < t) {
            d.sleeping_until = Some(at);
            self.changed.notify_one();
        }
    }
}

fn run(timer: &Timer) {
    let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(1_000));
    let mut due = Vec::new();
    let mut d = timer
        .deadlines
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    loop {
        let now = Instant::now();
        while d.heap.peek().is_some_and(|e| e.0.at <= now) {
            if let Some(Reverse(e)) = d.heap.pop() {
                due.push(e.waker);
            }
        }
        d.sleeping_until = d.heap.peek().map(|e| e.0.at);
        if !due.is_empty() {
            // Wake outside the lock: a woken task may register its next deadline at once.
            drop(d);
            for waker in due.drain(..) {
                waker.wake();
            }
            d = timer
                .deadlines
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        d = match d.sleeping_until {
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                timer
                    .changed
                    .wait_timeout(d, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => timer
                .changed
                .wait(d)
                .unwrap_or_else(PoisonError::into_inner),
        };
    }
}

/// A future that completes at `deadline`, woken by the precise timer thread.
#[derive(Debug)]
pub struct PreciseSleep {
    deadline: Instant,
    registered: bool,
}

/// Sleeps until `deadline` with microsecond precision.
pub fn sleep_until(deadline: Instant) -> PreciseSleep {
    PreciseSleep {
        deadline,
        registered: false,
    }
}

/// Sleeps (with tokio's millisecond timer) until a core's next timeout, or for ever when it
/// has none: the protocol timers of signalling, whose deadlines are seconds long.
pub async fn until_timeout(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// The grid media schedules start on, counted from a run's epoch. Frames due on the same slot
/// are woken together, so 200 calls cost a few thousand wake-ups a second instead of twenty
/// thousand; 40 slots per 20 ms frame still spread the calls' packets as independent phones'
/// would be.
pub const FRAME_SLOT: Duration = Duration::from_micros(500);

/// The media epoch every process on this host shares: the instant `CLOCK_MONOTONIC` (which
/// `Instant` reads on Linux) was zero. Send stamps count from it, so an agent in one process
/// and the anchor in another (`sim serve` and an external `loadgen`) read each other's stamps
/// on the same timeline; two processes' epochs differ by the nanoseconds between two clock
/// reads.
#[allow(clippy::disallowed_methods)] // the edge's clock
pub fn host_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let since_zero = Duration::new(
            u64::try_from(mono.tv_sec).unwrap_or(0),
            u32::try_from(mono.tv_nsec).unwrap_or(0),
        );
        // Instants this far back are representable on Linux; elsewhere, this process's own.
        now.checked_sub(since_zero).unwrap_or(now)
    })
}

/// The environment variable that moves the media epoch to a wall-clock instant, for agents and
/// anchors on different machines (see [`media_epoch`]).
pub const MEDIA_EPOCH_ENV: &str = "SIM_MEDIA_EPOCH";

/// This process's media epoch: [`host_epoch`], unless `SIM_MEDIA_EPOCH` gives a Unix time in
/// seconds; then that instant as this host's wall clock reads it. Every machine of a test given
/// the same value counts send stamps from the same instant, as well as their clocks agree (NTP
/// or PTP: one-way delay across machines is as right as their synchronisation). Monotonic
/// clocks start at each machine's boot, so without it one-way delay across machines is void.
///
/// # Errors
/// The value is not a whole number of seconds, lies in the future, or so far back (8.9 years)
/// that stamps, 48 bits of microseconds, would not hold it.
pub fn media_epoch() -> Result<Instant, String> {
    match std::env::var(MEDIA_EPOCH_ENV) {
        Ok(v) => epoch_at_unix(&v, wall_clock_since_unix()),
        Err(_) => Ok(host_epoch()),
    }
}

/// The wall clock now, since the Unix epoch (what a core is told at its start).
#[allow(clippy::disallowed_methods)] // the edge's clock
pub fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The wall clock now in NTP format ([`crate::media::ntp`]).
pub fn ntp_now() -> u64 {
    crate::media::ntp(unix_now())
}

#[allow(clippy::disallowed_methods)] // the edge's clock
fn wall_clock_since_unix() -> (Instant, Duration) {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (Instant::now(), unix)
}

/// The instant Unix time `value` was, given that `unix` had passed since 1970 at `now`.
fn epoch_at_unix(value: &str, (now, unix): (Instant, Duration)) -> Result<Instant, String> {
    let bad = |why: &str| format!("{MEDIA_EPOCH_ENV}={value}: {why}");
    let secs: u64 = value
        .trim()
        .parse()
        .map_err(|_| bad("expected a Unix time in whole seconds, e.g. `date +%s`"))?;
    let ago = unix
        .checked_sub(Duration::from_secs(secs))
        .ok_or_else(|| bad("in the future by this host's clock"))?;
    let span = Duration::from_micros((1 << 48) - 1);
    // A day's margin: a shift-long test must not reach the stamps' end.
    if ago + Duration::from_secs(86_400) > span {
        return Err(bad(
            "more than 8.9 years ago, beyond what a send stamp holds; take the test's day",
        ));
    }
    now.checked_sub(ago)
        .ok_or_else(|| bad("before this host's clock can count"))
}

/// The first slot of the frame grid at or after `now`.
pub fn next_slot(epoch: Instant, now: Instant) -> Instant {
    let since = now.saturating_duration_since(epoch).as_nanos();
    let slot = FRAME_SLOT.as_nanos();
    let slots = u64::try_from(since.div_ceil(slot)).unwrap_or(u64::MAX);
    epoch + FRAME_SLOT * u32::try_from(slots).unwrap_or(u32::MAX)
}

/// Sleeps for `duration` with microsecond precision.
pub fn sleep(duration: Duration) -> PreciseSleep {
    sleep_until(Instant::now() + duration)
}

impl Future for PreciseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        if !self.registered {
            match timer() {
                Some(timer) => timer.register(self.deadline, cx.waker().clone()),
                // No timer thread: wake at once and poll again (degraded, never stuck).
                None => cx.waker().wake_by_ref(),
            }
            self.registered = true;
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn the_host_epoch_is_monotonic_zero() {
        let epoch = host_epoch();
        assert_eq!(epoch, host_epoch(), "one epoch per process");
        let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let since = Instant::now().saturating_duration_since(epoch);
        let expected = Duration::new(mono.tv_sec as u64, mono.tv_nsec as u32);
        // The two reads are microseconds apart at most.
        assert!(
            since >= expected && since - expected < Duration::from_millis(5),
            "{since:?} vs {expected:?}"
        );
    }

    #[test]
    fn a_wall_clock_epoch_is_that_unix_instant_on_this_host() {
        let now = Instant::now() + Duration::from_secs(1_000_000);
        let unix = Duration::from_secs(1_796_600_000);
        let epoch = epoch_at_unix("1796590000", (now, unix)).unwrap();
        assert_eq!(now - epoch, Duration::from_secs(10_000));
        for (value, says) in [
            ("soon", "whole seconds"),
            ("1.5", "whole seconds"),
            ("1796600001", "future"),
            ("1000000000", "8.9 years"),
        ] {
            let e = epoch_at_unix(value, (now, unix)).unwrap_err();
            assert!(
                e.contains(says) && e.contains(MEDIA_EPOCH_ENV),
                "{value}: {e}"
            );
        }
    }

    #[test]
    fn slots_are_on_the_grid_and_not_before_now() {
        let epoch = Instant::now();
        for us in [0u64, 1, 499, 500, 501, 20_000, 1_234_567] {
            let now = epoch + Duration::from_micros(us);
            let slot = next_slot(epoch, now);
            assert!(slot >= now && slot - now < FRAME_SLOT, "{us} µs");
            assert_eq!(
                (slot - epoch).as_nanos() % FRAME_SLOT.as_nanos(),
                0,
                "{us} µs"
            );
        }
    }

    #[tokio::test]
    async fn wakes_at_the_deadline_not_before() {
        let start = Instant::now();
        for i in 1..=20u32 {
            let due = start + Duration::from_millis(5) * i;
            sleep_until(due).await;
            assert!(Instant::now() >= due);
        }
    }
}
