//! Packet loss from RTP sequence numbers (RFC 3550 Appendix A.1 and A.3) with loss bursts.

use std::collections::{BTreeMap, VecDeque};

/// A jump of this many sequence numbers or more ahead is not a gap but a restart (A.1).
const MAX_DROPOUT: u16 = 3000;
/// A packet this far behind the highest sequence number is a duplicate or reordered (A.1).
const MAX_MISORDER: u16 = 100;
/// Sequence numbers kept behind the highest one to tell duplicates and late arrivals from new
/// packets and to measure bursts. More than `MAX_MISORDER`, so that every packet A.1 accepts as
/// reordered still finds its slot.
const WINDOW: usize = 128;
const SEQ_MOD: u64 = 1 << 16;

/// Loss accounting for one RTP stream, following RFC 3550 A.1's `update_seq`.
///
/// Sequence numbers are extended to 64 bits across 16-bit wrap-arounds; a packet up to
/// `MAX_MISORDER` (100) behind the highest is a reordered or duplicate packet; a jump of
/// `MAX_DROPOUT` (3000) or more is accepted only when the next packet follows it (the sender
/// restarted), as A.1 does. A.1's probation of new sources is left out: the stream is SRTP,
/// authenticated before it reaches us, so its first packet already counts.
///
/// Beyond A.1, a window of the last 128 sequence numbers tells a duplicate from a late packet,
/// so that `lost` counts each missing packet once and loss bursts (runs of consecutive lost
/// packets, for the E-model's BurstR) are measured.
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    /// Extended highest sequence number seen; `None` before the first packet.
    max: Option<u64>,
    /// Extended sequence number of the first packet of the current epoch (A.1 `base_seq`).
    base: u64,
    /// Packets expected in epochs before a restart.
    expected_before_restart: u64,
    /// A.1 `bad_seq`: the sequence number that would confirm a restart.
    bad_seq: Option<u16>,
    /// A.1 `received`: every accepted packet, duplicates included.
    received: u64,
    duplicates: u64,
    /// Packets too far behind (or too far ahead without confirmation) to account for.
    discarded: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Received flags of extended sequence numbers `window_base..=max`.
    window: VecDeque<bool>,
    window_base: u64,
    unique_received: u64,
    current_burst: u32,
    bursts: BTreeMap<u32, u64>,
}

/// Final loss figures of a stream, see [`SequenceTracker::finish`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LossReport {
    /// Packets expected: highest extended sequence number − first + 1 (per epoch).
    pub expected: u64,
    /// Distinct packets received.
    pub received: u64,
    /// Copies of packets already received.
    pub duplicates: u64,
    /// Expected − distinct received.
    pub lost: u64,
    /// Packets that could not be placed (far out of order, unconfirmed jumps).
    pub discarded: u64,
    /// Loss bursts: burst length (consecutive lost packets) → how many bursts had that length.
    pub bursts: BTreeMap<u32, u64>,
}

impl LossReport {
    /// Loss as a fraction of expected packets (0 when nothing was expected).
    pub fn loss_fraction(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected as f64
        }
    }

    /// Mean length of a loss burst, packets (0 without loss).
    pub fn mean_burst_len(&self) -> f64 {
        let (n, total) = self
            .bursts
            .iter()
            .fold((0u64, 0u64), |(n, t), (len, count)| {
                (n + count, t + u64::from(*len) * count)
            });
        if n == 0 { 0.0 } else { total as f64 / n as f64 }
    }
}

