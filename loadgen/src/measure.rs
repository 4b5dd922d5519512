//! What the receiving side of a media stream measures (DESIGN §6): one-way delay from the send
//! instant carried in the payload, RFC 3550 jitter sampled once a second, loss and its bursts
//! from sequence numbers, late loss against a jitter buffer (adaptive or fixed), and the E-model's
//! MOS.

use std::time::{Duration, Instant};

use reports::emodel::{Codec, EModel, burst_ratio};
use reports::jitter::InterarrivalJitter;
use reports::loss::SequenceTracker;
use reports::record::MediaStats;
use reports::{Distribution, Unit};

use crate::leg::CLOCK_RATE;

/// The send stamp of a frame: its send instant after the host's media epoch
/// (`clock::host_epoch`), carried in an RTP header extension (`media::SEND_STAMP_URI`); the
/// frame's number is its RTP sequence number, extended by the receiver. SRTP authenticates the
/// header, so the network cannot alter it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// When the frame was sent, after the shared epoch (microsecond resolution on the wire).
    pub sent: Duration,
}

impl Stamp {
    /// Bytes a stamp takes: the send instant in microseconds, a big-endian 48-bit number (8.9
    /// years after the media epoch: the host's boot, or `SIM_MEDIA_EPOCH`). With its element header and padding the extension adds
    /// 12 bytes a packet, what a browser's own extensions add.
    pub const LEN: usize = 6;

    /// The stamp's bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let micros = u64::try_from(self.sent.as_micros())
            .unwrap_or(u64::MAX)
            .min((1 << 48) - 1);
        let mut b = [0u8; Self::LEN];
        b.copy_from_slice(&micros.to_be_bytes()[2..]);
        b
    }

    /// Reads a stamp from an extension element's data; `None` when it is not one.
    pub fn from_bytes(data: &[u8]) -> Option<Self> {
        let data: &[u8; Self::LEN] = data.try_into().ok()?;
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(data);
        Some(Self {
            sent: Duration::from_micros(u64::from_be_bytes(b)),
        })
    }
}

/// The jitter buffer the late-loss figure assumes. Delays are measured relative to the fastest
/// packet so far (the buffer's reference); a packet later than the buffer's depth is lost to the
/// listener even though the network delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitterBuffer {
    /// A fixed depth.
    Fixed(Duration),
    /// Adapts as a browser's does (WebRTC's NetEq in spirit): the depth follows the 95th
    /// percentile of the last second of relative delays, at least 20 ms, at most 500 ms.
    Adaptive,
}

impl JitterBuffer {
    /// Packets of relative delay the adaptive buffer looks back over: one second of 20 ms frames.
    const WINDOW: usize = 50;
    const MIN: u64 = 20_000;
    const MAX: u64 = 500_000;

