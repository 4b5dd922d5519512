//! Signalling over a real WebSocket/TLS connection: an invite and its answer; error codes mapped
//! to failure classes; an endpoint that never answers, one that refuses connections, and a proxy
//! that breaks WebSocket upgrades, each giving the right class; malformed requests answered with
//! JSON-RPC's own errors; ids of every type echoed as sent or refused with `id: null`;
//! unknown parameters ignored and counted; the close handshake answered.
#![allow(clippy::disallowed_methods)] // a test: real sockets, the real clock

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use futures_util::{SinkExt, StreamExt};
use loadgen::entropy::Entropy;
use loadgen::signalling::{
    Candidate, Endpoint, Invite, InviteAnswer, RpcError, SignallingClient, SignallingError,
};
use reports::FailureClass;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use sim::relay::{InspectingProxy, InspectingProxyConfig, InspectionCa, InspectionPolicy};
use sim::signalling::{Incoming, Signal, SignallingServer};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const NAME: &str = "signalling.sim.local";

fn certificate() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec![NAME.to_owned()]).unwrap();
    (
        ck.cert.der().clone(),
        PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
    )
}

/// An endpoint whose application answers with `answer` (run on the test's runtime).
fn endpoint(
    answer: impl Fn(&Incoming) -> Option<Result<Value, RpcError>> + Send + 'static,
) -> (SignallingServer, Endpoint) {
    let (cert, key) = certificate();
    let (tx, mut rx) = mpsc::unbounded_channel::<Signal>();
    let server =
        SignallingServer::start("127.0.0.1:0".parse().unwrap(), vec![cert.clone()], key, tx)
            .unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(signal) = rx.recv().await {
            let Signal::Request(incoming) = signal else {
                continue;
            };
            match answer(&incoming) {
                Some(reply) => {
                    let _ = incoming.reply.send(reply);
                }
                // Never answered: keep the slot so the request stays pending.
                None => held.push(incoming),
            }
        }
    });
    let ep = Endpoint {
        url: format!("wss://{NAME}:{}/rtc", server.local_addr().port()),
        addr: server.local_addr(),
        roots: vec![cert],
    };
    (server, ep)
}

fn invite() -> Invite {
    Invite {
        sdp: "v=0\r\n".into(),
        candidates: vec![Candidate {
            candidate: "candidate:1 1 udp 1 127.0.0.1 50000 typ relay".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
        }],
        call_context_token: "contact-1".into(),
    }
}

