//! The network-path engine: a chain of segments applied to packets, sans-I/O.
//!
//! A [`Path`] is a chain of [`SegmentModel`]s, one model per direction per segment. Packets go in
//! with [`Netem::handle_input`]; the engine moves each through the segments at the instants it
//! reaches them (a discrete-event simulation, so that a shared queue sees its flows' packets in
//! true time order) and hands back what leaves the path, when it leaves, or why it was dropped.
//!
//! The drain contract (str0m's): after each `handle_input` or `handle_timeout`, call
//! `poll_output` until it returns `None`, then wake at `poll_timeout`.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use sim::netem::{Direction, FlowId, Netem, Output, Path, SegmentModel};
//!
//! let lan = SegmentModel::new().delay(Duration::from_millis(5));
//! let path = Path::symmetric(vec![lan]);
//! let epoch = Instant::now();
//! let mut netem = Netem::new(path, 42, epoch);
//!
//! netem.handle_input(epoch, FlowId(1), Direction::Up, 200, vec![0u8; 172]);
//! assert!(netem.poll_output().is_none()); // still in flight
//! let due = netem.poll_timeout().unwrap();
//! assert_eq!(due - epoch, Duration::from_millis(5));
//! netem.handle_timeout(due);
//! let Some(Output::Deliver { at, .. }) = netem.poll_output() else { panic!() };
//! assert_eq!(at, due);
//! ```

mod queue;
mod random;
mod segment;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

pub use random::JitterDistribution;
pub use segment::{Jitter, Loss, QueueLimit, Rate, Schedule, SegmentModel};

use queue::RadixHeap;
pub(crate) use random::Rng;
use segment::{Fate, SegmentState};

/// Which way a packet travels along the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// From the agent towards the TURN server (segments in order).
    Up,
    /// From the TURN server towards the agent (segments in reverse order).
    Down,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Self::Up => 0,
            Self::Down => 1,
        }
    }
}

/// A flow's identity, chosen by the caller (e.g. one per agent 5-tuple). Per-flow segments keep
/// separate state, and separate random streams, per flow id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// Why the path dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// Random or Gilbert–Elliott loss.
    Loss,
    /// The rate-limited queue was full (tail drop).
    QueueFull,
    /// Larger than the segment's MTU.
    Mtu,
    /// Inside a scheduled outage.
    Outage,
}

impl DropReason {
    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::QueueFull => "queue_full",
            Self::Mtu => "mtu",
            Self::Outage => "outage",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One segment of a path: a model per direction, per flow or shared.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// A name for traces and errors (the profile or table it came from).
    pub name: String,
    /// The model for packets going up (agent → server).
    pub up: SegmentModel,
    /// The model for packets going down (server → agent).
    pub down: SegmentModel,
    /// One queue and one state for all flows (a site uplink), instead of one per flow.
    pub shared: bool,
}

/// A chain of segments, agent side first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Path {
    /// The segments, agent side first.
    pub segments: Vec<Segment>,
}

impl Path {
    /// A path of per-flow segments with the same model both ways.
    pub fn symmetric(models: Vec<SegmentModel>) -> Self {
        let segments = models
            .into_iter()
            .enumerate()
            .map(|(i, m)| Segment {
                name: format!("segment-{i}"),
                up: m.clone(),
                down: m,
                shared: false,
            })
            .collect();
        Self { segments }
    }
}

/// What the engine hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<T> {
    /// The packet leaves the path at `at`.
    Deliver {
        /// When it leaves the path.
        at: Instant,
        /// Its flow.
        flow: FlowId,
        /// Its direction.
        direction: Direction,
        /// The packet (corrupted if a segment corrupted it).
        packet: T,
    },
    /// A segment dropped the packet at `at`.
    Drop {
        /// When it was dropped.
        at: Instant,
        /// Its flow.
        flow: FlowId,
        /// Its direction.
        direction: Direction,
        /// Index of the dropping segment in the path.
        segment: usize,
        /// Why.
        reason: DropReason,
    },
}

