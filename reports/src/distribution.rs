//! Distributions of measured values that merge exactly across calls, shards and runs.
//!
//! A [`Distribution`] is an HdrHistogram with two significant digits (values are kept to within
//! 1 %) whose bounds grow as values arrive. Two distributions of the same [`Unit`] add exactly:
//! counts are summed bucket by bucket, so merging the summaries of N shards gives the same
//! histogram, bit for bit, as summarising all their records at once.
//!
//! On the wire (JSON) a distribution is `{"unit": "us", "hdr": "<base64>"}`, where `hdr` is the
//! histogram's compressed V2 encoding (the format HdrHistogram's Java, C, Go and Rust libraries
//! share: a zlib-deflated V2 payload), so the figures can be read back by any of them.

use std::fmt;
use std::io::Read;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

/// Significant decimal digits every distribution keeps (values are exact to within 1 %).
const SIGNIFICANT_DIGITS: u8 = 2;
/// The largest encoded histogram we accept, uncompressed: a guard against a corrupt or hostile
/// file asking for gigabytes. A two-digit histogram spanning the whole `u64` range needs ~30 KiB.
const MAX_DECODED_BYTES: u64 = 1 << 20;

/// The unit of the values in a [`Distribution`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Unit {
    /// Microseconds (durations: setup phases, delay, jitter).
    #[serde(rename = "us")]
    Micros,
    /// Basis points, 1/100 of a percent (loss rates: 150 = 1.5 %).
    #[serde(rename = "bp")]
    BasisPoints,
    /// Hundredths (MOS: 441 = 4.41).
    #[serde(rename = "centi")]
    Centi,
    /// Plain counts (burst lengths in packets).
    #[serde(rename = "count")]
    Count,
}

impl Unit {
    /// The stable short name used in files.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Micros => "us",
            Self::BasisPoints => "bp",
            Self::Centi => "centi",
            Self::Count => "count",
        }
    }
}

/// A histogram of values in one [`Unit`], mergeable exactly with others of the same unit.
#[derive(Clone)]
pub struct Distribution {
    unit: Unit,
    hist: Histogram<u64>,
}

impl Distribution {
    /// An empty distribution of values in `unit`.
    pub fn new(unit: Unit) -> Self {
        // Invariant: 2 significant digits is within the 0..=5 range `new` accepts.
        let mut hist = Histogram::new(SIGNIFICANT_DIGITS).expect("2 significant digits is valid");
        hist.auto(true);
        Self { unit, hist }
    }

    /// The unit of the values.
    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// Records one value (in the distribution's unit).
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `count` occurrences of one value.
    pub fn record_n(&mut self, value: u64, count: u64) {
        // `record_n` grows the range; saturating only for values beyond what it can ever track.
        if self.hist.record_n(value, count).is_err() {
            self.hist.saturating_record_n(value, count);
        }
    }

    /// Records a duration in microseconds, a float in milliseconds.
    ///
    /// Negative and non-finite values are clamped to 0; used for figures computed as `f64`.
    pub fn record_ms(&mut self, ms: f64) {
        debug_assert_eq!(self.unit, Unit::Micros);
        self.record(to_u64(ms * 1000.0));
    }

    /// Records a float scaled by 100 (MOS in [`Unit::Centi`], percent in [`Unit::BasisPoints`]).
    pub fn record_hundredths(&mut self, value: f64) {
        self.record(to_u64(value * 100.0));
    }

    /// Adds every value of `other` into `self`.
    ///
    /// Fails when the units differ: adding milliseconds to MOS is always a bug upstream.
    pub fn merge(&mut self, other: &Self) -> Result<(), MergeError> {
        if self.unit != other.unit {
            return Err(MergeError {
                left: self.unit,
                right: other.unit,
            });
        }
        // Invariant: with auto-resize on and equal precision, addition cannot fail.
        self.hist
            .add(&other.hist)
            .expect("auto-resizing histograms of equal precision add");
        Ok(())
    }