    /// The depth in force after `recent`; `scratch` is reused so that no packet allocates.
    fn depth_us(self, recent: &std::collections::VecDeque<u64>, scratch: &mut Vec<u64>) -> u64 {
        match self {
            Self::Fixed(d) => u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Self::Adaptive => {
                scratch.clear();
                scratch.extend(recent.iter().copied());
                let rank = scratch.len() * 95 / 100;
                // The 95th-percentile element: where it would sit sorted, without sorting.
                let p95 = if rank < scratch.len() {
                    *scratch.select_nth_unstable(rank).1
                } else {
                    0
                };
                p95.clamp(Self::MIN, Self::MAX)
            }
        }
    }
}
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
    buffer: JitterBuffer,
    recent: std::collections::VecDeque<u64>,
    /// Room to rank `recent` in, kept between packets.
    scratch: Vec<u64>,
    depth_sum_us: u64,
    depth_count: u64,
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
            buffer: JitterBuffer::Adaptive,
            recent: std::collections::VecDeque::with_capacity(JitterBuffer::WINDOW),
            scratch: Vec::with_capacity(JitterBuffer::WINDOW),
            depth_sum_us: 0,
            depth_count: 0,
            last_arrival: None,
            rtcp_reports: 0,
        }
    }

    /// Accounts for an RTP packet that arrived at `now`, with its send stamp when it carried
    /// one (our legs' do; a browser's media is measured for jitter and loss without one).
    pub fn on_rtp(&mut self, now: Instant, seq: u16, timestamp: u32, stamp: Option<Stamp>) {
        self.last_arrival = Some(now);
        self.sequence.on_packet(seq);
        self.jitter.on_packet(now, timestamp);
        let next = *self.next_sample.get_or_insert(now + Duration::from_secs(1));
        if now >= next {
            self.jitter_samples.record_ms(self.jitter.jitter_ms());
            self.next_sample = Some(next + Duration::from_secs(1));
        }
        if let Some(stamp) = stamp {
            let delay = now.saturating_duration_since(self.epoch + stamp.sent);
            self.delay
                .record(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX));
            let min = (*self.min_delay.get_or_insert(delay)).min(delay);
            self.min_delay = Some(min);
            let relative = u64::try_from((delay - min).as_micros()).unwrap_or(u64::MAX);
            // The depth in force when the packet arrives, from the packets before it.
            let depth = self.buffer.depth_us(&self.recent, &mut self.scratch);
            if relative > depth {
                self.late += 1;
            }
            self.depth_sum_us += depth;
            self.depth_count += 1;
            if self.recent.len() == JitterBuffer::WINDOW {
                self.recent.pop_front();
            }
            self.recent.push_back(relative);
        }
    }

    /// A meter whose late-loss figure assumes `buffer` (the default is [`JitterBuffer::Adaptive`]).
    pub fn with_jitter_buffer(mut self, buffer: JitterBuffer) -> Self {
        self.buffer = buffer;
        self
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
        // Mouth to ear: the fastest packet's delay, plus the buffer's mean depth (every frame
        // plays that long after the fastest could have), plus packetisation. Without stamps
        // (another sender's media) the delay is unknown and counts as zero.
        let depth_ms = if self.depth_count == 0 {
            0.0
        } else {
            self.depth_sum_us as f64 / self.depth_count as f64 / 1000.0
        };
        let min_ms = self.min_delay.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let mouth_to_ear = min_ms + depth_ms + PACKETISATION.as_secs_f64() * 1e3;
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
            jitter_buffer_delay_ms: depth_ms,
            rtcp_reports: self.rtcp_reports,
            send_pacing_error: Distribution::new(Unit::Micros),
            r_factor: model.r(),
            mos: model.mos(),
        }
    }
}

/// Our stream as the other side saw it, from its RTCP reception reports (RFC 3550 §6.4.1): what
/// a server learns of a client it did not write (a browser), and our agents of the anchor.
#[derive(Debug)]
pub struct FarEndView {
    ssrc: u32,
    reports: u64,
    /// The last report's extended highest sequence number and cumulative loss.
    last: Option<(u32, u32)>,
    /// Interarrival jitter, once a report.
    jitter: Distribution,
    /// Round-trip time, once a report that answers a sender report of ours (A − LSR − DLSR).
    round_trip: Distribution,
}

impl FarEndView {
    /// A view of the stream with `ssrc` (ours).
    pub fn new(ssrc: u32) -> Self {
        Self {
            ssrc,
            reports: 0,
            last: None,
            jitter: Distribution::new(Unit::Micros),
            round_trip: Distribution::new(Unit::Micros),
        }
    }

