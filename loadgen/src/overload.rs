//! Watching the simulator's own components while a run goes: when they fall behind, the run
//! says so, and its verdict is invalid rather than the network's ([`reports::overload`]). `sim
//! run` watches its whole process (agents, path engine, TURN server, anchor); a `loadgen` shard
//! watches its agents, so that a shard on an overloaded machine says so too.
//!
//! A thread wakes every [`WINDOW`] and looks at what the window did:
//! - how late each sender's frames went out ([`crate::lateness`]): more than 1 % of them
//!   2 ms or more late is the sender's p99 over the pacing limit;
//! - each thread's CPU time (`/proc/self/task/*/stat`): a thread busy 90 % of the window or
//!   more has work queued behind it (its timers, its sockets);
//! - the control group's CPU throttling (`cpu.stat`): a quota stopping the process for 10 % of
//!   the window or more;
//! - the components' `send_failed` counters.
//!
//! Consecutive windows with the same finding make one [`LateSpan`].

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::lateness::{LATE_BOUNDS_US, Sender, Snapshot};
use reports::{Components, LateCause, LateSpan, OwnLateness};

/// The monitor's window.
pub const WINDOW: Duration = Duration::from_millis(500);
/// A thread this busy through a window is saturated.
const SATURATED: f64 = 0.9;
/// A window in which the CPU quota stopped the process this long, as a fraction of the window,
/// was throttled.
const THROTTLED: f64 = 0.1;

/// The monitor of one run; [`Monitor::finish`] stops it and gives what it saw.
#[derive(Debug)]
pub struct Monitor {
    stop: mpsc::Sender<()>,
    thread: Option<thread::JoinHandle<OwnLateness>>,
}

impl Monitor {
    /// Starts watching. `counters` gives the components' live counters (read every window for
    /// their `send_failed`); it must not block.
    pub fn start(counters: impl Fn() -> Components + Send + 'static) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("overload".into())
            .spawn(move || watch(&stopped, &counters))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the monitor (closing its last window) and returns the late stretches it saw.
    pub fn finish(mut self) -> OwnLateness {
        let _ = self.stop.send(());
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stop.send(());
    }
}

/// What one window showed.
#[derive(Default)]
struct Sample {
    senders: [Snapshot; 2],
    /// CPU time by thread id, with the thread's name.
    threads: BTreeMap<u32, (String, Duration)>,
    throttled: Duration,
    send_failed: BTreeMap<String, u64>,
}

impl Sample {
    fn take(counters: &dyn Fn() -> Components) -> Self {
        Self {
            senders: Sender::ALL.map(Snapshot::of),
            threads: threads().unwrap_or_default(),
            throttled: throttled().unwrap_or_default(),
            send_failed: counters()
                .send_failures()
                .into_iter()
                .map(|(name, n)| (name.to_owned(), n))
                .collect(),
        }
    }
}

/// A finding of one window: the component, why, a figure to rank by, and its words.
type Finding = (String, LateCause, u64, String);

fn findings(before: &Sample, after: &Sample, wall: Duration) -> Vec<Finding> {
    let mut out = Vec::new();
    for (sender, (a, b)) in Sender::ALL
        .iter()
        .zip(before.senders.iter().zip(&after.senders))
    {
        let d = b.since(a);
        if d.frames > 0 && d.late[0] * 100 > d.frames {
            let worst = d.worst_bound_us().unwrap_or(LATE_BOUNDS_US[0]);
            out.push((
                sender.name().to_owned(),
                LateCause::Pacing,
                worst,
                format!(
                    "{:.1} % of frames 2 ms or more late, some {} ms or more",
                    100.0 * d.late[0] as f64 / d.frames as f64,
                    worst / 1_000
                ),
            ));
        }
    }
    let wall_s = wall.as_secs_f64().max(1e-3);
    for (tid, (name, cpu)) in &after.threads {
        let spent = before.threads.get(tid).map_or(Duration::ZERO, |(_, c)| *c);
        let busy = cpu.saturating_sub(spent).as_secs_f64() / wall_s;
        if busy >= SATURATED {
            out.push((
                format!("thread {name} ({})", component(name)),
                LateCause::Saturated,
                (busy * 1_000.0) as u64,
                format!("{:.0} % of a core busy", (busy * 100.0).min(100.0)),
            ));
        }
    }
    let throttled = after.throttled.saturating_sub(before.throttled);
    if throttled.as_secs_f64() >= THROTTLED * wall_s {
        out.push((
            "cpu quota".to_owned(),
            LateCause::Throttled,
            throttled.as_millis() as u64,
            format!(
                "the process stopped {} ms of a {} ms window",
                throttled.as_millis(),
                wall.as_millis()
            ),
        ));
    }
    for (name, n) in &after.send_failed {
        let d = n.saturating_sub(before.send_failed.get(name).copied().unwrap_or(0));
        if d > 0 {
            out.push((
                name.clone(),
                LateCause::SendFailed,
                d,
                format!("{d} sends failed in a window"),
            ));
        }
    }
    out
}

/// The spans being built: open ones by (component, cause) with the figure their words come
/// from, and those already over.
#[derive(Default)]
struct Spans {
    open: BTreeMap<(String, LateCause), (LateSpan, u64)>,
    done: Vec<LateSpan>,
}

impl Spans {
    /// Adds the window `[from, to]` (ms since the Unix epoch) and what it found: a finding
    /// extends its open span or opens one; an open span the window did not extend is over.
    fn window(&mut self, from: u64, to: u64, found: Vec<Finding>) {
        let mut seen = Vec::new();
        for (component, cause, figure, words) in found {
            let key = (component.clone(), cause);
            seen.push(key.clone());
            let (span, worst) = self.open.entry(key).or_insert_with(|| {
                (
                    LateSpan {
                        from_unix_ms: from,
                        to_unix_ms: to,
                        component,
                        cause,
                        worst: words.clone(),
                    },
                    figure,
                )
            });
            span.to_unix_ms = to;
            if figure > *worst {
                (span.worst, *worst) = (words, figure);
            }
        }
        let ended: Vec<_> = self
            .open
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for key in ended {
            if let Some((span, _)) = self.open.remove(&key) {
                self.done.push(span);
            }
        }
    }

