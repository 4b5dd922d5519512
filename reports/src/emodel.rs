//! ITU-T G.107 (06/2015) E-model: the transmission rating R and the MOS estimated from it.
//!
//! `R = Ro − Is − Id − Ie,eff + A` (eq. 7-1), every term as the recommendation writes it, with its
//! default values (§7.7, Table 3). Equation numbers below are G.107's. The call's measured figures
//! enter through three inputs: the mouth-to-ear delay (→ `Id`), the packet loss and its
//! burstiness (→ `Ie,eff`), and the codec's constants `Ie` and `Bpl` ([`Codec`]).

/// Codec constants for the E-model: equipment impairment `Ie` and packet-loss robustness `Bpl`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Codec {
    /// Equipment impairment factor `Ie` (0 = no coding distortion).
    pub ie: f64,
    /// Packet-loss robustness factor `Bpl`: the larger, the better the codec conceals loss.
    pub bpl: f64,
}

impl Codec {
    /// G.711 with the packet-loss concealment of G.711 Appendix I, random loss:
    /// `Ie = 0`, `Bpl = 25.1` (ITU-T G.113 (11/2007) Appendix I, Table I.3).
    pub const G711_PLC: Self = Self { ie: 0.0, bpl: 25.1 };

    /// G.711 without concealment, 10 ms packets: `Ie = 0`, `Bpl = 4.3`
    /// (ITU-T G.113 Appendix I, Table I.3; also G.107's default `Bpl`).
    pub const G711: Self = Self { ie: 0.0, bpl: 4.3 };

    /// Opus at softphone bitrates (≥ 24 kbit/s, 20 ms frames, in-band PLC), **provisional**:
    /// `Ie = 0`, `Bpl = 25.1`.
    ///
    /// ITU-T G.113 publishes no narrowband `Ie`/`Bpl` for Opus. The published measurements
    /// (Alahmadi, Pocta & Melvin, "An Adaptive Bitrate Switching Algorithm for Speech
    /// Applications in Context of WebRTC", ACM TOMM 17(4), 2021) are super-wideband values on the
    /// fullband scale of G.107.2 and do not plug into this narrowband model. We therefore treat
    /// Opus like G.711 with PLC: no coding impairment on the narrowband scale (Opus at these rates
    /// is at least as good as G.711) and G.711+PLC's loss robustness, which understates Opus's
    /// concealment and so errs on the pessimistic side.
    pub const OPUS: Self = Self::G711_PLC;
}

/// The delay sensitivity class of G.107 Table 1 (`mT`, `sT` of eq. 7-27).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DelaySensitivity {
    /// `mT`, ms: the delay up to which `Idd` is zero.
    pub m_t: f64,
    /// `sT`: how steeply `Idd` grows beyond `mT`.
    pub s_t: f64,
}

impl DelaySensitivity {
    /// The default class (`mT = 100 ms`, `sT = 1`), the one G.107 requires for carrier- and
    /// enterprise-grade telephony.
    pub const DEFAULT: Self = Self {
        m_t: 100.0,
        s_t: 1.0,
    };
}

/// Every input of the E-model, defaulting to G.107 Table 3.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EModel {
    /// Send loudness rating, dB (default 8).
    pub slr: f64,
    /// Receive loudness rating, dB (default 2).
    pub rlr: f64,
    /// Sidetone masking rating, dB (default 15).
    pub stmr: f64,
    /// Listener sidetone rating, dB (default 18).
    pub lstr: f64,
    /// D-value of the telephone, send side (default 3).
    pub ds: f64,
    /// D-value of the telephone, receive side (default 3).
    pub dr: f64,
    /// Talker echo loudness rating, dB (default 65).
    pub telr: f64,
    /// Weighted echo path loss, dB (default 110).
    pub wepl: f64,
    /// Mean one-way delay of the echo path `T`, ms (default 0).
    pub t: f64,
    /// Round-trip delay in a 4-wire loop `Tr`, ms (default 0).
    pub tr: f64,
    /// Absolute (mouth-to-ear) delay `Ta`, ms (default 0).
    pub ta: f64,
    /// Number of quantisation distortion units (default 1).
    pub qdu: f64,
    /// Equipment impairment factor (default 0).
    pub ie: f64,
    /// Packet-loss robustness factor (default 4.3).
    pub bpl: f64,
    /// Packet-loss probability `Ppl`, percent (default 0).
    pub ppl: f64,
    /// Burst ratio (default 1: random loss).
    pub burst_r: f64,
    /// Advantage factor (default 0).
    pub a: f64,
    /// Circuit noise referred to the 0 dBr point, dBm0p (default −70).
    pub nc: f64,
    /// Noise floor at the receive side, dBmp (default −64).
    pub nfor: f64,
    /// Room noise at the send side, dB(A) (default 35).
    pub ps: f64,
    /// Room noise at the receive side, dB(A) (default 35).
    pub pr: f64,
    /// Delay sensitivity class (default: `mT` = 100 ms, `sT` = 1).
    pub delay_sensitivity: DelaySensitivity,
}

