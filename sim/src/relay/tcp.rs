//! A TCP impairment relay: byte streams (TURN over TCP or TLS, the signalling WebSocket) cross
//! the path engine chunk by chunk.
//!
//! A stream cannot lose or reorder bytes — TCP would retransmit them — so on a stream the path's
//! loss, duplication, corruption, MTU and reordering do not apply, and outages hold the stream
//! (as TCP does while it retransmits) instead of dropping it: see [`stream_path`]. Delay,
//! jitter (FIFO), stalls and rate apply as they are. The relay can also refuse connections to
//! blocked ports and reset every connection at a given instant (a proxy whose certificate cache
//! expired, a middlebox restart).
//!
//! tokio drives it (one thread, its own runtime): stream paths tolerate tokio's 1 ms timer
//! resolution, which the UDP relay's media budget does not.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::netem::{Direction, FlowId, Loss, Netem, Output, Path, QueueLimit};
use crate::scenario::{Policy, Transport};
use crate::service::Service;

/// What the TCP relay is told to do.
#[derive(Debug, Clone)]
pub struct TcpRelayConfig {
    /// Where agents connect (port 0: the OS picks).
    pub listen: SocketAddr,
    /// The server.
    pub upstream: SocketAddr,
    /// The path; turned into its stream form by [`stream_path`].
    pub path: Path,
    /// The impairments' seed.
    pub seed: u64,
    /// The site's policy: connections to a blocked TCP port are refused.
    pub policy: Policy,
    /// Reset every open connection this long after the relay starts.
    pub reset_after: Option<Duration>,
    /// The server port the agents were given (their URL's), which the firewall's rules see;
    /// `None`: the upstream's own port.
    pub server_port: Option<u16>,
}

/// Counters of a TCP relay.
#[derive(Debug, Default)]
pub struct TcpRelayStats {
    /// Connections accepted from agents.
    pub accepted: AtomicU64,
    /// Connections refused by policy.
    pub refused: AtomicU64,
    /// Connections the server did not take.
    pub upstream_failed: AtomicU64,
    /// Connections reset by `reset_after`.
    pub reset: AtomicU64,
    /// Bytes relayed agent → server.
    pub bytes_up: AtomicU64,
    /// Bytes relayed server → agent.
    pub bytes_down: AtomicU64,
}

impl TcpRelayStats {
    /// Its counters, named as in `summary.json`'s `components`.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        reports::components::snapshot(&[
            ("accepted", &self.accepted),
            ("refused.policy", &self.refused),
            ("upstream_failed", &self.upstream_failed),
            ("reset", &self.reset),
            ("bytes_up", &self.bytes_up),
            ("bytes_down", &self.bytes_down),
        ])
    }
}

/// A running TCP relay; dropping it stops it.
#[derive(Debug)]
pub struct TcpRelay {
    stats: Arc<TcpRelayStats>,
    service: Service,
}

/// The form of a path that applies to a byte stream: no loss, duplication, corruption, MTU or
/// reordering; outages hold the stream until they end; a rate's queue never drops (a stream
/// backs up behind a slow link, and a dropped chunk would cut bytes out of the middle of it).
pub fn stream_path(path: &Path) -> Path {
    let mut p = path.clone();
    for s in &mut p.segments {
        for m in [&mut s.up, &mut s.down] {
            m.loss = Loss::None;
            m.duplicate = 0.0;
            m.corrupt = 0.0;
            m.mtu = None;
            m.reorder = false;
            if let Some(rate) = &mut m.rate {
                rate.queue = QueueLimit::Time(Duration::MAX);
            }
            let outages = std::mem::take(&mut m.outages);
            m.stalls.extend(outages);
        }
    }
    p
}

impl TcpRelay {
    /// Binds and starts the relay.
    pub fn start(config: TcpRelayConfig) -> io::Result<Self> {
        let stats = Arc::new(TcpRelayStats::default());
        let s = stats.clone();
        let service = Service::start("tcp-relay", config.listen, move |listener| {
            serve(listener, config, s)
        })?;
        Ok(Self { stats, service })
    }

    /// The address agents connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }

    /// The relay's counters (readable after shutdown).
    pub fn stats(&self) -> Arc<TcpRelayStats> {
        self.stats.clone()
    }

    /// Stops the relay, closing every connection.
    pub fn shutdown(self) {
        drop(self.service);
    }
}