/// Counters of what the engine did, per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetemStats {
    /// Packets put in.
    pub input: u64,
    /// Packets delivered (duplicates included).
    pub delivered: u64,
    /// Copies made by duplication.
    pub duplicated: u64,
    /// Packets with a flipped bit.
    pub corrupted: u64,
    /// Drops by loss.
    pub lost: u64,
    /// Drops by a full queue.
    pub queue_full: u64,
    /// Drops by MTU.
    pub mtu: u64,
    /// Drops by outage.
    pub outage: u64,
}

/// For each segment in travel order: whether a packet leaving it may cross the next one at once,
/// without waiting in the event queue until it gets there.
///
/// A segment's state must see packets in the order they reach it: a shared segment all flows'
/// packets, a per-flow segment its flow's. Packets are processed in time order (inputs come in
/// time order; events leave the queue in time order). A FIFO segment releases packets in the
/// order it processed them — per flow, or across all flows when it is shared — so the next
/// segment can be crossed at once when that order is the one it needs: always for a per-flow
/// next segment, and for a shared one only after a shared FIFO segment. After a reordering
/// segment, or from per-flow to shared, packets wait for their instant in the event queue.
/// The results are identical either way; only the work differs.
fn continuations(path: &Path, direction: Direction) -> Vec<bool> {
    let mut order: Vec<&Segment> = path.segments.iter().collect();
    if direction == Direction::Down {
        order.reverse();
    }
    order
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let fifo = !match direction {
                Direction::Up => s.up.reorder,
                Direction::Down => s.down.reorder,
            };
            let next_shared = order.get(j + 1).is_some_and(|n| n.shared);
            fifo && (!next_shared || s.shared)
        })
        .collect()
}

/// A packet on its way: where it is and what it is. Kept in a slab; the event queue holds only
/// keys: (instant in nanoseconds after the epoch << 64 | sequence) → slot. Equal instants
/// leave in the order they were scheduled.
struct InFlight<T> {
    /// Index of the next segment in travel order (== number of segments: leaves the path).
    hop: usize,
    flow: FlowId,
    direction: Direction,
    wire_len: u32,
    packet: T,
}

/// States of one segment in one direction.
#[derive(Debug, Default)]
struct SegmentStates {
    shared: Option<SegmentState>,
    per_flow: HashMap<FlowId, SegmentState, BuildHasherDefault<FlowHasher>>,
}

/// A multiplicative hasher for flow ids: the map is keyed by ids the caller chose, not by
/// attacker-controlled input, so SipHash's flood resistance buys nothing on this per-packet path.
#[derive(Debug, Default, Clone, Copy)]
struct FlowHasher(u64);

impl Hasher for FlowHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// The path engine. `T` is the packet: anything whose bytes a corrupting segment can flip.
pub struct Netem<T> {
    path: Path,
    seed: u64,
    epoch: Instant,
    now: Instant,
    /// `[direction][segment]`.
    states: [Vec<SegmentStates>; 2],
    events: RadixHeap<u32>,
    slab: Vec<Option<InFlight<T>>>,
    free: Vec<u32>,
    next_seq: u64,
    output: VecDeque<Output<T>>,
    stats: [NetemStats; 2],
    /// Per direction and segment in travel order: see [`continuations`].
    continues: [Vec<bool>; 2],
}

