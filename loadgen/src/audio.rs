//! The audio every leg sends: real Opus (RFC 6716), 20 ms frames at 48 kHz mono, 32 kbit/s in
//! the codec's VoIP mode (what a browser's softphone sends), of a speech-like test signal.
//!
//! The signal is encoded once per process and looped, so a frame costs what a stamp did: a
//! copy of about 80 bytes. It is two seconds of voiced speech in all but content: a glottal
//! source (harmonics of a pitch gliding between 100 and 140 Hz, falling off as 1/√k) through
//! the first three formants of four vowels (/a/, /i/, /u/, /e/, 200 Hz to 3 kHz), at four
//! syllables a second with a pause every fifth syllable, at about −22 dBFS RMS. A decoder sees
//! speech (Opus picks SILK or hybrid coding for it), a browser's `audioLevel` moves with the
//! syllables, and a recording sounds like a voice. Three passes are encoded and the middle one
//! kept, so the encoder's state at the loop's end matches its start and the loop has no seam.
//!
//! The encoder is `opus-pure`, a Rust implementation with no C and no build script: its frames
//! decode with the reference libopus (`loadgen/tests/libopus.rs`) as Chromium's do, and it
//! decodes libopus's frames in turn. (`mousiki`, another Rust port, was tried and refused:
//! libopus decoded its frames to noise although the range coder's final state matched.)

use std::f64::consts::PI;
use std::sync::LazyLock;

/// Samples per second.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame.
pub const FRAME_SAMPLES: usize = 960;
/// Frames in the loop (two seconds).
pub const LOOP_FRAMES: usize = 100;
/// The encoder's target bitrate, bits per second.
pub const BITRATE: i32 = 32_000;

/// The loop's frames, encoded at first use.
static LOOP: LazyLock<Vec<Vec<u8>>> = LazyLock::new(encode_loop);

/// The Opus payload of frame number `frame` of a stream.
#[must_use]
pub fn opus_frame(frame: u64) -> &'static [u8] {
    let i = usize::try_from(frame % LOOP_FRAMES as u64).unwrap_or(0);
    &LOOP[i]
}

/// Encodes the loop now (the first frame sent would otherwise pay for it).
pub fn prepare() {
    LazyLock::force(&LOOP);
}

/// The first `samples` samples of the test signal, in [−1, 1] (it repeats every
/// [`LOOP_FRAMES`] frames).
#[must_use]
pub fn test_signal(samples: usize) -> Vec<f32> {
    // First three formants (Hz) of /a/, /i/, /u/, /e/ (Peterson and Barney's male averages).
    const VOWELS: [(f64, f64, f64); 4] = [
        (730.0, 1090.0, 2440.0),
        (270.0, 2290.0, 3010.0),
        (300.0, 870.0, 2240.0),
        (530.0, 1840.0, 2480.0),
    ];
    let period = LOOP_FRAMES * FRAME_SAMPLES;
    (0..samples)
        .map(|i| {
            let t = (i % period) as f64 / f64::from(SAMPLE_RATE);
            let syllable = (t * 4.0).floor() as usize;
            if syllable % 5 == 4 {
                return 0.0;
            }
            let (f1, f2, f3) = VOWELS[syllable % VOWELS.len()];
            // One glide of the pitch per loop, so the loop's end meets its start.
            let f0 = 120.0 + 20.0 * (PI * t).sin();
            let envelope = ((t * 4.0).fract() * PI).sin().max(0.0).powf(0.7);
            let mut s = 0.0;
            let mut k = 1.0;
            while k * f0 < 4000.0 {
                let f = k * f0;
                let formant = |centre: f64, width: f64| (-((f - centre) / width).powi(2)).exp();
                let gain =
                    (formant(f1, 90.0) + 0.6 * formant(f2, 120.0) + 0.3 * formant(f3, 160.0))
                        / k.sqrt();
                // The phase of a gliding partial: the integral of its frequency.
                let phase = 2.0 * PI * k * (120.0 * t - 20.0 / PI * ((PI * t).cos() - 1.0));
                s += gain * phase.sin();
                k += 1.0;
            }
            (s * 0.25 * envelope) as f32
        })
        .collect()
}

