//! Interop with a real browser: headless Chromium places a relay-only call through our TURN
//! server (across an impaired path) to our media anchor, over our WebSocket/TLS signalling. The
//! browser's own `getStats()` must show the connection and the media — Opus its decoder plays,
//! with an audio level — and its jitter and loss figures must agree with ours (the two
//! directions cross the same path model).
//!
//! Needs Debian's `chromium` (`.ci/run` installs it); the test installs it when it runs as root
//! and it is missing, and skips with a loud message only when that is impossible (on CI, `CI` set, it fails).
#![allow(clippy::disallowed_methods)] // real processes, real clock
mod common;

use std::time::Duration;

use sim::netem::{JitterDistribution, Loss, Path, SegmentModel};
use sim::relay::{UdpRelay, UdpRelayConfig};
use sim::scenario::Policy;

const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>softphone interop</title>
<audio id="remote" autoplay></audio>
<script>
const log = (o) => console.log('RESULT ' + JSON.stringify(o));
(async () => {
  try {
    const pc = new RTCPeerConnection({
      iceServers: [{ urls: 'turn:TURN_ADDR?transport=udp', username: 'agent', credential: 'TURN_PASSWORD' }],
      iceTransportPolicy: 'relay', rtcpMuxPolicy: 'require' });
    const candidates = [];
    // Played, as a softphone plays it: Chromium decodes what its audio output pulls.
    pc.ontrack = (e) => { const a = document.getElementById('remote'); a.srcObject = e.streams[0] || new MediaStream([e.track]); a.play().catch(() => {}); };
    pc.onicecandidate = (e) => { if (e.candidate && e.candidate.candidate) candidates.push(e.candidate.toJSON()); };
    const media = await navigator.mediaDevices.getUserMedia({ audio: true });
    media.getTracks().forEach((t) => pc.addTrack(t, media));
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((done) => {
      if (pc.iceGatheringState === 'complete') return done();
      pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') done(); };
      setTimeout(done, 5000);
    });
    const ws = new WebSocket('wss://127.0.0.1:SIG_PORT/rtc');
    await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error('websocket')); });
    let nextId = 1; const waiting = {};
    ws.onmessage = (m) => { const r = JSON.parse(m.data); waiting[r.id](r); };
    const call = (method, params) => new Promise((ok) => { const id = nextId++; waiting[id] = ok;
      ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params })); });
    const invite = await call('invite', { sdp: pc.localDescription.sdp, candidates, callContextToken: 'browser' });
    if (invite.error) throw new Error('invite: ' + JSON.stringify(invite.error));
    await pc.setRemoteDescription({ type: 'answer', sdp: invite.result.sdp });
    for (const c of invite.result.candidates) await pc.addIceCandidate(c);
    await call('accept', { callId: invite.result.callId });
    const connectedAt = await new Promise((ok) => {
      const check = () => { if (pc.connectionState === 'connected') ok(performance.now()); };
      pc.onconnectionstatechange = check; check(); setTimeout(() => ok(null), 15000); });
    await new Promise((ok) => setTimeout(ok, TALK_MS));
    const report = await pc.getStats();
    const stats = {};
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') stats.inbound = { packetsReceived: s.packetsReceived, packetsLost: s.packetsLost, jitter: s.jitter, bytesReceived: s.bytesReceived, totalSamplesReceived: s.totalSamplesReceived, concealedSamples: s.concealedSamples, audioLevel: s.audioLevel, packetsDiscarded: s.packetsDiscarded };
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') stats.pair = { local: s.localCandidateId, remote: s.remoteCandidateId };
      if (s.type === 'transport') stats.dtlsState = s.dtlsState;
    });
    report.forEach((s) => {
      if (stats.pair && s.id === stats.pair.local) stats.localType = s.candidateType;
      if (stats.pair && s.id === stats.pair.remote) stats.remoteType = s.candidateType;
    });
    const bye = await call('bye', { callId: invite.result.callId });
    log({ connected: connectedAt !== null, connectionState: pc.connectionState, stats, anchor: bye.result });
  } catch (e) {
    log({ error: String(e) });
  }
  window.close();
})();
</script>"#;