    /// Number of values recorded.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// Whether no value was recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The value at quantile `q` (0.0..=1.0), `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        (!self.is_empty()).then(|| self.hist.value_at_quantile(q))
    }

    /// The mean value, `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (!self.is_empty()).then(|| self.hist.mean())
    }

    /// The largest value (to the histogram's precision), `None` when empty.
    pub fn max(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.hist.max())
    }

    /// The smallest value (to the histogram's precision), `None` when empty.
    pub fn min(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.hist.min())
    }

    /// The underlying histogram, for charts and percentile tables.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    /// The compressed V2 encoding, base64.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::new();
        // Invariant: serialising into a Vec cannot fail for a histogram of our bounds.
        V2DeflateSerializer::new()
            .serialize(&self.hist, &mut bytes)
            .expect("V2 deflate into a Vec");
        BASE64.encode(bytes)
    }

    /// Decodes [`Self::encode`]'s output; corrupt or oversized input is an error, not a panic.
    pub fn decode(unit: Unit, encoded: &str) -> Result<Self, DecodeError> {
        let compressed = BASE64.decode(encoded).map_err(|_| DecodeError::Base64)?;
        let plain = inflate(&compressed)?;
        check_header(&plain)?;
        let mut hist: Histogram<u64> = Deserializer::new()
            .deserialize(&mut plain.as_slice())
            .map_err(|e| DecodeError::Histogram(format!("{e:?}")))?;
        hist.auto(true);
        Ok(Self { unit, hist })
    }

    fn recorded(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.hist
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
    }
}

/// Equality of the recorded values and counts (not of the allocated bucket range).
impl PartialEq for Distribution {
    fn eq(&self, other: &Self) -> bool {
        self.unit == other.unit
            && self.hist.len() == other.hist.len()
            && self.recorded().eq(other.recorded())
    }
}

impl fmt::Debug for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Distribution")
            .field("unit", &self.unit)
            .field("len", &self.len())
            .field("min", &self.min())
            .field("p50", &self.quantile(0.5))
            .field("max", &self.max())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    unit: Unit,
    hdr: String,
}

impl Serialize for Distribution {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            unit: self.unit,
            hdr: self.encode(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Distribution {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        Self::decode(wire.unit, &wire.hdr).map_err(serde::de::Error::custom)
    }
}

/// Two distributions of different units were merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot merge a distribution in {} into one in {}", right.as_str(), left.as_str())]
pub struct MergeError {
    /// The unit of the distribution merged into.
    pub left: Unit,
    /// The unit of the distribution being added.
    pub right: Unit,
}

/// An encoded distribution could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The `hdr` field is not valid base64.
    #[error("histogram is not valid base64")]
    Base64,
    /// The payload is not a zlib-compressed V2 histogram.
    #[error("histogram is not a compressed V2 HdrHistogram encoding")]
    NotCompressedV2,
    /// The encoded histogram is larger than any this tool writes.
    #[error("histogram decodes to more than {MAX_DECODED_BYTES} bytes")]
    TooLarge,
    /// The histogram's precision or range is not one this tool writes.
    #[error("histogram has {0}")]
    Parameters(String),
    /// The V2 decoder rejected the payload.
    #[error("histogram payload is corrupt: {0}")]
    Histogram(String),
}

/// Compressed V2 framing: cookie, length of the zlib stream, the stream. Bits 4..8 of a cookie
/// carry the counter word size, which readers ignore (as HdrHistogram's Java reader does).
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9314;
/// Uncompressed V2 cookie (word size bits as above).
const V2_COOKIE: u32 = 0x1c84_9313;
const COOKIE_MASK: u32 = !0xf0;
/// Uncompressed V2 header length: cookie, payload length, normalising offset, digits, low, high,
/// integer-to-double ratio.
const V2_HEADER_LEN: usize = 40;

/// Undoes the compressed V2 framing ourselves, with a size limit, because the library's decoder
/// trusts the length fields and would allocate whatever a corrupt file asks for.
fn inflate(compressed: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let (cookie, rest) = split_u32(compressed).ok_or(DecodeError::NotCompressedV2)?;
    let (len, stream) = split_u32(rest).ok_or(DecodeError::NotCompressedV2)?;
    if cookie & COOKIE_MASK != V2_COMPRESSED_COOKIE & COOKIE_MASK || len as usize != stream.len() {
        return Err(DecodeError::NotCompressedV2);
    }
    let mut plain = Vec::new();
    flate2::read::ZlibDecoder::new(stream)
        .take(MAX_DECODED_BYTES + 1)
        .read_to_end(&mut plain)
        .map_err(|_| DecodeError::NotCompressedV2)?;
    if plain.len() as u64 > MAX_DECODED_BYTES {
        return Err(DecodeError::TooLarge);
    }
    Ok(plain)
}

