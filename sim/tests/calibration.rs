//! Calibration: for every shipped profile, what a receiver measures after ≥ 100,000 packets at
//! 50 packets/s matches what the profile configures — mean delay, jitter (mean |D|, the quantity
//! RFC 3550's estimator tracks, and the standard deviation), loss rate, mean loss-burst length,
//! rate (serialisation) delay, outage durations and stall releases.
//!
//! How the tolerances are derived. Every check compares an estimate from n samples with the
//! model's exact expectation and allows **5 standard errors**, so a correct engine fails a given
//! check with probability below 6·10⁻⁷ (two-sided normal tail at 5σ); seeds are fixed, so a pass
//! is reproducible. Standard errors:
//! - mean delay: σ·√((1+ρ)/(1−ρ)/n) — the variance of the mean of an AR(1) sequence with lag-one
//!   correlation ρ (ρ = 0 for independent jitter);
//! - standard deviation (light-tailed jitter only): σ·√((1+ρ²)/(1−ρ²)/(2n)), the large-sample
//!   variance of a normal sample's sd under AR(1) correlation; heavy-tailed Pareto jitter (α = 3
//!   has no finite fourth moment) has no such bound, so its spread is checked through mean |D|;
//! - mean |D| over consecutive packets: the |D|s are dependent only through shared neighbours,
//!   so Var(mean) ≤ 3·E[D²]/n·(1+ρ)/(1−ρ), with E[D²] = 2σ²(1 − ρ);
//! - loss rate: a two-state Markov chain's long-run fraction π has variance
//!   π(1−π)(1+λ)/((1−λ)n), λ = 1 − p − r (λ = 0 for random loss: the binomial variance);
//! - mean burst length: bursts are geometric with mean 1/r and sd √(1−r)/r, over the bursts seen.
//!
//! What "configured" means: the delay-and-loss checks run the profile with reordering allowed and
//! without its scheduled outages and stalls (a FIFO link stretches gaps, which by design is not
//! the configured marginal; the schedules are checked separately, exactly, with jitter off). The
//! as-shipped FIFO profile is run too and must never reorder.
#![allow(clippy::disallowed_methods)] // a test: real sockets, the real clock

use std::time::{Duration, Instant};

use reports::loss::SequenceTracker;
use sim::netem::{
    Direction, FlowId, JitterDistribution, Loss, Netem, Output, Path, Schedule, Segment,
};
use sim::profiles::{self, Profile};

const INTERVAL: Duration = Duration::from_millis(20);
const PACKETS: u32 = 100_000;
/// An Opus packet in SRTP over TURN ChannelData over UDP/IPv4: 20 + 8 + 4 + 12 + 120 + 10.
const WIRE_LEN: u32 = 174;

struct Received {
    seq: u32,
    sent: Instant,
    arrived: Instant,
}

/// Sends `PACKETS` packets on one flow, up, at 50 packets/s on a virtual clock; returns what
/// arrived in arrival order, and the engine.
fn run(path: Path, seed: u64, packets: u32) -> (Vec<Received>, Instant) {
    let epoch = Instant::now();
    let mut netem = Netem::new(path, seed, epoch);
    let mut got = Vec::with_capacity(packets as usize);
    let drain = |netem: &mut Netem<Vec<u8>>, got: &mut Vec<Received>| {
        while let Some(out) = netem.poll_output() {
            if let Output::Deliver { at, packet, .. } = out {
                let seq = u32::from_le_bytes(packet[..4].try_into().unwrap());
                got.push(Received {
                    seq,
                    sent: epoch + INTERVAL * seq,
                    arrived: at,
                });
            }
        }
    };
    for seq in 0..packets {
        let t = epoch + INTERVAL * seq;
        while let Some(due) = netem.poll_timeout().filter(|&d| d <= t) {
            netem.handle_timeout(due);
            drain(&mut netem, &mut got);
        }
        netem.handle_input(
            t,
            FlowId(1),
            Direction::Up,
            WIRE_LEN,
            seq.to_le_bytes().to_vec(),
        );
        drain(&mut netem, &mut got);
    }
    while let Some(due) = netem.poll_timeout() {
        netem.handle_timeout(due);
        drain(&mut netem, &mut got);
    }
    (got, epoch)
}

