//! Behaviours of the path engine: determinism under a seed, FIFO versus reordering, MTU drops,
//! duplication and corruption, and a shared rate-limited segment split between flows.
#![allow(clippy::disallowed_methods)] // a test: real sockets, the real clock

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use sim::netem::{
    Direction, DropReason, FlowId, JitterDistribution, Netem, Output, Path, QueueLimit, Segment,
    SegmentModel,
};
use sim::profiles;

const INTERVAL: Duration = Duration::from_millis(20);

/// Runs `flows` flows, each sending `packets` packets of `wire_len` bytes every `interval`, both
/// directions; returns every output in order, rendered as text relative to the epoch.
fn trace(
    path: Path,
    seed: u64,
    flows: u64,
    packets: u32,
    wire_len: u32,
    interval: Duration,
) -> (String, Vec<Output<Vec<u8>>>) {
    let epoch = Instant::now();
    let mut netem = Netem::new(path, seed, epoch);
    let mut outs = Vec::new();
    let mut drain = |netem: &mut Netem<Vec<u8>>| {
        while let Some(o) = netem.poll_output() {
            outs.push(o);
        }
    };
    for i in 0..packets {
        let t = epoch + interval * i;
        while let Some(due) = netem.poll_timeout().filter(|&d| d <= t) {
            netem.handle_timeout(due);
            drain(&mut netem);
        }
        for f in 0..flows {
            for dir in [Direction::Up, Direction::Down] {
                let mut payload = vec![0u8; 16];
                payload[..4].copy_from_slice(&i.to_le_bytes());
                payload[4..12].copy_from_slice(&f.to_le_bytes());
                netem.handle_input(t, FlowId(f), dir, wire_len, payload);
                drain(&mut netem);
            }
        }
    }
    while let Some(due) = netem.poll_timeout() {
        netem.handle_timeout(due);
        drain(&mut netem);
    }
    let mut text = String::new();
    for o in &outs {
        match o {
            Output::Deliver {
                at,
                flow,
                direction,
                packet,
            } => {
                writeln!(
                    text,
                    "{:>12?} {flow:?} {direction:?} deliver {packet:02x?}",
                    *at - epoch
                )
                .unwrap();
            }
            Output::Drop {
                at,
                flow,
                direction,
                segment,
                reason,
            } => {
                writeln!(
                    text,
                    "{:>12?} {flow:?} {direction:?} drop {segment} {reason}",
                    *at - epoch
                )
                .unwrap();
            }
        }
    }
    (text, outs)
}

fn seq_of(packet: &[u8]) -> u32 {
    u32::from_le_bytes(packet[..4].try_into().unwrap())
}

fn lossy_jittery() -> Path {
    let m = SegmentModel::new()
        .delay(Duration::from_millis(30))
        .jitter(
            Duration::from_millis(25),
            JitterDistribution::Paretonormal,
            0.3,
        )
        .loss(profiles::gilbert(0.05, 3.0))
        .reorder(true);
    let mut p = Path::symmetric(vec![
        m,
        SegmentModel {
            duplicate: 0.01,
            corrupt: 0.01,
            ..SegmentModel::new()
        },
    ]);
    p.segments[1].up.delay = Duration::from_millis(5);
    p
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    let (a, _) = trace(lossy_jittery(), 42, 3, 2_000, 200, INTERVAL);
    let (b, _) = trace(lossy_jittery(), 42, 3, 2_000, 200, INTERVAL);
    let (c, _) = trace(lossy_jittery(), 43, 3, 2_000, 200, INTERVAL);
    assert_eq!(a.len(), b.len());
    assert!(a == b, "same seed, different traces");
    assert_ne!(a, c, "different seeds, same trace");
    // The trace exercises what it should: drops, duplicates, corrupted bytes.
    assert!(a.contains(" drop 0 loss"));
    assert!(a.lines().count() > 12_000, "duplicates add deliveries");
}

#[test]
fn flows_are_independent_of_each_other() {
    // Flow 0's fate must not depend on whether flow 1 exists (per-flow random streams).
    let only = |flows| {
        let (_, outs) = trace(lossy_jittery(), 9, flows, 500, 200, INTERVAL);
        outs.into_iter()
            .filter_map(|o| match o {
                Output::Deliver {
                    flow: FlowId(0),
                    at,
                    packet,
                    ..
                } => Some((at, seq_of(&packet))),
                _ => None,
            })
            .map(|(at, s)| (s, at))
            .collect::<Vec<_>>()
    };
    let alone = only(1);
    let crowded = only(2);
    assert_eq!(alone.len(), crowded.len());
    // Instants differ only by the epoch; compare the sequence order and relative spacing.
    let rel = |v: &[(u32, Instant)]| {
        v.iter()
            .map(|(s, at)| (*s, *at - v[0].1))
            .collect::<Vec<_>>()
    };
    assert_eq!(rel(&alone), rel(&crowded));
}