    /// Every span, open ones closed, by start.
    fn finish(mut self) -> Vec<LateSpan> {
        self.done
            .extend(self.open.into_values().map(|(span, _)| span));
        self.done.sort_by(|a, b| {
            (a.from_unix_ms, a.to_unix_ms, &a.component).cmp(&(
                b.from_unix_ms,
                b.to_unix_ms,
                &b.component,
            ))
        });
        self.done
    }
}

fn watch(stopped: &mpsc::Receiver<()>, counters: &dyn Fn() -> Components) -> OwnLateness {
    let unix_ms = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let mut spans = Spans::default();
    let (mut before, mut from, mut at) = (Sample::take(counters), unix_ms(), Instant::now());
    loop {
        let last = !matches!(
            stopped.recv_timeout(WINDOW),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        let (after, to, now) = (Sample::take(counters), unix_ms(), Instant::now());
        spans.window(from, to, findings(&before, &after, now - at));
        if last {
            break;
        }
        (before, from, at) = (after, to, now);
    }
    OwnLateness {
        window_ms: WINDOW.as_millis() as u64,
        spans: spans.finish(),
    }
}

/// Each thread of this process: its id, name and CPU time so far (`/proc/self/task/*/stat`:
/// user + system time, in clock ticks).
fn threads() -> std::io::Result<BTreeMap<u32, (String, Duration)>> {
    let tick = rustix::param::clock_ticks_per_second().max(1);
    let mut by_id = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // `pid (comm) state …`: comm may hold spaces and parentheses, so cut at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the comm: state is field 3, utime field 14 and stime field 15 (proc(5)).
        let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (ticks(14), ticks(15)) {
            let cpu = Duration::from_secs_f64((user + system) as f64 / tick as f64);
            by_id.insert(tid, (name, cpu));
        }
    }
    Ok(by_id)
}

/// The CPU time each thread of this process used so far, summed by thread name.
pub fn thread_cpu() -> std::io::Result<BTreeMap<String, Duration>> {
    let mut by_name = BTreeMap::new();
    for (name, cpu) in threads()?.into_values() {
        *by_name.entry(name).or_insert(Duration::ZERO) += cpu;
    }
    Ok(by_name)
}

/// The component a thread belongs to, by its name.
pub fn component(thread: &str) -> &'static str {
    match thread {
        // The agents' runtime runs on the thread that called `run` (the program's main one).
        "sim" => "agents",
        // Its media server, and the control task that answers the signalling.
        "anchor" | "anchor-media" => "anchor",
        "turn-server" => "turn-server",
        "udp-relay" => "udp-relay",
        "precise-timer" => "precise-timer",
        _ => "other",
    }
}

