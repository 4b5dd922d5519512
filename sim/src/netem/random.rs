//! Seeded randomness for the path engine: a small PRNG and the jitter distributions.
//!
//! Written here rather than taken from `rand`: a trace must stay byte-identical for a given seed
//! across builds and dependency upgrades, and `rand` does not promise value stability of its
//! generators' seeding or of `rand_distr`'s samplers across versions. xoshiro256++ and the
//! inverse-CDF samplers below are fixed by their definitions.

use std::f64::consts::PI;

/// xoshiro256++ (Blackman & Vigna, 2019), seeded through SplitMix64.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    s: [u64; 4],
    /// The second normal of the last Box–Muller pair, not yet handed out.
    spare_normal: Option<f64>,
}

impl Rng {
    /// A generator for one stream, derived from the scenario seed and the stream's identity
    /// (segment, direction, flow), so that each stream's randomness does not depend on how many
    /// other streams exist or in which order their packets came.
    pub(crate) fn for_stream(seed: u64, stream: &[u64]) -> Self {
        let mut x = splitmix64(&mut seed.clone());
        for &part in stream {
            x = splitmix64(&mut (x ^ part.wrapping_mul(0xd1b5_4a32_d192_ed03)));
        }
        let mut sm = x;
        Self {
            s: [
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
            ],
            spare_normal: None,
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in the open interval (0, 1): never 0, so logarithms and inverse CDFs are finite.
    pub(crate) fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.uniform() < p
    }

    /// A standard normal sample (Box–Muller, both values of each pair used in turn).
    pub(crate) fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let radius = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (2.0 * PI * u2).sin_cos();
        self.spare_normal = Some(radius * sin);
        radius * cos
    }
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The shape of the delay variation a segment adds.
///
/// Every distribution is normalised to mean 0 and standard deviation 1 and then scaled by the
/// segment's jitter amount, so "jitter = 20 ms" always means a standard deviation of 20 ms (netem's
/// own uniform uses ±amount instead; ours spans ±√3·amount so that the four agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JitterDistribution {
    /// Uniform on ±√3 σ.
    Uniform,
    /// Normal (Gaussian).
    Normal,
    /// Pareto with shape α = 3 (netem's), shifted to mean 0: a heavy tail of late packets, none
    /// earlier than 0.577 σ before the base delay.
    Pareto,
    /// netem's "paretonormal": ¼ normal + ¾ Pareto, rescaled to σ.
    Paretonormal,
}

/// Pareto shape α, as netem's tables use.
const PARETO_SHAPE: f64 = 3.0;
/// Mean of a Pareto(α = 3, x_m = 1) variable: α / (α − 1).
const PARETO_MEAN: f64 = 1.5;
/// Standard deviation of Pareto(α = 3, x_m = 1): √(α / ((α − 1)² (α − 2))) = √0.75.
const PARETO_SD: f64 = 0.866_025_403_784_438_6;

impl JitterDistribution {
    /// Every distribution, in a stable order.
    pub const ALL: [Self; 4] = [
        Self::Uniform,
        Self::Normal,
        Self::Pareto,
        Self::Paretonormal,
    ];

    /// The stable lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Normal => "normal",
            Self::Pareto => "pareto",
            Self::Paretonormal => "paretonormal",
        }
    }

    /// The normalised variate for latent standard normals `z1` (and `z2` for the mixture),
    /// by inverse CDF: `F⁻¹(Φ(z))`, so correlation of the latents carries into the variates
    /// while the marginal distribution stays exactly the configured one (a Gaussian copula).
    pub(crate) fn variate(self, z1: f64, z2: f64) -> f64 {
        match self {
            Self::Uniform => 3f64.sqrt() * (2.0 * phi(z1) - 1.0),
            Self::Normal => z1,
            Self::Pareto => pareto_std(z1),
            Self::Paretonormal => {
                // Var(¼N + ¾P) = 1/16 + 9/16 with both parts standardised.
                (0.25 * z2 + 0.75 * pareto_std(z1)) / (10f64 / 16.0).sqrt()
            }
        }
    }
}

impl JitterDistribution {
    /// A normalised variate drawn directly, for uncorrelated jitter: the same distribution as
    /// [`Self::variate`] of independent latents, without the copula's normal CDF.
    pub(crate) fn independent_variate(self, rng: &mut Rng) -> f64 {
        match self {
            Self::Uniform => 3f64.sqrt() * (2.0 * rng.uniform() - 1.0),
            Self::Normal => rng.normal(),
            Self::Pareto => pareto_from_tail(rng.uniform()),
            Self::Paretonormal => {
                (0.25 * rng.normal() + 0.75 * pareto_from_tail(rng.uniform()))
                    / (10f64 / 16.0).sqrt()
            }
        }
    }
}

