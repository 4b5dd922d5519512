//! The vendor's own softphone library against our vendor side: connect-rtc-js's unmodified
//! release bundle in headless Chromium, served from loopback, places calls in a row through our
//! TURN server (five over UDP, two over TLS) to our anchor, over our WebSocket/TLS signalling,
//! exactly as the CCP runs it (`new connect.RTCSession(url, iceServers, token, logger)`). Each
//! reaches the library's connected state; Chromium decodes our Opus (samples and an audio
//! level) and sends its own; the page's `session.hangup()` ends the call at the anchor, whose
//! own measurement of the browser's stream matches what the browser says it sent. A page closed
//! mid-call (the vendor's "panic logout") stops the anchor's leg within the consent timeout and
//! leaves the anchor's record.
//!
//! Needs Debian's `chromium` and the bundle at `../shared/vendor/connect-rtc-js/` (beside the
//! checkout); outside CI a missing one skips loudly, on CI (`CI` set) it fails.
#![allow(clippy::disallowed_methods)] // real processes, real clock
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use loadgen::turn_url::TurnUrl;
use serde_json::Value;
use sim::anchor::media::CONSENT_TIMEOUT;
use sim::run::VendorSide;

fn bundle() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/vendor/connect-rtc-js/connect-rtc.js");
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the connect-rtc-js bundle is missing at {}",
        path.display()
    );
    eprintln!(
        "\n\n!!! SKIPPED: the connect-rtc-js bundle is missing at {}\n",
        path.display()
    );
    None
}

/// Serves `/` (the page) and `/connect-rtc.js` (the bundle, byte for byte) on loopback until
/// dropped.
struct Site {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Site {
    fn start(page: String, bundle: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let mut reader = BufReader::new(&stream);
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (kind, body) = if path.starts_with("/connect-rtc.js") {
                    ("application/javascript", bundle.clone())
                } else {
                    ("text/html; charset=utf-8", page.clone().into_bytes())
                };
                let mut stream = &stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            }
        });
        Self { addr, stop }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The page: the calls in `CALLS`, one after another, each talking `TALK_MS` and then hung up
/// by the page (or, with `"close": true`, abandoned: the page closes mid-call).
const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>connect-rtc-js interop</title>
<audio id="remote" autoplay></audio>
<script src="/connect-rtc.js"></script>
<script>
'use strict';
const result = (o) => console.log('RESULT ' + JSON.stringify(o));
const quiet = { log() {}, info() {}, warn() {}, error() {} };
const wait = (ms) => new Promise((ok) => setTimeout(ok, ms));
async function place(c, i) {
  const s = new connect.RTCSession('SIGNALLING_URL', c.iceServers, 'contact-token-' + i, quiet);
  s.remoteAudioElement = document.getElementById('remote');
  const out = { transport: c.transport, token: 'contact-token-' + i };
  const connected = new Promise((ok) => {
    s.onSessionConnected = () => ok(true);
    s.onSessionFailed = (x, reason) => { out.failed = String(reason && (reason.name || reason)); ok(false); };
    setTimeout(() => ok(false), 20000);
  });
  const t0 = performance.now();
  s.connect();
  out.connected = await connected;
  out.connectMs = Math.round(performance.now() - t0);
  if (!out.connected) return out;
  if (c.close) { await wait(TALK_MS); return Object.assign(out, { closing: true }); }
  await wait(TALK_MS);
  const stats = await s._pc.getStats();
  stats.forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') out.inbound = { packetsReceived: r.packetsReceived, packetsLost: r.packetsLost, jitter: r.jitter, totalSamplesReceived: r.totalSamplesReceived, audioLevel: r.audioLevel, concealedSamples: r.concealedSamples };
    if (r.type === 'outbound-rtp' && r.kind === 'audio') out.outbound = { packetsSent: r.packetsSent };
    if (r.type === 'remote-inbound-rtp' && r.kind === 'audio') out.remoteInbound = { jitter: r.jitter, packetsLost: r.packetsLost };
    if (r.type === 'local-candidate' && r.candidateType === 'relay') out.relayProtocol = r.relayProtocol;
  });
  const destroyed = new Promise((ok) => { s.onSessionDestroyed = () => ok(true); setTimeout(() => ok(false), 5000); });
  s.hangup();
  out.destroyed = await destroyed;
  return out;
}
(async () => {
  const calls = [];
  try {
    for (const [i, c] of CALLS.entries()) {
      const r = await place(c, i);
      calls.push(r);
      if (r.closing) break;
    }
  } catch (e) { calls.push({ error: String(e) }); }
  result({ calls });
  window.close();
})();
</script>"#;