impl<T> fmt::Debug for Netem<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netem")
            .field("segments", &self.path.segments.len())
            .field("in_flight", &self.events.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T: AsMut<[u8]> + Clone> Netem<T> {
    /// An engine for `path`, seeded; `epoch` is the run's start, the origin of scheduled outages.
    pub fn new(path: Path, seed: u64, epoch: Instant) -> Self {
        let n = path.segments.len();
        let states = [
            (0..n).map(|_| SegmentStates::default()).collect(),
            (0..n).map(|_| SegmentStates::default()).collect(),
        ];
        let continues = [
            continuations(&path, Direction::Up),
            continuations(&path, Direction::Down),
        ];
        Self {
            path,
            seed,
            epoch,
            now: epoch,
            states,
            events: RadixHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            next_seq: 0,
            output: VecDeque::new(),
            stats: [NetemStats::default(); 2],
            continues,
        }
    }

    /// Counters for one direction.
    pub fn stats(&self, direction: Direction) -> NetemStats {
        self.stats[direction.index()]
    }

    /// A packet of `wire_len` bytes on the wire (IP and UDP/TCP headers included) enters the
    /// path at `now`.
    pub fn handle_input(
        &mut self,
        now: Instant,
        flow: FlowId,
        direction: Direction,
        wire_len: u32,
        packet: T,
    ) {
        self.stats[direction.index()].input += 1;
        // Everything due by now moves first, so the new packet meets the segments in time order.
        self.handle_timeout(now);
        let at = self.now;
        self.step(
            at,
            InFlight {
                hop: 0,
                flow,
                direction,
                wire_len,
                packet,
            },
        );
    }

    /// Advances the engine to `now`: every packet due by then moves on. Time going backwards is
    /// ignored.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        let now_ns = self.ns(self.now);
        while self
            .events
            .peek_key()
            .is_some_and(|k| (k >> 64) as u64 <= now_ns)
        {
            let Some((key, slot)) = self.events.pop() else {
                break;
            };
            // Invariant: every key points at a filled slot, emptied only here.
            let Some(packet) = self.slab[slot as usize].take() else {
                continue;
            };
            self.free.push(slot);
            let at = self.epoch + Duration::from_nanos((key >> 64) as u64);
            self.step(at, packet);
        }
    }

    /// The next output, if any. Drain until `None` after every `handle_*`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output<T>> {
        self.output.pop_front()
    }

    /// When the next packet is due to move, if any is in flight.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.events
            .peek_key()
            .map(|k| self.epoch + Duration::from_nanos((k >> 64) as u64))
    }

    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn schedule(&mut self, at: Instant, packet: InFlight<T>) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = Some(packet);
                slot
            }
            None => {
                self.slab.push(Some(packet));
                u32::try_from(self.slab.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let key = (u128::from(self.ns(at)) << 64) | u128::from(self.next_seq);
        self.next_seq += 1;
        self.events.push(key, slot);
    }

    /// Moves a packet that is at `at` on through the path until it must wait for an instant,
    /// leaves the path, or is dropped.
    fn step(&mut self, mut at: Instant, mut p: InFlight<T>) {
        let n = self.path.segments.len();
        let d = p.direction.index();
        // Everything due before `origin` has been processed; a packet leaving later waits in the
        // queue, so that outputs come out in time order.
        let origin = at;
        loop {
            if p.hop == n {
                if at <= origin {
                    self.stats[d].delivered += 1;
                    self.output.push_back(Output::Deliver {
                        at,
                        flow: p.flow,
                        direction: p.direction,
                        packet: p.packet,
                    });
                } else {
                    self.schedule(at, p);
                }
                return;
            }
            let index = match p.direction {
                Direction::Up => p.hop,
                Direction::Down => n - 1 - p.hop,
            };
            let segment = &self.path.segments[index];
            let model = match p.direction {
                Direction::Up => &segment.up,
                Direction::Down => &segment.down,
            };
            let states = &mut self.states[d][index];
            let seed = self.seed;
            let stream = |flow: u64| Rng::for_stream(seed, &[index as u64, d as u64, flow]);
            let state = if segment.shared {
                states
                    .shared
                    .get_or_insert_with(|| SegmentState::new(stream(u64::MAX)))
            } else {
                states
                    .per_flow
                    .entry(p.flow)
                    .or_insert_with(|| SegmentState::new(stream(p.flow.0)))
            };
            let (exit, duplicate, corrupt_bit) =
                match state.process(model, self.epoch, at, p.wire_len) {
                    Fate::Forward {
                        at,
                        duplicate,
                        corrupt_bit,
                    } => (at, duplicate, corrupt_bit),
                    Fate::Drop(reason) => {
                        let s = &mut self.stats[d];
                        *match reason {
                            DropReason::Loss => &mut s.lost,
                            DropReason::QueueFull => &mut s.queue_full,
                            DropReason::Mtu => &mut s.mtu,
                            DropReason::Outage => &mut s.outage,
                        } += 1;
                        self.output.push_back(Output::Drop {
                            at,
                            flow: p.flow,
                            direction: p.direction,
                            segment: index,
                            reason,
                        });
                        return;
                    }
                };
            if let Some(bit) = corrupt_bit {
                let bytes = p.packet.as_mut();
                if !bytes.is_empty() {
                    let bit = (bit % (bytes.len() as u64 * 8)) as usize;
                    bytes[bit / 8] ^= 1 << (bit % 8);
                    self.stats[d].corrupted += 1;
                }
            }
            let continues = self.continues[d][p.hop];
            at = exit;
            p.hop += 1;
            if duplicate {
                self.stats[d].duplicated += 1;
                let copy = InFlight {
                    packet: p.packet.clone(),
                    ..p
                };
                // The copy travels exactly as the original does.
                if continues {
                    self.step(at, copy);
                } else {
                    self.schedule(at, copy);
                }
            }
            if !continues {
                self.schedule(at, p);
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs one real instant as its epoch
mod tests {
    use super::*;
    use crate::bench::bench_path;

    /// Crossing segments at once where [`continuations`] allows it gives exactly what waiting in
    /// the event queue for every hop gives: same deliveries at the same instants, same drops.
    #[test]
    fn shortcuts_do_not_change_results() {
        let run = |shortcuts: bool| {
            let epoch = Instant::now();
            let mut netem: Netem<Vec<u8>> = Netem::new(bench_path(), 5, epoch);
            if !shortcuts {
                for c in &mut netem.continues {
                    c.fill(false);
                }
            }
            let mut out = Vec::new();
            for i in 0..40_000u32 {
                let t = epoch + Duration::from_micros(200) * i;
                netem.handle_timeout(t);
                while let Some(o) = netem.poll_output() {
                    out.push(o);
                }
                let dir = if i % 3 == 0 {
                    Direction::Down
                } else {
                    Direction::Up
                };
                netem.handle_input(
                    t,
                    FlowId(u64::from(i % 100)),
                    dir,
                    200,
                    i.to_le_bytes().to_vec(),
                );
            }
            while let Some(due) = netem.poll_timeout() {
                netem.handle_timeout(due);
                while let Some(o) = netem.poll_output() {
                    out.push(o);
                }
            }
            let mut delivered: Vec<(Duration, u64, Direction, Vec<u8>)> = Vec::new();
            let mut dropped: Vec<(Duration, u64, Direction, usize, DropReason)> = Vec::new();
            for o in out {
                match o {
                    Output::Deliver {
                        at,
                        flow,
                        direction,
                        packet,
                    } => delivered.push((at - epoch, flow.0, direction, packet)),
                    Output::Drop {
                        at,
                        flow,
                        direction,
                        segment,
                        reason,
                    } => {
                        dropped.push((at - epoch, flow.0, direction, segment, reason));
                    }
                }
            }
            // Deliveries come out in time order either way, but packets leaving at the very same
            // nanosecond may come out in another order; drops may be decided earlier.
            assert!(delivered.windows(2).all(|w| w[0].0 <= w[1].0));
            delivered.sort();
            dropped.sort();
            (delivered, dropped)
        };
        let (fast_delivered, fast_dropped) = run(true);
        let (slow_delivered, slow_dropped) = run(false);
        assert!(
            fast_dropped.len() > 100,
            "the path must drop something to compare"
        );
        assert_eq!(fast_delivered.len(), slow_delivered.len());
        assert!(fast_delivered == slow_delivered, "deliveries differ");
        assert_eq!(fast_dropped, slow_dropped);
    }
}
