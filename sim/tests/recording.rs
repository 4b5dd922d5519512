//! Recordings end to end: `sim run` on a scenario with `[recording] record = "both"` across a
//! path losing 10 % each way. Every connected call has its WAV file, named in its record,
//! customer left and agent right at 16 kHz; a transfer's recording stops when the agent leaves
//! (two thirds of the talk time); the agent's side conceals as many frames as the anchor
//! measured lost; and the report plays the worst calls' recordings. The same in virtual time.
#![allow(clippy::disallowed_methods)] // real sockets, real clock
mod common;

use reports::{CallKind, Outcome};

const TALK_S: f64 = 6.0;

fn wav(path: &std::path::Path) -> (u16, u32, Vec<i16>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[0..4], b"RIFF", "{}", path.display());
    assert_eq!(&bytes[8..16], b"WAVEfmt ");
    let channels = u16::from_le_bytes([bytes[22], bytes[23]]);
    let rate = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize;
    assert_eq!(
        data,
        bytes.len() - 44,
        "the header's data size is the data's"
    );
    let samples = bytes[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    (channels, rate, samples)
}

fn rms(s: impl Iterator<Item = i16>) -> f64 {
    let (sum, n) = s.fold((0.0, 0usize), |(a, n), v| (a + f64::from(v).powi(2), n + 1));
    (sum / n.max(1) as f64).sqrt()
}

#[test]
fn every_connected_call_is_recorded_with_its_losses_concealed() {
    let text = format!(
        r#"
[run]
seed = 8
threshold = "50%"

[agents]
calls = 6
concurrency = 6
ramp = "20/s"
call_duration = "{TALK_S}s"
mix = {{ inbound = 0.5, transfer = 0.5 }}

[turn]
urls = ["turn:turn.sim.local:3478?transport=udp"]

[segment.lossy]
delay = "30ms"
loss = "10%"

[[site]]
name = "home"
path = ["lossy"]

[recording]
record = "both"
"#
    );
    // In virtual time too: the same cores, the recorder writing as the run goes.
    for clock in [common::Clock::Real, common::Clock::Virtual] {
        check_recordings(clock, &text);
    }
}

fn check_recordings(clock: common::Clock, text: &str) {
    let (dir, records) = common::run_scenario_on(clock, "recording", text);
    assert_eq!(records.len(), 6);
    let mut lost = 0;
    let mut kinds = std::collections::BTreeSet::new();
    for r in &records {
        assert_eq!(r.outcome, Outcome::Completed, "{:?}", r.failure);
        let path = r
            .recording
            .as_ref()
            .expect("a connected call names its recording");
        assert_eq!(path, &format!("recordings/{}.wav", r.identity.call));
        let (channels, rate, samples) = wav(&dir.join(path));
        assert_eq!((channels, rate), (2, 16_000));
        let seconds = samples.len() as f64 / 2.0 / 16_000.0;
        // Recorded from the anchor's leg keying to the agent's bye. The anchor (the DTLS
        // server) keys after ICE connected and no later than the agent: on this 10 % loss path
        // the agent may finish its handshake a retransmission (1–2 s) after the anchor did. So
        // the length lies between the agent's own talk span and the span from ICE connected,
        // give or take the setup's and hang-up's frames.
        let m = &r.milestones;
        let span = |from: Option<u64>| (m.hangup_us.unwrap() - from.unwrap()) as f64 / 1e6;
        let (shortest, longest) = (span(m.dtls_connected_us), span(m.ice_connected_us));
        let talk = match r.identity.kind {
            CallKind::Transfer => TALK_S * 2.0 / 3.0,
            _ => TALK_S,
        };
        kinds.insert(r.identity.kind);
        assert!(
            (shortest - talk).abs() < 0.6,
            "{clock:?} {}: the agent talked {shortest:.2} s, {talk:.2} s expected",
            r.identity.call
        );
        assert!(
            seconds > shortest - 0.6 && seconds < longest + 0.6,
            "{clock:?} {}: {seconds:.2} s recorded, between {shortest:.2} and {longest:.2} s expected",
            r.identity.call
        );
        // Both sides speak: the test signal is about −22 dBFS (rms ≈ 2,600); even with 10 %
        // concealed, each side stays far above silence.
        let customer = rms(samples.iter().step_by(2).copied());
        let agent = rms(samples.iter().skip(1).step_by(2).copied());
        assert!(customer > 1000.0 && agent > 1000.0, "{customer} {agent}");
        lost += r.agent_to_anchor.as_ref().unwrap().packets_lost;
    }
    assert_eq!(kinds.len(), 2, "both kinds ran: {kinds:?}");

    // The recordings concealed the frames the anchor counted lost, no more: every loss is
    // heard as concealment (and none was late on this FIFO path).
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let anchor = &summary["components"]["anchor"];
    assert_eq!(anchor["recordings"], 6);
    assert_eq!(anchor["recording_dropped"], 0);
    assert_eq!(anchor["recording_failed"], 0);
    let concealed = anchor["recording_concealed"].as_u64().unwrap();
    println!("{clock:?}: {lost} frames lost, {concealed} concealed");
    assert!(lost > 20, "10 % of ~1,500 frames: {lost} lost");
    assert!(
        concealed >= lost && concealed <= lost + 6,
        "{concealed} frames concealed, {lost} lost"
    );

    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("media-src 'self'"));
    assert_eq!(
        html.matches("<audio controls").count(),
        5,
        "the 5 worst MOS"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
