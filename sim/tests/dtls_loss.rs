//! DTLS under random loss, ours beside the browser's: at 1, 3, 5 and 10 % loss each way (40 ms
//! one way), 100 real calls of our agents and 100 of headless Chromium cross the same impaired
//! path to the same TURN server and anchor. Each call's handshake must complete within the
//! session's 10 s connect timeout; the test prints both failure rates side by side and holds
//! ours to the bound the retransmission schedule gives (at most 1 in 100, see
//! `loadgen::dtls`'s tests for the arithmetic). Chromium's figures are the reference beside
//! ours, printed, not judged.
//!
//! Needs Debian's `chromium`, like `browser.rs`.
#![allow(clippy::disallowed_methods)] // real processes, real sockets, real clock
mod common;

use std::time::{Duration, Instant};

use loadgen::leg::TurnTransport;
use loadgen::runner::{Load, LoadEvents, run_calls};
use loadgen::session::{CallSpec, Timeouts, TurnName, TurnServer};
use loadgen::signalling::Endpoint;
use reports::emodel::Codec;
use reports::{CallIdentity, CallKind, CallRecord, FailureClass, Outcome, Shard};
use sim::netem::{Loss, Path, SegmentModel};
use sim::relay::{UdpRelay, UdpRelayConfig};
use sim::scenario::Policy;

const LOSSES: [f64; 4] = [0.01, 0.03, 0.05, 0.10];
const CALLS: u32 = 100;
const AT_ONCE: u32 = 20;
const TALK: Duration = Duration::from_millis(500);

/// Places `CALLS` calls on each relay, `AT_ONCE` at a time, and logs each call's outcome, level
/// by level.
const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>dtls under loss</title>
<script>
const log = (o) => console.log('RESULT ' + JSON.stringify(o));
const RELAYS = RELAY_LIST, CALLS = CALL_COUNT, AT_ONCE = AT_ONCE_COUNT;
async function oneCall(media, relay, n) {
  const pc = new RTCPeerConnection({
    iceServers: [{ urls: 'turn:' + relay + '?transport=udp', username: 'agent', credential: 'TURN_PASSWORD' }],
    iceTransportPolicy: 'relay', rtcpMuxPolicy: 'require' });
  const candidates = [];
  pc.onicecandidate = (e) => { if (e.candidate && e.candidate.candidate) candidates.push(e.candidate.toJSON()); };
  media.getTracks().forEach((t) => pc.addTrack(t, media));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === 'complete') return done();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') done(); };
    setTimeout(done, 8000);
  });
  const out = { gathered: candidates.length };
  if (!candidates.length) { pc.close(); return out; }
  const ws = new WebSocket('wss://127.0.0.1:SIG_PORT/rtc');
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error('websocket')); });
  let nextId = 1; const waiting = {};
  ws.onmessage = (m) => { const r = JSON.parse(m.data); if (waiting[r.id]) waiting[r.id](r); };
  const call = (method, params) => new Promise((ok) => { const id = nextId++; waiting[id] = ok;
    ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params })); });
  const invite = await call('invite', { sdp: pc.localDescription.sdp, candidates, callContextToken: 'chromium-' + n });
  if (invite.error) { ws.close(); pc.close(); out.invite = invite.error; return out; }
  await pc.setRemoteDescription({ type: 'answer', sdp: invite.result.sdp });
  for (const c of invite.result.candidates) await pc.addIceCandidate(c);
  await call('accept', { callId: invite.result.callId });
  const t0 = performance.now();
  // The session's connect timeout: ICE and DTLS within 10 s of the accept.
  await new Promise((ok) => {
    const check = () => { if (pc.connectionState === 'connected' || pc.connectionState === 'failed') ok(); };
    pc.onconnectionstatechange = check; check(); setTimeout(ok, 10000); });
  out.connected = pc.connectionState === 'connected';
  out.setupMs = performance.now() - t0;
  out.ice = pc.iceConnectionState;
  (await pc.getStats()).forEach((s) => { if (s.type === 'transport') out.dtls = s.dtlsState; });
  if (out.connected) await new Promise((ok) => setTimeout(ok, TALK_MS));
  const bye = await Promise.race([call('bye', { callId: invite.result.callId }),
    new Promise((ok) => setTimeout(() => ok({}), 3000))]);
  out.anchorDtls = bye.result ? bye.result.anchorDtls : undefined;
  ws.close(); pc.close();
  return out;
}
(async () => {
  try {
    const media = await navigator.mediaDevices.getUserMedia({ audio: true });
    const levels = [];
    for (const relay of RELAYS) {
      const calls = [];
      for (let first = 0; first < CALLS; first += AT_ONCE) {
        const batch = [];
        for (let n = first; n < Math.min(CALLS, first + AT_ONCE); n++)
          batch.push(oneCall(media, relay, n).catch((e) => ({ error: String(e) })));
        calls.push(...await Promise.all(batch));
      }
      levels.push(calls);
    }
    log({ levels });
  } catch (e) {
    log({ error: String(e) });
  }
  window.close();
})();
</script>"#;