fn map_models(p: &Profile, f: impl Fn(&mut sim::netem::SegmentModel)) -> Path {
    let segments = p
        .segments
        .iter()
        .map(|s| {
            let mut s: Segment = s.clone();
            f(&mut s.up);
            f(&mut s.down);
            s
        })
        .collect();
    Path { segments }
}

/// The model's expectations for a packet crossing the whole path.
struct Expected {
    mean_ms: f64,
    /// `None` when the tail is too heavy for a sample sd to converge (Pareto).
    sd_ms: Option<f64>,
    mean_abs_d_ms: f64,
    /// Largest lag-one correlation among the segments (for the standard errors).
    rho: f64,
    sigma_ms: f64,
    loss: f64,
    /// λ of the loss chain (0 for random loss).
    loss_lambda: f64,
    mean_burst: Option<(f64, f64)>,
}

fn expected(p: &Profile) -> Expected {
    let mut e = Expected {
        mean_ms: 0.0,
        sd_ms: Some(0.0),
        mean_abs_d_ms: 0.0,
        rho: 0.0,
        sigma_ms: 0.0,
        loss: 0.0,
        loss_lambda: 0.0,
        mean_burst: None,
    };
    let mut var = 0.0;
    let mut var_d = 0.0;
    let mut delivered = 1.0;
    for s in &p.segments {
        let m = &s.up;
        let b = m.delay.as_secs_f64() * 1e3;
        if let Some(rate) = &m.rate {
            e.mean_ms += f64::from(WIRE_LEN + m.overhead) * 8.0 / rate.bits_per_second as f64 * 1e3;
        }
        match &m.jitter {
            None => e.mean_ms += b,
            Some(j) => {
                let sigma = j.amount.as_secs_f64() * 1e3;
                e.rho = e.rho.max(j.correlation);
                match j.distribution {
                    JitterDistribution::Pareto => {
                        // Y = max(0, b + a(X − 1.5)), X ~ Pareto(3, 1), a = σ/√0.75. With
                        // x0 = max(1, 1.5 − b/a): E[Y] = max(0, b − a/2) + a·x0⁻²/2 and
                        // E|Y1 − Y2| = 2∫F(1−F) = 2a(x0⁻²/2 − x0⁻⁵/5).
                        assert_eq!(j.correlation, 0.0, "closed forms assume independent draws");
                        let a = sigma / 0.75f64.sqrt();
                        let x0 = (1.5 - b / a).max(1.0);
                        e.mean_ms += (b - a / 2.0).max(0.0) + a * x0.powi(-2) / 2.0;
                        e.mean_abs_d_ms += 2.0 * a * (x0.powi(-2) / 2.0 - x0.powi(-5) / 5.0);
                        e.sd_ms = None;
                        var += sigma * sigma;
                    }
                    JitterDistribution::Normal => {
                        // Clamping at zero delay is negligible: every shipped normal segment has
                        // b ≥ 3σ (asserted), where it moves the mean by < σ·0.0004.
                        assert!(b >= 3.0 * sigma, "{}: clamping not negligible", s.name);
                        e.mean_ms += b;
                        var += sigma * sigma;
                        var_d += 2.0 * sigma * sigma * (1.0 - j.correlation);
                    }
                    other => panic!("no closed form written for {other:?}"),
                }
            }
        }
        let (rate, lambda, burst) = match m.loss {
            Loss::None => (0.0, 0.0, None),
            Loss::Random(q) => (q, 0.0, Some((1.0 / (1.0 - q), q.sqrt() / (1.0 - q)))),
            Loss::GilbertElliott {
                p,
                r,
                loss_in_bad,
                loss_in_good,
            } => {
                assert!(
                    loss_in_bad == 1.0 && loss_in_good == 0.0,
                    "Gilbert model expected"
                );
                (
                    p / (p + r),
                    1.0 - p - r,
                    Some((1.0 / r, (1.0 - r).sqrt() / r)),
                )
            }
        };
        if rate > 0.0 {
            assert!(
                e.mean_burst.is_none(),
                "one lossy segment per profile in these checks"
            );
            e.mean_burst = burst;
            e.loss_lambda = lambda;
        }
        delivered *= 1.0 - rate;
    }
    e.loss = 1.0 - delivered;
    e.sigma_ms = var.sqrt();
    if let Some(sd) = &mut e.sd_ms {
        *sd = var.sqrt();
    }
    if var_d > 0.0 {
        // Sum of independent normal differences: normal with variance var_d; E|N(0, v)| = √(2v/π).
        e.mean_abs_d_ms += (2.0 * var_d / std::f64::consts::PI).sqrt();
    }
    e
}