impl SequenceTracker {
    /// A tracker that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accounts for one received packet's sequence number.
    pub fn on_packet(&mut self, seq: u16) {
        let Some(max) = self.max else {
            self.start_epoch(u64::from(seq));
            return;
        };
        let max_seq = max as u16; // low 16 bits; truncation intended
        let udelta = seq.wrapping_sub(max_seq);
        if udelta == 0 {
            // A copy of the highest packet.
            self.received += 1;
            self.mark_old(max);
        } else if udelta < MAX_DROPOUT {
            // In order, possibly with a gap (udelta > 1) or a wrap-around.
            self.advance_to(max + u64::from(udelta));
            self.received += 1;
        } else if u64::from(udelta) <= SEQ_MOD - u64::from(MAX_MISORDER) {
            // A very large jump: a restart if the next packet follows it (A.1).
            if self.bad_seq == Some(seq) {
                self.restart(seq);
            } else {
                self.bad_seq = Some(seq.wrapping_add(1));
                self.discarded += 1;
            }
        } else {
            // Behind the highest: reordered or duplicate.
            let back = SEQ_MOD - u64::from(udelta);
            let ext = max - back.min(max);
            self.received += 1;
            self.mark_old(ext);
        }
    }

    /// Packets expected so far (A.1 `expected`).
    pub fn expected(&self) -> u64 {
        self.expected_before_restart + self.max.map_or(0, |m| m - self.base + 1)
    }

