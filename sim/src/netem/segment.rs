//! One segment of a path: its model (configuration) and its state per flow or shared.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::DropReason;
use super::random::{JitterDistribution, Latent, Rng};

/// The model of one segment in one direction, netem's vocabulary where it has one.
///
/// Build with [`SegmentModel::new`] and the chainable setters; every impairment is off by default.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentModel {
    /// Fixed one-way delay added to every packet.
    pub delay: Duration,
    /// Delay variation.
    pub jitter: Option<Jitter>,
    /// Whether jitter may reorder packets. A FIFO segment (the default, like a real link)
    /// never reorders: a packet that would overtake its predecessor leaves just after it, so
    /// jitter only stretches gaps.
    pub reorder: bool,
    /// Packet loss.
    pub loss: Loss,
    /// Probability that a packet is duplicated (0..1).
    pub duplicate: f64,
    /// Probability that a packet has one bit flipped (0..1).
    pub corrupt: f64,
    /// Link rate and its queue.
    pub rate: Option<Rate>,
    /// Largest packet on the wire, bytes (with `overhead`); larger ones are dropped.
    pub mtu: Option<u32>,
    /// Bytes this segment adds to each packet on its wire (tunnel encapsulation), counted by
    /// `rate` and `mtu`.
    pub overhead: u32,
    /// Blackouts: every packet is dropped while one lasts.
    pub outages: Vec<Schedule>,
    /// Stalls: packets are held while one lasts, then released together when it ends.
    pub stalls: Vec<Schedule>,
}

/// Delay variation of a segment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    /// Standard deviation of the added delay.
    pub amount: Duration,
    /// Its distribution (normalised to mean 0, standard deviation 1 before scaling).
    pub distribution: JitterDistribution,
    /// Lag-one correlation of successive packets' variation, 0..1 (AR(1) on a Gaussian copula).
    pub correlation: f64,
}

/// Packet loss models.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Loss {
    /// No loss.
    #[default]
    None,
    /// Independent loss with this probability (0..1).
    Random(f64),
    /// Gilbert–Elliott two-state bursts, per packet (netem `loss gemodel p r 1-h 1-k`).
    GilbertElliott {
        /// Probability of moving good → bad.
        p: f64,
        /// Probability of moving bad → good.
        r: f64,
        /// Loss probability in the bad state (netem's 1 − h; 1 for the Gilbert model).
        loss_in_bad: f64,
        /// Loss probability in the good state (netem's 1 − k; usually 0).
        loss_in_good: f64,
    },
}

impl Loss {
    /// The long-run loss probability of the model.
    pub fn mean_rate(&self) -> f64 {
        match *self {
            Self::None => 0.0,
            Self::Random(p) => p,
            Self::GilbertElliott {
                p,
                r,
                loss_in_bad,
                loss_in_good,
            } => {
                if p + r == 0.0 {
                    return loss_in_good;
                }
                let bad = p / (p + r);
                bad * loss_in_bad + (1.0 - bad) * loss_in_good
            }
        }
    }
}

/// A link rate with its queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Bits per second.
    pub bits_per_second: u64,
    /// The queue's limit: packets arriving when it is full are dropped (tail drop).
    pub queue: QueueLimit,
}

/// A queue limit, in packets or in queueing time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueueLimit {
    /// At most this many packets waiting or in service.
    Packets(u32),
    /// At most this much queueing delay.
    Time(Duration),
}

/// When an outage or stall happens, relative to the path's epoch (the start of the run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// Once, from `at` for `duration`.
    Once {
        /// Start after the epoch.
        at: Duration,
        /// Length.
        duration: Duration,
    },
    /// Every `every`, for `duration`, the first starting at `offset`.
    Periodic {
        /// Period.
        every: Duration,
        /// Length of each occurrence.
        duration: Duration,
        /// Start of the first occurrence after the epoch.
        offset: Duration,
    },
}

impl Schedule {
    /// The end of the occurrence covering `since_epoch`, if one does.
    pub fn active_until(&self, since_epoch: Duration) -> Option<Duration> {
        match *self {
            Self::Once { at, duration } => {
                (since_epoch >= at && since_epoch < at + duration).then_some(at + duration)
            }
            Self::Periodic {
                every,
                duration,
                offset,
            } => {
                if since_epoch < offset || every.is_zero() {
                    return None;
                }
                let into = (since_epoch - offset).as_nanos() % every.as_nanos();
                let into = Duration::from_nanos(u64::try_from(into).unwrap_or(u64::MAX));
                (into < duration).then(|| since_epoch - into + duration)
            }
        }
    }
}

impl Default for SegmentModel {
    fn default() -> Self {
        Self::new()
    }
}

impl SegmentModel {
    /// A segment that passes everything through unchanged.
    pub const fn new() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: None,
            reorder: false,
            loss: Loss::None,
            duplicate: 0.0,
            corrupt: 0.0,
            rate: None,
            mtu: None,
            overhead: 0,
            outages: Vec::new(),
            stalls: Vec::new(),
        }
    }

    /// Sets the fixed delay.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the jitter.
    pub fn jitter(
        mut self,
        amount: Duration,
        distribution: JitterDistribution,
        correlation: f64,
    ) -> Self {
        self.jitter = Some(Jitter {
            amount,
            distribution,
            correlation,
        });
        self
    }

    /// Allows or forbids reordering.
    pub fn reorder(mut self, allowed: bool) -> Self {
        self.reorder = allowed;
        self
    }

    /// Sets the loss model.
    pub fn loss(mut self, loss: Loss) -> Self {
        self.loss = loss;
        self
    }

    /// Sets the link rate and its queue.
    pub fn rate(mut self, bits_per_second: u64, queue: QueueLimit) -> Self {
        self.rate = Some(Rate {
            bits_per_second,
            queue,
        });
        self
    }

    /// Sets the MTU.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Adds an outage schedule.
    pub fn outage(mut self, schedule: Schedule) -> Self {
        self.outages.push(schedule);
        self
    }

    /// Adds a stall schedule.
    pub fn stall(mut self, schedule: Schedule) -> Self {
        self.stalls.push(schedule);
        self
    }
}

