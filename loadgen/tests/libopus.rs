//! The Opus frames every leg sends decode with the reference decoder, libopus (what Chromium
//! decodes with), to the test signal they were encoded from: a decoder nobody here wrote hears
//! what we meant. libopus is reached through Python's `ctypes`, so the test needs `python3` and
//! `libopus.so.0` (Debian's `libopus0`, installed by `.ci/run`; Chromium depends on it).

use std::process::Command;

use loadgen::audio::{FRAME_SAMPLES, LOOP_FRAMES, opus_frame, test_signal};

/// Decodes the frames in the file given as argv[1] (each: a little-endian u16 length, then the
/// frame) with libopus and prints the samples as one decimal number a line.
const DECODE: &str = r#"
import ctypes, struct, sys
lib = ctypes.CDLL("libopus.so.0")
lib.opus_decoder_create.restype = ctypes.c_void_p
lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                            ctypes.POINTER(ctypes.c_int16), ctypes.c_int, ctypes.c_int]
lib.opus_get_version_string.restype = ctypes.c_char_p
err = ctypes.c_int()
dec = lib.opus_decoder_create(48000, 1, ctypes.byref(err))
assert err.value == 0, err.value
data = open(sys.argv[1], "rb").read()
pcm = (ctypes.c_int16 * 5760)()
pos, out = 0, []
while pos < len(data):
    (n,) = struct.unpack_from("<H", data, pos)
    got = lib.opus_decode(dec, data[pos + 2:pos + 2 + n], n, pcm, 5760, 0)
    assert got == 960, got
    out.extend(pcm[:got])
    pos += 2 + n
sys.stderr.write(lib.opus_get_version_string().decode() + "\n")
sys.stdout.write("\n".join(map(str, out)))
"#;

fn libopus_available() -> bool {
    Command::new("python3")
        .args(["-c", "import ctypes; ctypes.CDLL('libopus.so.0')"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn libopus_decodes_our_frames_to_the_test_signal() {
    if !libopus_available() {
        // `.ci/run` installs libopus0: on CI its absence is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with libopus.so.0 is missing"
        );
        eprintln!(
            "\n\n!!! SKIPPED: python3 or libopus.so.0 is missing (apt-get install libopus0)\n"
        );
        return;
    }
    // Two passes of the loop, so the wrap is decoded too.
    let frames = 2 * LOOP_FRAMES as u64;
    let mut file = Vec::new();
    for f in 0..frames {
        let frame = opus_frame(f);
        file.extend_from_slice(&u16::try_from(frame.len()).unwrap().to_le_bytes());
        file.extend_from_slice(frame);
    }
    let path = std::env::temp_dir().join(format!("libopus-frames-{}", std::process::id()));
    std::fs::write(&path, &file).unwrap();
    let out = Command::new("python3")
        .args(["-c", DECODE])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoded: Vec<f64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse::<f64>().unwrap() / 32768.0)
        .collect();
    assert_eq!(
        decoded.len(),
        frames as usize * FRAME_SAMPLES,
        "20 ms a frame"
    );
    let signal: Vec<f64> = test_signal(decoded.len())
        .into_iter()
        .map(f64::from)
        .collect();
    // The best normalised correlation over the codec's delay (up to 20 ms).
    let (correlation, lag) = (0..FRAME_SAMPLES)
        .step_by(4)
        .map(|lag| {
            let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
            for (x, y) in signal.iter().zip(&decoded[lag..]) {
                ab += x * y;
                aa += x * x;
                bb += y * y;
            }
            (ab / (aa * bb).sqrt(), lag)
        })
        .fold((0.0, 0), |best, c| if c.0 > best.0 { c } else { best });
    let rms = |s: &[f64]| (s.iter().map(|x| x * x).sum::<f64>() / s.len() as f64).sqrt();
    let level = rms(&decoded) / rms(&signal);
    eprintln!(
        "{}: correlation {correlation:.3} at {lag} samples, level {level:.3} of the signal's",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // A lossy codec at 32 kbit/s keeps the waveform (a decoder that mistook the bitstream
    // gives noise: correlation near 0, level far off), 6.5 ms late (VoIP look-ahead).
    assert!(correlation > 0.9, "correlation {correlation}");
    assert!((0.8..1.25).contains(&level), "level {level}");
    assert!((250..400).contains(&lag), "delay {lag} samples");
}