/// One level's tally: calls whose ICE connected, their setup times, DTLS failures (after ICE
/// connected) with what the handshake got to, and failures of anything else.
#[derive(Debug, Default)]
struct Tally {
    connected: u32,
    /// From the accept to DTLS connected, of the calls that connected, milliseconds.
    setup_ms: Vec<f64>,
    dtls_failed: Vec<String>,
    other: Vec<String>,
}

impl Tally {
    fn rate(&self) -> String {
        let mut t = self.setup_ms.clone();
        t.sort_by(f64::total_cmp);
        let q = |q: f64| t.get(((t.len().max(1) - 1) as f64 * q) as usize).copied();
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        format!(
            "{:>3} of {CALLS} ICE, {} DTLS failures, {} other; setup p50 {} p95 {} max {} ms",
            self.connected,
            self.dtls_failed.len(),
            self.other.len(),
            ms(q(0.5)),
            ms(q(0.95)),
            ms(q(1.0)),
        )
    }
}

struct Records(Vec<CallRecord>);

impl LoadEvents for Records {
    fn started(&mut self) {}
    fn ended(&mut self, record: CallRecord) {
        self.0.push(record);
    }
    fn interrupted(&mut self) {}
}

fn relay(turn: std::net::SocketAddr, loss: f64, seed: u64) -> UdpRelay {
    UdpRelay::start(UdpRelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: turn,
        path: Path::symmetric(vec![
            SegmentModel::new()
                .delay(Duration::from_millis(40))
                .loss(Loss::Random(loss)),
        ]),
        seed,
        policy: Policy::default(),
        server_port: None,
    })
    .unwrap()
}

/// Our agents: `CALLS` calls through `relay`, `AT_ONCE` at a time.
fn our_calls(vendor: &sim::run::VendorSide, relay: &UdpRelay, level: usize) -> Tally {
    let epoch = Instant::now();
    let endpoint = Endpoint {
        url: format!("wss://127.0.0.1:{}/rtc", vendor.signalling_addr().port()),
        addr: vendor.signalling_addr(),
        roots: vec![vendor.certificate.clone()],
    };
    let spec = |i: u32, hangup| CallSpec {
        identity: CallIdentity {
            run: "dtls-loss".into(),
            call: format!("l{level}-c{i}"),
            agent: format!("agent-{i}"),
            scenario: "dtls-loss".into(),
            site: "lab".into(),
            profile: "lossy".into(),
            kind: CallKind::Inbound,
            shard: Shard::WHOLE,
        },
        signalling: Ok(endpoint.clone()),
        turn: vec![TurnServer {
            url: "turn:127.0.0.1:3478?transport=udp".into(),
            addr: TurnName::fixed(Ok(relay.local_addr())),
            transport: TurnTransport::Udp,
        }],
        turn_username: "agent".into(),
        turn_password: vendor.password.clone(),
        turn_realm: "sim.local".into(),
        timeouts: Timeouts::default(),
        talk: TALK,
        dead_air: Duration::from_secs(5),
        codec: Codec::OPUS,
        epoch,
        ssrc: 0x1000 + i,
        hangup: Some(hangup),
    };
    // As `sim run` drives its agents: one thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut records = Records(Vec::new());
    let load = Load {
        concurrency: AT_ONCE,
        ramp_per_second: 50.0,
    };
    rt.block_on(run_calls(CALLS, load, spec, &mut records));
    assert_eq!(records.0.len(), CALLS as usize);
    let mut tally = Tally::default();
    for r in records.0 {
        let m = &r.milestones;
        if m.ice_connected_us.is_some() {
            tally.connected += 1;
        }
        if let (Some(a), Some(d)) = (m.accepted_us, m.dtls_connected_us) {
            tally.setup_ms.push(d.saturating_sub(a) as f64 / 1000.0);
        }
        match (r.outcome, r.failure) {
            (Outcome::Completed, _) => {}
            (_, Some(f)) if f.class == FailureClass::DtlsHandshakeFailure => {
                tally.dtls_failed.push(f.detail);
            }
            (_, f) => tally.other.push(format!("{f:?}")),
        }
    }
    tally
}