fn delivered_up(outs: &[Output<Vec<u8>>]) -> Vec<u32> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Deliver {
                direction: Direction::Up,
                packet,
                ..
            } => Some(seq_of(packet)),
            _ => None,
        })
        .collect()
}

#[test]
fn fifo_never_reorders_but_a_reordering_link_does() {
    // Jitter (σ 15 ms) comparable to the 20 ms spacing: a reordering link swaps packets often.
    let m = SegmentModel::new().delay(Duration::from_millis(50)).jitter(
        Duration::from_millis(15),
        JitterDistribution::Normal,
        0.0,
    );
    let (_, fifo) = trace(Path::symmetric(vec![m.clone()]), 1, 1, 5_000, 200, INTERVAL);
    let (_, reorder) = trace(
        Path::symmetric(vec![m.reorder(true)]),
        1,
        1,
        5_000,
        200,
        INTERVAL,
    );
    let fifo = delivered_up(&fifo);
    let reorder = delivered_up(&reorder);
    assert_eq!(fifo.len(), 5_000);
    assert!(fifo.windows(2).all(|w| w[0] < w[1]), "FIFO reordered");
    let swaps = reorder.windows(2).filter(|w| w[0] > w[1]).count();
    // D ~ N(0, 2·15²): P(D < −20 ms) = Φ(−0.943) = 17 %; expect ~870 of 5000, far from 0.
    assert!(swaps > 500, "only {swaps} reorderings");
}

#[test]
fn fifo_jitter_stretches_gaps_without_reordering() {
    let m = SegmentModel::new().delay(Duration::from_millis(50)).jitter(
        Duration::from_millis(15),
        JitterDistribution::Normal,
        0.0,
    );
    let (_, outs) = trace(Path::symmetric(vec![m]), 3, 1, 2_000, 200, INTERVAL);
    let ats: Vec<Instant> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Deliver {
                direction: Direction::Up,
                at,
                ..
            } => Some(*at),
            _ => None,
        })
        .collect();
    assert!(ats.windows(2).all(|w| w[0] <= w[1]));
    // Some packets were held behind a late predecessor: they leave together with it.
    assert!(ats.windows(2).filter(|w| w[0] == w[1]).count() > 50);
}

#[test]
fn mtu_drops_oversize_packets_counting_encapsulation() {
    let m = SegmentModel {
        overhead: 73,
        ..SegmentModel::new().mtu(1400)
    };
    let path = Path::symmetric(vec![m]);
    let epoch = Instant::now();
    let mut netem = Netem::new(path, 1, epoch);
    netem.handle_input(epoch, FlowId(1), Direction::Up, 1327, vec![1]); // 1327 + 73 = 1400: fits
    netem.handle_input(epoch, FlowId(1), Direction::Up, 1328, vec![2]); // 1401: dropped
    assert!(matches!(netem.poll_output(), Some(Output::Deliver { .. })));
    assert!(matches!(
        netem.poll_output(),
        Some(Output::Drop {
            reason: DropReason::Mtu,
            segment: 0,
            ..
        })
    ));
    assert_eq!(netem.stats(Direction::Up).mtu, 1);
}

#[test]
fn duplication_and_corruption_rates() {
    let m = SegmentModel {
        duplicate: 0.02,
        corrupt: 0.03,
        ..SegmentModel::new()
    };
    let (_, outs) = trace(Path::symmetric(vec![m]), 5, 1, 50_000, 200, INTERVAL);
    let up: Vec<&Vec<u8>> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Deliver {
                direction: Direction::Up,
                packet,
                ..
            } => Some(packet),
            _ => None,
        })
        .collect();
    let dups = up.len() - 50_000;
    let corrupted = up
        .iter()
        .filter(|p| {
            p[12..].iter().any(|&b| b != 0)
                || seq_of(p) >= 50_000
                || p[4..12].iter().any(|&b| b != 0)
        })
        .count();
    // Binomial(50 000, p): 5σ = 5√(np(1−p)) → 2 %: 1000 ± 157; 3 %: 1500 ± 191. A flipped bit
    // lands in the 12 checked bytes with probability 12/16 (but may hit the sequence number's
    // high bytes, which also counts): at least 3/4 of 1500.
    assert!((dups as f64 - 1000.0).abs() < 157.0, "{dups} duplicates");
    assert!(
        (corrupted as f64) > 0.75 * 1500.0 - 191.0 && (corrupted as f64) < 1500.0 + 191.0,
        "{corrupted} corrupted"
    );
}