/// What a segment did with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Leaves the segment at this instant; `duplicate` when a copy leaves with it; `corrupt_bit`
    /// when one bit (index into the packet's bits, modulo its length) is to be flipped.
    Forward {
        at: Instant,
        duplicate: bool,
        corrupt_bit: Option<u64>,
    },
    /// Dropped.
    Drop(DropReason),
}

/// The state of one segment for one flow (or for all flows, when shared).
#[derive(Debug, Clone)]
pub(crate) struct SegmentState {
    rng: Rng,
    latent: Latent,
    latent_mix: Latent,
    /// Gilbert–Elliott: in the bad state.
    bad: bool,
    /// When the last packet left (FIFO ordering).
    last_exit: Option<Instant>,
    /// Rate: when the link finishes sending what it has.
    busy_until: Option<Instant>,
    /// Rate: departure instants of the packets in the queue (for a packet-count limit).
    in_queue: VecDeque<Instant>,
}

impl SegmentState {
    pub(crate) fn new(rng: Rng) -> Self {
        Self {
            rng,
            latent: Latent::default(),
            latent_mix: Latent::default(),
            bad: false,
            last_exit: None,
            busy_until: None,
            in_queue: VecDeque::new(),
        }
    }

    /// Passes one packet of `wire_len` bytes arriving at `at` through the segment.
    pub(crate) fn process(
        &mut self,
        m: &SegmentModel,
        epoch: Instant,
        at: Instant,
        wire_len: u32,
    ) -> Fate {
        let scheduled = !(m.outages.is_empty() && m.stalls.is_empty());
        let since = if scheduled {
            at.saturating_duration_since(epoch)
        } else {
            Duration::ZERO
        };
        if m.outages.iter().any(|o| o.active_until(since).is_some()) {
            return Fate::Drop(DropReason::Outage);
        }
        let size = wire_len + m.overhead;
        if m.mtu.is_some_and(|mtu| size > mtu) {
            return Fate::Drop(DropReason::Mtu);
        }
        if self.lost(&m.loss) {
            return Fate::Drop(DropReason::Loss);
        }
        // A stall holds the packet until it ends; then it goes on as if it arrived then.
        let mut t = at;
        if let Some(end) = m.stalls.iter().filter_map(|s| s.active_until(since)).max() {
            t = epoch + end;
        }
        if let Some(rate) = &m.rate {
            match self.enqueue(rate, t, size) {
                Some(departure) => t = departure,
                None => return Fate::Drop(DropReason::QueueFull),
            }
        }
        t += self.delay(m);
        if !m.reorder
            && let Some(last) = self.last_exit
        {
            t = t.max(last);
        }
        self.last_exit = Some(self.last_exit.map_or(t, |l| l.max(t)));
        let duplicate = self.rng.chance(m.duplicate);
        let corrupt_bit = self.rng.chance(m.corrupt).then(|| self.rng.next_u64());
        Fate::Forward {
            at: t,
            duplicate,
            corrupt_bit,
        }
    }

    fn lost(&mut self, loss: &Loss) -> bool {
        match *loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.chance(p),
            Loss::GilbertElliott {
                p,
                r,
                loss_in_bad,
                loss_in_good,
            } => {
                // netem's order: move first, then lose according to the new state.
                let u = self.rng.uniform();
                self.bad = if self.bad { u >= r } else { u < p };
                self.rng
                    .chance(if self.bad { loss_in_bad } else { loss_in_good })
            }
        }
    }

    /// Serialises the packet on the link; `None` when the queue is full (tail drop).
    fn enqueue(&mut self, rate: &Rate, t: Instant, size: u32) -> Option<Instant> {
        while self.in_queue.front().is_some_and(|&d| d <= t) {
            self.in_queue.pop_front();
        }
        let start = self.busy_until.map_or(t, |b| b.max(t));
        let wait = start - t;
        let full = match rate.queue {
            QueueLimit::Packets(n) => self.in_queue.len() >= n as usize,
            QueueLimit::Time(limit) => wait > limit,
        };
        if full {
            return None;
        }
        let nanos = u64::from(size) * 8 * 1_000_000_000 / rate.bits_per_second.max(1);
        let departure = start + Duration::from_nanos(nanos);
        self.busy_until = Some(departure);
        self.in_queue.push_back(departure);
        Some(departure)
    }

    fn delay(&mut self, m: &SegmentModel) -> Duration {
        let Some(j) = &m.jitter else { return m.delay };
        let variate = if j.correlation == 0.0 {
            j.distribution.independent_variate(&mut self.rng)
        } else {
            self.correlated_variate(j)
        };
        let nanos = m.delay.as_secs_f64() * 1e9 + j.amount.as_secs_f64() * 1e9 * variate;
        // A packet cannot leave before it arrived: the variation is clamped at zero total delay.
        // (`as` saturates: absurd tails become the longest representable delay.)
        Duration::from_nanos(nanos.max(0.0) as u64)
    }

    fn correlated_variate(&mut self, j: &Jitter) -> f64 {
        let z1 = self.latent.next(&mut self.rng, j.correlation);
        let z2 = match j.distribution {
            JitterDistribution::Paretonormal => self.latent_mix.next(&mut self.rng, j.correlation),
            _ => 0.0,
        };
        j.distribution.variate(z1, z2)
    }
}
