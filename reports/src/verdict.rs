//! The error rate, its Wilson score interval, and the verdict against a threshold.

use serde::{Deserialize, Serialize};

/// A proportion of calls in error with its Wilson score interval.
///
/// Wilson's interval (E. B. Wilson, JASA 22, 1927) is the one to use for error rates near 0 with
/// a few hundred calls: unlike the normal ("Wald") interval it never leaves [0, 1] and keeps close
/// to its nominal coverage (Newcombe, Statistics in Medicine 17:857–872, 1998).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErrorRate {
    /// Calls in error: failed + dropped.
    pub errors: u64,
    /// Call attempts.
    pub attempts: u64,
    /// Confidence level of the interval (e.g. 0.95).
    pub confidence: f64,
    /// Observed rate, errors / attempts (0 without attempts).
    pub rate: f64,
    /// Lower bound of the Wilson score interval.
    pub lower: f64,
    /// Upper bound of the Wilson score interval.
    pub upper: f64,
}

impl ErrorRate {
    /// The rate of `errors` in `attempts` with its two-sided Wilson interval at `confidence`.
    pub fn new(errors: u64, attempts: u64, confidence: f64) -> Self {
        let (lower, upper) = wilson_interval(errors, attempts, confidence);
        let rate = if attempts == 0 {
            0.0
        } else {
            errors as f64 / attempts as f64
        };
        Self {
            errors,
            attempts,
            confidence,
            rate,
            lower,
            upper,
        }
    }

    /// The verdict against `threshold` (a fraction, e.g. 0.02): pass when the whole interval is
    /// below it, fail when the whole interval is above it, inconclusive when it straddles it.
    pub fn verdict(&self, threshold: f64) -> Verdict {
        if self.attempts == 0 {
            Verdict::Inconclusive
        } else if self.upper < threshold {
            Verdict::Pass
        } else if self.lower > threshold {
            Verdict::Fail
        } else {
            Verdict::Inconclusive
        }
    }

    /// How many attempts in total would make the interval clear `threshold`, if further calls
    /// fail at the rate observed so far. `None` when no number would (the observed rate equals
    /// the threshold, or nothing was attempted) or it exceeds 10⁹.
    pub fn calls_needed(&self, threshold: f64) -> Option<u64> {
        if self.attempts == 0 || self.rate == threshold {
            return None;
        }
        let clears = |n: u64| {
            let (lo, hi) = wilson_bounds(self.rate, n as f64, z_score(self.confidence));
            if self.rate < threshold {
                hi < threshold
            } else {
                lo > threshold
            }
        };
        if clears(self.attempts) {
            return Some(self.attempts);
        }
        // The bound on the far side moves monotonically towards the rate as n grows: double to
        // find a sufficient n, then bisect to the least one.
        let (mut lo, mut hi) = (self.attempts, self.attempts.max(1) * 2);
        while !clears(hi) {
            if hi > 1_000_000_000 {
                return None;
            }
            lo = hi;
            hi *= 2;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if clears(mid) { hi = mid } else { lo = mid }
        }
        Some(hi)
    }
}

/// The outcome of a run against its error-rate threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The interval lies wholly below the threshold: the network carries calls.
    Pass,
    /// The interval lies wholly above the threshold: the network does not.
    Fail,
    /// The interval straddles the threshold: more calls are needed to tell.
    Inconclusive,
    /// The simulator's own components fell behind (late senders, a starved process, failed
    /// sends): its figures carry its own lateness, so the run neither passes nor fails the
    /// network ([`crate::SummaryFile::own_faults`] says why).
    Invalid,
}

impl Verdict {
    /// The stable lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Inconclusive => "inconclusive",
            Self::Invalid => "invalid",
        }
    }
}

/// The two-sided Wilson score interval (without continuity correction) of `x` successes in `n`
/// trials at `confidence`; `(0, 1)` when `n` is 0.
pub fn wilson_interval(x: u64, n: u64, confidence: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let p = x.min(n) as f64 / n as f64;
    wilson_bounds(p, n as f64, z_score(confidence))
}