#[test]
fn shared_64k_link_splits_between_two_flows_and_fills_its_queue() {
    // 64 kbit/s shared, 200 ms queue. Each flow sends 200-byte packets every 40 ms = 40 kbit/s:
    // 80 kbit/s offered in all, 25 % more than the link carries. Each flow first crosses its own
    // LAN segment (5 ms ± 1 ms), so arrivals at the shared queue are not phase-locked — with
    // perfectly synchronised senders, tail drop would always hit the same flow.
    let lan = SegmentModel::new().delay(Duration::from_millis(5)).jitter(
        Duration::from_millis(1),
        JitterDistribution::Normal,
        0.0,
    );
    let link = SegmentModel::new().rate(64_000, QueueLimit::Time(Duration::from_millis(200)));
    let path = Path {
        segments: vec![
            Segment {
                name: "lan".into(),
                up: lan.clone(),
                down: lan,
                shared: false,
            },
            Segment {
                name: "site-uplink".into(),
                up: link.clone(),
                down: link,
                shared: true,
            },
        ],
    };
    let interval = Duration::from_millis(40);
    let (_, outs) = trace(path, 1, 2, 3_000, 200, interval); // 120 s
    let mut per_flow = [0u64; 2];
    let mut drops = [0u64; 2];
    let mut queueing = Vec::new();
    let epoch = outs.iter().find_map(|o| match o {
        Output::Deliver { at, packet, .. } if seq_of(packet) == 0 => Some(*at),
        _ => None,
    });
    for o in &outs {
        match o {
            Output::Deliver {
                direction: Direction::Up,
                flow,
                at,
                packet,
            } => {
                per_flow[flow.0 as usize] += 1;
                // Delay relative to the first packet's (which met an empty queue).
                if let Some(first) = epoch
                    && seq_of(packet) > 250
                {
                    queueing.push(*at - first - interval * seq_of(packet));
                }
            }
            Output::Drop {
                direction: Direction::Up,
                flow,
                reason: DropReason::QueueFull,
                ..
            } => drops[flow.0 as usize] += 1,
            _ => {}
        }
    }
    let delivered = per_flow[0] + per_flow[1];
    // Throughput equals the link rate: 64 000 bit/s / 1600 bit = 40 packets/s over 120 s, plus
    // the ≤ 200 ms of queue drained at the end (≤ 8 packets).
    assert!(
        (delivered as f64 - 4800.0).abs() <= 9.0,
        "{delivered} delivered, expected 4800"
    );
    // Tail drop takes the excess: 6000 offered − 4800 carried.
    assert!(
        ((drops[0] + drops[1]) as f64 - 1200.0).abs() <= 9.0,
        "{drops:?}"
    );
    // Each flow gets its share. If each of the ~1200 drops hits either flow with probability ½,
    // a flow's deliveries have sd √(1200/4) ≈ 17 packets, 0.36 % of 4800; 5σ ≈ 1.8 %.
    let share = per_flow[0] as f64 / delivered as f64;
    assert!((share - 0.5).abs() < 0.018, "{per_flow:?}");
    // Once the queue has filled (after 10 s), packets wait about the queue's 200 ms: never more
    // than the limit plus one packet's serialisation (25 ms) and the LAN jitter's spread.
    queueing.sort();
    let median = queueing[queueing.len() / 2];
    let max = *queueing.last().unwrap();
    assert!(
        median > Duration::from_millis(150),
        "median queueing {median:?}"
    );
    assert!(
        max < Duration::from_millis(200 + 25 + 10),
        "max queueing {max:?}"
    );
}

#[test]
fn shared_link_below_capacity_adds_only_serialisation() {
    // Two flows at 16 kbit/s each on 64 kbit/s: no queueing beyond a packet's own 25 ms
    // serialisation plus, when both flows' packets arrive together, the other's.
    let link = SegmentModel::new().rate(64_000, QueueLimit::Packets(10));
    let path = Path {
        segments: vec![Segment {
            name: "site-uplink".into(),
            up: link.clone(),
            down: link,
            shared: true,
        }],
    };
    let interval = Duration::from_millis(100);
    let (_, outs) = trace(path, 1, 2, 600, 200, interval);
    let epoch_delays: Vec<Duration> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Deliver {
                direction: Direction::Up,
                at,
                ..
            } => Some(*at),
            _ => None,
        })
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|c| c[1] - c[0])
        .collect();
    // Flow 1's packet waits exactly one serialisation (1600 bit at 64 kbit/s = 25 ms) behind flow 0's.
    assert!(
        epoch_delays.iter().all(|&d| d == Duration::from_millis(25)),
        "{:?}",
        &epoch_delays[..4]
    );
    assert!(outs.iter().all(|o| !matches!(o, Output::Drop { .. })));
}
