//! A UDP impairment relay between agents and the TURN server, applying the path engine
//! per direction in real time.
//!
//! Agents send to the relay's address as if it were the TURN server. Each agent address becomes
//! a flow with its own upstream socket (so the TURN server sees one 5-tuple per agent, as behind
//! a NAT); packets cross the [`Netem`] up, and the server's replies cross it down.
//!
//! One thread, not tokio: tokio's timer wheel (and `epoll_wait`) have a 1 ms resolution, which
//! alone would break the relay's 0.5 ms budget. The thread waits in `ppoll` on every socket with
//! a nanosecond timeout until the next packet is due, with its timer slack cut to 1 µs, reads
//! whatever arrived, and releases what is due — no hand-off between threads on the packet path.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::netem::{Direction, DropReason, FlowId, Netem, Output, Path};
use crate::scenario::{Policy, Transport};

/// The longest the relay sleeps before checking for a shutdown.
const POLL: Duration = Duration::from_millis(50);
/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_535;

/// What the relay is told to do.
#[derive(Debug, Clone)]
pub struct UdpRelayConfig {
    /// Where agents send (use port 0 to let the OS pick).
    pub listen: SocketAddr,
    /// The TURN server.
    pub upstream: SocketAddr,
    /// The path to apply.
    pub path: Path,
    /// The impairments' seed.
    pub seed: u64,
    /// The site's firewall policy (blocked ports, stateless inbound filtering).
    pub policy: Policy,
}

/// Counters of a running relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Datagrams received from agents.
    pub from_agents: AtomicU64,
    /// Datagrams sent to the server.
    pub to_server: AtomicU64,
    /// Datagrams received from the server.
    pub from_server: AtomicU64,
    /// Datagrams sent to agents.
    pub to_agents: AtomicU64,
    /// Dropped by the path: loss.
    pub dropped_loss: AtomicU64,
    /// Dropped by the path: full queue.
    pub dropped_queue: AtomicU64,
    /// Dropped by the path: MTU.
    pub dropped_mtu: AtomicU64,
    /// Dropped by the path: outage.
    pub dropped_outage: AtomicU64,
    /// Dropped by the site's firewall policy.
    pub dropped_policy: AtomicU64,
    /// Sends that failed (socket buffers full, server gone).
    pub send_errors: AtomicU64,
    /// Flows (agent addresses) seen.
    pub flows: AtomicU64,
}

impl RelayStats {
    fn count_drop(&self, reason: DropReason) {
        match reason {
            DropReason::Loss => &self.dropped_loss,
            DropReason::QueueFull => &self.dropped_queue,
            DropReason::Mtu => &self.dropped_mtu,
            DropReason::Outage => &self.dropped_outage,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

/// A running UDP impairment relay. Dropping it stops it.
#[derive(Debug)]
pub struct UdpRelay {
    local_addr: SocketAddr,
    stats: Arc<RelayStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpRelay {
    /// Binds and starts the relay.
    pub fn start(config: UdpRelayConfig) -> io::Result<Self> {
        let listen = UdpSocket::bind(config.listen)?;
        listen.set_nonblocking(true)?;
        let local_addr = listen.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut engine = Engine {
            netem: Netem::new(config.path, config.seed, Instant::now()),
            upstream: config.upstream,
            policy: config.policy,
            listen,
            flows: HashMap::new(),
            by_flow: Vec::new(),
            stats: stats.clone(),
            stop: stop.clone(),
            buf: vec![0u8; MAX_DATAGRAM],
        };
        let thread = spawn("udp-relay", move || engine.run())?;
        Ok(Self {
            local_addr,
            stats,
            stop,
            threads: vec![thread],
        })
    }

    /// The address agents send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The relay's counters (they stay readable after shutdown).
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Stops every thread and waits for them.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.to_owned()).spawn(f)
}

struct FlowSockets {
    agent: SocketAddr,
    upstream: UdpSocket,
}

struct Engine {
    netem: Netem<Vec<u8>>,
    upstream: SocketAddr,
    policy: Policy,
    listen: UdpSocket,
    flows: HashMap<SocketAddr, FlowId>,
    by_flow: Vec<FlowSockets>,
    stats: Arc<RelayStats>,
    stop: Arc<AtomicBool>,
    buf: Vec<u8>,
}

impl Engine {
    fn run(&mut self) {
        // Wake within a microsecond of the deadline rather than the default 50 µs slack.
        let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(1_000));
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self
                .netem
                .poll_timeout()
                .map_or(POLL, |due| due.saturating_duration_since(now).min(POLL));
            if !wait.is_zero() {
                self.wait(wait);
            }
            self.read_all();
            self.netem.handle_timeout(Instant::now());
            self.release();
        }
    }

    /// Sleeps until a socket is readable or `wait` has passed.
    fn wait(&self, wait: Duration) {
        let mut fds = Vec::with_capacity(1 + self.by_flow.len());
        fds.push(PollFd::new(&self.listen, PollFlags::IN));
        fds.extend(
            self.by_flow
                .iter()
                .map(|f| PollFd::new(&f.upstream, PollFlags::IN)),
        );
        let timeout = Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        // Interrupted or failed waits just loop: the next pass reads and times out as usual.
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
    }

    /// Reads every datagram waiting on every socket, each stamped as it is read.
    fn read_all(&mut self) {
        loop {
            match self.listen.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    let data = self.buf[..n].to_vec();
                    self.on_agent_datagram(from, Instant::now(), data);
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(_) => break,
            }
        }
        for i in 0..self.by_flow.len() {
            loop {
                match self.by_flow[i].upstream.recv(&mut self.buf) {
                    Ok(n) => {
                        let data = self.buf[..n].to_vec();
                        self.on_server_datagram(FlowId(i as u64), Instant::now(), data);
                    }
                    // The server's port was unreachable for an earlier send: not fatal.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(_) => break,
                }
            }
        }
    }

