//! The TLS-inspecting proxy: relays a WebSocket upgrade (with a certificate of its own CA), or
//! refuses it with 403 when it breaks upgrades; renews its certificate when its cache expires,
//! tearing down the connections open through it.
#![allow(clippy::disallowed_methods)] // a test: real sockets, the real clock

mod common;
use common::closed;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use loadgen::entropy::Entropy;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sim::relay::{InspectingProxy, InspectingProxyConfig, InspectionCa, InspectionPolicy};

const NAME: &str = "signalling.sim.local";
const UPGRADE: &[u8] = b"GET /rtc HTTP/1.1\r\nHost: signalling.sim.local\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server standing for the signalling endpoint: answers an upgrade with 101, then echoes.
/// Serves `connections` connections. Returns its address and root certificate.
fn signalling_server(connections: usize) -> (SocketAddr, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec![NAME.to_owned()]).unwrap();
    let root = ck.cert.der().clone();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![root.clone()],
            PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for tcp in listener.incoming().take(connections) {
            let Ok(tcp) = tcp else { continue };
            let config = config.clone();
            thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
                while let Ok(n) = tls.read(&mut buf) {
                    if n == 0 || tls.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, root)
}

fn proxy(
    upstream: SocketAddr,
    root: CertificateDer<'static>,
    ca: Arc<InspectionCa>,
    breaks: bool,
    expiry: Option<Duration>,
    stall: Option<Duration>,
) -> InspectingProxy {
    InspectingProxy::start(InspectingProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream,
        server_name: NAME.to_owned(),
        upstream_roots: vec![root],
        ca,
        policy: InspectionPolicy {
            breaks_websocket_upgrade: breaks,
            cache_expiry: expiry,
            stalls_after: stall,
        },
    })
    .unwrap()
}

/// An agent trusting only the proxy's CA (as a corporate machine trusts its proxy).
fn agent(
    to: SocketAddr,
    ca: &InspectionCa,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = loadgen::signalling::tls_client_config(&[ca.certificate()]).unwrap();
    let conn = rustls::ClientConnection::new(config, ServerName::try_from(NAME).unwrap()).unwrap();
    let tcp = TcpStream::connect(to).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn response_head(tls: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn relays_an_upgrade_through_its_own_certificate() {
    let (server, root) = signalling_server(1);
    let ca = Arc::new(InspectionCa::new(Entropy::Os).unwrap());
    let p = proxy(server, root, ca.clone(), false, None, None);
    let mut tls = agent(p.local_addr(), &ca);
    tls.write_all(UPGRADE).unwrap();
    assert!(response_head(&mut tls).starts_with("HTTP/1.1 101"));
    tls.write_all(b"frame").unwrap();
    let mut echo = [0u8; 5];
    tls.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"frame");
    let stats = p.stats();
    p.shutdown();
    assert_eq!(stats.relayed.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn a_proxy_that_breaks_upgrades_answers_403() {
    let (server, root) = signalling_server(1);
    let ca = Arc::new(InspectionCa::new(Entropy::Os).unwrap());
    let p = proxy(server, root, ca.clone(), true, None, None);
    let mut tls = agent(p.local_addr(), &ca);
    tls.write_all(UPGRADE).unwrap();
    let head = response_head(&mut tls);
    assert!(head.starts_with("HTTP/1.1 403 Forbidden"), "{head}");
    let stats = p.stats();
    p.shutdown();
    assert_eq!(
        stats
            .upgrades_blocked
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(stats.relayed.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn an_agent_not_trusting_the_proxy_fails_its_handshake() {
    let (server, root) = signalling_server(1);
    let ca = Arc::new(InspectionCa::new(Entropy::Os).unwrap());
    let p = proxy(server, root, ca, false, None, None);
    let stranger = InspectionCa::new(Entropy::Os).unwrap();
    let mut tls = agent(p.local_addr(), &stranger);
    let err = tls
        .write_all(UPGRADE)
        .and_then(|()| tls.flush())
        .and_then(|()| tls.read(&mut [0u8; 1]));
    assert!(err.is_err(), "{err:?}");
    p.shutdown();
}

#[test]
fn cache_expiry_renews_the_certificate_and_drops_open_connections() {
    let (server, root) = signalling_server(2);
    let ca = Arc::new(InspectionCa::new(Entropy::Os).unwrap());
    let p = proxy(
        server,
        root,
        ca.clone(),
        false,
        Some(Duration::from_millis(500)),
        None,
    );
    let mut early = agent(p.local_addr(), &ca);
    early.write_all(UPGRADE).unwrap();
    assert!(response_head(&mut early).starts_with("HTTP/1.1 101"));
    let first_cert = early.conn.peer_certificates().unwrap()[0].clone();
    thread::sleep(Duration::from_millis(700));
    let mut b = [0u8; 1];
    assert!(
        closed(early.read(&mut b)),
        "the open connection survived the renewal"
    );
    let mut late = agent(p.local_addr(), &ca);
    late.write_all(UPGRADE).unwrap();
    assert!(response_head(&mut late).starts_with("HTTP/1.1 101"));
    assert_ne!(
        late.conn.peer_certificates().unwrap()[0],
        first_cert,
        "the certificate was not renewed"
    );
    let stats = p.stats();
    p.shutdown();
    assert_eq!(stats.reset.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(stats.renewals.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn a_stalling_proxy_stops_relaying_without_closing() {
    let (server, root) = signalling_server(1);
    let ca = Arc::new(InspectionCa::new(Entropy::Os).unwrap());
    let p = proxy(
        server,
        root,
        ca.clone(),
        false,
        None,
        Some(Duration::from_millis(600)),
    );
    let mut tls = agent(p.local_addr(), &ca);
    tls.write_all(UPGRADE).unwrap();
    assert!(response_head(&mut tls).starts_with("HTTP/1.1 101"));
    tls.write_all(b"frame").unwrap();
    let mut echo = [0u8; 5];
    tls.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"frame", "relayed before the stall");
    thread::sleep(Duration::from_millis(800));
    // After it: what the agent sends goes nowhere, nothing comes back, and the connection is
    // not closed either (the read times out: no FIN, no RST).
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    tls.write_all(b"again").unwrap();
    match tls.read(&mut echo) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a stalled connection neither answers nor closes: {other:?}"),
    }
    let stats = p.stats();
    p.shutdown();
    assert_eq!(stats.stalled.load(std::sync::atomic::Ordering::Relaxed), 1);
}
