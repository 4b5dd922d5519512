//! A UDP impairment relay between agents and the TURN server, applying the path engine
//! per direction in real time.
//!
//! Agents send to the relay's address as if it were the TURN server. Each agent address becomes
//! a flow with its own upstream socket (so the TURN server sees one 5-tuple per agent, as behind
//! a NAT); packets cross the [`Netem`] up, and the server's replies cross it down.
//!
//! One thread, not tokio: tokio's timer wheel (and `epoll_wait`) have a 1 ms resolution, which
//! alone would break the relay's 0.5 ms budget. The thread waits in `epoll_pwait2` (nanosecond
//! timeout; rustix falls back to `epoll_wait` on kernels before 5.11) on every socket until the
//! next packet is due, with its timer slack cut to 1 µs, reads the sockets that are ready, and
//! releases what is due — no hand-off between threads on the packet path, and no per-wake cost
//! in the number of flows.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::fd::OwnedFd;

use rustix::event::{Timespec, epoll};

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
    /// The server port the agents were given (their TURN URL's), which the firewall's rules
    /// see; `None`: the upstream's own port.
    pub server_port: Option<u16>,
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
    /// Its counters, named as in `summary.json`'s `components`.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        reports::components::snapshot(&[
            ("flows", &self.flows),
            ("from_agents", &self.from_agents),
            ("to_server", &self.to_server),
            ("from_server", &self.from_server),
            ("to_agents", &self.to_agents),
            ("dropped.loss", &self.dropped_loss),
            ("dropped.queue_full", &self.dropped_queue),
            ("dropped.mtu", &self.dropped_mtu),
            ("dropped.outage", &self.dropped_outage),
            ("dropped.policy", &self.dropped_policy),
            (reports::components::SEND_FAILED, &self.send_errors),
        ])
    }

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
    thread: Option<JoinHandle<()>>,
}

impl UdpRelay {
    /// Binds and starts the relay.
    pub fn start(config: UdpRelayConfig) -> io::Result<Self> {
        let listen = UdpSocket::bind(config.listen)?;
        listen.set_nonblocking(true)?;
        let local_addr = listen.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let poller = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &poller,
            &listen,
            epoll::EventData::new_u64(LISTEN_KEY),
            epoll::EventFlags::IN,
        )?;
        let mut engine = Engine {
            epoll: poller,
            netem: Netem::new(config.path, config.seed, Instant::now()),
            upstream: config.upstream,
            blocked: config.policy.blocks(
                Transport::Udp,
                config.server_port.unwrap_or(config.upstream.port()),
            ),
            policy: config.policy,
            listen,
            flows: HashMap::new(),
            by_flow: Vec::new(),
            stats: stats.clone(),
            stop: stop.clone(),
            buf: vec![0u8; MAX_DATAGRAM],
            pool: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("udp-relay".into())
            .spawn(move || engine.run())?;
        Ok(Self {
            local_addr,
            stats,
            stop,
            thread: Some(thread),
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
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

struct FlowSockets {
    agent: SocketAddr,
    upstream: UdpSocket,
    /// Whether the site's firewall lets the server's replies in to this agent's port.
    inbound_admitted: bool,
}

/// Released datagram buffers kept for reuse, at most (more than any burst the relay holds).
const POOL: usize = 4096;

/// The epoll key of the agents' socket; flows use their index.
const LISTEN_KEY: u64 = u64::MAX;

struct Engine {
    epoll: OwnedFd,
    netem: Netem<Vec<u8>>,
    upstream: SocketAddr,
    policy: Policy,
    listen: UdpSocket,
    flows: HashMap<SocketAddr, FlowId>,
    by_flow: Vec<FlowSockets>,
    stats: Arc<RelayStats>,
    stop: Arc<AtomicBool>,
    buf: Vec<u8>,
    /// Whether the site's firewall drops UDP to the server's port (fixed for the relay).
    blocked: bool,
    /// Buffers of released datagrams, reused for the next ones read.
    pool: Vec<Vec<u8>>,
}

impl Engine {
    fn run(&mut self) {
        // Wake within a microsecond of the deadline rather than the default 50 µs slack.
        let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(1_000));
        // Made here: epoll events hold a raw pointer variant, so they cannot cross threads.
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = self
                .netem
                .poll_timeout()
                .map_or(POLL, |due| due.saturating_duration_since(now).min(POLL));
            events.clear();
            // A zero wait still asks epoll which sockets are ready, without blocking.
            self.wait(wait, &mut events);
            self.read_all(&events);
            self.netem.handle_timeout(Instant::now());
            self.release();
        }
    }

    /// Sleeps until a socket is readable or `wait` has passed.
    fn wait(&self, wait: Duration, events: &mut Vec<epoll::Event>) {
        let timeout = Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        // Interrupted or failed waits just loop: the next pass reads and times out as usual.
        let _ = epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(events),
            Some(&timeout),
        );
    }

    /// Reads every datagram waiting on the sockets the last wait found ready, each stamped as it
    /// is read.
    fn read_all(&mut self, events: &[epoll::Event]) {
        for key in events.iter().map(|e| e.data.u64()) {
            if key == LISTEN_KEY {
                loop {
                    match self.listen.recv_from(&mut self.buf) {
                        Ok((n, from)) => self.on_agent_datagram(from, Instant::now(), n),
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                        Err(_) => break,
                    }
                }
                continue;
            }
            let Some(i) = usize::try_from(key)
                .ok()
                .filter(|&i| i < self.by_flow.len())
            else {
                continue;
            };
            loop {
                match self.by_flow[i].upstream.recv(&mut self.buf) {
                    Ok(n) => self.on_server_datagram(FlowId(i as u64), Instant::now(), n),
                    // The server's port was unreachable for an earlier send: not fatal.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(_) => break,
                }
            }
        }
    }

    /// The `n` bytes just read into `buf`, in a pooled buffer.
    fn take(&mut self, n: usize) -> Vec<u8> {
        let mut data = self.pool.pop().unwrap_or_default();
        data.clear();
        data.extend_from_slice(&self.buf[..n]);
        data
    }

    /// The agent's datagram of `n` bytes in `buf`: policy, then the path.
    fn on_agent_datagram(&mut self, from: SocketAddr, at: Instant, n: usize) {
        self.stats.from_agents.fetch_add(1, Ordering::Relaxed);
        if self.blocked {
            self.stats.dropped_policy.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(flow) = self.flow(from) else { return };
        let data = self.take(n);
        self.netem
            .handle_input(at, flow, Direction::Up, wire_len(from, n), data);
        self.release();
    }

    /// The server's datagram of `n` bytes in `buf` for `flow`: policy, then the path.
    fn on_server_datagram(&mut self, flow: FlowId, at: Instant, n: usize) {
        self.stats.from_server.fetch_add(1, Ordering::Relaxed);
        let sockets = &self.by_flow[flow.0 as usize];
        let (agent, admitted) = (sockets.agent, sockets.inbound_admitted);
        if !admitted {
            self.stats.dropped_policy.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let data = self.take(n);
        self.netem
            .handle_input(at, flow, Direction::Down, wire_len(agent, n), data);
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
        if epoll::add(
            &self.epoll,
            &socket,
            epoll::EventData::new_u64(flow.0),
            epoll::EventFlags::IN,
        )
        .is_err()
        {
            self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.by_flow.push(FlowSockets {
            agent,
            upstream: socket,
            inbound_admitted: self.policy.admits_inbound_udp(agent.port()),
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
                    if self.pool.len() < POOL {
                        self.pool.push(packet);
                    }
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