/// A chunk read from one side, or its end (empty).
struct Chunk {
    flow: FlowId,
    direction: Direction,
    at: Instant,
    data: Vec<u8>,
}

/// One relayed connection: its writers (chunks to write, in order; an empty chunk closes that
/// side), its tasks, and which directions have ended.
struct Connection {
    to_server: mpsc::UnboundedSender<Vec<u8>>,
    to_agent: mpsc::UnboundedSender<Vec<u8>>,
    tasks: [tokio::task::AbortHandle; 4],
    closed: [bool; 2],
}

async fn serve(listener: TcpListener, config: TcpRelayConfig, stats: Arc<TcpRelayStats>) {
    let start = Instant::now();
    let mut netem = Netem::new(stream_path(&config.path), config.seed, start);
    let (chunk_tx, mut chunk_rx) = mpsc::unbounded_channel::<Chunk>();
    let mut connections: HashMap<FlowId, Connection> = HashMap::new();
    let mut next_flow = 0u64;
    let mut reset_at = config
        .reset_after
        .map(|d| tokio::time::Instant::from_std(start + d));
    loop {
        let due = netem.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((agent, _)) = accepted else { continue };
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                if config.policy.blocks(Transport::Tcp, config.server_port.unwrap_or(config.upstream.port())) {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    drop(agent);
                    continue;
                }
                let Ok(server) = TcpStream::connect(config.upstream).await else {
                    stats.upstream_failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let flow = FlowId(next_flow);
                next_flow += 1;
                let _ = agent.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (agent_r, agent_w) = agent.into_split();
                let (server_r, server_w) = server.into_split();
                let (to_agent, agent_rx) = mpsc::unbounded_channel();
                let (to_server, server_rx) = mpsc::unbounded_channel();
                let tasks = [
                    tokio::spawn(read_side(agent_r, flow, Direction::Up, chunk_tx.clone())).abort_handle(),
                    tokio::spawn(read_side(server_r, flow, Direction::Down, chunk_tx.clone())).abort_handle(),
                    tokio::spawn(write_side(agent_w, agent_rx)).abort_handle(),
                    tokio::spawn(write_side(server_w, server_rx)).abort_handle(),
                ];
                connections.insert(flow, Connection { to_server, to_agent, tasks, closed: [false; 2] });
            }
            Some(chunk) = chunk_rx.recv() => {
                let len = u32::try_from(chunk.data.len() + 40).unwrap_or(u32::MAX);
                netem.handle_input(chunk.at, chunk.flow, chunk.direction, len, chunk.data);
            }
            () = sleep_until(due) => netem.handle_timeout(Instant::now()),
            () = sleep_until(reset_at) => {
                // Every connection open now is torn down (chunks still in flight for them are
                // dropped as they come out); later connections live.
                reset_at = None;
                stats.reset.fetch_add(connections.len() as u64, Ordering::Relaxed);
                for (_, c) in connections.drain() {
                    c.tasks.iter().for_each(tokio::task::AbortHandle::abort);
                }
            }
        }
        while let Some(out) = netem.poll_output() {
            let Output::Deliver {
                flow,
                direction,
                packet,
                ..
            } = out
            else {
                continue;
            };
            let Some(c) = connections.get_mut(&flow) else {
                continue;
            };
            let (tx, counter) = match direction {
                Direction::Up => (&c.to_server, &stats.bytes_up),
                Direction::Down => (&c.to_agent, &stats.bytes_down),
            };
            counter.fetch_add(packet.len() as u64, Ordering::Relaxed);
            if packet.is_empty() {
                c.closed[usize::from(direction == Direction::Down)] = true;
            }
            let _ = tx.send(packet);
            if c.closed == [true; 2] {
                connections.remove(&flow);
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn read_side(
    mut r: tokio::net::tcp::OwnedReadHalf,
    flow: FlowId,
    direction: Direction,
    tx: mpsc::UnboundedSender<Chunk>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await.unwrap_or(0);
        let data = buf[..n].to_vec();
        if tx
            .send(Chunk {
                flow,
                direction,
                at: Instant::now(),
                data,
            })
            .is_err()
            || n == 0
        {
            return;
        }
    }
}

async fn write_side(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(chunk) = rx.recv().await {
        if chunk.is_empty() || w.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}