impl Default for EModel {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl EModel {
    /// G.107 Table 3 defaults; with these, R = 93.2.
    pub const DEFAULT: Self = Self {
        slr: 8.0,
        rlr: 2.0,
        stmr: 15.0,
        lstr: 18.0,
        ds: 3.0,
        dr: 3.0,
        telr: 65.0,
        wepl: 110.0,
        t: 0.0,
        tr: 0.0,
        ta: 0.0,
        qdu: 1.0,
        ie: 0.0,
        bpl: 4.3,
        ppl: 0.0,
        burst_r: 1.0,
        a: 0.0,
        nc: -70.0,
        nfor: -64.0,
        ps: 35.0,
        pr: 35.0,
        delay_sensitivity: DelaySensitivity::DEFAULT,
    };

    /// The defaults with a codec's `Ie` and `Bpl`.
    pub const fn with_codec(mut self, codec: Codec) -> Self {
        self.ie = codec.ie;
        self.bpl = codec.bpl;
        self
    }

    /// Sets the delays from the mouth-to-ear delay of a softphone call, ms.
    ///
    /// A VoIP path with echo cancellation: the talker's echo returns over the same path, so the
    /// echo path delay `T` equals the mouth-to-ear delay `Ta` and the 4-wire loop `Tr = 2·Ta`
    /// (G.107 §7.4's definitions applied to a symmetric path; TELR stays at its default).
    pub const fn with_mouth_to_ear_ms(mut self, ta: f64) -> Self {
        self.ta = ta;
        self.t = ta;
        self.tr = 2.0 * ta;
        self
    }

    /// Sets the packet loss: `ppl` in percent and the burst ratio (1 = random loss).
    pub const fn with_loss(mut self, ppl: f64, burst_r: f64) -> Self {
        self.ppl = ppl;
        self.burst_r = burst_r;
        self
    }

    /// The overall noise `No`, dBm0p (eq. 7-3 to 7-7).
    pub fn no(&self) -> f64 {
        let olr = self.slr + self.rlr;
        let nos =
            self.ps - self.slr - self.ds - 100.0 + 0.004 * (self.ps - olr - self.ds - 14.0).powi(2);
        let pre = self.pr + 10.0 * (1.0 + 10f64.powf((10.0 - self.lstr) / 10.0)).log10();
        let nor = self.rlr - 121.0 + pre + 0.008 * (pre - 35.0).powi(2);
        let nfo = self.nfor + self.rlr;
        10.0 * [self.nc, nos, nor, nfo]
            .iter()
            .map(|n| 10f64.powf(n / 10.0))
            .sum::<f64>()
            .log10()
    }

    /// The basic signal-to-noise ratio `Ro` (eq. 7-2).
    pub fn ro(&self) -> f64 {
        15.0 - 1.5 * (self.slr + self.no())
    }

