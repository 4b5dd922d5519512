//! RFC 3550 §6.4.1 interarrival jitter.

use std::time::{Duration, Instant};

/// The interarrival jitter estimator of RFC 3550 §6.4.1, `J += (|D| − J)/16`.
///
/// `D(i−1, i) = (Ri − Ri−1) − (Si − Si−1)`: the change in transit time between two packets that
/// arrived one after the other (in arrival order, not sequence order), where `R` is the arrival
/// time and `S` the RTP timestamp, both in RTP timestamp units. Fed `(arrival, RTP timestamp)`;
/// the clock rate turns arrival instants into timestamp units.
///
/// ```
/// # use std::time::{Duration, Instant};
/// # use reports::jitter::InterarrivalJitter;
/// let t0 = Instant::now();
/// let mut j = InterarrivalJitter::new(48_000);
/// for i in 0..100u32 {
///     // 20 ms packets arriving exactly 20 ms apart: no jitter.
///     j.on_packet(t0 + Duration::from_millis(20 * u64::from(i)), i * 960);
/// }
/// assert!(j.jitter_ms() < 1e-9);
/// ```
#[derive(Debug, Clone)]
pub struct InterarrivalJitter {
    clock_rate: f64,
    previous: Option<(Instant, u32)>,
    /// J, in RTP timestamp units, kept as a float so that small differences are not truncated.
    jitter: f64,
}

impl InterarrivalJitter {
    /// An estimator for a stream with the given RTP clock rate (Hz, e.g. 48 000 for Opus).
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: f64::from(clock_rate.max(1)),
            previous: None,
            jitter: 0.0,
        }
    }

    /// Accounts for one received packet. Arrivals earlier than the previous one are taken as the
    /// same instant (the clock is monotonic; this only guards against misuse).
    pub fn on_packet(&mut self, arrival: Instant, rtp_timestamp: u32) {
        if let Some((prev_arrival, prev_ts)) = self.previous {
            let arrival_delta = arrival
                .saturating_duration_since(prev_arrival)
                .as_secs_f64();
            // Timestamps wrap at 2^32: the signed 32-bit difference is the RFC's arithmetic.
            let ts_delta = f64::from(rtp_timestamp.wrapping_sub(prev_ts) as i32);
            let d = arrival_delta * self.clock_rate - ts_delta;
            self.jitter += (d.abs() - self.jitter) / 16.0;
        }
        self.previous = Some((arrival, rtp_timestamp));
    }

    /// The current jitter in RTP timestamp units, as an RTCP report block carries it.
    pub fn jitter_rtp_units(&self) -> u32 {
        // Saturating float→int conversion; jitter is never negative.
        self.jitter.round() as u32
    }

    /// The current jitter, milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter * 1000.0 / self.clock_rate
    }

    /// The current jitter as a duration.
    pub fn jitter(&self) -> Duration {
        Duration::from_secs_f64(self.jitter / self.clock_rate)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs one real instant as its epoch
mod tests {
    use super::*;

    const RATE: u32 = 48_000;
    const PTIME: Duration = Duration::from_millis(20);
    const TS_PER_PACKET: u32 = 960;

    #[test]
    fn constant_delay_gives_zero() {
        let t0 = Instant::now();
        let mut j = InterarrivalJitter::new(RATE);
        // Any constant network delay (here 37 ms) cancels out in D.
        for i in 0..500u32 {
            j.on_packet(
                t0 + Duration::from_millis(37) + PTIME * i,
                i * TS_PER_PACKET,
            );
        }
        assert_eq!(j.jitter_rtp_units(), 0);
        assert!(j.jitter_ms().abs() < 1e-9);
    }

    /// Transit alternating +d, −d around a mean: every |D| = 2d, so J_n = 2d·(1 − (15/16)^n)
    /// after n differences, tending to 2d.
    #[test]
    fn alternating_delay_matches_closed_form() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let d_ms = 4.0;
        let mut j = InterarrivalJitter::new(RATE);
        for i in 0..200u32 {
            let offset = if i % 2 == 0 { d_ms } else { -d_ms };
            let arrival = t0 + PTIME * i + Duration::from_millis(50);
            let arrival = if offset > 0.0 {
                arrival + Duration::from_secs_f64(offset / 1000.0)
            } else {
                arrival - Duration::from_secs_f64(-offset / 1000.0)
            };
            j.on_packet(arrival, i * TS_PER_PACKET);
            let n = i32::try_from(i).unwrap();
            let expected = 2.0 * d_ms * (1.0 - (15.0f64 / 16.0).powi(n));
            assert!(
                (j.jitter_ms() - expected).abs() < 1e-6,
                "packet {i}: {} vs {expected}",
                j.jitter_ms()
            );
        }
        assert!((j.jitter_ms() - 2.0 * d_ms).abs() < 1e-4);
        assert_eq!(j.jitter_rtp_units(), 384); // 8 ms at 48 kHz
    }

    #[test]
    fn timestamp_wrap_is_not_a_jump() {
        let t0 = Instant::now();
        let mut j = InterarrivalJitter::new(RATE);
        let start = u32::MAX - 5 * TS_PER_PACKET;
        for i in 0..20u32 {
            j.on_packet(t0 + PTIME * i, start.wrapping_add(i * TS_PER_PACKET));
        }
        assert_eq!(j.jitter_rtp_units(), 0);
    }
}