/// Three passes of the loop through one encoder; the middle pass's frames.
fn encode_loop() -> Vec<Vec<u8>> {
    let signal = test_signal(3 * LOOP_FRAMES * FRAME_SAMPLES);
    let encoder = opus_pure::OpusEncoder::new(SAMPLE_RATE as i32, 1, opus_pure::Application::Voip);
    // A fixed configuration that is valid: the encoder cannot refuse it.
    let Ok(mut encoder) = encoder else {
        return vec![SILENCE.to_vec(); LOOP_FRAMES];
    };
    encoder.bitrate_bps = BITRATE;
    let mut out = vec![0u8; opus_pure::MAX_PACKET_BYTES];
    let frames: Vec<Vec<u8>> = signal
        .chunks(FRAME_SAMPLES)
        .map(|pcm| match encoder.encode(pcm, FRAME_SAMPLES, &mut out) {
            Ok(n) => out[..n].to_vec(),
            Err(_) => SILENCE.to_vec(),
        })
        .collect();
    frames[LOOP_FRAMES..2 * LOOP_FRAMES].to_vec()
}

/// An Opus packet of one empty 20 ms frame (TOC: SILK-only wideband, 20 ms, mono; RFC 6716
/// §3.1–3.2.1), which a decoder conceals: for an encoder that failed.
const SILENCE: [u8; 1] = [0x48];

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `frames` with opus-pure's decoder.
    fn decode(frames: impl IntoIterator<Item = &'static [u8]>) -> Vec<f32> {
        let mut decoder = opus_pure::OpusDecoder::new(SAMPLE_RATE as i32, 1).unwrap();
        let mut pcm = vec![0f32; 5760];
        let mut out = Vec::new();
        for f in frames {
            let n = decoder.decode(f, 5760, &mut pcm).unwrap();
            assert_eq!(n, FRAME_SAMPLES, "20 ms per frame");
            out.extend_from_slice(&pcm[..n]);
        }
        out
    }

    /// The best normalised correlation of `a` with `b` delayed by up to 20 ms, and the delay.
    fn best_match(a: &[f32], b: &[f32]) -> (f64, usize) {
        (0..FRAME_SAMPLES)
            .step_by(4)
            .map(|lag| {
                let pairs = a.iter().zip(&b[lag..]);
                let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
                for (x, y) in pairs {
                    ab += f64::from(*x) * f64::from(*y);
                    aa += f64::from(*x).powi(2);
                    bb += f64::from(*y).powi(2);
                }
                (ab / (aa * bb).sqrt(), lag)
            })
            .fold((0.0, 0), |best, c| if c.0 > best.0 { c } else { best })
    }

    #[test]
    fn frames_are_opus_that_decodes_to_the_test_signal() {
        prepare();
        let frames = (0..LOOP_FRAMES as u64).map(opus_frame);
        let decoded = decode(frames);
        let signal = test_signal(decoded.len());
        let (correlation, lag) = best_match(&signal, &decoded);
        // A lossy speech codec at 32 kbit/s: the waveform survives, 6.5 ms later (the VoIP
        // encoder's look-ahead).
        assert!(correlation > 0.9, "correlation {correlation}");
        assert!((250..400).contains(&lag), "codec delay {lag} samples");
        let mean = (0..LOOP_FRAMES as u64)
            .map(|f| opus_frame(f).len())
            .sum::<usize>()
            / LOOP_FRAMES;
        // 32 kbit/s is 80 bytes a frame on average; pauses cost less.
        assert!((40..=120).contains(&mean), "mean frame {mean} bytes");
        // SILK or hybrid, 20 ms, mono (RFC 6716 §3.1): the TOC byte of speech.
        let toc = opus_frame(1)[0];
        assert!(toc >> 3 < 16, "config {} is a speech mode", toc >> 3);
        assert_eq!(toc & 0x04, 0, "mono");
    }

    #[test]
    fn the_loop_has_no_seam() {
        // The last frame of one pass and the first of the next decode as continuous audio:
        // no frame at the wrap is louder than the signal's loudest.
        let frames = (0..2 * LOOP_FRAMES as u64).map(opus_frame);
        let decoded = decode(frames);
        let peak = |s: &[f32]| s.iter().fold(0f32, |m, x| m.max(x.abs()));
        let whole = peak(&decoded[..LOOP_FRAMES * FRAME_SAMPLES]);
        let wrap = LOOP_FRAMES * FRAME_SAMPLES;
        let seam = peak(&decoded[wrap - FRAME_SAMPLES..wrap + FRAME_SAMPLES]);
        assert!(seam <= whole * 1.05, "seam peak {seam}, loop peak {whole}");
    }

    #[test]
    fn the_signal_has_speech_levels_and_pauses() {
        let s = test_signal(LOOP_FRAMES * FRAME_SAMPLES);
        let rms = (s.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / s.len() as f64).sqrt();
        let dbfs = 20.0 * rms.log10();
        assert!((-30.0..-15.0).contains(&dbfs), "{dbfs} dBFS");
        // The fifth syllable (1.0–1.25 s) is a pause.
        assert!(s[52_000..58_000].iter().all(|x| *x == 0.0));
        assert!(s.iter().all(|x| x.abs() <= 1.0));
    }
}
