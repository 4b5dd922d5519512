//! Benchmarks whose output states the figures: the engine's throughput on a virtual clock, the
//! UDP relay's added latency on loopback, and what real calls cost the simulator
//! (`sim bench engine`, `sim bench relay`, `sim bench calls`).

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use reports::{Distribution, Unit};

use crate::netem::{
    Direction, FlowId, JitterDistribution, Netem, Output, Path, QueueLimit, Segment, SegmentModel,
};
use crate::profiles::gilbert;
use crate::relay::{UdpRelay, UdpRelayConfig};
use crate::scenario::Policy;

/// The result of [`engine_throughput`].
#[derive(Debug, Clone, Copy)]
pub struct EngineThroughput {
    /// Packets put through.
    pub packets: u64,
    /// Packets delivered.
    pub delivered: u64,
    /// Wall time on one thread.
    pub elapsed: Duration,
}

impl EngineThroughput {
    /// Packets per second on one core.
    pub fn packets_per_second(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64()
    }
}

/// The four-segment path the throughput benchmark uses: LAN jitter, a VPN with correlated jitter
/// and Gilbert–Elliott loss, a reordering WAN with Pareto jitter, and a shared 1 Gbit/s uplink.
pub fn bench_path() -> Path {
    let ms = Duration::from_millis;
    let seg = |name: &str, m: SegmentModel, shared| Segment {
        name: name.into(),
        up: m.clone(),
        down: m,
        shared,
    };
    Path {
        segments: vec![
            seg(
                "lan",
                SegmentModel::new()
                    .delay(ms(5))
                    .jitter(ms(1), JitterDistribution::Normal, 0.0),
                false,
            ),
            seg(
                "vpn",
                SegmentModel::new()
                    .delay(ms(30))
                    .jitter(ms(10), JitterDistribution::Normal, 0.25)
                    .loss(gilbert(0.01, 3.0)),
                false,
            ),
            seg(
                "wan",
                SegmentModel::new()
                    .delay(ms(20))
                    .jitter(ms(5), JitterDistribution::Pareto, 0.0)
                    .reorder(true),
                false,
            ),
            seg(
                "uplink",
                SegmentModel::new().rate(1_000_000_000, QueueLimit::Time(ms(50))),
                true,
            ),
        ],
    }
}

/// Pushes `packets` packets from `flows` flows at 50 packets/s each through [`bench_path`] on a
/// virtual clock, on the calling thread.
pub fn engine_throughput(flows: u64, packets: u64) -> EngineThroughput {
    let epoch = Instant::now();
    let mut netem: Netem<Vec<u8>> = Netem::new(bench_path(), 1, epoch);
    let spacing = Duration::from_micros(20_000 / flows.max(1));
    // Delivered buffers are reused for new packets, as a relay reuses its receive buffers, so
    // that the figure is the engine's and not the allocator's.
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut delivered = 0;
    let mut drain = |netem: &mut Netem<Vec<u8>>, pool: &mut Vec<Vec<u8>>| {
        while let Some(o) = netem.poll_output() {
            if let Output::Deliver { packet, .. } = o {
                delivered += 1;
                pool.push(packet);
            }
        }
    };
    let start = Instant::now();
    for i in 0..packets {
        let t = epoch + spacing * u32::try_from(i).unwrap_or(u32::MAX);
        netem.handle_timeout(t);
        drain(&mut netem, &mut pool);
        let dir = if i % 2 == 0 {
            Direction::Up
        } else {
            Direction::Down
        };
        let packet = pool.pop().unwrap_or_else(|| vec![0u8; 160]);
        netem.handle_input(t, FlowId(i % flows), dir, 200, packet);
    }
    while let Some(due) = netem.poll_timeout() {
        netem.handle_timeout(due);
        drain(&mut netem, &mut pool);
    }
    let elapsed = start.elapsed();
    EngineThroughput {
        packets,
        delivered,
        elapsed,
    }
}

/// Latency distributions of [`relay_latency`], µs.
#[derive(Debug, Clone)]
pub struct RelayLatency {
    /// Packets sent per run.
    pub packets: u64,
    /// Sender → sink directly on loopback.
    pub direct: Distribution,
    /// Sender → relay → sink, less the path's configured delay.
    pub relayed: Distribution,
    /// How late the sender sent each packet against its schedule (the generator's own error).
    pub pacing_error: Distribution,
    /// Packets that never arrived, direct and relayed.
    pub lost: (u64, u64),
}

