//! Signalling over a real WebSocket/TLS connection: an invite and its answer; error codes mapped
//! to failure classes; an endpoint that never answers, one that refuses connections, and a proxy
//! that breaks WebSocket upgrades, each giving the right class; malformed requests answered with
//! JSON-RPC's own errors.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use loadgen::signalling::{
    Candidate, Endpoint, Invite, InviteAnswer, RpcError, SignallingClient, SignallingError,
};
use reports::FailureClass;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sim::relay::{InspectingProxy, InspectingProxyConfig, InspectionCa};
use sim::signalling::{Incoming, SignallingServer};
use tokio::sync::mpsc;

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
    answer: impl Fn(&Incoming) -> Option<Result<serde_json::Value, RpcError>> + Send + 'static,
) -> (SignallingServer, Endpoint) {
    let (cert, key) = certificate();
    let (tx, mut rx) = mpsc::unbounded_channel::<Incoming>();
    let server =
        SignallingServer::start("127.0.0.1:0".parse().unwrap(), vec![cert.clone()], key, tx)
            .unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(incoming) = rx.recv().await {
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
    assert_eq!(stats.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
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
    let (server, ep) = endpoint(|_| Some(Ok(serde_json::Value::Null)));
    let ca = Arc::new(InspectionCa::new().unwrap());
    let proxy = InspectingProxy::start(InspectingProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: ep.addr,
        server_name: NAME.into(),
        upstream_roots: ep.roots.clone(),
        ca: ca.clone(),
        breaks_websocket_upgrade: true,
        cache_expiry: None,
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

#[tokio::test]
async fn malformed_requests_get_json_rpc_errors() {
    let (server, ep) = endpoint(|_| Some(Ok(serde_json::Value::Null)));
    // A raw WebSocket client, to send what a correct client never would.
    let config = loadgen::signalling::tls_client_config(&ep.roots).unwrap();
    let tcp = tokio::net::TcpStream::connect(ep.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(NAME.try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(ep.url.as_str(), tls)
        .await
        .unwrap();
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
        ws.send(tokio_tungstenite::tungstenite::Message::text(sent))
            .await
            .unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
        assert_eq!(v["error"]["code"], code, "{sent} → {v}");
    }
    let stats = server.stats();
    server.shutdown();
    assert_eq!(
        stats.malformed.load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    assert_eq!(stats.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
}