    /// The simultaneous impairment factor `Is = Iolr + Ist + Iq` (eq. 7-8 to 7-17).
    pub fn is(&self) -> f64 {
        let no = self.no();
        let olr = self.slr + self.rlr;
        let xolr = olr + 0.2 * (64.0 + no - self.rlr);
        let iolr = 20.0 * ((1.0 + (xolr / 8.0).powi(8)).powf(1.0 / 8.0) - xolr / 8.0);
        let ist = self.ist();
        let q = 37.0 - 15.0 * self.qdu.log10();
        let g = 1.07 + 0.258 * q + 0.0602 * q * q;
        let y = (self.ro() - 100.0) / 15.0 + 46.0 / 8.4 - g / 9.0;
        let z = 46.0 / 30.0 - g / 40.0;
        let iq = 15.0 * (1.0 + 10f64.powf(y) + 10f64.powf(z)).log10();
        iolr + ist + iq
    }

    /// The sidetone impairment `Ist` (eq. 7-11, 7-12).
    fn ist(&self) -> f64 {
        let stmro = -10.0
            * (10f64.powf(-self.stmr / 10.0)
                + (-self.t / 4.0).exp() * 10f64.powf(-self.telr / 10.0))
            .log10();
        12.0 * (1.0 + ((stmro - 13.0) / 6.0).powi(8)).powf(1.0 / 8.0)
            - 28.0 * (1.0 + ((stmro + 1.0) / 19.4).powi(35)).powf(1.0 / 35.0)
            - 13.0 * (1.0 + ((stmro - 3.0) / 33.0).powi(13)).powf(1.0 / 13.0)
            + 29.0
    }

    /// The talker-echo impairment `Idte` (eq. 7-19 to 7-24).
    pub fn idte(&self) -> f64 {
        // "If T < 1 ms, Idte = 0": such an echo is perceived as sidetone.
        if self.t < 1.0 {
            return 0.0;
        }
        let t = self.t;
        let roe = -1.5 * (self.no() - self.rlr);
        let mut terv = self.telr - 40.0 * ((1.0 + t / 10.0) / (1.0 + t / 150.0)).log10()
            + 6.0 * (-0.3 * t * t).exp();
        if self.stmr < 9.0 {
            terv += self.ist() / 2.0; // eq. 7-23 (TERVs)
        }
        let re = 80.0 + 2.5 * (terv - 14.0);
        let idte = ((roe - re) / 2.0 + ((roe - re).powi(2) / 4.0 + 100.0).sqrt() - 1.0)
            * (1.0 - (-t).exp());
        if self.stmr > 20.0 {
            (idte * idte + self.ist().powi(2)).sqrt() // eq. 7-24 (Idtes)
        } else {
            idte
        }
    }

    /// The listener-echo impairment `Idle` (eq. 7-25, 7-26).
    pub fn idle(&self) -> f64 {
        let ro = self.ro();
        let rle = 10.5 * (self.wepl + 7.0) * (self.tr + 1.0).powf(-0.25);
        (ro - rle) / 2.0 + ((ro - rle).powi(2) / 4.0 + 169.0).sqrt()
    }

    /// The impairment of a too-long absolute delay `Idd` (eq. 7-27, 7-28): zero up to `mT`.
    pub fn idd(&self) -> f64 {
        let DelaySensitivity { m_t, s_t } = self.delay_sensitivity;
        if self.ta <= m_t {
            return 0.0;
        }
        let x = (self.ta / m_t).log2();
        let e = 6.0 * s_t;
        25.0 * ((1.0 + x.powf(e)).powf(1.0 / e) - 3.0 * (1.0 + (x / 3.0).powf(e)).powf(1.0 / e)
            + 2.0)
    }

    /// The delay impairment factor `Id = Idte + Idle + Idd` (eq. 7-18).
    pub fn id(&self) -> f64 {
        self.idte() + self.idle() + self.idd()
    }

    /// The effective equipment impairment under packet loss `Ie,eff` (eq. 7-29).
    pub fn ie_eff(&self) -> f64 {
        if self.ppl <= 0.0 {
            return self.ie;
        }
        self.ie + (95.0 - self.ie) * self.ppl / (self.ppl / self.burst_r + self.bpl)
    }

    /// The transmission rating `R = Ro − Is − Id − Ie,eff + A` (eq. 7-1).
    pub fn r(&self) -> f64 {
        self.ro() - self.is() - self.id() - self.ie_eff() + self.a
    }