struct Fixture {
    vendor: VendorSide,
    dir: PathBuf,
    bundle: Vec<u8>,
}

fn fixture(name: &str) -> Option<Fixture> {
    let bundle = bundle()?;
    if !common::chromium() {
        return None;
    }
    let vendor = common::browser_vendor_side(5);
    vendor.anchor_stats.keep_ended_calls();
    let dir = std::env::temp_dir().join(format!("sim-connect-rtc-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Some(Fixture {
        vendor,
        dir,
        bundle: std::fs::read(bundle).unwrap(),
    })
}

impl Fixture {
    fn ice_servers(&self, transport: &str) -> Value {
        let url = match transport {
            "tls" => format!(
                "turns:127.0.0.1:{}?transport=tcp",
                self.vendor
                    .turn_listener(&TurnUrl::parse("turns:127.0.0.1:443?transport=tcp").unwrap())
                    .port()
            ),
            _ => format!("turn:{}?transport=udp", self.vendor.turn_addr()),
        };
        serde_json::json!([{ "urls": [url], "username": "agent", "credential": self.vendor.password }])
    }

    /// Runs the page with `calls` (each `{transport, close?}`) and returns what it said of each.
    fn run(&self, calls: &[(&str, bool)], talk_ms: u64) -> Vec<Value> {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(t, close)| {
                serde_json::json!({ "transport": t, "iceServers": self.ice_servers(t), "close": close })
            })
            .collect();
        let page = PAGE
            .replace(
                "SIGNALLING_URL",
                &format!(
                    "wss://127.0.0.1:{}/rtc",
                    self.vendor.signalling_addr().port()
                ),
            )
            .replace("CALLS", &Value::Array(calls).to_string())
            .replace("TALK_MS", &talk_ms.to_string());
        let site = Site::start(page, self.bundle.clone());
        let (result, log) = common::run_page(
            &format!("http://{}/", site.addr),
            &self.dir,
            Duration::from_secs(120),
        );
        let Some(result) = result else {
            panic!("no RESULT from the page; browser log:\n{log}")
        };
        println!("{}", serde_json::to_string_pretty(&result).unwrap());
        result["calls"].as_array().cloned().unwrap_or_default()
    }
}