fn check_header(plain: &[u8]) -> Result<(), DecodeError> {
    if plain.len() < V2_HEADER_LEN {
        return Err(DecodeError::NotCompressedV2);
    }
    let word =
        |at: usize| u32::from_be_bytes([plain[at], plain[at + 1], plain[at + 2], plain[at + 3]]);
    if word(0) & COOKIE_MASK != V2_COOKIE & COOKIE_MASK {
        return Err(DecodeError::NotCompressedV2);
    }
    if word(4) as usize != plain.len() - V2_HEADER_LEN {
        return Err(DecodeError::Histogram(
            "payload length does not match its header".into(),
        ));
    }
    let digits = word(12);
    if digits != u32::from(SIGNIFICANT_DIGITS) {
        return Err(DecodeError::Parameters(format!(
            "{digits} significant digits, expected {SIGNIFICANT_DIGITS}"
        )));
    }
    let low = u64::from_be_bytes(plain[16..24].try_into().unwrap_or_default());
    if low != 1 {
        return Err(DecodeError::Parameters(format!(
            "lowest discernible value {low}, expected 1"
        )));
    }
    Ok(())
}

fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), rest))
}

/// Rounds a non-negative float to the nearest integer, clamping the rest into `u64`.
fn to_u64(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        // `as` saturates at u64::MAX, which is what we want for absurd values.
        x.round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let mut d = Distribution::new(Unit::Micros);
        for v in [0, 1, 999, 20_000, 20_001, 5_000_000] {
            d.record(v);
        }
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.starts_with(r#"{"unit":"us","hdr":"HIST"#), "{json}");
        let back: Distribution = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.len(), 6);
    }

    #[test]
    fn merge_adds_counts_and_keeps_precision() {
        let mut a = Distribution::new(Unit::Micros);
        let mut b = Distribution::new(Unit::Micros);
        let mut all = Distribution::new(Unit::Micros);
        for v in 0..1000u64 {
            let v = v * v * 37;
            if v % 3 == 0 {
                a.record(v);
            } else {
                b.record(v);
            }
            all.record(v);
        }
        a.merge(&b).unwrap();
        assert_eq!(a, all);
        // Two significant digits: every quantile within 1 % of the exact order statistic.
        let p99 = all.quantile(0.99).unwrap() as f64;
        let exact = (989.0f64 * 989.0 * 37.0).max(1.0);
        assert!((p99 - exact).abs() / exact < 0.01, "{p99} vs {exact}");
    }

    #[test]
    fn merge_of_different_units_is_refused() {
        let mut a = Distribution::new(Unit::Micros);
        let b = Distribution::new(Unit::Centi);
        assert_eq!(
            a.merge(&b),
            Err(MergeError {
                left: Unit::Micros,
                right: Unit::Centi
            })
        );
    }

    #[test]
    fn corrupt_encodings_are_errors() {
        let good = {
            let mut d = Distribution::new(Unit::Count);
            d.record(3);
            d.encode()
        };
        assert_eq!(
            Distribution::decode(Unit::Count, "not base64!"),
            Err(DecodeError::Base64)
        );
        assert_eq!(
            Distribution::decode(Unit::Count, "AAAA"),
            Err(DecodeError::NotCompressedV2)
        );
        // Flip bytes inside the deflate stream: must be an error, never a panic.
        let mut raw = BASE64.decode(&good).unwrap();
        for i in 8..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x5a;
            let _ = Distribution::decode(Unit::Count, &BASE64.encode(&bad));
        }
        raw.truncate(raw.len() - 3);
        assert!(Distribution::decode(Unit::Count, &BASE64.encode(&raw)).is_err());
    }

    #[test]
    fn oversized_length_fields_are_refused_without_allocating() {
        // A compressed frame claiming a 4 GiB payload: the library would resize to it.
        let mut plain = Vec::new();
        plain.extend_from_slice(&V2_COOKIE.to_be_bytes());
        plain.extend_from_slice(&u32::MAX.to_be_bytes());
        plain.extend_from_slice(&[0; 32]);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut z, &plain).unwrap();
        let stream = z.finish().unwrap();
        let mut framed = V2_COMPRESSED_COOKIE.to_be_bytes().to_vec();
        framed.extend_from_slice(&(stream.len() as u32).to_be_bytes());
        framed.extend_from_slice(&stream);
        let err = Distribution::decode(Unit::Count, &BASE64.encode(&framed)).unwrap_err();
        assert!(matches!(err, DecodeError::Histogram(_)), "{err:?}");
    }
}