/// A standardised Pareto variate from the upper-tail probability `tail` = 1 − u ∈ (0, 1):
/// x = tail^(−1/α) with α = 3 (a cube root is several times cheaper than `powf`).
fn pareto_from_tail(tail: f64) -> f64 {
    debug_assert_eq!(PARETO_SHAPE, 3.0);
    (1.0 / tail.cbrt() - PARETO_MEAN) / PARETO_SD
}

/// A standardised Pareto variate from a latent normal: x = (1 − u)^(−1/α), u = Φ(z).
fn pareto_std(z: f64) -> f64 {
    // 1 − Φ(z) = Φ(−z), computed directly to keep precision in the tail.
    pareto_from_tail(phi(-z).max(f64::MIN_POSITIVE))
}

/// The standard normal CDF Φ (the results model's, one implementation for the workspace).
pub(crate) fn phi(z: f64) -> f64 {
    reports::verdict::normal_cdf(z)
}

/// An AR(1) latent standard normal: `z ← ρ z + √(1 − ρ²) ε`. Its marginal stays N(0, 1) for any
/// ρ, unlike netem's correlation (which mixes the uniform draws and so shrinks the variance).
#[derive(Debug, Clone, Default)]
pub(crate) struct Latent {
    z: Option<f64>,
}

impl Latent {
    pub(crate) fn next(&mut self, rng: &mut Rng, rho: f64) -> f64 {
        let e = rng.normal();
        let z = match self.z {
            Some(prev) => rho * prev + (1.0 - rho * rho).sqrt() * e,
            None => e,
        };
        self.z = Some(z);
        z
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(xs: impl Iterator<Item = f64>) -> (f64, f64, usize) {
        let v: Vec<f64> = xs.collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt(), v.len())
    }

    /// Each distribution is standardised: mean 0, sd 1. With n = 200 000 draws the sample mean
    /// has standard error 1/√n = 0.0022; we allow 5 standard errors. The sample sd of a
    /// heavy-tailed Pareto (α = 3 has no finite 4th moment) converges slowly, hence its wider
    /// tolerance.
    #[test]
    fn distributions_are_standardised() {
        for d in JitterDistribution::ALL {
            let mut rng = Rng::for_stream(7, &[d as u64]);
            let (mean, sd, n) = moments((0..200_000).map(|_| {
                let (z1, z2) = (rng.normal(), rng.normal());
                d.variate(z1, z2)
            }));
            let se = 1.0 / (n as f64).sqrt();
            assert!(mean.abs() < 5.0 * se, "{d:?} mean {mean}");
            let sd_tol = if matches!(d, JitterDistribution::Uniform | JitterDistribution::Normal) {
                0.01
            } else {
                0.06
            };
            assert!((sd - 1.0).abs() < sd_tol, "{d:?} sd {sd}");
        }
    }

    #[test]
    fn phi_known_values() {
        // Φ(0) = 0.5, Φ(1.959964) = 0.975, Φ(−1) = 0.158655 (normal tables).
        assert!((phi(0.0) - 0.5).abs() < 1e-7);
        assert!((phi(1.959_964) - 0.975).abs() < 1e-6);
        assert!((phi(-1.0) - 0.158_655_25).abs() < 1e-6);
    }

    #[test]
    fn latent_keeps_unit_variance_and_has_lag_one_correlation_rho() {
        let mut rng = Rng::for_stream(1, &[]);
        let mut l = Latent::default();
        let xs: Vec<f64> = (0..100_000).map(|_| l.next(&mut rng, 0.6)).collect();
        let (mean, sd, n) = moments(xs.iter().copied());
        let lag1 = xs.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / (n - 1) as f64;
        // AR(1) with ρ = 0.6: the mean's variance is (1+ρ)/(1−ρ)/n = 4/n → se 0.0063.
        assert!(mean.abs() < 5.0 * 0.0063, "{mean}");
        assert!((sd - 1.0).abs() < 0.02, "{sd}");
        assert!((lag1 - 0.6).abs() < 0.02, "{lag1}");
    }

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::for_stream(1, &[2, 3]);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::for_stream(1, &[2, 3]);
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::for_stream(1, &[2, 4]);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