/// Chromium's calls, level by level, read from the page's result.
fn chromium_calls(levels: &serde_json::Value) -> Vec<Tally> {
    let levels = levels.as_array().expect("levels");
    levels
        .iter()
        .map(|calls| {
            let mut tally = Tally::default();
            for c in calls.as_array().expect("calls") {
                let ice_up = matches!(c["ice"].as_str(), Some("connected" | "completed"));
                tally.connected += u32::from(ice_up);
                if c["connected"] == true {
                    tally.setup_ms.extend(c["setupMs"].as_f64());
                    continue;
                }
                if ice_up {
                    tally.dtls_failed.push(format!(
                        "dtls {} after {} ms; anchor: {}",
                        c["dtls"], c["setupMs"], c["anchorDtls"]
                    ));
                } else {
                    tally.other.push(c.to_string());
                }
            }
            tally
        })
        .collect()
}

#[test]
fn dtls_survives_random_loss_like_chromiums() {
    if !common::chromium() {
        return;
    }
    let vendor = common::browser_vendor_side(7);
    let relays: Vec<UdpRelay> = LOSSES
        .iter()
        .enumerate()
        .map(|(i, &loss)| relay(vendor.turn_addr(), loss, 100 + i as u64))
        .collect();

    let ours: Vec<Tally> = relays
        .iter()
        .enumerate()
        .map(|(level, r)| our_calls(&vendor, r, level))
        .collect();

    let dir = std::env::temp_dir().join(format!("sim-dtls-loss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list: Vec<String> = relays.iter().map(|r| r.local_addr().to_string()).collect();
    let page = PAGE
        .replace("RELAY_LIST", &serde_json::to_string(&list).unwrap())
        .replace("CALL_COUNT", &CALLS.to_string())
        .replace("AT_ONCE_COUNT", &AT_ONCE.to_string())
        .replace("TURN_PASSWORD", &vendor.password)
        .replace("SIG_PORT", &vendor.signalling_addr().port().to_string())
        .replace("TALK_MS", &TALK.as_millis().to_string());
    let page_path = dir.join("calls.html");
    std::fs::write(&page_path, page).unwrap();
    let (result, log) = common::run_page(
        &format!("file://{}", page_path.display()),
        &dir,
        Duration::from_secs(300),
    );
    for r in relays {
        r.shutdown();
    }
    vendor.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let Some(result) = result else {
        panic!("no RESULT from the page; browser log:\n{log}")
    };
    assert!(result.get("error").is_none(), "{result}");
    let theirs = chromium_calls(&result["levels"]);
    assert_eq!(theirs.len(), LOSSES.len());

    println!("loss | ours | Chromium");
    for ((loss, o), c) in LOSSES.iter().zip(&ours).zip(&theirs) {
        println!("{:>3} % | {} | {}", loss * 100.0, o.rate(), c.rate());
        for d in &o.dtls_failed {
            println!("   ours: {d}");
        }
        for d in &c.dtls_failed {
            println!("   Chromium: {d}");
        }
    }
    for ((loss, o), c) in LOSSES.iter().zip(&ours).zip(&theirs) {
        // The harness works: nearly every call of each got as far as ICE.
        assert!(o.connected >= CALLS - 5, "{loss}: ours {o:?}");
        assert!(c.connected >= CALLS - 5, "{loss}: Chromium {c:?}");
        assert!(
            o.dtls_failed.len() <= 1,
            "{loss}: ours {:#?}",
            o.dtls_failed
        );
    }
}
