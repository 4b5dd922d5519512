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

mod random;
mod segment;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::time::Instant;

pub use random::JitterDistribution;
pub use segment::{Jitter, Loss, QueueLimit, Rate, Schedule, SegmentModel};

use random::Rng;
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

struct Event<T> {
    at: Instant,
    seq: u64,
    /// Index of the next segment in travel order (== number of segments: leaves the path).
    hop: usize,
    flow: FlowId,
    direction: Direction,
    wire_len: u32,
    packet: T,
}

impl<T> PartialEq for Event<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Event<T> {}
impl<T> PartialOrd for Event<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Event<T> {
    /// Reversed, so that `BinaryHeap` pops the earliest (ties: first scheduled first).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// States of one segment in one direction.
#[derive(Debug, Default)]
struct SegmentStates {
    shared: Option<SegmentState>,
    per_flow: HashMap<FlowId, SegmentState>,
}

/// The path engine. `T` is the packet: anything whose bytes a corrupting segment can flip.
pub struct Netem<T> {
    path: Path,
    seed: u64,
    epoch: Instant,
    now: Instant,
    /// `[direction][segment]`.
    states: [Vec<SegmentStates>; 2],
    events: BinaryHeap<Event<T>>,
    next_seq: u64,
    output: VecDeque<Output<T>>,
    stats: [NetemStats; 2],
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
        Self {
            path,
            seed,
            epoch,
            now: epoch,
            states,
            events: BinaryHeap::new(),
            next_seq: 0,
            output: VecDeque::new(),
            stats: [NetemStats::default(); 2],
        }
    }

    /// The path this engine applies.
    pub fn path(&self) -> &Path {
        &self.path
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
        let at = now.max(self.now);
        self.schedule(Event {
            at,
            seq: 0,
            hop: 0,
            flow,
            direction,
            wire_len,
            packet,
        });
        self.handle_timeout(now);
    }

    /// Advances the engine to `now`: every packet due by then moves on. Time going backwards is
    /// ignored.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        while self.events.peek().is_some_and(|e| e.at <= self.now) {
            // Invariant: peek just returned Some.
            let Some(event) = self.events.pop() else {
                break;
            };
            self.step(event);
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
        self.events.peek().map(|e| e.at)
    }

    fn schedule(&mut self, mut event: Event<T>) {
        event.seq = self.next_seq;
        self.next_seq += 1;
        self.events.push(event);
    }

    fn step(&mut self, mut e: Event<T>) {
        let n = self.path.segments.len();
        let d = e.direction.index();
        if e.hop == n {
            self.stats[d].delivered += 1;
            self.output.push_back(Output::Deliver {
                at: e.at,
                flow: e.flow,
                direction: e.direction,
                packet: e.packet,
            });
            return;
        }
        let index = match e.direction {
            Direction::Up => e.hop,
            Direction::Down => n - 1 - e.hop,
        };
        let segment = &self.path.segments[index];
        let model = match e.direction {
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
                .entry(e.flow)
                .or_insert_with(|| SegmentState::new(stream(e.flow.0)))
        };
        match state.process(model, self.epoch, e.at, e.wire_len) {
            Fate::Drop(reason) => {
                let s = &mut self.stats[d];
                *match reason {
                    DropReason::Loss => &mut s.lost,
                    DropReason::QueueFull => &mut s.queue_full,
                    DropReason::Mtu => &mut s.mtu,
                    DropReason::Outage => &mut s.outage,
                } += 1;
                self.output.push_back(Output::Drop {
                    at: e.at,
                    flow: e.flow,
                    direction: e.direction,
                    segment: index,
                    reason,
                });
            }
            Fate::Forward {
                at,
                duplicate,
                corrupt_bit,
            } => {
                if let Some(bit) = corrupt_bit {
                    let bytes = e.packet.as_mut();
                    if !bytes.is_empty() {
                        let bit = (bit % (bytes.len() as u64 * 8)) as usize;
                        bytes[bit / 8] ^= 1 << (bit % 8);
                        self.stats[d].corrupted += 1;
                    }
                }
                e.at = at;
                e.hop += 1;
                if duplicate {
                    self.stats[d].duplicated += 1;
                    let copy = Event {
                        packet: e.packet.clone(),
                        ..e
                    };
                    self.schedule(copy);
                }
                self.schedule(e);
            }
        }
    }
}