#[tokio::test]
async fn invite_is_answered() {
    let (server, ep) = endpoint(|i| {
        assert_eq!(i.method, "invite");
        let offer: Invite = serde_json::from_value(i.params.clone()).unwrap();
        Some(Ok(serde_json::to_value(InviteAnswer {
            call_id: "call-1".into(),
            sdp: offer.sdp,
            candidates: vec![],
        })
        .unwrap()))
    });
    let mut client = SignallingClient::connect(&ep, Duration::from_secs(5), 3)
        .await
        .unwrap();
    let answer = client
        .invite(&invite(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answer.call_id, "call-1");
    assert_eq!(answer.sdp, "v=0\r\n");
    client.close().await;
    let stats = server.stats();
    server.shutdown();
    assert_eq!(stats.requests.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn error_codes_map_to_failure_classes() {
    for (code, class) in [
        (486, FailureClass::UserBusy),
        (403, FailureClass::AccessDenied),
        (404, FailureClass::CallNotFound),
        (500, FailureClass::SignallingHandshakeFailure),
    ] {
        let (server, ep) = endpoint(move |_| Some(Err(RpcError::new(code, "no"))));
        let mut client = SignallingClient::connect(&ep, Duration::from_secs(5), 3)
            .await
            .unwrap();
        let err = client
            .invite(&invite(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err, SignallingError::Rpc(RpcError::new(code, "no")));
        assert_eq!(err.class(), class, "code {code}");
        server.shutdown();
    }
}

#[tokio::test]
async fn an_anchor_that_never_answers_is_a_handshake_failure() {
    let (server, ep) = endpoint(|_| None);
    let mut client = SignallingClient::connect(&ep, Duration::from_secs(5), 3)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = client
        .invite(&invite(), Duration::from_millis(400))
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(err, SignallingError::Timeout("invite".into()));
    assert_eq!(err.class(), FailureClass::SignallingHandshakeFailure);
    server.shutdown();
}

#[tokio::test]
async fn refused_connections_are_a_connection_failure_within_the_timeout() {
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let ep = Endpoint {
        url: format!("wss://{NAME}:{}/rtc", addr.port()),
        addr,
        roots: vec![certificate().0],
    };
    let started = std::time::Instant::now();
    let err = SignallingClient::connect(&ep, Duration::from_secs(2), 3)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, SignallingError::Connect(_)), "{err}");
    assert_eq!(err.class(), FailureClass::SignallingConnectionFailure);
}

#[tokio::test]
async fn a_proxy_breaking_upgrades_is_a_connection_failure() {
    let (server, ep) = endpoint(|_| Some(Ok(Value::Null)));
    let ca = Arc::new(InspectionCa::new(Entropy::Os).unwrap());
    let proxy = InspectingProxy::start(InspectingProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: ep.addr,
        server_name: NAME.into(),
        upstream_roots: ep.roots.clone(),
        ca: ca.clone(),
        policy: InspectionPolicy {
            breaks_websocket_upgrade: true,
            ..InspectionPolicy::default()
        },
    })
    .unwrap();
    let through_proxy = Endpoint {
        url: ep.url.clone(),
        addr: proxy.local_addr(),
        roots: vec![ca.certificate()],
    };
    let err = SignallingClient::connect(&through_proxy, Duration::from_secs(2), 3)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    assert_eq!(err.class(), FailureClass::SignallingConnectionFailure);
    proxy.shutdown();
    server.shutdown();
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A raw WebSocket client, to send exactly what a test wants (what a correct client never
/// would, or what another client sends).
async fn raw(ep: &Endpoint) -> RawWs {
    let config = loadgen::signalling::tls_client_config(&ep.roots).unwrap();
    let tcp = tokio::net::TcpStream::connect(ep.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(NAME.try_into().unwrap(), tcp)
        .await
        .unwrap();
    tokio_tungstenite::client_async(ep.url.as_str(), tls)
        .await
        .unwrap()
        .0
}

/// Sends `text`, returns the next text frame as JSON (within two seconds).
async fn exchange(ws: &mut RawWs, text: &str) -> Value {
    ws.send(Message::text(text)).await.unwrap();
    next_json(ws).await
}

async fn next_json(ws: &mut RawWs) -> Value {
    let frame = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .expect("an answer within 2 s")
        .unwrap()
        .unwrap();
    serde_json::from_str(frame.to_text().unwrap()).unwrap()
}

#[tokio::test]
async fn ids_of_every_type_are_echoed_as_sent_or_refused_with_id_null() {
    let (server, ep) = endpoint(|_| Some(Ok(json!({}))));
    let mut ws = raw(&ep).await;
    // The library's ids are UUID strings; numbers are JSON-RPC ids too.
    for id in [
        json!("0f7c3a52-9a3e-4b3e-8d7c-2f1e5a6b7c8d"),
        json!(7),
        json!(-1),
        json!(2.5),
    ] {
        let sent = json!({ "jsonrpc": "2.0", "method": "accept", "params": {}, "id": id });
        let v = exchange(&mut ws, &sent.to_string()).await;
        assert_eq!(v["id"], id, "{v}");
        assert_eq!(v["result"], json!({}), "{v}");
    }
    // null cannot be matched to its answer; objects, arrays and booleans are not ids.
    for id in [json!(null), json!({ "a": 1 }), json!([1]), json!(true)] {
        let sent = json!({ "jsonrpc": "2.0", "method": "accept", "params": {}, "id": id });
        let v = exchange(&mut ws, &sent.to_string()).await;
        assert_eq!(v["error"]["code"], -32600, "{id} → {v}");
        assert_eq!(v["id"], Value::Null, "{id} → {v}");
    }
    // No id (a notification) and the client's answer to a request of ours get no reply: the
    // next frame answers the request after them.
    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","method":"accept","params":{}}"#,
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","result":{},"id":"server-bye-1"}"#,
    ))
    .await
    .unwrap();
    let v = exchange(
        &mut ws,
        r#"{"jsonrpc":"2.0","method":"accept","params":{},"id":"after"}"#,
    )
    .await;
    assert_eq!(v["id"], "after", "{v}");
    let stats = server.stats();
    server.shutdown();
    assert_eq!(stats.unanswered.load(Ordering::Relaxed), 2);
    assert_eq!(stats.malformed.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn unknown_parameters_are_ignored_and_counted() {
    let (server, ep) = endpoint(|i| {
        assert_eq!(i.params["futureField"], 1, "passed on as sent");
        Some(Ok(json!({ "sdp": "v=0\r\n", "candidates": [] })))
    });
    let mut ws = raw(&ep).await;
    let invite = json!({
        "jsonrpc": "2.0",
        "method": "invite",
        "params": {
            "sdp": "v=0\r\n",
            "candidates": [],
            "callContextToken": null,
            "contactId": "",
            "browserId": "b-1",
            "persistentConnection": false,
            "iceRestart": false,
            "futureField": 1,
            "anotherOne": { "x": true },
        },
        "id": "1d7b0f1e-0000-4000-8000-000000000001",
    });
    let v = exchange(&mut ws, &invite.to_string()).await;
    assert!(v["result"].is_object(), "{v}");
    let stats = server.stats();
    server.shutdown();
    assert_eq!(stats.unknown_params.load(Ordering::Relaxed), 2);
    assert_eq!(stats.requests.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn the_close_handshake_is_answered() {
    let (server, ep) = endpoint(|_| Some(Ok(json!({}))));
    let mut ws = raw(&ep).await;
    ws.close(None).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .expect("the server's Close within 2 s");
    assert!(
        matches!(frame, Some(Ok(Message::Close(_)))),
        "a Close frame back, not {frame:?}"
    );
    // Our own client closes the same way.
    let mut client = SignallingClient::connect(&ep, Duration::from_secs(5), 3)
        .await
        .unwrap();
    client.accept(Duration::from_secs(2)).await.unwrap();
    client.close().await;
    let stats = server.stats();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown();
    assert_eq!(stats.closed_cleanly.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn malformed_requests_get_json_rpc_errors() {
    let (server, ep) = endpoint(|_| Some(Ok(Value::Null)));
    let mut ws = raw(&ep).await;
    for (sent, code) in [
        ("this is not json", -32700),
        ("{\"hello\": 1}", -32600),
        (
            "{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"invite\"}",
            -32600,
        ),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"teleport\"}",
            -32601,
        ),
    ] {
        let v = exchange(&mut ws, sent).await;
        assert_eq!(v["error"]["code"], code, "{sent} → {v}");
    }
    let stats = server.stats();
    server.shutdown();
    assert_eq!(stats.malformed.load(Ordering::Relaxed), 4);
    assert_eq!(stats.requests.load(Ordering::Relaxed), 0);
}

/// The library's frames as the captures saved them (`tests/fixtures/connect-rtc`): its direct
/// mode and both persistent-connection managers, verbatim. `(file, frame)`.
fn captured_frames() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/connect-rtc");
    let mut frames = Vec::new();
    for dir in ["", "persistent", "persistent-v2"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            let name = f.strip_prefix(&root).unwrap().display().to_string();
            frames.push((name, std::fs::read_to_string(&f).unwrap().trim().to_owned()));
        }
    }
    assert!(
        frames.len() >= 20,
        "the captures are there: {}",
        frames.len()
    );
    frames
}

/// A frame's JSON-RPC message, out of the CCP's envelope when it has one.
fn message(frame: &Value) -> &Value {
    frame.get("jsonRpcMsg").unwrap_or(frame)
}

#[tokio::test]
async fn every_frame_the_library_sent_is_answered_by_id_with_no_parameter_unknown() {
    let (server, ep) = endpoint(|i| {
        Some(Ok(if i.method == "invite" {
            json!({ "sdp": "v=0\r\n", "candidates": [{ "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host" }] })
        } else {
            json!({})
        }))
    });
    let mut ws = raw(&ep).await;
    let mut requests = 0;
    for (name, frame) in captured_frames() {
        let sent: Value = serde_json::from_str(&frame).unwrap();
        if message(&sent).get("method").is_none() {
            // The library's answer to a `bye` of ours: no reply.
            ws.send(Message::text(frame.as_str())).await.unwrap();
            continue;
        }
        requests += 1;
        let reply = exchange(&mut ws, &frame).await;
        let answer = message(&reply);
        assert_eq!(answer["id"], message(&sent)["id"], "{name}: {reply}");
        assert!(answer.get("result").is_some(), "{name}: {reply}");
        assert_eq!(answer["jsonrpc"], "2.0", "{name}");
        if sent.get("jsonRpcMsg").is_some() {
            // Answered in the envelope it came in.
            assert_eq!(reply["topic"], sent["topic"], "{name}");
            assert_eq!(reply["connectionId"], sent["connectionId"], "{name}");
        }
    }
    let stats = server.stats();
    server.shutdown();
    assert_eq!(stats.requests.load(Ordering::Relaxed), requests);
    assert_eq!(
        stats.unknown_params.load(Ordering::Relaxed),
        0,
        "every parameter is known"
    );
    assert_eq!(stats.malformed.load(Ordering::Relaxed), 0);
    assert_eq!(
        stats.unanswered.load(Ordering::Relaxed),
        1,
        "bye_reply.json"
    );
}

#[tokio::test]
async fn the_anchor_answers_accepts_and_ends_a_call_as_the_library_places_it() {
    let vendor = sim::run::VendorSide::start(
        1,
        &[NAME.to_owned()],
        "127.0.0.1:0".parse().unwrap(),
        std::time::Instant::now(),
        reports::emodel::Codec::OPUS,
        sim::anchor::AnchorBehaviour::Answer,
        None,
        &sim::run::Deployed::default(),
    )
    .unwrap();
    let ep = Endpoint {
        url: format!("wss://{NAME}:{}/rtc", vendor.signalling_addr().port()),
        addr: vendor.signalling_addr(),
        roots: vec![vendor.certificate.clone()],
    };
    let fixture = |f: &str| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/connect-rtc")
            .join(f);
        std::fs::read_to_string(path).unwrap()
    };
    let mut ws = raw(&ep).await;
    // Chromium's offer, as the library sent it.
    let answer = exchange(&mut ws, &fixture("invite.json")).await;
    assert_eq!(
        answer["id"], "47a20d95-5a29-4580-8a6a-9de537c83aaa",
        "{answer}"
    );
    let sdp = answer["result"]["sdp"].as_str().expect("an SDP answer");
    let parsed = loadgen::sdp::Description::parse(sdp).expect("a well-formed answer");
    assert_eq!(parsed.setup, "passive", "the anchor is the DTLS server");
    assert!(
        answer["result"]["candidates"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "the library needs candidates in the result: {answer}"
    );
    let accepted = exchange(&mut ws, &fixture("accept.json")).await;
    assert_eq!(accepted["result"], json!({}), "{accepted}");
    // `bye` names the call only by its token.
    let ended = exchange(&mut ws, &fixture("bye.json")).await;
    assert!(
        ended["result"]["agentToAnchor"].is_object(),
        "the call was found and ended: {ended}"
    );
    assert_eq!(vendor.anchor_stats.ended.load(Ordering::Relaxed), 1);
    // The library closes without a code; the handshake is answered.
    ws.close(None).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .unwrap();
    assert!(matches!(frame, Some(Ok(Message::Close(_)))), "{frame:?}");
}

#[tokio::test]
async fn our_agents_send_what_the_library_sends() {
    use std::sync::Mutex;
    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let s = seen.clone();
    let (server, ep) = endpoint(move |i| {
        s.lock().unwrap().push((i.method.clone(), i.params.clone()));
        Some(Ok(if i.method == "invite" {
            json!({ "sdp": "v=0\r\n", "candidates": [] })
        } else {
            json!({})
        }))
    });
    let mut client = SignallingClient::connect(&ep, Duration::from_secs(5), 3)
        .await
        .unwrap();
    client
        .invite(&invite(), Duration::from_secs(2))
        .await
        .unwrap();
    client.accept(Duration::from_secs(2)).await.unwrap();
    client
        .bye("contact-1", Duration::from_secs(2))
        .await
        .unwrap();
    client.close().await;
    server.shutdown();
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let fixture = |f: &str| -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/connect-rtc")
            .join(f);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let seen = seen.lock().unwrap();
    let methods: Vec<&str> = seen.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, ["invite", "accept", "bye"]);
    for ((method, params), file) in seen.iter().zip(["invite.json", "accept.json", "bye.json"]) {
        let library = fixture(file);
        assert_eq!(library["method"], method.as_str());
        assert_eq!(
            keys(params),
            keys(&library["params"]),
            "{method}: the library's parameters"
        );
    }
}

#[tokio::test]
async fn what_a_client_can_make_the_endpoint_hold_is_bounded() {
    use sim::signalling::SignallingLimits;
    use tokio::io::AsyncReadExt;
    let (cert, key) = certificate();
    let (tx, mut rx) = mpsc::unbounded_channel::<Signal>();
    // A deadline a host's stall cannot beat between the kernel's accepting a connection and
    // the test's task seeing it (a 500 ms one was: the endpoint closed a silent connection
    // before `connect` returned, on a CI machine whose host took the CPUs).
    let limits = SignallingLimits {
        per_source: 3,
        handshake: Duration::from_millis(1_500),
        ..SignallingLimits::default()
    };
    let server = SignallingServer::start_with_limits(
        "127.0.0.1:0".parse().unwrap(),
        vec![cert.clone()],
        key,
        tx,
        limits,
    )
    .unwrap();
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let addr = server.local_addr();
    // Three silent connections from one address are held, a fourth is reset at once...
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut fourth = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let refused = tokio::time::timeout(Duration::from_millis(300), fourth.read(&mut byte)).await;
    assert!(
        matches!(refused, Ok(Ok(0) | Err(_))),
        "the fourth is closed at once: {refused:?}"
    );
    // ...and the silent ones are closed at the handshake deadline, which frees their places.
    let started = std::time::Instant::now();
    for s in &mut silent {
        let end = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await;
        assert!(matches!(end, Ok(Ok(0) | Err(_))), "{end:?}");
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "closed after {waited:?}");
    // Their places are free again: a real client gets in.
    let ep = Endpoint {
        url: format!("wss://{NAME}:{}/rtc", addr.port()),
        addr,
        roots: vec![cert],
    };
    let client = SignallingClient::connect(&ep, Duration::from_secs(2), 1).await;
    assert!(client.is_ok(), "{:?}", client.err());
    let stats = server.stats();
    assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
    assert_eq!(stats.handshake_failures.load(Ordering::Relaxed), 3);
    server.shutdown();
}
