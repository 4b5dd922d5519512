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

/// What a leg sends: the speech-like test signal, or a conference party's test tone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signal {
    /// The speech-like loop ([`test_signal`]).
    #[default]
    Speech,
    /// A sine at this many hertz ([`tone`]).
    Tone(u32),
}

/// The test tones of a conference's three parties, hertz: multiples of 50 Hz, so that each
/// falls on its own bin of a 20 ms frame's spectrum ([`ToneMeter`]) and none leaks into
/// another's; none a harmonic of another, all inside narrowband telephony's 300–3,400 Hz.
pub const AGENT_TONE: u32 = 800;
/// The customer's tone.
pub const CUSTOMER_TONE: u32 = 500;
/// The third party's tone.
pub const THIRD_PARTY_TONE: u32 = 1300;
/// A test tone's amplitude: −20 dBFS, two of them mixed stay far from clipping.
pub const TONE_AMPLITUDE: f32 = 0.1;

/// Samples `first..first + out.len()` of a `hz` tone at [`TONE_AMPLITUDE`].
pub fn tone(hz: u32, first: u64, out: &mut [f32]) {
    let step = 2.0 * PI * f64::from(hz) / f64::from(SAMPLE_RATE);
    for (i, x) in out.iter_mut().enumerate() {
        // The phase from the sample index modulo a period of whole cycles: exact however long
        // the stream runs (every tone here completes whole cycles in one second).
        let n = (first + i as u64) % u64::from(SAMPLE_RATE);
        *x = TONE_AMPLITUDE * (step * n as f64).sin() as f32;
    }
}

/// An encoded loop of frames: each an Opus payload.
type Frames = &'static [Vec<u8>];

/// Encoded tone loops, one per frequency asked for (a handful in a process).
static TONE_LOOPS: std::sync::Mutex<Vec<(u32, Frames)>> = std::sync::Mutex::new(Vec::new());

/// The Opus payload of frame number `frame` of a stream of `signal`.
#[must_use]
pub fn frame(signal: Signal, frame: u64) -> &'static [u8] {
    let hz = match signal {
        Signal::Speech => return opus_frame(frame),
        Signal::Tone(hz) => hz,
    };
    let loop_frames = {
        let mut loops = TONE_LOOPS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match loops.iter().find(|(f, _)| *f == hz) {
            Some((_, frames)) => *frames,
            None => {
                let mut pcm = vec![0f32; 3 * LOOP_FRAMES * FRAME_SAMPLES];
                tone(hz, 0, &mut pcm);
                // Leaked on purpose: each tone's loop lives as long as the process.
                let frames: Frames = Vec::leak(encode_loop_of(&pcm));
                loops.push((hz, frames));
                frames
            }
        }
    };
    &loop_frames[usize::try_from(frame % LOOP_FRAMES as u64).unwrap_or(0)]
}

/// One Opus encoder as every leg configures it (VoIP, [`BITRATE`]).
pub fn encoder() -> Option<opus_pure::OpusEncoder> {
    let mut encoder =
        opus_pure::OpusEncoder::new(SAMPLE_RATE as i32, 1, opus_pure::Application::Voip).ok()?;
    encoder.bitrate_bps = BITRATE;
    Some(encoder)
}

/// Encodes one 20 ms frame of `pcm` with `encoder` into a payload (a frame the decoder
/// conceals, if the encoder refuses it).
pub fn encode_frame(encoder: Option<&mut opus_pure::OpusEncoder>, pcm: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; opus_pure::MAX_PACKET_BYTES];
    match encoder.map(|e| e.encode(pcm, FRAME_SAMPLES, &mut out)) {
        Some(Ok(n)) => {
            out.truncate(n);
            out
        }
        _ => SILENCE.to_vec(),
    }
}

/// The level of test tones in what a party hears: the power in each tone's bin of every
/// 20 ms frame (Goertzel's recurrence), averaged over the frames measured.
#[derive(Debug, Clone)]
pub struct ToneMeter {
    /// Per tone: its frequency and the sum over frames of its amplitude squared.
    tones: Vec<(u32, f64)>,
    frames: u64,
}