    /// Packets received so far, duplicates included (A.1 `received`).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Distinct packets missing so far. Packets still inside the reordering window count as lost
    /// until they arrive.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.unique_received)
    }

    /// The RTCP report block's cumulative number of packets lost (A.3): expected − received,
    /// duplicates included, so it may be negative; clamped to the field's signed 24 bits.
    pub fn cumulative_lost(&self) -> i32 {
        let lost = i128::from(self.expected()) - i128::from(self.received);
        lost.clamp(-0x80_0000, 0x7f_ffff) as i32
    }

    /// The RTCP report block's fraction lost since the previous call (A.3), in 1/256.
    pub fn take_fraction_lost(&mut self) -> u8 {
        let expected = self.expected();
        let expected_interval = expected - self.expected_prior;
        let received_interval = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        if expected_interval == 0 || lost_interval == 0 {
            0
        } else {
            // lost ≤ expected, so the quotient fits in 8 bits except when lost == expected (256).
            ((lost_interval << 8) / expected_interval).min(255) as u8
        }
    }

    /// Closes the window (every missing packet now counts as lost) and reports.
    pub fn finish(mut self) -> LossReport {
        self.flush();
        LossReport {
            expected: self.expected(),
            received: self.unique_received,
            duplicates: self.duplicates,
            lost: self.lost(),
            discarded: self.discarded,
            bursts: self.bursts,
        }
    }

    fn start_epoch(&mut self, ext: u64) {
        self.max = Some(ext);
        self.base = ext;
        self.bad_seq = None;
        self.window.clear();
        self.window.push_back(true);
        self.window_base = ext;
        self.unique_received += 1;
        self.received += 1;
    }

    fn restart(&mut self, seq: u16) {
        self.flush();
        self.expected_before_restart = self.expected();
        // Keep extended numbers increasing across the restart so the window stays ordered.
        let next_cycle = (self.max.unwrap_or(0) / SEQ_MOD + 1) * SEQ_MOD;
        self.start_epoch(next_cycle + u64::from(seq));
    }

    fn advance_to(&mut self, ext: u64) {
        let Some(max) = self.max else { return };
        for _ in max + 1..ext {
            self.push_slot(false);
        }
        self.push_slot(true);
        self.unique_received += 1;
        self.max = Some(ext);
    }

    fn push_slot(&mut self, received: bool) {
        self.window.push_back(received);
        while self.window.len() > WINDOW {
            self.pop_slot();
        }
    }

    fn mark_old(&mut self, ext: u64) {
        let Some(slot) = ext
            .checked_sub(self.window_base)
            .and_then(|i| self.window.get_mut(usize::try_from(i).ok()?))
        else {
            // Before the epoch or already finalised: cannot be placed any more.
            self.discarded += 1;
            self.received -= 1;
            return;
        };
        if *slot {
            self.duplicates += 1;
        } else {
            *slot = true;
            self.unique_received += 1;
        }
    }

    fn pop_slot(&mut self) {
        let Some(received) = self.window.pop_front() else {
            return;
        };
        self.window_base += 1;
        if received {
            if self.current_burst > 0 {
                *self.bursts.entry(self.current_burst).or_default() += 1;
                self.current_burst = 0;
            }
        } else {
            self.current_burst += 1;
        }
    }

    fn flush(&mut self) {
        while !self.window.is_empty() {
            self.pop_slot();
        }
        // The newest slot is always a received packet, so no burst is left open.
        debug_assert_eq!(self.current_burst, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(seqs: impl IntoIterator<Item = u16>) -> LossReport {
        let mut t = SequenceTracker::new();
        for s in seqs {
            t.on_packet(s);
        }
        t.finish()
    }

    #[test]
    fn no_loss_across_wrap_around() {
        let r = feed((0..2000u16).map(|i| 65_000u16.wrapping_add(i)));
        assert_eq!(
            (r.expected, r.received, r.lost, r.duplicates),
            (2000, 2000, 0, 0)
        );
        assert!(r.bursts.is_empty());
    }

    #[test]
    fn gaps_across_wrap_around_are_bursts() {
        // Lose 65534 (1 packet), then 1..=3 (3 packets) just after the wrap.
        let seqs = [65_530u16, 65_531, 65_532, 65_533, 65_535, 0, 4, 5, 6];
        let r = feed(seqs);
        assert_eq!(r.expected, 13);
        assert_eq!(r.received, 9);
        assert_eq!(r.lost, 4);
        assert_eq!(r.bursts, BTreeMap::from([(1, 1), (3, 1)]));
        assert!((r.mean_burst_len() - 2.0).abs() < 1e-12);
    }

    #[test]
    fn reordering_and_duplicates_are_not_loss() {
        // 65535 arrives after 0 and 1 (reordered across the wrap); 2 arrives twice.
        let seqs = [65_533u16, 65_534, 0, 1, 65_535, 2, 2, 3];
        let mut t = SequenceTracker::new();
        for s in seqs {
            t.on_packet(s);
        }
        assert_eq!(t.expected(), 7);
        assert_eq!(t.received(), 8); // A.1 counts the duplicate as received …
        assert_eq!(t.cumulative_lost(), -1); // … so RTCP's cumulative loss goes negative,
        let r = t.finish();
        assert_eq!((r.received, r.duplicates, r.lost), (7, 1, 0)); // but nothing was lost.
        assert!(r.bursts.is_empty());
    }

    #[test]
    fn late_packet_fills_its_gap() {
        let r = feed([10u16, 11, 13, 14, 15, 12]);
        assert_eq!((r.expected, r.lost), (6, 0));
        assert!(r.bursts.is_empty());
    }

    #[test]
    fn far_behind_packets_are_discarded_not_counted() {
        // 200 behind the highest: beyond MAX_MISORDER and the window.
        let mut seqs: Vec<u16> = (1000..1300).collect();
        seqs.push(1050);
        let r = feed(seqs);
        assert_eq!(
            (r.expected, r.received, r.duplicates, r.discarded),
            (300, 300, 0, 1)
        );
    }

    #[test]
    fn sender_restart_is_confirmed_by_the_next_packet() {
        // 10..20, then the sender restarts at 40000: one stray packet is discarded, two in a row
        // start a new epoch without counting the jump as 40 000 lost packets.
        let mut seqs: Vec<u16> = (10..20).collect();
        seqs.extend([40_000, 40_001, 40_002]);
        let r = feed(seqs);
        assert_eq!(r.discarded, 1);
        assert_eq!(r.expected, 10 + 2);
        assert_eq!(r.lost, 0);
    }

    #[test]
    fn fraction_lost_per_interval() {
        let mut t = SequenceTracker::new();
        for s in (0..100u16).filter(|s| s % 4 != 3) {
            t.on_packet(s);
        }
        // The highest is 98 (99 % 4 == 3): 99 expected, 75 received, 24 lost → 24·256/99 = 62.
        assert_eq!(t.expected(), 99);
        assert_eq!(t.take_fraction_lost(), 62);
        assert_eq!(t.take_fraction_lost(), 0);
    }
}
