//! A TLS-inspecting web proxy on the signalling path: the corporate middlebox that breaks
//! softphones by refusing WebSocket upgrades or by renewing its certificates mid-shift.
//!
//! It terminates the agents' TLS with a certificate for the server's name issued by its own
//! [`InspectionCa`] (agents trust it, as corporate machines trust their proxy's root), reads the
//! HTTP request, and either relays the connection to the real server over a TLS connection of
//! its own, or — when it breaks WebSocket upgrades — answers the upgrade with `403 Forbidden`.
//! When its certificate cache expires it renews its certificate and tears down every connection
//! open through it, which is what drops agents' signalling when a cache is shorter than a shift.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::service::Service;
use turn_server::io::tls_acceptor_for;

/// Largest HTTP request head the proxy reads before deciding.
const MAX_HEAD: usize = 16 * 1024;
/// The answer to a WebSocket upgrade the proxy refuses.
pub(crate) const FORBIDDEN: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 42\r\n\
Connection: close\r\n\r\nWebSocket upgrade blocked by proxy policy.";

/// The proxy's certificate authority, whose root the agents trust.
pub struct InspectionCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for InspectionCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InspectionCa").finish_non_exhaustive()
    }
}

impl InspectionCa {
    /// A new CA with a fresh key.
    pub fn new() -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "softphone-sim inspection CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self { issuer })
    }

    /// The root certificate agents must trust.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf certificate (and its key) for `host`, as the proxy forges for each site.
    fn leaf(
        &self,
        host: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![host.to_owned()])?.signed_by(&key, &self.issuer)?;
        Ok((
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        ))
    }
}

/// What the proxy is told to do.
#[derive(Debug)]
pub struct InspectingProxyConfig {
    /// Where agents connect.
    pub listen: SocketAddr,
    /// The real server.
    pub upstream: SocketAddr,
    /// The server's name: the certificate the proxy forges, and the name it checks upstream.
    pub server_name: String,
    /// Roots the proxy trusts for the upstream server.
    pub upstream_roots: Vec<CertificateDer<'static>>,
    /// The proxy's CA.
    pub ca: Arc<InspectionCa>,
    /// Refuse WebSocket upgrades with 403.
    pub breaks_websocket_upgrade: bool,
    /// Renew the certificate and reset every open connection this long after the start.
    pub cache_expiry: Option<Duration>,
    /// Stop relaying each connection this long after it opened, silently: both ends stay
    /// open and hear nothing more (no FIN, no RST) until [`STALL_HOLD`] has passed.
    pub stalls_after: Option<Duration>,
}

/// How long a stalled connection is held open before the proxy forgets it (and closes it).
pub const STALL_HOLD: Duration = Duration::from_secs(600);

/// Counters of a proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// TLS handshakes with agents that failed.
    pub tls_failed: AtomicU64,
    /// WebSocket upgrades refused.
    pub upgrades_blocked: AtomicU64,
    /// Connections relayed to the server.
    pub relayed: AtomicU64,
    /// Connections that could not reach the server.
    pub upstream_failed: AtomicU64,
    /// Connections torn down when the certificate cache expired.
    pub reset: AtomicU64,
    /// Certificate renewals.
    pub renewals: AtomicU64,
    /// Connections stalled (relaying stopped without closing them).
    pub stalled: AtomicU64,
}

impl ProxyStats {
    /// Its counters, named as in `summary.json`'s `components`.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        reports::components::snapshot(&[
            ("accepted", &self.accepted),
            ("tls_failed", &self.tls_failed),
            ("upgrades_blocked", &self.upgrades_blocked),
            ("relayed", &self.relayed),
            ("upstream_failed", &self.upstream_failed),
            ("reset", &self.reset),
            ("renewals", &self.renewals),
            ("stalled", &self.stalled),
        ])
    }
}

/// A running proxy; dropping it stops it.
#[derive(Debug)]
pub struct InspectingProxy {
    stats: Arc<ProxyStats>,
    service: Service,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

fn acceptor(ca: &InspectionCa, host: &str) -> io::Result<TlsAcceptor> {
    let (certs, key) = ca.leaf(host).map_err(invalid)?;
    tls_acceptor_for(certs, key)
}

impl InspectingProxy {
    /// Binds and starts the proxy.
    pub fn start(config: InspectingProxyConfig) -> io::Result<Self> {
        let client =
            loadgen::signalling::tls_client_config(&config.upstream_roots).map_err(invalid)?;
        let connector = TlsConnector::from(client);
        let upstream_name = ServerName::try_from(config.server_name.clone()).map_err(invalid)?;
        let acceptor = acceptor(&config.ca, &config.server_name)?;
        let stats = Arc::new(ProxyStats::default());
        let listen = config.listen;
        let shared = Shared {
            connector,
            upstream_name,
            config,
            stats: stats.clone(),
        };
        let service = Service::start("inspecting-proxy", listen, move |listener| {
            serve(listener, acceptor, shared)
        })?;
        Ok(Self { stats, service })
    }

