//! The TLS-inspecting proxy's real-time edge: a TCP listener and, per connection, the agent's
//! socket and the proxy's own socket to the server, moving the bytes of the sans-I/O
//! [`crate::inspection`] core (which decides everything: the forged certificate, the 403, the
//! stall, the reset when the certificate cache expires).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::inspection::{Inspection, ProxyConnection, ProxyEvent};
pub use crate::inspection::{InspectionCa, InspectionPolicy, ProxyStats, STALL_HOLD};
use crate::service::Service;

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
    /// What it does to the connections.
    pub policy: InspectionPolicy,
}

/// A running proxy; dropping it stops it.
#[derive(Debug)]
pub struct InspectingProxy {
    stats: Arc<ProxyStats>,
    service: Service,
}

impl InspectingProxy {
    /// Binds and starts the proxy.
    pub fn start(config: InspectingProxyConfig) -> io::Result<Self> {
        let inspection = Inspection::new(
            config.ca,
            &config.server_name,
            &config.upstream_roots,
            config.policy,
            Instant::now(),
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let stats = inspection.stats();
        let upstream = config.upstream;
        let service = Service::start("inspecting-proxy", config.listen, move |listener| {
            serve(listener, inspection, upstream)
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

/// Sleeps until `at`, or forever.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Accepts connections, each on its own task; when the certificate cache expires, tells every
/// open one to reset (a new generation on `resets`).
async fn serve(listener: TcpListener, mut inspection: Inspection, upstream: SocketAddr) {
    let (resets, _) = watch::channel(0u32);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((agent, _)) = accepted else { continue };
                let Ok(connection) = inspection.accept(Instant::now()) else { continue };
                tokio::spawn(relay(agent, upstream, connection, resets.subscribe()));
            }
            () = until(inspection.poll_timeout()) => {
                if inspection.handle_timeout(Instant::now()) {
                    resets.send_modify(|generation| *generation += 1);
                }
            }
        }
    }
}

/// Writes what the connection has for either side; `Err` when a socket fails.
async fn flush(
    connection: &mut ProxyConnection,
    agent: &mut TcpStream,
    server: &mut Option<TcpStream>,
) -> io::Result<()> {
    while let Some(records) = connection.poll_agent_transmit() {
        agent.write_all(&records).await?;
    }
    if let Some(server) = server {
        while let Some(records) = connection.poll_upstream_transmit() {
            server.write_all(&records).await?;
        }
    }
    Ok(())
}

/// Reads from `socket` if there is one (and the connection still relays), else waits forever.
async fn read(socket: Option<&mut TcpStream>, buf: &mut [u8]) -> io::Result<usize> {
    match socket {
        Some(socket) => socket.read(buf).await,
        None => std::future::pending().await,
    }
}

/// One connection through the proxy, until the core closes it or the cache's expiry resets it.
async fn relay(
    mut agent: TcpStream,
    upstream: SocketAddr,
    mut connection: ProxyConnection,
    mut resets: watch::Receiver<u32>,
) {
    let mut server: Option<TcpStream> = None;
    let (mut from_agent, mut from_server) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        if flush(&mut connection, &mut agent, &mut server)
            .await
            .is_err()
        {
            return;
        }
        match connection.poll_event() {
            Some(ProxyEvent::ConnectUpstream) => {
                server = TcpStream::connect(upstream).await.ok();
                connection.handle_upstream_connected(Instant::now(), server.is_some());
                continue;
            }
            Some(ProxyEvent::Close) => {
                let _ = flush(&mut connection, &mut agent, &mut server).await;
                let _ = agent.shutdown().await;
                if let Some(server) = &mut server {
                    let _ = server.shutdown().await;
                }
                return;
            }
            None => {}
        }
        // A stalled connection is read no more: its bytes wait in the kernel, unanswered.
        let stalled = connection.is_stalled();
        let agent_side = (!stalled).then_some(&mut agent);
        let server_side = server.as_mut().filter(|_| !stalled);
        tokio::select! {
            read = read(agent_side, &mut from_agent) => match read {
                Ok(n) if n > 0 => connection.handle_agent_input(Instant::now(), &from_agent[..n]),
                _ => connection.handle_agent_eof(Instant::now()),
            },
            read = read(server_side, &mut from_server) => match read {
                Ok(n) if n > 0 => {
                    connection.handle_upstream_input(Instant::now(), &from_server[..n]);
                }
                _ => connection.handle_upstream_eof(Instant::now()),
            },
            () = until(connection.poll_timeout()) => connection.handle_timeout(Instant::now()),
            _ = resets.changed() => {
                // Torn down at once: the sockets drop without a FIN's courtesy of flushing.
                connection.reset();
                return;
            }
        }
    }
}