impl ToneMeter {
    /// A meter of `tones` (hertz, multiples of 50).
    pub fn new(tones: &[u32]) -> Self {
        Self {
            tones: tones.iter().map(|&hz| (hz, 0.0)).collect(),
            frames: 0,
        }
    }

    /// Measures one frame of [`FRAME_SAMPLES`] samples.
    pub fn frame(&mut self, pcm: &[f32]) {
        let n = pcm.len() as f64;
        for (hz, sum) in &mut self.tones {
            let w = 2.0 * PI * f64::from(*hz) / f64::from(SAMPLE_RATE);
            let coeff = 2.0 * w.cos();
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for &x in pcm {
                let s0 = f64::from(x) + coeff * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
            // A sine of amplitude A on the bin gives power (A·N/2)².
            *sum += 4.0 * power / (n * n);
        }
        self.frames += 1;
    }

    /// Frames measured.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// A meter of the three conference tones.
    pub fn conference() -> Self {
        Self::new(&[AGENT_TONE, CUSTOMER_TONE, THIRD_PARTY_TONE])
    }

    /// The three conference tones' levels, for the record (a tone not measured reads −120).
    pub fn heard(&self) -> reports::Heard {
        let levels = self.levels();
        let level = |hz| {
            levels
                .iter()
                .find(|(h, _)| *h == hz)
                .map_or(-120.0, |(_, db)| *db)
        };
        reports::Heard {
            agent_db: level(AGENT_TONE),
            customer_db: level(CUSTOMER_TONE),
            third_party_db: level(THIRD_PARTY_TONE),
            frames: self.frames,
        }
    }

    /// Each tone's mean level in dBFS (a full-scale sine is 0 dBFS; −120 for none).
    pub fn levels(&self) -> Vec<(u32, f64)> {
        self.tones
            .iter()
            .map(|&(hz, sum)| {
                let mean = sum / self.frames.max(1) as f64;
                (hz, (10.0 * mean.max(1e-12).log10()).max(-120.0))
            })
            .collect()
    }
}

/// Three passes of the loop through one encoder; the middle pass's frames.
fn encode_loop() -> Vec<Vec<u8>> {
    encode_loop_of(&test_signal(3 * LOOP_FRAMES * FRAME_SAMPLES))
}

/// The middle pass of three passes of a loop (`signal`, three loops long) through one encoder.
fn encode_loop_of(signal: &[f32]) -> Vec<Vec<u8>> {
    let mut encoder = encoder();
    let frames: Vec<Vec<u8>> = signal
        .chunks(FRAME_SAMPLES)
        .map(|pcm| encode_frame(encoder.as_mut(), pcm))
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
    fn a_tone_meter_finds_each_tone_of_a_mix_and_nothing_of_the_others() {
        // Two parties' tones, through the codec: each at its level, the third absent.
        let frames = (0..LOOP_FRAMES as u64).map(|f| {
            let (a, b) = (
                frame(Signal::Tone(CUSTOMER_TONE), f),
                frame(Signal::Tone(THIRD_PARTY_TONE), f),
            );
            (a, b)
        });
        let (mut ca, mut cb) = (Vec::new(), Vec::new());
        for (a, b) in frames {
            ca.push(a);
            cb.push(b);
        }
        let (da, db) = (decode(ca), decode(cb));
        let mix: Vec<f32> = da.iter().zip(&db).map(|(a, b)| a + b).collect();
        let mut meter = ToneMeter::new(&[CUSTOMER_TONE, AGENT_TONE, THIRD_PARTY_TONE]);
        // The codec's first frames settle; measure the rest.
        for f in mix.chunks(FRAME_SAMPLES).skip(5) {
            meter.frame(f);
        }
        let levels = meter.levels();
        let level = |hz| levels.iter().find(|(h, _)| *h == hz).unwrap().1;
        // −20 dBFS sent; Opus at 32 kbit/s keeps a steady tone within a dB or two.
        assert!((level(CUSTOMER_TONE) + 20.0).abs() < 3.0, "{levels:?}");
        assert!((level(THIRD_PARTY_TONE) + 20.0).abs() < 3.0, "{levels:?}");
        assert!(level(AGENT_TONE) < -45.0, "{levels:?}");
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