/// How long the CPU quota of this process's control group has stopped it so far (cgroup v2's
/// `throttled_usec`, v1's `throttled_time` in ns); `None` without a CPU controller.
fn throttled() -> Option<Duration> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        let dir = if controllers.is_empty() {
            format!("/sys/fs/cgroup/{path}")
        } else if controllers.split(',').any(|c| c == "cpu") {
            format!("/sys/fs/cgroup/{controllers}/{path}")
        } else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("{dir}/cpu.stat")) else {
            continue;
        };
        for l in stat.lines() {
            let mut kv = l.split_whitespace();
            match (kv.next(), kv.next().and_then(|v| v.parse::<u64>().ok())) {
                (Some("throttled_usec"), Some(us)) => return Some(Duration::from_micros(us)),
                (Some("throttled_time"), Some(ns)) => return Some(Duration::from_nanos(ns)),
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(agents: (u64, u64), thread_ms: u64, throttled_ms: u64, failed: u64) -> Sample {
        let mut late = [0; LATE_BOUNDS_US.len()];
        late[0] = agents.1;
        late[3] = agents.1; // ≥ 20 ms
        Sample {
            senders: [
                Snapshot {
                    frames: agents.0,
                    late,
                },
                Snapshot::default(),
            ],
            threads: BTreeMap::from([(7, ("sim".into(), Duration::from_millis(thread_ms)))]),
            throttled: Duration::from_millis(throttled_ms),
            send_failed: BTreeMap::from([("path hq → turn:x".into(), failed)]),
        }
    }

    #[test]
    fn a_window_finds_late_frames_a_busy_thread_a_quota_and_failed_sends() {
        let wall = Duration::from_millis(500);
        let before = sample((1_000, 5), 100, 0, 0);
        // 1 % late exactly is the p99 at the limit, not over it; an idle thread, no quota.
        let quiet = sample((2_000, 15), 300, 40, 0);
        assert!(findings(&before, &quiet, wall).is_empty());
        let busy = sample((2_000, 40), 560, 100, 3);
        let found = findings(&before, &busy, wall);
        let causes: Vec<(&str, LateCause)> = found.iter().map(|f| (f.0.as_str(), f.1)).collect();
        assert_eq!(
            causes,
            vec![
                ("agents' senders", LateCause::Pacing),
                ("thread sim (agents)", LateCause::Saturated),
                ("cpu quota", LateCause::Throttled),
                ("path hq → turn:x", LateCause::SendFailed),
            ]
        );
        assert_eq!(
            found[0].3,
            "3.5 % of frames 2 ms or more late, some 20 ms or more"
        );
        assert_eq!(found[1].3, "92 % of a core busy");
        assert_eq!(found[2].3, "the process stopped 100 ms of a 500 ms window");
        assert_eq!(found[3].3, "3 sends failed in a window");
    }

    #[test]
    fn consecutive_windows_make_one_span_with_the_worst_figure_and_a_gap_ends_it() {
        let finding = |figure: u64| {
            vec![(
                "cpu quota".to_owned(),
                LateCause::Throttled,
                figure,
                format!("{figure} ms"),
            )]
        };
        let mut spans = Spans::default();
        spans.window(0, 500, finding(60));
        spans.window(500, 1_000, finding(200));
        spans.window(1_000, 1_500, finding(80));
        spans.window(1_500, 2_000, Vec::new());
        spans.window(2_000, 2_500, finding(70));
        let spans = spans.finish();
        assert_eq!(spans.len(), 2);
        assert_eq!((spans[0].from_unix_ms, spans[0].to_unix_ms), (0, 1_500));
        assert_eq!(spans[0].worst, "200 ms");
        assert_eq!((spans[1].from_unix_ms, spans[1].to_unix_ms), (2_000, 2_500));
    }

    #[test]
    fn this_threads_cpu_time_is_read_and_grows_with_work() {
        let name = "cpu-probe";
        // Spin until the kernel has counted 50 ms of this thread (it counts in clock ticks),
        // or give up after 10 s of wall time: reading works if the count moves at all.
        let spent = thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let before = thread_cpu().unwrap()[name];
                let start = Instant::now();
                let mut x = 0u64;
                loop {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                    let spent = thread_cpu().unwrap()[name].saturating_sub(before);
                    if spent >= Duration::from_millis(50)
                        || start.elapsed() > Duration::from_secs(10)
                    {
                        return spent;
                    }
                }
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(spent >= Duration::from_millis(50), "{spent:?}");
        assert_eq!(component("sim"), "agents");
        assert_eq!(component("udp-relay"), "udp-relay");
        assert_eq!(component("tokio-runtime-worker"), "other");
    }
}