#[test]
fn chromium_calls_our_anchor_through_our_turn_server() {
    if !common::chromium() {
        return;
    }
    // TURN, signalling, anchor: the vendor's side as `sim run` starts it.
    let vendor = common::browser_vendor_side(3);
    let turn = vendor.turn_addr();

    // The browser's path to TURN: σ = 10 ms normal jitter and 2 % loss each way.
    let sigma = 10.0;
    let model = SegmentModel::new()
        .delay(Duration::from_millis(40))
        .jitter(Duration::from_millis(10), JitterDistribution::Normal, 0.0)
        .loss(Loss::Random(0.02));
    let relay = UdpRelay::start(UdpRelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: turn,
        path: Path::symmetric(vec![model]),
        seed: 3,
        policy: Policy::default(),
        server_port: None,
    })
    .unwrap();

    let dir = std::env::temp_dir().join(format!("sim-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let talk_ms = 10_000;
    let page = PAGE
        .replace("TURN_ADDR", &relay.local_addr().to_string())
        .replace("TURN_PASSWORD", &vendor.password)
        .replace("SIG_PORT", &vendor.signalling_addr().port().to_string())
        .replace("TALK_MS", &talk_ms.to_string());
    let page_path = dir.join("call.html");
    std::fs::write(&page_path, page).unwrap();
    let (result, log) = common::run_page(
        &format!("file://{}", page_path.display()),
        &dir,
        Duration::from_secs(60),
    );
    relay.shutdown();
    vendor.stop();
    let Some(result) = result else {
        panic!("no RESULT from the page; browser log:\n{log}")
    };
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
    assert!(result.get("error").is_none(), "{result}");
    assert_eq!(result["connected"], true);
    let stats = &result["stats"];
    assert_eq!(
        stats["localType"], "relay",
        "the browser's side is relay-only"
    );
    assert_eq!(
        stats["remoteType"], "host",
        "our anchor is a host the browser's relay sends to"
    );
    assert_eq!(stats["dtlsState"], "connected");

    // The anchor → browser stream, measured by the browser.
    let inbound = &stats["inbound"];
    let b_received = inbound["packetsReceived"].as_f64().unwrap();
    let b_lost = inbound["packetsLost"].as_f64().unwrap();
    let b_jitter_ms = inbound["jitter"].as_f64().unwrap() * 1000.0;
    assert!(
        b_received > 300.0,
        "the browser received {b_received} packets"
    );
    // What it received is audio its Opus decoder plays: 960 samples a packet, and a level.
    let samples = inbound["totalSamplesReceived"].as_f64().unwrap_or(0.0);
    assert!(
        samples >= 900.0 * b_received,
        "the browser decoded {samples} samples from {b_received} packets"
    );
    assert!(
        inbound["audioLevel"].as_f64().is_some_and(|l| l > 0.0),
        "the browser hears our test signal: {inbound}"
    );
    // The browser → anchor stream, measured by us.
    let ours: reports::record::MediaStats =
        serde_json::from_value(result["anchor"]["agentToAnchor"].clone()).unwrap();
    assert!(
        ours.packets_received > 300,
        "we received {} packets",
        ours.packets_received
    );
    let our_jitter_ms = ours.jitter.quantile(0.5).unwrap() as f64 / 1000.0;
    let our_loss = ours.packets_lost as f64 / ours.packets_expected as f64;
    let b_loss = b_lost / (b_lost + b_received);
    println!(
        "jitter: browser {b_jitter_ms:.2} ms, ours {our_jitter_ms:.2} ms; loss: browser {:.2} %, ours {:.2} %",
        b_loss * 100.0,
        our_loss * 100.0
    );

    // Loss: each direction is Binomial(n, 0.02); with n ≈ 500 the sd of a loss fraction is
    // √(0.02·0.98/500) = 0.63 %, so each is within 5 sd (3.1 %) of 2 %.
    let n = b_lost + b_received;
    let tol = 5.0 * (0.02 * 0.98 / n).sqrt();
    assert!((b_loss - 0.02).abs() < tol, "browser loss {b_loss}");
    assert!((our_loss - 0.02).abs() < tol, "our loss {our_loss}");
    // Jitter: both run RFC 3550's estimator over the same path model (σ = 10 ms normal, FIFO).
    // J is an average of |D| with weight 1/16: with |D| of sd σ·√2·√(1 − 2/π) = 8.5 ms, one
    // reading of J has sd ≈ 8.5/√31 = 1.5 ms; the difference of two readings ≈ 2.2 ms, and we
    // allow 5 of those (11 ms) — far inside what a unit or clock-rate error would give (×1000,
    // ×6). Both must also sit near E|D| = 2σ/√π = 11.3 ms within the same margin.
    let expected = 2.0 * sigma / std::f64::consts::PI.sqrt();
    assert!(
        (b_jitter_ms - our_jitter_ms).abs() < 11.0,
        "browser {b_jitter_ms} ms vs ours {our_jitter_ms} ms"
    );
    assert!(
        (our_jitter_ms - expected).abs() < 11.0,
        "ours {our_jitter_ms} ms vs E|D| {expected} ms"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
