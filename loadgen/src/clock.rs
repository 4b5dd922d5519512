//! Precise sleeping for async code: tokio's timers fire on a 1 ms wheel, which alone would put up
//! to a millisecond of jitter on every 20 ms frame the simulator sends and then measure it as the
//! network's. One thread keeps the deadlines of every sleeping task, waits for the earliest with
//! a nanosecond futex timeout and a 1 µs timer slack, and wakes the task when it is due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
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

fn timer() -> &'static Sender<(Instant, Waker)> {
    static TIMER: OnceLock<Sender<(Instant, Waker)>> = OnceLock::new();
    TIMER.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        // If the thread cannot start, sleeps fall back to waking at once (busy but correct).
        let _ = std::thread::Builder::new()
            .name("precise-timer".into())
            .spawn(move || run(&rx));
        tx
    })
}

fn run(rx: &Receiver<(Instant, Waker)>) {
    let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(1_000));
    let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|e| e.0.at <= now) {
            if let Some(Reverse(e)) = heap.pop() {
                e.waker.wake();
            }
        }
        let received = match heap.peek() {
            Some(e) => rx.recv_timeout(e.0.at.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok((at, waker)) => {
                seq += 1;
                heap.push(Reverse(Entry { at, seq, waker }));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
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
            if timer().send((self.deadline, cx.waker().clone())).is_err() {
                // No timer thread: wake at once and poll again (degraded, never stuck).
                cx.waker().wake_by_ref();
            }
            self.registered = true;
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