/// Sends `rate` packets/s of 172 bytes for `duration` to a sink, first directly, then through a
/// relay whose path adds a fixed `delay`, and measures one-way latency; the relayed latency less
/// `delay` less the direct latency is the relay's own.
pub fn relay_latency(
    rate: u32,
    duration: Duration,
    delay: Duration,
) -> std::io::Result<RelayLatency> {
    let sink = UdpSocket::bind("127.0.0.1:0")?;
    let sink_addr = sink.local_addr()?;
    let (direct, lost_direct, pacing_error) =
        measure(&sink, sink_addr, rate, duration, Duration::ZERO)?;
    let relay = UdpRelay::start(UdpRelayConfig {
        listen: "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
        upstream: sink_addr,
        path: Path::symmetric(vec![SegmentModel::new().delay(delay)]),
        seed: 1,
        policy: Policy::default(),
        server_port: None,
    })?;
    // The configured delay is taken off each sample before it is recorded: the histogram keeps
    // two significant digits, which at 20 ms would be steps of 128 µs.
    let (relayed, lost_relayed, _) = measure(&sink, relay.local_addr(), rate, duration, delay)?;
    relay.shutdown();
    let packets = u64::from(rate) * duration.as_secs();
    Ok(RelayLatency {
        packets,
        direct,
        relayed,
        pacing_error,
        lost: (lost_direct, lost_relayed),
    })
}

fn measure(
    sink: &UdpSocket,
    to: SocketAddr,
    rate: u32,
    duration: Duration,
    less: Duration,
) -> std::io::Result<(Distribution, u64, Distribution)> {
    let epoch = Instant::now();
    let total = u64::from(rate) * duration.as_secs();
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let done = done.clone();
        thread::spawn(move || {
            let mut pacing = Distribution::new(Unit::Micros);
            let interval = Duration::from_secs(1) / rate.max(1);
            let mut p = [0u8; 172];
            for i in 0..total {
                let due = interval * u32::try_from(i).unwrap_or(u32::MAX);
                // Sleep until the packet is due (no spinning: on two cores a spinning sender would
                // steal the CPU the relay needs and fake its latency); packets that fell due
                // during a sleep go out back to back, each stamped with its own send instant.
                let now = epoch.elapsed();
                if due > now {
                    thread::sleep(due - now);
                }
                let sent = epoch.elapsed();
                pacing.record((sent - due).as_micros() as u64);
                p[..16].copy_from_slice(&sent.as_nanos().to_le_bytes());
                let _ = socket.send_to(&p, to);
            }
            done.store(true, Ordering::Relaxed);
            pacing
        })
    };
    sink.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut latency = Distribution::new(Unit::Micros);
    let mut buf = [0u8; 2048];
    let mut received = 0;
    loop {
        match sink.recv_from(&mut buf) {
            Ok((n, _)) if n >= 16 => {
                let now = epoch.elapsed().as_nanos();
                let sent = u128::from_le_bytes(buf[..16].try_into().unwrap_or_default());
                let nanos = now.saturating_sub(sent).saturating_sub(less.as_nanos());
                latency.record(u64::try_from(nanos / 1000).unwrap_or(u64::MAX));
                received += 1;
                if received == total {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) if done.load(Ordering::Relaxed) => break,
            Err(_) => {}
        }
    }
    let pacing = sender
        .join()
        .map_err(|_| std::io::Error::other("sender panicked"))?;
    Ok((latency, total - received, pacing))
}

/// The result of [`calls`]: what `concurrency` simultaneous real calls cost the simulator on
/// a path with no impairment, so that every figure is its own.
#[derive(Debug)]
pub struct CallsCost {
    /// Calls up at once.
    pub concurrency: u32,
    /// Talk time of each call.
    pub duration: Duration,
    /// Cores used per component while every call was up (the plateau), by thread name mapped
    /// to its component: `agents`, `anchor`, `turn-server`, `udp-relay`, `precise-timer`,
    /// `other`.
    pub cores: BTreeMap<String, f64>,
    /// The plateau the cores were measured over.
    pub window: Duration,
    /// CPU time the VM's host gave other guests over the plateau (`/proc/stat`'s steal, all
    /// CPUs); `None` where the kernel does not count it.
    pub host_steal: Option<Duration>,
    /// The CPUs the steal is counted over.
    pub cpus: usize,
    /// The run's summary file (pacing error and jitter per direction).
    pub summary: reports::output::SummaryFile,
    /// Peak resident memory of the process, and its resident memory before the run, bytes.
    pub memory: (u64, u64),
    /// Bytes on the agent's link per call-second, agent → TURN.
    pub bytes_per_call_second: f64,
    /// The run folder.
    pub dir: std::path::PathBuf,
}