    /// The estimated mean opinion score, conversational quality (G.107 Annex B, eq. B-4).
    pub fn mos(&self) -> f64 {
        mos_from_r(self.r())
    }
}

/// MOS (conversational quality, estimated) from R, G.107 Annex B eq. B-4.
pub fn mos_from_r(r: f64) -> f64 {
    if r <= 0.0 || r.is_nan() {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
    }
}

/// The burst ratio `BurstR` of G.107 from a loss rate and the mean length of loss bursts.
///
/// BurstR is the mean observed burst length over the mean burst length expected under random
/// loss at the same rate, `1 / (1 − Ppl)` (G.107 §7.5.2, Note). `ppl` is a fraction (0..1).
/// Without any loss, loss is neither random nor bursty: 1.
pub fn burst_ratio(ppl: f64, mean_burst_len: f64) -> f64 {
    if ppl <= 0.0 || ppl >= 1.0 || mean_burst_len <= 0.0 {
        return 1.0;
    }
    (mean_burst_len * (1.0 - ppl)).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} is not within {tol} of {b}");
    }

    /// G.107 (06/2015) §7.7: "If all parameters are set to the default values, the calculation
    /// results in … a rating factor of R = 93.2". MOS 4.41 follows from eq. B-4 and is the figure
    /// G.107's Figure B.1 / G.109 give for the top of the "very satisfied" band.
    #[test]
    fn defaults_give_r_93_2_and_mos_4_41() {
        let m = EModel::DEFAULT;
        close(m.r(), 93.2, 0.05);
        close(m.mos(), 4.41, 0.005);
    }

    /// The intermediate terms at the defaults as published with the flent E-model
    /// implementation (No = −61.18 dBm0p, Is = 1.41) and G.107's own Ro ≈ 94.77.
    #[test]
    fn default_terms() {
        let m = EModel::DEFAULT;
        close(m.no(), -61.18, 0.01);
        close(m.ro(), 94.77, 0.01);
        close(m.is(), 1.41, 0.01);
        // With T = Tr = 0 only the listener-echo term contributes to Id (0.15).
        close(m.idte(), 0.0, 1e-12);
        close(m.id(), 0.15, 0.01);
    }

    /// G.107 Annex B, Table B.1: the R thresholds of the user-satisfaction bands and their MOS
    /// (90 → 4.34, 80 → 4.03, 70 → 3.60, 60 → 3.10, 50 → 2.58). Table B.1 rounds; 80 → 4.024 by
    /// eq. B-4, hence the 0.01 tolerance.
    #[test]
    fn r_to_mos_matches_table_b1() {
        for (r, mos) in [
            (90.0, 4.34),
            (80.0, 4.03),
            (70.0, 3.60),
            (60.0, 3.10),
            (50.0, 2.58),
        ] {
            close(mos_from_r(r), mos, 0.01);
        }
        assert_eq!(mos_from_r(-5.0), 1.0);
        assert_eq!(mos_from_r(120.0), 4.5);
    }

    /// Idd is zero up to mT = 100 ms (eq. 7-27, first case). G.107 publishes Idd only as a curve,
    /// so the points are eq. 7-27 evaluated by hand where it has a closed form — at Ta = 400 ms,
    /// X = log2(4) = 2 exactly, Idd = 25·(65^(1/6) − 3·(1 + (2/3)^6)^(1/6) + 2) = 24.07 — and,
    /// elsewhere, the values an independent open-source transcription of G.107 (mT = 100, sT = 1)
    /// prints: 0.164 / 3.044 / 14.761 / 30.636 at 150 / 200 / 300 / 500 ms.
    #[test]
    fn idd_at_published_delays() {
        let idd = |ta: f64| EModel::DEFAULT.with_mouth_to_ear_ms(ta).idd();
        close(idd(100.0), 0.0, 0.0);
        close(idd(150.0), 0.164, 0.001);
        close(idd(200.0), 3.044, 0.001);
        close(idd(300.0), 14.761, 0.001);
        let x3: f64 = (1.0 + (2.0f64 / 3.0).powi(6)).powf(1.0 / 6.0);
        close(
            idd(400.0),
            25.0 * (65f64.powf(1.0 / 6.0) - 3.0 * x3 + 2.0),
            1e-9,
        );
        close(idd(400.0), 24.070, 0.001);
        close(idd(500.0), 30.636, 0.001);
        // The "low" sensitivity class moves the knee right (Table 1: mT = 150 ms).
        let low = EModel {
            delay_sensitivity: DelaySensitivity {
                m_t: 150.0,
                s_t: 0.4,
            },
            ..EModel::DEFAULT
        };
        close(low.with_mouth_to_ear_ms(140.0).idd(), 0.0, 0.0);
    }

    /// R against one-way delay with T = Ta, Tr = 2·Ta and everything else default. G.114 (05/2003)
    /// Figure 1 draws this curve (R just under 90 at 150 ms, falling steeply past 200 ms); an
    /// independent open-source transcription of G.107 prints 91.756 / 89.539 / 72.666 at
    /// 50 / 150 / 300 ms with the same delay mapping.
    #[test]
    fn r_against_delay() {
        let r = |ta: f64| EModel::DEFAULT.with_mouth_to_ear_ms(ta).r();
        close(r(50.0), 91.756, 0.05);
        close(r(150.0), 89.539, 0.05);
        close(r(300.0), 72.666, 0.05);
        assert!(r(0.0) > r(50.0) && r(150.0) > r(300.0));
    }

    /// Eq. 7-29 at hand-checkable points. With G.711+PLC (Bpl = 25.1, G.113 App. I) and 1 %
    /// random loss: Ie,eff = 95·1/(1 + 25.1) = 3.640; with BurstR = 2 the loss hurts more:
    /// 95·1/(0.5 + 25.1) = 3.711. At Ppl = 0, Ie,eff = Ie (G.107 §7.5.2).
    #[test]
    fn ie_eff_at_known_points() {
        let m = EModel::DEFAULT.with_codec(Codec::G711_PLC);
        close(m.with_loss(0.0, 1.0).ie_eff(), 0.0, 0.0);
        close(m.with_loss(1.0, 1.0).ie_eff(), 95.0 / 26.1, 1e-9);
        close(m.with_loss(1.0, 2.0).ie_eff(), 95.0 / 25.6, 1e-9);
        // G.711 without PLC: 1 % random loss costs 95/5.3 = 17.9 R points.
        let raw = EModel::DEFAULT.with_codec(Codec::G711).with_loss(1.0, 1.0);
        close(raw.ie_eff(), 95.0 / 5.3, 1e-9);
        // A codec with its own impairment keeps it and loses from there.
        let g729 = EModel::DEFAULT
            .with_codec(Codec {
                ie: 11.0,
                bpl: 19.0,
            })
            .with_loss(2.0, 1.0);
        close(g729.ie_eff(), 11.0 + 84.0 * 2.0 / 21.0, 1e-9);
    }

    /// BurstR from a Gilbert model: with p (good→bad) and q (bad→good) and loss only in the bad
    /// state, Ppl = p/(p+q), mean burst = 1/q, and G.107 §7.5.2 gives BurstR = 1/(p+q).
    #[test]
    fn burst_ratio_matches_gilbert_model() {
        let (p, q) = (0.01, 0.25);
        close(burst_ratio(p / (p + q), 1.0 / q), 1.0 / (p + q), 1e-12);
        close(burst_ratio(0.0, 0.0), 1.0, 0.0);
        // Random loss: mean burst 1/(1−Ppl) gives BurstR = 1.
        close(burst_ratio(0.05, 1.0 / 0.95), 1.0, 1e-12);
    }

    /// A dropped call's R is floored: MOS never leaves [1, 4.5].
    #[test]
    fn mos_is_bounded() {
        let awful = EModel::DEFAULT
            .with_codec(Codec::G711)
            .with_mouth_to_ear_ms(800.0)
            .with_loss(40.0, 4.0);
        assert!(awful.r() < 0.0);
        assert_eq!(awful.mos(), 1.0);
    }
}