    /// The address agents connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }

    /// The proxy's counters (readable after shutdown).
    pub fn stats(&self) -> Arc<ProxyStats> {
        self.stats.clone()
    }

    /// Stops the proxy.
    pub fn shutdown(self) {
        drop(self.service);
    }
}

struct Shared {
    connector: TlsConnector,
    upstream_name: ServerName<'static>,
    config: InspectingProxyConfig,
    stats: Arc<ProxyStats>,
}

async fn serve(listener: TcpListener, mut acceptor: TlsAcceptor, shared: Shared) {
    let shared = Arc::new(shared);
    let open: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
    let mut expiry = shared
        .config
        .cache_expiry
        .map(|d| tokio::time::Instant::now() + d);
    loop {
        let renewal = async {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((agent, _)) = accepted else { continue };
                shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                let task = tokio::spawn(handle(agent, acceptor.clone(), shared.clone()));
                let mut open = open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                open.retain(|h| !h.is_finished());
                open.push(task.abort_handle());
            }
            () = renewal => {
                // Once: the cache expires at a set time, as a misconfigured proxy's does.
                expiry = None;
                let mut open = open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let live: Vec<AbortHandle> = open.drain(..).filter(|h| !h.is_finished()).collect();
                shared.stats.reset.fetch_add(live.len() as u64, Ordering::Relaxed);
                live.iter().for_each(AbortHandle::abort);
                if let Ok(renewed) = acceptor_for(&shared) {
                    acceptor = renewed;
                    shared.stats.renewals.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn acceptor_for(shared: &Shared) -> io::Result<TlsAcceptor> {
    acceptor(&shared.config.ca, &shared.config.server_name)
}

async fn handle(agent: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let opened = tokio::time::Instant::now();
    let Ok(mut agent) = acceptor.accept(agent).await else {
        shared.stats.tls_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(head) = read_head(&mut agent).await else {
        return;
    };
    if shared.config.breaks_websocket_upgrade && is_websocket_upgrade(&head) {
        shared
            .stats
            .upgrades_blocked
            .fetch_add(1, Ordering::Relaxed);
        let _ = agent.write_all(FORBIDDEN).await;
        let _ = agent.shutdown().await;
        return;
    }
    let upstream = async {
        let tcp = TcpStream::connect(shared.config.upstream).await?;
        shared
            .connector
            .connect(shared.upstream_name.clone(), tcp)
            .await
    };
    let Ok(mut server) = upstream.await else {
        shared.stats.upstream_failed.fetch_add(1, Ordering::Relaxed);
        let _ = agent
            .write_all(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
        return;
    };
    shared.stats.relayed.fetch_add(1, Ordering::Relaxed);
    if server.write_all(&head).await.is_err() {
        return;
    }
    let relay = tokio::io::copy_bidirectional(&mut agent, &mut server);
    match shared.config.stalls_after {
        None => {
            let _ = relay.await;
        }
        Some(after) => {
            if tokio::time::timeout_at(opened + after, relay)
                .await
                .is_err()
            {
                // Relaying stops; both connections stay open, unread and unwritten.
                shared.stats.stalled.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(STALL_HOLD).await;
            }
        }
    }
}

/// Reads up to the end of the HTTP request head (the blank line); what follows stays for the
/// relay. `None` when the client closes first or the head is too long.
async fn read_head(agent: &mut tokio_rustls::server::TlsStream<TcpStream>) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = agent.read(&mut buf).await.ok().filter(|&n| n > 0)?;
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return None;
        }
    }
    Some(head)
}

/// Whether an HTTP request head asks for a WebSocket upgrade (RFC 6455 §4.1).
fn is_websocket_upgrade(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().skip(1).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("upgrade")
                && value.trim().eq_ignore_ascii_case("websocket")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_upgrades() {
        assert!(is_websocket_upgrade(
            b"GET /rtc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        ));
        assert!(is_websocket_upgrade(
            b"GET / HTTP/1.1\r\nupgrade:WebSocket\r\n\r\n"
        ));
        assert!(!is_websocket_upgrade(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!is_websocket_upgrade(
            b"GET /upgrade: websocket HTTP/1.1\r\n\r\n"
        ));
    }
}