/// CPU time the hypervisor gave other guests so far, all CPUs (`/proc/stat`'s `cpu` line,
/// its eighth figure, in clock ticks); `None` without one.
fn host_steal() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))?
        .split_whitespace()
        .nth(7)?
        .parse()
        .ok()?;
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// `VmHWM` and `VmRSS` of this process, bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Places `concurrency` calls at once for `duration` each over a path with no impairment (the
/// shipped `capacity-200` scenario's shape), measures each component's cores while every
/// call is up, and writes the run folder into `out`.
pub fn calls(
    concurrency: u32,
    duration: Duration,
    out: &std::path::Path,
) -> Result<CallsCost, crate::run::RunError> {
    let ramp_per_second = 20;
    let text = format!(
        r#"
[run]
seed = 200
threshold = "2%"

[agents]
calls = {concurrency}
concurrency = {concurrency}
ramp = "{ramp_per_second}/s"
call_duration = "{}ms"
mix = {{ inbound = 1.0 }}

[turn]
urls = ["turn:turn.sim.local:3478?transport=udp"]

[segment.loopback]
delay = "0ms"

[[site]]
name = "lab"
path = ["loopback"]
"#,
        duration.as_millis()
    );
    let scenario = crate::scenario::Scenario::parse("calls-bench.toml", "calls-bench", &text)
        .map_err(|e| crate::run::RunError::Unsupported(e.to_string()))?;
    // The plateau: from 5 s after the last call started to 5 s before the first one ends.
    let ramp = Duration::from_secs_f64(f64::from(concurrency) / f64::from(ramp_per_second));
    let start_at = ramp + Duration::from_secs(5);
    let window = duration
        .saturating_sub(Duration::from_secs(10))
        .max(Duration::from_secs(1));
    let (_, rss_before) = memory();
    let sampler = thread::Builder::new()
        .name("bench-sampler".into())
        .spawn(move || {
            thread::sleep(start_at);
            let (t0, a, stolen0) = (
                Instant::now(),
                crate::overload::thread_cpu().unwrap_or_default(),
                host_steal(),
            );
            thread::sleep(window);
            let (t1, b, stolen1) = (
                Instant::now(),
                crate::overload::thread_cpu().unwrap_or_default(),
                host_steal(),
            );
            let stolen = stolen0.zip(stolen1).map(|(s0, s1)| s1.saturating_sub(s0));
            let wall = (t1 - t0).as_secs_f64();
            let mut cores: BTreeMap<String, f64> = BTreeMap::new();
            for (name, used) in &b {
                if name == "bench-sampler" {
                    continue;
                }
                let before = a.get(name).copied().unwrap_or(Duration::ZERO);
                *cores
                    .entry(crate::overload::component(name).to_owned())
                    .or_default() += used.saturating_sub(before).as_secs_f64() / wall;
            }
            (cores, stolen)
        })
        .map_err(|e| crate::run::RunError::Io {
            what: "starting the CPU sampler".into(),
            source: e,
        })?;
    let outcome = crate::run::run(
        &scenario,
        &crate::run::RunOptions {
            out: Some(out.to_owned()),
            plain_progress: true,
            ..crate::run::RunOptions::default()
        },
    )?;
    let (cores, host_steal) = sampler.join().unwrap_or_default();
    let (peak, _) = memory();
    let records = reports::record::read_records(&outcome.dir.join("calls.jsonl"))
        .map(|f| f.records)
        .unwrap_or_default();
    let sent: u64 = records
        .iter()
        .filter_map(|r| r.agent_to_anchor.as_ref())
        .map(|m| m.wire_bytes_sent)
        .sum();
    let call_seconds = records.len() as f64 * duration.as_secs_f64();
    Ok(CallsCost {
        concurrency,
        duration,
        cores,
        window,
        host_steal,
        cpus: thread::available_parallelism().map_or(1, usize::from),
        summary: outcome.summary,
        memory: (peak, rss_before),
        bytes_per_call_second: if call_seconds > 0.0 {
            sent as f64 / call_seconds
        } else {
            0.0
        },
        dir: outcome.dir,
    })
}