    /// Takes the reception report of our stream in a plain (decrypted) RTCP compound packet, if
    /// it has one; `now_ntp` is the arrival time in NTP format (64 bits).
    pub fn on_rtcp(&mut self, plain: &[u8], now_ntp: u64) {
        use rtc::rtcp::receiver_report::ReceiverReport;
        use rtc::rtcp::sender_report::SenderReport;
        let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut &plain[..]) else {
            return;
        };
        for p in &packets {
            let any = p.as_any();
            let reports = if let Some(sr) = any.downcast_ref::<SenderReport>() {
                &sr.reports
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                &rr.reports
            } else {
                continue;
            };
            for r in reports.iter().filter(|r| r.ssrc == self.ssrc) {
                self.reports += 1;
                self.last = Some((r.last_sequence_number, r.total_lost));
                let ms = f64::from(r.jitter) * 1000.0 / f64::from(CLOCK_RATE);
                self.jitter.record_ms(ms);
                if r.last_sender_report != 0 {
                    // Middle 32 bits of NTP time, in 1/65536 s (RFC 3550 §6.4.1).
                    let arrival = (now_ntp >> 16) as u32;
                    let rtt = arrival
                        .wrapping_sub(r.last_sender_report)
                        .wrapping_sub(r.delay);
                    // A negative or absurd value (clock steps) is not a round trip.
                    if rtt < 65536 * 10 {
                        self.round_trip.record((u64::from(rtt) * 1_000_000) >> 16);
                    }
                }
            }
        }
    }

    /// Reports taken so far.
    pub fn reports(&self) -> u64 {
        self.reports
    }

    /// The figures of our stream as the other side reported them, with the E-model's R and MOS
    /// for `codec` (one-way delay taken as half the round trip); `None` without a report.
    /// Bursts and late loss are not in reception reports: counted as none.
    pub fn stats(
        &self,
        packets_sent: u64,
        wire_bytes_sent: u64,
        codec: Codec,
    ) -> Option<MediaStats> {
        let (highest, lost) = self.last?;
        // Our first frame is sequence 0: the highest extended number + 1 were expected.
        let expected = u64::from(highest) + 1;
        let lost = u64::from(lost).min(expected);
        let mut one_way = Distribution::new(Unit::Micros);
        let rtt = self.round_trip.histogram();
        for v in rtt.iter_recorded() {
            one_way.record_n(v.value_iterated_to() / 2, v.count_at_value());
        }
        let ppl = 100.0 * lost as f64 / expected as f64;
        let delay_ms = one_way.quantile(0.5).map_or(0.0, |us| us as f64 / 1000.0);
        let model = EModel::DEFAULT
            .with_codec(codec)
            .with_mouth_to_ear_ms(delay_ms + PACKETISATION.as_secs_f64() * 1e3)
            .with_loss(ppl, 1.0);
        Some(MediaStats {
            packets_sent,
            wire_bytes_sent,
            packets_expected: expected,
            packets_received: expected - lost,
            duplicates: 0,
            packets_lost: lost,
            late_lost: 0,
            loss_bursts: std::collections::BTreeMap::new(),
            jitter: self.jitter.clone(),
            one_way_delay: one_way,
            jitter_buffer_delay_ms: 0.0,
            rtcp_reports: self.reports,
            send_pacing_error: Distribution::new(Unit::Micros),
            r_factor: model.r(),
            mos: model.mos(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_far_end_view_reads_reception_reports_of_our_stream() {
        use rtc::rtcp::reception_report::ReceptionReport;
        let report = |ssrc, highest, lost, jitter, lsr, dlsr| {
            let rr = rtc::rtcp::receiver_report::ReceiverReport {
                ssrc: 77,
                reports: vec![ReceptionReport {
                    ssrc,
                    fraction_lost: 0,
                    total_lost: lost,
                    last_sequence_number: highest,
                    jitter,
                    last_sender_report: lsr,
                    delay: dlsr,
                }],
                profile_extensions: bytes::Bytes::new(),
            };
            let packets: [Box<dyn rtc::rtcp::packet::Packet>; 1] = [Box::new(rr)];
            rtc::rtcp::packet::marshal(&packets).unwrap()
        };
        let mut v = FarEndView::new(5);
        // Another stream's report is not ours.
        v.on_rtcp(&report(6, 10, 1, 48, 0, 0), 0);
        assert_eq!(v.reports(), 0);
        assert!(v.stats(100, 0, Codec::OPUS).is_none());
        // 499 expected, 4 lost, 2 ms of jitter (96 ticks), a round trip of 100 ms: the report
        // arrives 100 ms + the 0.5 s the far end held our sender report after it was sent.
        let lsr: u32 = 0x0001_0000; // 1 s
        let arrival_ntp = (u64::from(lsr) + 0x0000_8000 + 6554) << 16;
        v.on_rtcp(&report(5, 498, 4, 96, lsr, 0x8000), arrival_ntp);
        let s = v.stats(500, 80_000, Codec::OPUS).unwrap();
        assert_eq!(
            (s.packets_expected, s.packets_lost, s.packets_received),
            (499, 4, 495)
        );
        assert_eq!(s.rtcp_reports, 1);
        assert_eq!(s.jitter.quantile(0.5).map(|us| us / 100), Some(20), "2 ms");
        let one_way = s.one_way_delay.quantile(0.5).unwrap();
        assert!(
            (49_000..=51_000).contains(&one_way),
            "half of 100 ms: {one_way} µs"
        );
        assert!(s.mos > 3.5 && s.mos < 4.5, "{}", s.mos);
    }

    /// Relative delays alternating 0 and 40 ms with a spike of 200 ms every 50 packets: a fixed
    /// 30 ms buffer loses every 40 ms packet; the adaptive one learns the 40 ms (its p95 over a
    /// second) and loses only the spikes it could not foresee.
    #[test]
    #[allow(clippy::disallowed_methods)] // a test needs one real instant as its epoch
    fn adaptive_buffer_loses_only_the_unforeseen() {
        let run = |buffer| {
            let epoch = Instant::now();
            let mut m = MediaMeter::new(epoch).with_jitter_buffer(buffer);
            for i in 0..1000u32 {
                let sent = Duration::from_millis(20) * i;
                let extra = if i % 50 == 49 {
                    200
                } else if i % 2 == 1 {
                    40
                } else {
                    0
                };
                let arrival = epoch + sent + Duration::from_millis(10 + extra);
                let stamp = Stamp { sent };
                m.on_rtp(arrival, i as u16, i * 960, Some(stamp));
            }
            m.finish(1000, 0, Codec::OPUS)
        };
        let fixed = run(JitterBuffer::Fixed(Duration::from_millis(30)));
        assert_eq!(fixed.late_lost, 500, "every 40 ms packet and spike is late");
        let adaptive = run(JitterBuffer::Adaptive);
        // Only the first second's 40 ms packets (before the window learns them) and the 20
        // spikes: at most 25 + 20.
        assert!(adaptive.late_lost <= 45, "{}", adaptive.late_lost);
        assert!(adaptive.late_lost >= 20, "{}", adaptive.late_lost);
        // Its depth settles at the 40 ms it needs.
        assert!(
            (adaptive.jitter_buffer_delay_ms - 40.0).abs() < 5.0,
            "{}",
            adaptive.jitter_buffer_delay_ms
        );
        assert!(adaptive.mos > fixed.mos);
    }

    #[test]
    fn stamps_round_trip() {
        let s = Stamp {
            sent: Duration::from_micros(123_456_789),
        };
        let b = s.to_bytes();
        assert_eq!(Stamp::from_bytes(&b), Some(s));
        assert_eq!(Stamp::from_bytes(&b[..5]), None);
        assert_eq!(b, [0, 0, 0x07, 0x5B, 0xCD, 0x15]);
        // Nanoseconds are dropped, not rounded into the next microsecond.
        let fine = Stamp {
            sent: Duration::from_nanos(1_999),
        };
        assert_eq!(
            Stamp::from_bytes(&fine.to_bytes()).unwrap().sent,
            Duration::from_micros(1)
        );
    }
}
