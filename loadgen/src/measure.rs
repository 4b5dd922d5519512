//! What the receiving side of a media stream measures (DESIGN §6): one-way delay from the send
//! instant carried in the payload, RFC 3550 jitter sampled once a second, loss and its bursts
//! from sequence numbers, late loss against a fixed jitter buffer, and the E-model's MOS.

use std::time::{Duration, Instant};

use reports::emodel::{Codec, EModel, burst_ratio};
use reports::jitter::InterarrivalJitter;
use reports::loss::SequenceTracker;
use reports::record::MediaStats;
use reports::{Distribution, Unit};

use crate::peer::CLOCK_RATE;

/// The send stamp at the start of every media payload: the send instant (after the call's
/// epoch) and the frame number. Inside SRTP, so the network cannot see or alter it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// When the frame was sent, after the shared epoch.
    pub sent: Duration,
    /// The frame's number in its stream.
    pub frame: u64,
}

impl Stamp {
    /// Marks a payload as carrying a stamp: other senders' media (a browser's Opus) is measured
    /// for jitter and loss but has no send instant to read.
    pub const MAGIC: [u8; 4] = *b"SPS1";
    /// Bytes a stamp takes.
    pub const LEN: usize = 20;

    /// Writes the stamp at the start of `payload` (which must hold [`Self::LEN`] bytes).
    pub fn write(&self, payload: &mut [u8]) {
        let nanos = u64::try_from(self.sent.as_nanos()).unwrap_or(u64::MAX);
        payload[..4].copy_from_slice(&Self::MAGIC);
        payload[4..12].copy_from_slice(&nanos.to_le_bytes());
        payload[12..20].copy_from_slice(&self.frame.to_le_bytes());
    }

    /// Reads a stamp; `None` when the payload carries none.
    pub fn read(payload: &[u8]) -> Option<Self> {
        if payload.get(..4)? != Self::MAGIC {
            return None;
        }
        let nanos = u64::from_le_bytes(payload.get(4..12)?.try_into().ok()?);
        let frame = u64::from_le_bytes(payload.get(12..20)?.try_into().ok()?);
        Some(Self {
            sent: Duration::from_nanos(nanos),
            frame,
        })
    }
}

/// The fixed jitter buffer the late-loss figure assumes: a frame plays `JITTER_BUFFER` after the
/// fastest delay seen so far; later arrivals are lost to the listener.
pub const JITTER_BUFFER: Duration = Duration::from_millis(60);
/// Packetisation delay of one frame.
const PACKETISATION: Duration = Duration::from_millis(20);

/// A receiver's measurements of one stream.
#[derive(Debug)]
pub struct MediaMeter {
    epoch: Instant,
    sequence: SequenceTracker,
    jitter: InterarrivalJitter,
    jitter_samples: Distribution,
    next_sample: Option<Instant>,
    delay: Distribution,
    min_delay: Option<Duration>,
    late: u64,
    last_arrival: Option<Instant>,
    /// RTCP packets received.
    pub rtcp_reports: u64,
}

impl MediaMeter {
    /// A meter for stamps measured from `epoch`.
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            sequence: SequenceTracker::new(),
            jitter: InterarrivalJitter::new(CLOCK_RATE),
            jitter_samples: Distribution::new(Unit::Micros),
            next_sample: None,
            delay: Distribution::new(Unit::Micros),
            min_delay: None,
            late: 0,
            last_arrival: None,
            rtcp_reports: 0,
        }
    }

    /// Accounts for one RTP packet received at `now`.
    pub fn on_rtp(&mut self, now: Instant, seq: u16, timestamp: u32, payload: &[u8]) {
        self.last_arrival = Some(now);
        self.sequence.on_packet(seq);
        self.jitter.on_packet(now, timestamp);
        let next = *self.next_sample.get_or_insert(now + Duration::from_secs(1));
        if now >= next {
            self.jitter_samples.record_ms(self.jitter.jitter_ms());
            self.next_sample = Some(next + Duration::from_secs(1));
        }
        if let Some(stamp) = Stamp::read(payload) {
            let delay = now.saturating_duration_since(self.epoch + stamp.sent);
            self.delay
                .record(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX));
            let min = *self.min_delay.get_or_insert(delay);
            self.min_delay = Some(min.min(delay));
            if delay > min + JITTER_BUFFER {
                self.late += 1;
            }
        }
    }

    /// When the last RTP packet arrived.
    pub fn last_arrival(&self) -> Option<Instant> {
        self.last_arrival
    }

    /// The current RFC 3550 jitter, ms.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter.jitter_ms()
    }

    /// Packets received so far (distinct or not).
    pub fn received(&self) -> u64 {
        self.sequence.received()
    }

    /// Closes the measurement: the stream's figures, with the E-model's R and MOS for `codec`.
    pub fn finish(mut self, packets_sent: u64, wire_bytes_sent: u64, codec: Codec) -> MediaStats {
        if self.jitter_samples.is_empty() && self.sequence.received() > 1 {
            // A stream shorter than a second still gets one sample.
            self.jitter_samples.record_ms(self.jitter.jitter_ms());
        }
        let loss = self.sequence.finish();
        let expected = loss.expected.max(1);
        let ppl = 100.0 * (loss.lost + self.late) as f64 / expected as f64;
        let burst = burst_ratio(loss.loss_fraction(), loss.mean_burst_len());
        let mean_delay = self.delay.mean().unwrap_or(0.0) / 1000.0;
        let mouth_to_ear = mean_delay
            + JITTER_BUFFER.as_secs_f64() * 1e3 / 2.0
            + PACKETISATION.as_secs_f64() * 1e3;
        let model = EModel::DEFAULT
            .with_codec(codec)
            .with_mouth_to_ear_ms(mouth_to_ear)
            .with_loss(ppl, burst);
        MediaStats {
            packets_sent,
            wire_bytes_sent,
            packets_expected: loss.expected,
            packets_received: loss.received,
            duplicates: loss.duplicates,
            packets_lost: loss.lost,
            late_lost: self.late,
            loss_bursts: loss.bursts,
            jitter: self.jitter_samples,
            one_way_delay: self.delay,
            jitter_buffer_delay_ms: JITTER_BUFFER.as_secs_f64() * 1e3 / 2.0,
            rtcp_reports: self.rtcp_reports,
            send_pacing_error: Distribution::new(Unit::Micros),
            r_factor: model.r(),
            mos: model.mos(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let s = Stamp {
            sent: Duration::from_nanos(123_456_789),
            frame: 42,
        };
        let mut p = [0u8; 80];
        s.write(&mut p);
        assert_eq!(Stamp::read(&p), Some(s));
        assert_eq!(Stamp::read(&p[..10]), None);
        // A browser's Opus frame is not mistaken for a stamp.
        assert_eq!(
            Stamp::read(&[
                0x78, 0x0b, 0xfc, 0xc1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]),
            None
        );
    }
}