#[test]
fn the_vendors_library_places_calls_with_real_audio_through_our_vendor_side() {
    let Some(f) = fixture("calls") else {
        return;
    };
    let plan = [
        ("udp", false),
        ("udp", false),
        ("udp", false),
        ("udp", false),
        ("udp", false),
        ("tls", false),
        ("tls", false),
    ];
    let talk_ms = 3000;
    let calls = f.run(&plan, talk_ms);
    assert_eq!(calls.len(), plan.len(), "{calls:?}");
    let ended = f.vendor.anchor_stats.ended_calls.lock().unwrap().clone();
    for (i, (call, (transport, _))) in calls.iter().zip(plan).enumerate() {
        assert_eq!(call["connected"], true, "call {i} over {transport}: {call}");
        assert_eq!(
            call["destroyed"], true,
            "call {i}: hangup ended the session"
        );
        let relay = call["relayProtocol"].as_str().unwrap_or_default();
        assert_eq!(
            relay,
            if transport == "tls" { "tls" } else { "udp" },
            "call {i}"
        );
        // Chromium decoded our Opus: 960 samples a packet, at a speaking level.
        let inbound = &call["inbound"];
        let received = inbound["packetsReceived"].as_u64().unwrap_or(0);
        let samples = inbound["totalSamplesReceived"].as_u64().unwrap_or(0);
        assert!(
            received >= 100,
            "call {i}: the browser received {received} packets"
        );
        assert!(
            samples >= 900 * received,
            "call {i}: {samples} samples from {received}"
        );
        assert!(
            inbound["audioLevel"].as_f64().is_some_and(|l| l > 0.0),
            "call {i}: an audio level: {inbound}"
        );
        // The anchor measured the browser's stream on its own, and ended it at the hangup.
        let token = call["token"].as_str().unwrap();
        let ours = ended
            .iter()
            .find(|e| e.call_context_token == token)
            .unwrap_or_else(|| panic!("call {i}: no record at the anchor for {token}"));
        assert_eq!(ours.ended_by, "bye", "call {i}");
        let sent = call["outbound"]["packetsSent"].as_u64().unwrap_or(0);
        let got = ours.agent_to_anchor.packets_received;
        // The browser's count is from just before the hangup; the anchor's from the bye, some
        // milliseconds later: within a second of packets, and never fewer than were sent
        // before the count but those still in flight (a few on loopback).
        assert!(
            got + 5 >= sent && got <= sent + 50,
            "call {i}: the browser sent {sent}, the anchor received {got}"
        );
        assert_eq!(
            ours.agent_to_anchor.packets_lost, 0,
            "call {i}: a clean path"
        );
        // Jitter on loopback: both sides' RFC 3550 estimates are small and agree within 5 ms
        // (a unit error would be off by ×1000, a clock-rate error by ×6).
        let our_jitter_ms = ours.agent_to_anchor.jitter.quantile(0.5).unwrap_or(0) as f64 / 1000.0;
        let their_report = call["remoteInbound"]["jitter"].as_f64().unwrap_or(0.0) * 1000.0;
        assert!(
            our_jitter_ms < 5.0,
            "call {i}: jitter {our_jitter_ms} ms on loopback"
        );
        assert!(
            (our_jitter_ms - their_report).abs() < 5.0,
            "call {i}: ours {our_jitter_ms} ms, our receiver report as the browser read it {their_report} ms"
        );
        println!(
            "call {i} over {transport}: connected in {} ms; browser sent {sent}, anchor received \
             {got}; browser decoded {samples} samples, level {}; anchor jitter {our_jitter_ms:.2} ms",
            call["connectMs"], inbound["audioLevel"]
        );
    }
    assert_eq!(f.vendor.anchor_stats.abandoned.load(Ordering::Relaxed), 0);
    f.vendor.stop();
    let _ = std::fs::remove_dir_all(&f.dir);
}

#[test]
fn a_page_closed_mid_call_stops_the_anchors_leg_within_the_consent_timeout() {
    let Some(f) = fixture("closed") else {
        return;
    };
    let calls = f.run(&[("udp", true)], 2000);
    assert_eq!(calls[0]["connected"], true, "{calls:?}");
    // The page is gone: its WebSocket closed, its checks stopped. The anchor's leg lapses and
    // the call is ended as abandoned within the consent timeout (and some slack).
    let gone = Instant::now();
    let stats = &f.vendor.anchor_stats;
    while stats.abandoned.load(Ordering::Relaxed) == 0
        && gone.elapsed() < CONSENT_TIMEOUT + Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        stats.abandoned.load(Ordering::Relaxed),
        1,
        "the leg was ended"
    );
    assert!(gone.elapsed() <= CONSENT_TIMEOUT + Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    let ended = stats.ended_calls.lock().unwrap().clone();
    let record = ended
        .iter()
        .find(|e| e.ended_by == "abandoned")
        .expect("a record");
    assert!(
        record.agent_to_anchor.packets_received >= 50,
        "what the browser sent before it closed: {:?}",
        record.agent_to_anchor.packets_received
    );
    f.vendor.stop();
    let _ = std::fs::remove_dir_all(&f.dir);
}