fn within(name: &str, what: &str, measured: f64, expected: f64, tol: f64) {
    assert!(
        (measured - expected).abs() <= tol,
        "{name}: {what} measured {measured:.4}, configured {expected:.4}, tolerance ±{tol:.4}"
    );
    println!("{name:>15} {what:<18} measured {measured:>9.4} configured {expected:>9.4} ±{tol:.4}");
}

fn calibrate(p: &Profile) {
    let e = expected(p);
    let path = map_models(p, |m| {
        m.reorder = true;
        m.outages.clear();
        m.stalls.clear();
    });
    let (got, _) = run(path, 7, PACKETS);
    let n = got.len() as f64;
    let delays: Vec<f64> = {
        let mut by_seq: Vec<(u32, f64)> = got
            .iter()
            .map(|r| (r.seq, (r.arrived - r.sent).as_secs_f64() * 1e3))
            .collect();
        by_seq.sort_by_key(|x| x.0);
        by_seq.into_iter().map(|x| x.1).collect()
    };
    let mean = delays.iter().sum::<f64>() / n;
    let rho = e.rho;
    let ar = (1.0 + rho) / (1.0 - rho);
    within(
        p.name,
        "mean delay ms",
        mean,
        e.mean_ms,
        5.0 * e.sigma_ms * (ar / n).sqrt(),
    );
    if let Some(sd) = e.sd_ms {
        let s = (delays.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let se = sd * ((1.0 + rho * rho) / (1.0 - rho * rho) / (2.0 * n)).sqrt();
        within(p.name, "jitter sd ms", s, sd, 5.0 * se);
    }
    // Mean |D| over packets consecutive in sequence (both delivered).
    let mut by_seq: Vec<&Received> = got.iter().collect();
    by_seq.sort_by_key(|r| r.seq);
    let ds: Vec<f64> = by_seq
        .windows(2)
        .filter(|w| w[1].seq == w[0].seq + 1)
        .map(|w| {
            ((w[1].arrived - w[1].sent).as_secs_f64() - (w[0].arrived - w[0].sent).as_secs_f64())
                .abs()
                * 1e3
        })
        .collect();
    let mean_d = ds.iter().sum::<f64>() / ds.len() as f64;
    let se_d = (3.0 * 2.0 * e.sigma_ms.powi(2) * ar / ds.len() as f64).sqrt();
    within(p.name, "mean |D| ms", mean_d, e.mean_abs_d_ms, 5.0 * se_d);

    // RFC 3550's own estimator, fed in arrival order as a receiver feeds it. Its long-run mean
    // is E|D| when packets arrive in sending order; when the delay difference between
    // neighbours has sd σ_D < spacing/2.6, fewer than 0.5 % of neighbours swap, so the check
    // applies (not to the heavy-tailed Wi-Fi profile, whose neighbours swap often). The mean of
    // an exponentially weighted average over n samples equals the mean of its inputs up to a
    // start-up term ≤ 16·J/n, added to the tolerance.
    let sigma_d = e.sigma_ms * (2.0 * (1.0 - rho)).sqrt();
    if e.sd_ms.is_some() && sigma_d < 20.0 / 2.6 {
        let mut j = reports::jitter::InterarrivalJitter::new(48_000);
        let mut sum = 0.0;
        for r in &got {
            j.on_packet(r.arrived, r.seq * 960);
            sum += j.jitter_ms();
        }
        let mean_j = sum / n;
        let tol = 5.0 * se_d + 16.0 * e.mean_abs_d_ms / n;
        within(p.name, "RFC 3550 J ms", mean_j, e.mean_abs_d_ms, tol);
    }

    // Loss and bursts, measured as a receiver does: from sequence numbers.
    let mut tracker = SequenceTracker::new();
    for r in &got {
        tracker.on_packet(r.seq as u16);
    }
    let report = tracker.finish();
    let lambda = e.loss_lambda;
    let loss_se =
        (e.loss * (1.0 - e.loss) * (1.0 + lambda) / (1.0 - lambda) / f64::from(PACKETS)).sqrt();
    within(
        p.name,
        "loss rate",
        report.loss_fraction(),
        e.loss,
        5.0 * loss_se.max(1e-9),
    );
    if let Some((burst, burst_sd)) = e.mean_burst {
        let bursts: u64 = report.bursts.values().sum();
        within(
            p.name,
            "mean burst",
            report.mean_burst_len(),
            burst,
            5.0 * burst_sd / (bursts as f64).sqrt(),
        );
    }
}

/// Outages and stalls, exactly: jitter and loss off, so every gap is a schedule's doing.
fn check_schedules(p: &Profile) {
    let path = map_models(p, |m| {
        m.jitter = None;
        m.loss = Loss::None;
    });
    let (got, epoch) = run(path, 7, PACKETS);
    let base = got.iter().map(|r| r.arrived - r.sent).min().unwrap();
    let end = INTERVAL * PACKETS;
    for s in &p.segments {
        for o in &s.up.outages {
            let Schedule::Periodic {
                every,
                duration,
                offset,
            } = *o
            else {
                panic!("periodic outages only")
            };
            let count = ((end - offset).as_nanos() / every.as_nanos() + 1) as usize;
            let mut gaps = Vec::new();
            for w in got.windows(2) {
                let gap = w[1].sent - w[0].sent;
                if gap > INTERVAL {
                    gaps.push((w[0].sent - epoch, gap - INTERVAL));
                }
            }
            assert_eq!(gaps.len(), count, "{}: outages seen {gaps:?}", p.name);
            for (at, measured) in gaps {
                // Senders tick every 20 ms, so a blackout of d is seen as ⌈d/20 ms⌉ lost packets:
                // within one interval of d.
                assert!(
                    measured.abs_diff(duration) <= INTERVAL,
                    "{}: outage at {at:?} lasted {measured:?}",
                    p.name
                );
            }
            println!(
                "{:>15} outages            {count} of {duration:?} every {every:?}, each within 20 ms",
                p.name
            );
        }
        for st in &s.up.stalls {
            let Schedule::Periodic {
                every,
                duration,
                offset,
            } = *st
            else {
                panic!("periodic stalls only")
            };
            let mut stalls = 0;
            let mut k = 0;
            loop {
                let start = offset + every * k;
                if start >= end {
                    break;
                }
                let release = epoch + start + duration + base;
                let held: Vec<&Received> = got
                    .iter()
                    .filter(|r| r.sent - epoch >= start && r.sent - epoch < start + duration)
                    .collect();
                // Every packet sent during the stall leaves at its end, together.
                assert_eq!(
                    held.len(),
                    duration.as_nanos().div_ceil(INTERVAL.as_nanos()) as usize
                );
                assert!(
                    held.iter().all(|r| r.arrived == release),
                    "{}: stall {k} not released in a burst",
                    p.name
                );
                stalls += 1;
                k += 1;
            }
            println!(
                "{:>15} stalls             {stalls} of {duration:?}, each released in one burst",
                p.name
            );
        }
    }
}

/// As shipped (FIFO), the profile never reorders.
fn check_fifo(p: &Profile) {
    let path = Path {
        segments: p.segments.clone(),
    };
    let (got, _) = run(path, 11, 20_000);
    assert!(
        got.windows(2).all(|w| w[0].seq < w[1].seq),
        "{}: FIFO profile reordered",
        p.name
    );
}

macro_rules! profile_test {
    ($name:ident) => {
        #[test]
        fn $name() {
            let p = profiles::$name();
            calibrate(&p);
            check_schedules(&p);
            check_fifo(&p);
        }
    };
}

profile_test!(direct_connect);
profile_test!(office_lan);
profile_test!(hub_and_spoke);
profile_test!(vdi);
profile_test!(remote_vpn);
profile_test!(home_wifi);