    fn on_agent_datagram(&mut self, from: SocketAddr, at: Instant, data: Vec<u8>) {
        self.stats.from_agents.fetch_add(1, Ordering::Relaxed);
        if self.policy.blocks(Transport::Udp, self.upstream.port()) {
            self.stats.dropped_policy.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(flow) = self.flow(from) else { return };
        let len = wire_len(from, data.len());
        self.netem.handle_input(at, flow, Direction::Up, len, data);
        self.release();
    }

    fn on_server_datagram(&mut self, flow: FlowId, at: Instant, data: Vec<u8>) {
        self.stats.from_server.fetch_add(1, Ordering::Relaxed);
        let agent = self.by_flow[flow.0 as usize].agent;
        if !self.policy.admits_inbound_udp(agent.port()) {
            self.stats.dropped_policy.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let len = wire_len(agent, data.len());
        self.netem
            .handle_input(at, flow, Direction::Down, len, data);
        self.release();
    }

    /// The flow of an agent address, opening its upstream socket on first sight.
    fn flow(&mut self, agent: SocketAddr) -> Option<FlowId> {
        if let Some(f) = self.flows.get(&agent) {
            return Some(*f);
        }
        let bind: SocketAddr = if self.upstream.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        }
        .parse()
        .ok()?;
        let open = || -> io::Result<UdpSocket> {
            let s = UdpSocket::bind(bind)?;
            s.connect(self.upstream)?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        let Ok(socket) = open() else {
            self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let flow = FlowId(self.by_flow.len() as u64);
        self.by_flow.push(FlowSockets {
            agent,
            upstream: socket,
        });
        self.flows.insert(agent, flow);
        self.stats.flows.fetch_add(1, Ordering::Relaxed);
        Some(flow)
    }

    fn release(&mut self) {
        while let Some(out) = self.netem.poll_output() {
            match out {
                Output::Deliver {
                    flow,
                    direction,
                    packet,
                    ..
                } => {
                    let sockets = &self.by_flow[flow.0 as usize];
                    let (sent, counter) = match direction {
                        Direction::Up => (sockets.upstream.send(&packet), &self.stats.to_server),
                        Direction::Down => (
                            self.listen.send_to(&packet, sockets.agent),
                            &self.stats.to_agents,
                        ),
                    };
                    match sent {
                        Ok(_) => counter.fetch_add(1, Ordering::Relaxed),
                        Err(_) => self.stats.send_errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
                Output::Drop { reason, .. } => self.stats.count_drop(reason),
            }
        }
    }
}

/// Bytes on the wire for a UDP payload: IPv4 + UDP headers are 28 bytes, IPv6 + UDP 48.
fn wire_len(addr: SocketAddr, payload: usize) -> u32 {
    let headers = if addr.is_ipv4() { 28 } else { 48 };
    u32::try_from(payload + headers).unwrap_or(u32::MAX)
}
