//! Placing many calls: at most `concurrency` at once, at most `ramp` new calls per second, each
//! record handed over as its call ends; Ctrl-C stops new calls and hangs up the live ones.

use std::sync::Arc;
use std::time::Duration;

use reports::CallRecord;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::session::{CallSpec, run_call};

/// How fast calls are placed.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Calls up at once, at most.
    pub concurrency: u32,
    /// New calls per second, at most.
    pub ramp_per_second: f64,
}

/// What the runner reports as it goes.
pub trait LoadEvents {
    /// A call was started.
    fn started(&mut self);
    /// A call ended with this record.
    fn ended(&mut self, record: CallRecord);
    /// The run was interrupted: no new calls, live ones hang up.
    fn interrupted(&mut self);
}

/// Places `count` calls built by `spec(index, hangup)` and returns whether the run was
/// interrupted. Every spec must carry the `hangup` receiver it is given.
pub async fn run_calls(
    count: u32,
    load: Load,
    mut spec: impl FnMut(u32, watch::Receiver<bool>) -> CallSpec,
    events: &mut impl LoadEvents,
) -> bool {
    // The Opus loop, before the first call's clock starts.
    crate::audio::prepare();
    let (hangup_tx, hangup_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<CallRecord>();
    let permits = Arc::new(Semaphore::new(load.concurrency.max(1) as usize));
    let ramp = Duration::from_secs_f64(1.0 / load.ramp_per_second.max(1e-3));
    let mut next_start = tokio::time::Instant::now();
    let (mut placed, mut in_flight) = (0u32, 0usize);
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if (interrupted || placed == count) && in_flight == 0 {
            break;
        }
        let can_start = !interrupted && placed < count;
        tokio::select! {
            biased;
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                let _ = hangup_tx.send(true);
                events.interrupted();
            }
            Some(record) = done_rx.recv() => {
                in_flight -= 1;
                events.ended(record);
            }
            permit = permits.clone().acquire_owned(), if can_start => {
                let Ok(permit) = permit else { break };
                tokio::time::sleep_until(next_start).await;
                next_start = tokio::time::Instant::now() + ramp;
                let call = spec(placed, hangup_rx.clone());
                placed += 1;
                in_flight += 1;
                events.started();
                let done = done_tx.clone();
                tokio::spawn(async move {
                    let record = run_call(call).await;
                    drop(permit);
                    let _ = done.send(record);
                });
            }
        }
    }
    interrupted
}