fn wilson_bounds(p: f64, n: f64, z: f64) -> (f64, f64) {
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The standard normal CDF Φ(z), from the complementary error function (W. J. Cody's rational
/// Chebyshev approximation as given in Numerical Recipes, 3rd ed. §6.2.2; fractional error below
/// 1.2·10⁻⁷).
pub fn normal_cdf(z: f64) -> f64 {
    let x = -z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * (-x * x + poly).exp();
    0.5 * if x >= 0.0 { erfc } else { 2.0 - erfc }
}

/// A two-proportion z-test: are `x1/n1` and `x2/n2` different error rates?
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProportionTest {
    /// `x1/n1 − x2/n2`.
    pub difference: f64,
    /// The z statistic with the pooled standard error.
    pub z: f64,
    /// Two-sided p-value.
    pub p_value: f64,
}

impl ProportionTest {
    /// The pooled two-proportion z-test (e.g. Agresti, *Categorical Data Analysis*, §2.1.3),
    /// `None` when either sample is empty or the pooled rate is 0 or 1 (no variance to test).
    pub fn new(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<Self> {
        if n1 == 0 || n2 == 0 {
            return None;
        }
        let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
        let pooled = (x1 + x2) as f64 / (n1 + n2) as f64;
        let se = (pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
        if se == 0.0 {
            return None;
        }
        let z = (p1 - p2) / se;
        Some(Self {
            difference: p1 - p2,
            z,
            p_value: 2.0 * (1.0 - normal_cdf(z.abs())),
        })
    }

    /// Whether the difference is significant at `alpha` (e.g. 0.05).
    pub fn significant(&self, alpha: f64) -> bool {
        self.p_value < alpha
    }
}

/// The two-sided standard normal quantile for `confidence`: z with P(|Z| < z) = confidence.
fn z_score(confidence: f64) -> f64 {
    probit(0.5 + confidence.clamp(0.0, 0.999_999_999) / 2.0)
}

/// The standard normal quantile function, P. J. Acklam's rational approximation (relative error
/// below 1.15·10⁻⁹ over (0, 1)), which is far below what a confidence level needs.
fn probit(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.024_25;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p <= 0.0 {
        f64::NEG_INFINITY
    } else if p >= 1.0 {
        f64::INFINITY
    } else if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - P_LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} is not within {tol} of {b}");
    }

    /// Standard normal quantiles from any statistical table (e.g. NIST/SEMATECH e-Handbook
    /// §1.3.6.7.1): 1.959964 for 95 %, 2.575829 for 99 %, 1.644854 for 90 %.
    #[test]
    fn z_scores() {
        close(z_score(0.95), 1.959_964, 1e-6);
        close(z_score(0.99), 2.575_829, 1e-6);
        close(z_score(0.90), 1.644_854, 1e-6);
        close(probit(0.5), 0.0, 1e-12);
        close(probit(0.001), -3.090_232, 1e-6);
    }

    /// Newcombe (1998), Statistics in Medicine 17:857–872, method 3 (score interval without
    /// continuity correction), his worked examples: 81/263 → 0.2553–0.3662; 15/148 →
    /// 0.0624–0.1605; 0/20 → 0–0.1611; 1/29 → 0.0061–0.1718.
    #[test]
    fn wilson_matches_newcombe_1998() {
        for (x, n, lo, hi) in [
            (81, 263, 0.2553, 0.3662),
            (15, 148, 0.0624, 0.1605),
            (0, 20, 0.0, 0.1611),
            (1, 29, 0.0061, 0.1718),
        ] {
            let (l, h) = wilson_interval(x, n, 0.95);
            close(l, lo, 0.000_05);
            close(h, hi, 0.000_05);
        }
    }

    /// Φ from tables: Φ(0) = 0.5, Φ(1.96) = 0.9750, Φ(−2.5758) = 0.0050.
    #[test]
    fn normal_cdf_table_values() {
        close(normal_cdf(0.0), 0.5, 1e-7);
        close(normal_cdf(1.959_964), 0.975, 1e-6);
        close(normal_cdf(-2.575_829), 0.005, 1e-6);
    }

    /// A textbook case computed by hand: 20/200 against 8/200. Pooled p = 28/400 = 0.07,
    /// se = √(0.07·0.93·(2/200)) = 0.025515, z = 0.06/0.025515 = 2.3516, p = 0.0187.
    #[test]
    fn two_proportion_test() {
        let t = ProportionTest::new(20, 200, 8, 200).unwrap();
        close(t.z, 2.3516, 1e-3);
        close(t.p_value, 0.0187, 1e-3);
        assert!(t.significant(0.05));
        assert!(
            !ProportionTest::new(5, 200, 4, 200)
                .unwrap()
                .significant(0.05)
        );
        assert_eq!(ProportionTest::new(0, 200, 0, 200), None);
    }

    #[test]
    fn verdict_three_cases() {
        // 0 of 200: upper bound z²/(n+z²) = 0.0188 < 2 % → pass.
        let pass = ErrorRate::new(0, 200, 0.95);
        close(pass.upper, 3.841_459 / 203.841_459, 1e-6);
        assert_eq!(pass.verdict(0.02), Verdict::Pass);
        // 20 of 200 (10 %): the whole interval is above 2 % → fail.
        let fail = ErrorRate::new(20, 200, 0.95);
        assert!(fail.lower > 0.02);
        assert_eq!(fail.verdict(0.02), Verdict::Fail);
        // 4 of 200 is exactly 2 %: the interval straddles the threshold.
        let unsure = ErrorRate::new(4, 200, 0.95);
        assert_eq!(unsure.verdict(0.02), Verdict::Inconclusive);
        assert_eq!(unsure.calls_needed(0.02), None);
        assert_eq!(
            ErrorRate::new(0, 0, 0.95).verdict(0.02),
            Verdict::Inconclusive
        );
    }

    #[test]
    fn calls_needed_is_the_least_n_that_clears() {
        // With no errors, the upper bound z²/(n+z²) < t ⇔ n > z²(1−t)/t = 188.2 at 2 %: 189 calls.
        let zero = ErrorRate::new(0, 50, 0.95);
        assert_eq!(zero.verdict(0.02), Verdict::Inconclusive);
        assert_eq!(zero.calls_needed(0.02), Some(189));
        // 1 error in 200 (0.5 %): inconclusive now; the answer is the least n that clears.
        let one = ErrorRate::new(1, 200, 0.95);
        assert_eq!(one.verdict(0.02), Verdict::Inconclusive);
        let n = one.calls_needed(0.02).unwrap();
        let z = z_score(0.95);
        assert!(wilson_bounds(0.005, n as f64, z).1 < 0.02);
        assert!(wilson_bounds(0.005, (n - 1) as f64, z).1 >= 0.02);
        // Already decided: the attempts made are enough.
        assert_eq!(ErrorRate::new(20, 200, 0.95).calls_needed(0.02), Some(200));
        // An observed 3 % needs enough calls for the lower bound to pass 2 %.
        let high = ErrorRate::new(3, 100, 0.95);
        let n = high.calls_needed(0.02).unwrap();
        assert!(wilson_bounds(0.03, n as f64, z).0 > 0.02);
        assert!(wilson_bounds(0.03, (n - 1) as f64, z).0 <= 0.02);
    }
}
