//! The sans-I/O TURN server: allocations, permissions, channel bindings, nonces and auth.
//!
//! [`Server`] never touches a socket or reads the clock. The edge feeds it what arrives, with the
//! time it arrived, and drains what it wants sent:
//!
//! - [`Server::handle_packet`]: a datagram (or one framed message of a stream) from a client on a
//!   listener, with its [`FiveTuple`];
//! - [`Server::handle_peer_packet`]: a datagram from a peer on a relayed address;
//! - [`Server::handle_relay_opened`]: the answer to an [`Event::OpenRelay`];
//! - [`Server::handle_stream_opened`]: a client opened a TCP/TLS connection (it may be
//!   refused: [`StreamRefusal`]);
//! - [`Server::handle_stream_data`]: bytes arrived on one; the core frames them;
//! - [`Server::handle_connection_closed`]: a client's TCP/TLS connection went away;
//! - [`Server::handle_timeout`]: the time [`Server::poll_timeout`] asked for has come.
//!
//! Drain contract (str0m's single-mutation invariant): after every `handle_*` call, call
//! [`Server::poll_transmit`] and [`Server::poll_event`] until both return `None`, then sleep
//! until [`Server::poll_timeout`] (or the next input, whichever is first).
//!
//! Expiry (allocations, permissions, channel bindings) is checked on every use against the time
//! passed in, and swept from the tables once a second: a lapsed permission never lets a packet
//! through, and memory is given back within a second of a lapse.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::{debug, trace};

use crate::auth::{Credentials, NonceCheck, Nonces};
use crate::policy::PeerPolicy;
use crate::streams::{StreamClose, StreamRefusal, Streams};
use crate::wire::{
    ChannelData, Class, IntegrityKind, MessageBuilder, Method, StunPacket, StunRepr, TransactionId,
    WireError, attr, frame_len, is_channel_number,
};

/// The transport between a client and the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// Whether this is a stream transport (ChannelData is padded to 4 bytes on it).
    #[must_use]
    pub const fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }

    /// A lowercase name, used as a metrics label.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// The client side of an allocation: transport, client address, server (listener) address
/// (RFC 8656 §2, "5-tuple").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// The transport protocol.
    pub transport: Transport,
    /// The client's address, as the server sees it.
    pub client: SocketAddr,
    /// The server address the client talks to.
    pub server: SocketAddr,
}

/// A datagram (or stream message) to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The transport to send it on: UDP for everything sent from a relayed address.
    pub transport: Transport,
    /// The local address to send from: a listener or a relayed address.
    pub source: SocketAddr,
    /// Where to send it.
    pub destination: SocketAddr,
    /// The bytes.
    pub contents: Vec<u8>,
}

/// Identifies one request to open a relayed address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RelayRequest(pub u64);

/// Something the edge must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Bind a UDP socket on `addr`, then answer with [`Server::handle_relay_opened`].
    OpenRelay {
        /// Quote it in the answer.
        request: RelayRequest,
        /// The address to bind.
        addr: SocketAddr,
    },
    /// The allocation on this relayed address is gone: close its socket.
    CloseRelay {
        /// The relayed address.
        addr: SocketAddr,
    },
    /// Close this TCP/TLS connection once what was sent to it before this event has been
    /// written, then report it with [`Server::handle_connection_closed`]. Its bytes are no
    /// longer read.
    CloseStream {
        /// The connection.
        five_tuple: FiveTuple,
        /// Why.
        reason: StreamClose,
    },
}

/// Faults the simulator injects (the control API; also CLI flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Answer every Allocate with 508 Insufficient Capacity.
    pub refuse_allocations: bool,
    /// Treat every credential as wrong (401).
    pub fail_auth: bool,
    /// Drop everything, answer nothing: a dead TURN node.
    pub unresponsive: bool,
    /// Close every TCP/TLS connection and refuse new ones.
    pub drop_streams: bool,
    /// Hold every outgoing packet this long before sending it.
    pub delay: Duration,
}

/// The server's configuration. [`Config::default`] gives RFC 8656's timers and safe limits.
#[derive(Clone, Debug)]
pub struct Config {
    /// REALM (RFC 8489 §14.9).
    pub realm: String,
    /// Long-term users and the time-limited shared secret.
    pub credentials: Credentials,
    /// How long a nonce stays valid (default 600 s, as coturn).
    pub nonce_lifetime: Duration,
    /// Allocation lifetime when none or less is asked (RFC 8656 §3.2: 600 s).
    pub default_lifetime: Duration,
    /// The longest allocation lifetime granted (default 3600 s, as coturn).
    pub max_lifetime: Duration,
    /// Permission lifetime (RFC 8656 §9: 300 s).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (RFC 8656 §12: 600 s).
    pub channel_lifetime: Duration,
    /// How long an expired channel number or peer stays unusable for another binding
    /// (RFC 8656 §12: 300 s after expiry).
    pub channel_quarantine: Duration,
    /// The lowest relayed port (default 49152).
    pub min_port: u16,
    /// The highest relayed port (default 65535).
    pub max_port: u16,
    /// The IPv4 address relayed addresses are bound on; `None` uses the listener's address.
    pub relay_ipv4: Option<Ipv4Addr>,
    /// The IPv6 address relayed addresses are bound on; `None` uses the listener's address.
    pub relay_ipv6: Option<Ipv6Addr>,
    /// Which peers may be relayed to.
    pub peer_policy: PeerPolicy,
    /// Allocations one user may hold at once (486 beyond; default 100).
    pub user_quota: u32,
    /// Allocations the server holds at once (486 beyond; default 10000).
    pub total_quota: u32,
    /// Permissions one allocation may hold (508 beyond; default 1000).
    pub max_permissions: usize,
    /// Relayed bytes per second per allocation, both directions together; 0 = unlimited
    /// (default 1,000,000 B/s = 8 Mbit/s, a burst of one second).
    pub bandwidth_bytes_per_sec: u64,
    /// SOFTWARE attribute in responses; empty for none.
    pub software: String,
    /// How long a TCP/TLS connection may hold no allocation before it is closed: from when
    /// it opens, and again from when its allocation ends (default 60 s, coturn's
    /// `max-allocate-timeout`). A connection with an allocation lives as long as it does.
    pub stream_idle_timeout: Duration,
    /// TCP/TLS connections held at once (refused beyond; default 10,000). The edge lowers it
    /// to what the process's descriptor limit can hold.
    pub max_streams: u32,
    /// TCP/TLS connections one source may hold at once, an IPv6 /64 counting as one source
    /// ([`crate::streams::source`]) (refused beyond; default 1,000: one NAT address in front
    /// of a 500-seat contact centre, each agent with a connection to spare).
    pub max_streams_per_source: u32,
    /// Bytes of partial frames held for all TCP/TLS connections together; a connection whose
    /// partial frame does not fit is closed (default 16 MiB: 256 frames of the largest size).
    pub stream_buffer_budget: usize,
    /// Seed of the server's RNG (relayed port choice).
    pub seed: u64,
    /// Key of the nonce HMAC: draw it from the OS at start.
    pub nonce_key: [u8; 32],
}

impl Default for Config {
    fn default() -> Self {
        Self {
            realm: "softphone-sim".into(),
            credentials: Credentials::default(),
            nonce_lifetime: Duration::from_secs(600),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            channel_quarantine: Duration::from_secs(300),
            min_port: 49152,
            max_port: 65535,
            relay_ipv4: None,
            relay_ipv6: None,
            peer_policy: PeerPolicy::default(),
            user_quota: 100,
            total_quota: 10_000,
            max_permissions: 1000,
            bandwidth_bytes_per_sec: 1_000_000,
            software: concat!("turn-server/", env!("CARGO_PKG_VERSION")).into(),
            stream_idle_timeout: Duration::from_secs(60),
            max_streams: 10_000,
            max_streams_per_source: 1_000,
            stream_buffer_budget: 16 << 20,
            seed: 0,
            nonce_key: [0; 32],
        }
    }
}

/// Why a packet was dropped without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// Not STUN or ChannelData, or a framing/attribute error.
    Malformed,
    /// A STUN response or indication the server does not take.
    Unexpected,
    /// A request whose credentials failed (it was answered 401/438 and changes nothing).
    AuthFailed,
    /// Send/ChannelData from a 5-tuple without allocation, or to an unknown relayed address.
    NoAllocation,
    /// No installed permission for the peer.
    NoPermission,
    /// ChannelData on a channel that is not bound.
    UnknownChannel,
    /// Over the allocation's bandwidth cap.
    Bandwidth,
    /// Dropped while the `unresponsive` fault is on.
    Fault,
}

impl DropReason {
    /// Every reason, in metrics order.
    pub const ALL: [Self; 8] = [
        Self::Malformed,
        Self::Unexpected,
        Self::AuthFailed,
        Self::NoAllocation,
        Self::NoPermission,
        Self::UnknownChannel,
        Self::Bandwidth,
        Self::Fault,
    ];

    /// The metrics label.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unexpected => "unexpected",
            Self::AuthFailed => "auth_failed",
            Self::NoAllocation => "no_allocation",
            Self::NoPermission => "no_permission",
            Self::UnknownChannel => "unknown_channel",
            Self::Bandwidth => "bandwidth",
            Self::Fault => "fault",
        }
    }
}

/// Packets and bytes relayed in one direction (application bytes, without TURN framing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets.
    pub packets: u64,
    /// Payload bytes.
    pub bytes: u64,
}

/// Everything the server counts. Gauges (current allocations, permissions, channels) are in
/// [`Gauges`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests received, by method name.
    pub requests: BTreeMap<&'static str, u64>,
    /// Error responses sent, by code.
    pub errors: BTreeMap<u16, u64>,
    /// Allocations created.
    pub allocations_created: u64,
    /// Allocations that expired.
    pub allocations_expired: u64,
    /// Allocations deleted by the client (Refresh with lifetime 0) or by a closed connection.
    pub allocations_deleted: u64,
    /// Permissions installed (a refresh does not count).
    pub permissions_created: u64,
    /// Channels bound (a refresh does not count).
    pub channels_bound: u64,
    /// Client → peer.
    pub client_to_peer: Traffic,
    /// Peer → client.
    pub peer_to_client: Traffic,
    /// Dropped packets by reason.
    pub drops: BTreeMap<DropReason, u64>,
    /// TCP/TLS connections accepted.
    pub streams_opened: u64,
    /// TCP/TLS connections refused at once, by reason.
    pub streams_refused: BTreeMap<StreamRefusal, u64>,
    /// TCP/TLS connections the core closed, by reason (not those the client closed).
    pub streams_closed: BTreeMap<StreamClose, u64>,
}

impl Counters {
    /// The drops counted for `reason`.
    #[must_use]
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(&reason).copied().unwrap_or(0)
    }

    /// Error responses sent with `code`.
    #[must_use]
    pub fn error_count(&self, code: u16) -> u64 {
        self.errors.get(&code).copied().unwrap_or(0)
    }

    /// Connections refused for `reason`.
    #[must_use]
    pub fn refused(&self, reason: StreamRefusal) -> u64 {
        self.streams_refused.get(&reason).copied().unwrap_or(0)
    }

    /// Connections closed by the core for `reason`.
    #[must_use]
    pub fn closed(&self, reason: StreamClose) -> u64 {
        self.streams_closed.get(&reason).copied().unwrap_or(0)
    }
}

/// The current state's sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Allocations (including those whose relayed socket is being opened).
    pub allocations: usize,
    /// Installed permissions, over all allocations.
    pub permissions: usize,
    /// Bound channels, over all allocations.
    pub channels: usize,
    /// TCP/TLS connections open (including those being closed).
    pub streams: usize,
    /// Bytes of partial frames held for them.
    pub stream_buffered_bytes: usize,
}

/// How often expired state is swept from the tables.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How many ports are tried before an Allocate is answered 508.
const MAX_RELAY_ATTEMPTS: u32 = 8;
/// How long a port reserved by EVEN-PORT's R bit is held (RFC 8656 §7.2 suggests 30 s).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// The UDP protocol number in REQUESTED-TRANSPORT.
const PROTO_UDP: u8 = 17;

/// The TURN server state machine.
#[derive(Debug)]
pub struct Server {
    config: Config,
    nonces: Nonces,
    epoch: Instant,
    unix_at_epoch: u64,
    now: Instant,
    rng: SplitMix64,
    faults: Faults,
    allocations: HashMap<FiveTuple, Allocation>,
    by_relay: HashMap<SocketAddr, FiveTuple>,
    per_user: HashMap<String, u32>,
    pending: HashMap<RelayRequest, PendingAllocate>,
    /// Ports held for a later Allocate: token → (address, until).
    reservations: HashMap<[u8; 8], (SocketAddr, Instant)>,
    next_request: u64,
    next_sweep: Option<Instant>,
    transmits: VecDeque<Transmit>,
    delayed: VecDeque<(Instant, Transmit)>,
    events: VecDeque<Event>,
    streams: Streams,
    counters: Counters,
}

#[derive(Debug)]
struct Allocation {
    relay: SocketAddr,
    username: String,
    quota_name: String,
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, ChannelBinding>,
    channel_by_peer: HashMap<SocketAddr, u16>,
    /// Bindings that expired recently: (number, peer, usable again at).
    quarantine: Vec<(u16, SocketAddr, Instant)>,
    allocate_txid: TransactionId,
    allocate_response: Vec<u8>,
    bucket: TokenBucket,
}

#[derive(Debug, Clone, Copy)]
struct ChannelBinding {
    peer: SocketAddr,
    expires: Instant,
}

#[derive(Debug)]
struct PendingAllocate {
    five_tuple: FiveTuple,
    txid: TransactionId,
    auth: Auth,
    lifetime: Duration,
    addr: SocketAddr,
    wish: PortWish,
    attempts: u32,
    /// The client's connection closed while the socket was being opened.
    abandoned: bool,
}

/// What an Allocate asked of its relayed port (RFC 8656 §7.2, EVEN-PORT, RESERVATION-TOKEN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortWish {
    Any,
    Even,
    /// Even, and reserve the next port for a later Allocate with the token we give back.
    EvenReserveNext,
    /// The port reserved under a token: no other port will do.
    Reserved,
}

/// A request that passed authentication.
#[derive(Debug, Clone)]
struct Auth {
    key: Vec<u8>,
    kind: IntegrityKind,
    username: String,
    quota_name: String,
}

impl Server {
    /// A server started at `now`, when the wall clock read `unix_now` seconds since the Unix
    /// epoch (time-limited credentials compare their expiry with it).
    #[must_use]
    pub fn new(config: Config, now: Instant, unix_now: u64) -> Self {
        Self {
            nonces: Nonces::new(config.nonce_key, config.nonce_lifetime),
            rng: SplitMix64(config.seed),
            config,
            epoch: now,
            unix_at_epoch: unix_now,
            now,
            faults: Faults::default(),
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            per_user: HashMap::new(),
            pending: HashMap::new(),
            reservations: HashMap::new(),
            next_request: 0,
            next_sweep: None,
            transmits: VecDeque::new(),
            delayed: VecDeque::new(),
            events: VecDeque::new(),
            streams: Streams::default(),
            counters: Counters::default(),
        }
    }

    /// The configuration.
    #[must_use]
    pub const fn config(&self) -> &Config {
        &self.config
    }

    /// The faults in force.
    #[must_use]
    pub const fn faults(&self) -> Faults {
        self.faults
    }

    /// Sets the faults in force (the control API). Turning `drop_streams` on closes every
    /// TCP/TLS connection ([`Event::CloseStream`]) and refuses new ones until it is off.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
        if faults.drop_streams {
            let open: Vec<FiveTuple> = self.streams.open.keys().copied().collect();
            for ft in open {
                self.close_stream(ft, StreamClose::Fault);
            }
        }
    }

    /// The counters.
    #[must_use]
    pub const fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The current sizes of the tables.
    #[must_use]
    pub fn gauges(&self) -> Gauges {
        Gauges {
            allocations: self.allocations.len() + self.pending.len(),
            permissions: self.allocations.values().map(|a| a.permissions.len()).sum(),
            channels: self.allocations.values().map(|a| a.channels.len()).sum(),
            streams: self.streams.open.len(),
            stream_buffered_bytes: self.streams.buffered,
        }
    }

    /// The relayed address of the allocation on `five_tuple`, if there is one.
    #[must_use]
    pub fn relay_addr(&self, five_tuple: &FiveTuple) -> Option<SocketAddr> {
        self.allocations.get(five_tuple).map(|a| a.relay)
    }

    /// Handles one message from a client: a UDP datagram, or one whole frame of a stream
    /// (the edge may instead hand a stream's bytes as they come to
    /// [`Server::handle_stream_data`]).
    pub fn handle_packet(&mut self, now: Instant, five_tuple: FiveTuple, data: &[u8]) {
        self.advance(now);
        self.handle_message(five_tuple, data);
    }

    /// A client opened a TCP or TLS connection on a listener. `Err` says why it must be closed
    /// at once (counted); `Ok` starts its idle clock ([`Config::stream_idle_timeout`]).
    ///
    /// # Errors
    /// The [`StreamRefusal`]: too many connections from its address or in all, or the
    /// `drop_streams` fault.
    pub fn handle_stream_opened(
        &mut self,
        now: Instant,
        five_tuple: FiveTuple,
    ) -> Result<(), StreamRefusal> {
        self.advance(now);
        let refusal = if self.faults.drop_streams {
            Some(StreamRefusal::Fault)
        } else if self.streams.open.len() >= self.config.max_streams as usize {
            Some(StreamRefusal::Total)
        } else if self.streams.open_from(five_tuple.client.ip())
            >= self.config.max_streams_per_source
        {
            Some(StreamRefusal::PerSource)
        } else {
            None
        };
        if let Some(r) = refusal {
            trace!(client = %five_tuple.client, reason = r.name(), "connection refused");
            *self.counters.streams_refused.entry(r).or_default() += 1;
            return Err(r);
        }
        self.counters.streams_opened += 1;
        self.streams
            .insert(five_tuple, self.now + self.config.stream_idle_timeout);
        Ok(())
    }

    /// Bytes that arrived on a TCP/TLS connection, in order, cut anywhere. Each whole frame is
    /// handled as [`Server::handle_packet`] would; a partial one is kept for the next call.
    /// Bytes that are not STUN/ChannelData framing are dropped (counted `malformed`) and the
    /// connection closed ([`Event::CloseStream`]) after the replies to the frames before them.
    /// A connection the edge did not report opened is opened here first (and its bytes
    /// ignored if it is refused); bytes for one being closed are ignored.
    pub fn handle_stream_data(&mut self, now: Instant, five_tuple: FiveTuple, data: &[u8]) {
        self.advance(now);
        let partial = match self.streams.open.get_mut(&five_tuple) {
            None => {
                if self.handle_stream_opened(now, five_tuple).is_err() {
                    return;
                }
                Vec::new()
            }
            Some(s) if s.closing => return,
            Some(s) => std::mem::take(&mut s.partial),
        };
        self.streams.buffered -= partial.len();
        let mut joined = partial;
        let whole = joined.is_empty();
        if !whole {
            joined.extend_from_slice(data);
        }
        let bytes: &[u8] = if whole { data } else { &joined };
        let mut at = 0;
        let mut framing_error = false;
        while at < bytes.len() {
            match frame_len(&bytes[at..]) {
                Ok(Some(len)) if bytes.len() - at >= len => {
                    self.handle_message(five_tuple, &bytes[at..at + len]);
                    at += len;
                }
                Ok(_) => break,
                Err(_) => {
                    trace!(client = %five_tuple.client, "stream framing error");
                    self.drop_packet(DropReason::Malformed);
                    framing_error = true;
                    break;
                }
            }
        }
        if framing_error {
            self.close_stream(five_tuple, StreamClose::Framing);
            return;
        }
        let rest = bytes.len() - at;
        if rest == 0 {
            return;
        }
        if self.streams.buffered + rest > self.config.stream_buffer_budget {
            self.close_stream(five_tuple, StreamClose::Buffer);
            return;
        }
        let kept = if whole {
            data[at..].to_vec()
        } else {
            joined.drain(..at);
            joined
        };
        if let Some(s) = self.streams.open.get_mut(&five_tuple) {
            self.streams.buffered += kept.len();
            s.partial = kept;
        }
    }

    /// Handles one datagram from `peer` arriving on the relayed address `relay`.
    pub fn handle_peer_packet(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
    ) {
        self.advance(now);
        if self.faults.unresponsive {
            self.drop_packet(DropReason::Fault);
            return;
        }
        let Some(five_tuple) = self.by_relay.get(&relay).copied() else {
            self.drop_packet(DropReason::NoAllocation);
            return;
        };
        if !self.admit(five_tuple, peer, data.len()) {
            return;
        }
        let now = self.now;
        let Some(alloc) = self.allocations.get(&five_tuple) else {
            return;
        };
        let contents = match alloc.channel_by_peer.get(&peer) {
            Some(&channel)
                if alloc
                    .channels
                    .get(&channel)
                    .is_some_and(|c| c.expires > now) =>
            {
                ChannelData::<&[u8]>::emit(channel, data, five_tuple.transport.is_stream())
            }
            _ => {
                let txid = TransactionId(self.rng.bytes12());
                let mut b = MessageBuilder::new(Method::DATA, Class::Indication, txid);
                b.xor_address(attr::XOR_PEER_ADDRESS, peer)
                    .attribute(attr::DATA, data);
                b.finish()
            }
        };
        self.counters.peer_to_client.packets += 1;
        self.counters.peer_to_client.bytes += data.len() as u64;
        self.push_transmit(Transmit {
            transport: five_tuple.transport,
            source: five_tuple.server,
            destination: five_tuple.client,
            contents,
        });
    }

    /// The edge's answer to [`Event::OpenRelay`]: `opened` says whether the socket was bound.
    /// Every OpenRelay must be answered exactly once; the core asks to close a socket it no
    /// longer needs with [`Event::CloseRelay`].
    pub fn handle_relay_opened(&mut self, now: Instant, request: RelayRequest, opened: bool) {
        self.advance(now);
        let Some(mut p) = self.pending.remove(&request) else {
            debug!(?request, "answer to an OpenRelay we did not ask for");
            return;
        };
        if p.abandoned {
            // The client went away meanwhile: give the socket back.
            self.release_quota(&p.auth.quota_name);
            if opened {
                self.events.push_back(Event::CloseRelay { addr: p.addr });
            }
            return;
        }
        if !opened {
            p.attempts += 1;
            let next = (p.attempts < MAX_RELAY_ATTEMPTS && p.wish != PortWish::Reserved)
                .then(|| self.pick_relay_port(p.addr.ip(), p.wish))
                .flatten();
            if let Some(addr) = next {
                p.addr = addr;
                self.request_relay(p);
            } else {
                self.release_quota(&p.auth.quota_name);
                let (ft, txid, auth) = (p.five_tuple, p.txid, p.auth);
                self.reply_error(ft, Method::ALLOCATE, txid, 508, Some(&auth), |_| {});
            }
            return;
        }
        let now = self.now;
        let lifetime = p.lifetime;
        let mut b = MessageBuilder::new(Method::ALLOCATE, Class::Success, p.txid);
        b.xor_address(attr::XOR_RELAYED_ADDRESS, p.addr)
            .u32_attribute(attr::LIFETIME, secs(lifetime))
            .xor_address(attr::XOR_MAPPED_ADDRESS, p.five_tuple.client);
        if p.wish == PortWish::EvenReserveNext {
            let token: [u8; 8] = self.rng.next().to_be_bytes();
            let next = SocketAddr::new(p.addr.ip(), p.addr.port() + 1);
            self.reservations
                .insert(token, (next, now + RESERVATION_LIFETIME));
            b.attribute(attr::RESERVATION_TOKEN, &token);
        }
        self.software(&mut b);
        b.integrity(p.auth.kind, &p.auth.key);
        let response = b.finish_with_fingerprint();
        self.allocations.insert(
            p.five_tuple,
            Allocation {
                relay: p.addr,
                username: p.auth.username,
                quota_name: p.auth.quota_name,
                expires: now + lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_by_peer: HashMap::new(),
                quarantine: Vec::new(),
                allocate_txid: p.txid,
                allocate_response: response.clone(),
                bucket: TokenBucket::new(now, self.config.bandwidth_bytes_per_sec),
            },
        );
        self.by_relay.insert(p.addr, p.five_tuple);
        self.streams.set_idle(p.five_tuple, None);
        self.counters.allocations_created += 1;
        self.next_sweep.get_or_insert(now + SWEEP_INTERVAL);
        debug!(client = %p.five_tuple.client, relay = %p.addr, ?lifetime, "allocation created");
        self.reply(p.five_tuple, response);
    }

    /// A client's TCP/TLS connection closed, by either side: its allocation goes with it
    /// (RFC 8656 §3.1), and it no longer counts against the connection limits.
    pub fn handle_connection_closed(&mut self, now: Instant, five_tuple: FiveTuple) {
        self.advance(now);
        self.streams.remove(&five_tuple);
        for p in self
            .pending
            .values_mut()
            .filter(|p| p.five_tuple == five_tuple)
        {
            p.abandoned = true;
        }
        if self.allocations.contains_key(&five_tuple) {
            self.remove_allocation(five_tuple);
            self.counters.allocations_deleted += 1;
        }
    }

    /// Expires state and releases delayed packets. Early or spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        let now = self.now;
        while self.delayed.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, t)) = self.delayed.pop_front() {
                self.transmits.push_back(t);
            }
        }
        if self.next_sweep.is_some_and(|at| at <= now) {
            self.sweep(now);
            self.next_sweep = (!self.allocations.is_empty()).then_some(now + SWEEP_INTERVAL);
        }
        while let Some(ft) = self.streams.pop_idle(now) {
            debug!(client = %ft.client, "connection idle without an allocation: closing");
            self.close_stream(ft, StreamClose::Idle);
        }
    }

    /// The next packet to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing the edge must do.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Server::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let delayed = self.delayed.front().map(|(at, _)| *at);
        [delayed, self.next_sweep, self.streams.next_idle()]
            .into_iter()
            .flatten()
            .min()
    }

    // ---- internals ------------------------------------------------------------------------

    /// One message from a client: STUN or ChannelData.
    fn handle_message(&mut self, five_tuple: FiveTuple, data: &[u8]) {
        if self.faults.unresponsive {
            self.drop_packet(DropReason::Fault);
            return;
        }
        match data.first().map(|b| b >> 6) {
            Some(0b00) => self.handle_stun(five_tuple, data),
            Some(0b01) => self.handle_client_channel_data(five_tuple, data),
            _ => self.drop_packet(DropReason::Malformed),
        }
    }

    /// Asks the edge to close a connection (once), counting why.
    fn close_stream(&mut self, ft: FiveTuple, reason: StreamClose) {
        if self.streams.mark_closing(&ft) {
            *self.counters.streams_closed.entry(reason).or_default() += 1;
            self.events.push_back(Event::CloseStream {
                five_tuple: ft,
                reason,
            });
        }
    }

    /// Time never goes backwards inside the server.
    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    fn since_epoch(&self) -> Duration {
        self.now.saturating_duration_since(self.epoch)
    }

    fn unix_now(&self) -> u64 {
        self.unix_at_epoch + self.since_epoch().as_secs()
    }

    fn drop_packet(&mut self, reason: DropReason) {
        trace!(reason = reason.name(), "dropped");
        *self.counters.drops.entry(reason).or_default() += 1;
    }

    fn push_transmit(&mut self, t: Transmit) {
        if self.faults.delay.is_zero() {
            self.transmits.push_back(t);
        } else {
            self.delayed.push_back((self.now + self.faults.delay, t));
        }
    }

    fn reply(&mut self, to: FiveTuple, contents: Vec<u8>) {
        self.push_transmit(Transmit {
            transport: to.transport,
            source: to.server,
            destination: to.client,
            contents,
        });
    }

    fn software(&self, b: &mut MessageBuilder) {
        if !self.config.software.is_empty() {
            b.attribute(attr::SOFTWARE, self.config.software.as_bytes());
        }
    }

    /// Sends an error response; signed when the request authenticated (`auth`).
    fn reply_error(
        &mut self,
        to: FiveTuple,
        method: Method,
        txid: TransactionId,
        code: u16,
        auth: Option<&Auth>,
        extra: impl FnOnce(&mut MessageBuilder),
    ) {
        *self.counters.errors.entry(code).or_default() += 1;
        let mut b = MessageBuilder::new(method, Class::Error, txid);
        b.error_code(code);
        extra(&mut b);
        self.software(&mut b);
        if let Some(auth) = auth {
            b.integrity(auth.kind, &auth.key);
        }
        self.reply(to, b.finish_with_fingerprint());
    }

    /// 401 or 438 with a fresh NONCE and the REALM (RFC 8489 §9.2.4).
    fn challenge(&mut self, to: FiveTuple, method: Method, txid: TransactionId, code: u16) {
        let nonce = self.nonces.mint(self.since_epoch(), to.client.ip());
        let realm = self.config.realm.clone();
        self.reply_error(to, method, txid, code, None, |b| {
            b.attribute(attr::REALM, realm.as_bytes())
                .attribute(attr::NONCE, nonce.as_bytes())
                .attribute(attr::PASSWORD_ALGORITHMS, &crate::auth::PASSWORD_ALGORITHMS);
        });
    }

    fn handle_stun(&mut self, ft: FiveTuple, data: &[u8]) {
        let packet = match StunPacket::new_checked(data) {
            Ok(p) => p,
            Err(e) => {
                trace!(%e, "not a STUN message");
                self.drop_packet(DropReason::Malformed);
                return;
            }
        };
        let (method, class, txid) = (packet.method(), packet.class(), packet.transaction_id());
        let repr = match StunRepr::parse(&packet) {
            Ok(r) => r,
            Err(WireError::BadAttribute(kind)) if class == Class::Request => {
                trace!(kind, "malformed attribute");
                self.drop_packet(DropReason::Malformed);
                self.reply_error(ft, method, txid, 400, None, |_| {});
                return;
            }
            Err(e) => {
                trace!(%e, "malformed STUN message");
                self.drop_packet(DropReason::Malformed);
                return;
            }
        };
        match class {
            Class::Request => {
                *self.counters.requests.entry(method.name()).or_default() += 1;
                self.handle_request(ft, method, txid, &packet, &repr);
            }
            Class::Indication if method == Method::SEND => self.handle_send(ft, &repr),
            _ => self.drop_packet(DropReason::Unexpected),
        }
    }

    fn handle_request(
        &mut self,
        ft: FiveTuple,
        method: Method,
        txid: TransactionId,
        packet: &StunPacket<&[u8]>,
        repr: &StunRepr<'_>,
    ) {
        if method == Method::BINDING {
            if !repr.unknown.is_empty() {
                let unknown = repr.unknown.clone();
                self.reply_error(ft, method, txid, 420, None, |b| {
                    unknown_attributes(b, &unknown);
                });
                return;
            }
            let mut b = MessageBuilder::new(Method::BINDING, Class::Success, txid);
            b.xor_address(attr::XOR_MAPPED_ADDRESS, ft.client)
                .mapped_address(ft.client);
            self.software(&mut b);
            self.reply(ft, b.finish_with_fingerprint());
            return;
        }
        if !matches!(
            method,
            Method::ALLOCATE | Method::REFRESH | Method::CREATE_PERMISSION | Method::CHANNEL_BIND
        ) {
            self.reply_error(ft, method, txid, 400, None, |_| {});
            return;
        }
        let Some(auth) = self.authenticate(ft, method, txid, packet, repr) else {
            return;
        };
        if !repr.unknown.is_empty() {
            let unknown = repr.unknown.clone();
            self.reply_error(ft, method, txid, 420, Some(&auth), |b| {
                unknown_attributes(b, &unknown);
            });
            return;
        }
        match method {
            Method::ALLOCATE => self.allocate(ft, txid, repr, auth),
            Method::REFRESH => self.refresh(ft, txid, repr, &auth),
            Method::CREATE_PERMISSION => self.create_permission(ft, txid, repr, &auth),
            _ => self.channel_bind(ft, txid, repr, &auth),
        }
    }

    /// The long-term credential mechanism (RFC 8489 §9.2.4). Answers and returns `None` when
    /// the request does not authenticate.
    fn authenticate(
        &mut self,
        ft: FiveTuple,
        method: Method,
        txid: TransactionId,
        packet: &StunPacket<&[u8]>,
        repr: &StunRepr<'_>,
    ) -> Option<Auth> {
        if repr.integrity.is_none() {
            // The normal first round trip of every client: not a failure.
            self.challenge(ft, method, txid, 401);
            return None;
        }
        let (Some(username), Some(realm), Some(nonce), false) =
            (repr.username, repr.realm, repr.nonce, repr.userhash)
        else {
            self.drop_packet(DropReason::AuthFailed);
            self.reply_error(ft, method, txid, 400, None, |_| {});
            return None;
        };
        if self.nonces.check(nonce, self.since_epoch(), ft.client.ip()) == NonceCheck::Stale {
            self.challenge(ft, method, txid, 438);
            return None;
        }
        if realm != self.config.realm || self.faults.fail_auth {
            self.drop_packet(DropReason::AuthFailed);
            self.challenge(ft, method, txid, 401);
            return None;
        }
        let resolved = match self.config.credentials.resolve(username, self.unix_now()) {
            Ok(r) => r,
            Err(why) => {
                debug!(?why, "credential rejected");
                self.drop_packet(DropReason::AuthFailed);
                self.challenge(ft, method, txid, 401);
                return None;
            }
        };
        let Some(algorithm) =
            crate::auth::password_algorithm(repr.password_algorithm, repr.password_algorithms)
        else {
            self.drop_packet(DropReason::AuthFailed);
            self.reply_error(ft, method, txid, 400, None, |_| {});
            return None;
        };
        let key = match algorithm {
            2 => crate::auth::long_term_key_sha256(username, realm, &resolved.password.0).to_vec(),
            _ => crate::auth::long_term_key(username, realm, &resolved.password.0).to_vec(),
        };
        if !repr.verify_integrity(packet.message(), &key) {
            self.drop_packet(DropReason::AuthFailed);
            self.challenge(ft, method, txid, 401);
            return None;
        }
        Some(Auth {
            key,
            kind: repr.integrity_kind(),
            username: username.to_owned(),
            quota_name: resolved.quota_name,
        })
    }

    fn allocate(&mut self, ft: FiveTuple, txid: TransactionId, repr: &StunRepr<'_>, auth: Auth) {
        let m = Method::ALLOCATE;
        if let Some(a) = self.allocations.get(&ft) {
            // A retransmission gets the original answer; anything else is a mismatch.
            if a.allocate_txid == txid {
                let response = a.allocate_response.clone();
                self.reply(ft, response);
            } else {
                self.reply_error(ft, m, txid, 437, Some(&auth), |_| {});
            }
            return;
        }
        if self.pending.values().any(|p| p.five_tuple == ft) {
            // Still opening the relayed socket: the answer will follow.
            return;
        }
        let code = if repr.dont_fragment {
            // We cannot set DF on relayed datagrams: DONT-FRAGMENT is then an unknown
            // comprehension-required attribute (RFC 8656 §7.2).
            self.reply_error(ft, m, txid, 420, Some(&auth), |b| {
                unknown_attributes(b, &[attr::DONT_FRAGMENT]);
            });
            return;
        } else if repr.requested_transport.is_none() {
            400
        } else if repr.requested_transport != Some(PROTO_UDP) {
            442
        } else if (repr.even_port.is_some() && repr.reservation_token.is_some())
            || (repr.requested_family.is_some() && repr.additional_family.is_some())
        {
            400
        } else if self.faults.refuse_allocations {
            508
        } else {
            0
        };
        if code != 0 {
            self.reply_error(ft, m, txid, code, Some(&auth), |_| {});
            return;
        }
        let relay_ip = match repr.requested_family {
            None | Some(1) => self.relay_ip(ft, false),
            Some(2) => self.relay_ip(ft, true),
            Some(_) => None,
        };
        let Some(relay_ip) = relay_ip else {
            self.reply_error(ft, m, txid, 440, Some(&auth), |_| {});
            return;
        };
        let user_count = self.per_user.get(&auth.quota_name).copied().unwrap_or(0);
        let total = self.allocations.len() + self.pending.len();
        if user_count >= self.config.user_quota || total >= self.config.total_quota as usize {
            self.reply_error(ft, m, txid, 486, Some(&auth), |_| {});
            return;
        }
        let (wish, addr) = if let Some(token) = repr.reservation_token {
            // An unknown or lapsed token cannot be satisfied (RFC 8656 §7.2: 508).
            let reserved = self
                .reservations
                .remove(&token)
                .filter(|(_, exp)| *exp > self.now);
            (PortWish::Reserved, reserved.map(|(addr, _)| addr))
        } else {
            let wish = match repr.even_port {
                None => PortWish::Any,
                Some(false) => PortWish::Even,
                Some(true) => PortWish::EvenReserveNext,
            };
            (wish, self.pick_relay_port(relay_ip, wish))
        };
        let Some(addr) = addr else {
            self.reply_error(ft, m, txid, 508, Some(&auth), |_| {});
            return;
        };
        *self.per_user.entry(auth.quota_name.clone()).or_default() += 1;
        let lifetime = self.clamp_lifetime(repr.lifetime);
        self.request_relay(PendingAllocate {
            five_tuple: ft,
            txid,
            auth,
            lifetime,
            addr,
            wish,
            attempts: 0,
            abandoned: false,
        });
    }

    fn request_relay(&mut self, p: PendingAllocate) {
        let request = RelayRequest(self.next_request);
        self.next_request += 1;
        self.events.push_back(Event::OpenRelay {
            request,
            addr: p.addr,
        });
        self.pending.insert(request, p);
    }

    fn relay_ip(&self, ft: FiveTuple, v6: bool) -> Option<IpAddr> {
        let configured = if v6 {
            self.config.relay_ipv6.map(IpAddr::V6)
        } else {
            self.config.relay_ipv4.map(IpAddr::V4)
        };
        configured.or_else(|| {
            let ip = ft.server.ip();
            (ip.is_ipv6() == v6 && !ip.is_unspecified()).then_some(ip)
        })
    }

    fn clamp_lifetime(&self, asked: Option<u32>) -> Duration {
        let asked = asked.map_or(self.config.default_lifetime, |s| {
            Duration::from_secs(u64::from(s))
        });
        // Not `clamp`: it panics when a configuration puts the maximum below the default.
        asked
            .max(self.config.default_lifetime)
            .min(self.config.max_lifetime)
    }

    fn port_free(&self, a: SocketAddr) -> bool {
        !self.by_relay.contains_key(&a)
            && !self.pending.values().any(|p| p.addr == a)
            && !self.reservations.values().any(|(r, _)| *r == a)
    }

    /// A free port in the range, starting at a random one (even, and with a free successor,
    /// if asked).
    fn pick_relay_port(&mut self, ip: IpAddr, wish: PortWish) -> Option<SocketAddr> {
        let (lo, hi) = (self.config.min_port, self.config.max_port);
        if lo > hi {
            return None;
        }
        let span = u64::from(hi - lo) + 1;
        let start = self.rng.next() % span;
        (0..span)
            .map(|i| {
                // `(start + i) % span < span <= 65536`, and lo + that <= hi: fits in u16.
                let port = u64::from(lo) + (start + i) % span;
                SocketAddr::new(ip, u16::try_from(port).unwrap_or(hi))
            })
            .filter(|a| wish == PortWish::Any || a.port() % 2 == 0)
            .find(|a| {
                self.port_free(*a)
                    && (wish != PortWish::EvenReserveNext
                        || (a.port() < hi && self.port_free(SocketAddr::new(ip, a.port() + 1))))
            })
    }

    fn release_quota(&mut self, quota_name: &str) {
        if let Some(n) = self.per_user.get_mut(quota_name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(quota_name);
            }
        }
    }

    fn remove_allocation(&mut self, ft: FiveTuple) {
        if let Some(a) = self.allocations.remove(&ft) {
            self.by_relay.remove(&a.relay);
            self.release_quota(&a.quota_name);
            self.events.push_back(Event::CloseRelay { addr: a.relay });
            // A connection outlives its allocation by the idle timeout (time to allocate anew).
            let idle_at = self.now + self.config.stream_idle_timeout;
            self.streams.set_idle(ft, Some(idle_at));
            debug!(client = %ft.client, relay = %a.relay, "allocation removed");
        }
    }

    /// Finds the allocation for a request that needs one: 437 without, 441 when another user
    /// made it.
    fn allocation_for(
        &mut self,
        ft: FiveTuple,
        method: Method,
        txid: TransactionId,
        auth: &Auth,
    ) -> Option<SocketAddr> {
        let code = match self.allocations.get(&ft) {
            None => 437,
            Some(a) if a.username != auth.username => 441,
            Some(a) => return Some(a.relay),
        };
        self.reply_error(ft, method, txid, code, Some(auth), |_| {});
        None
    }

    fn reply_success(
        &mut self,
        ft: FiveTuple,
        method: Method,
        txid: TransactionId,
        auth: &Auth,
        extra: impl FnOnce(&mut MessageBuilder),
    ) {
        let mut b = MessageBuilder::new(method, Class::Success, txid);
        extra(&mut b);
        self.software(&mut b);
        b.integrity(auth.kind, &auth.key);
        self.reply(ft, b.finish_with_fingerprint());
    }

    fn refresh(&mut self, ft: FiveTuple, txid: TransactionId, repr: &StunRepr<'_>, auth: &Auth) {
        let m = Method::REFRESH;
        if self.allocation_for(ft, m, txid, auth).is_none() {
            return;
        }
        let clamped = self.clamp_lifetime(repr.lifetime);
        let now = self.now;
        let Some(alloc) = self.allocations.get_mut(&ft) else {
            return;
        };
        let family_ok = match repr.requested_family {
            None => true,
            Some(1) => alloc.relay.is_ipv4(),
            Some(2) => alloc.relay.is_ipv6(),
            Some(_) => false,
        };
        if !family_ok {
            self.reply_error(ft, m, txid, 443, Some(auth), |_| {});
            return;
        }
        let lifetime = if repr.lifetime == Some(0) {
            self.remove_allocation(ft);
            self.counters.allocations_deleted += 1;
            Duration::ZERO
        } else {
            alloc.expires = now + clamped;
            clamped
        };
        self.reply_success(ft, m, txid, auth, |b| {
            b.u32_attribute(attr::LIFETIME, secs(lifetime));
        });
    }

    /// Checks a peer address for an allocation: 443 on a family mismatch, 403 when the policy
    /// denies it.
    fn check_peer(&self, relay: SocketAddr, peer: SocketAddr) -> Option<u16> {
        if relay.is_ipv4() != peer.is_ipv4() {
            Some(443)
        } else if !self.config.peer_policy.allows(peer.ip()) {
            Some(403)
        } else {
            None
        }
    }

    fn create_permission(
        &mut self,
        ft: FiveTuple,
        txid: TransactionId,
        repr: &StunRepr<'_>,
        auth: &Auth,
    ) {
        let m = Method::CREATE_PERMISSION;
        let Some(relay) = self.allocation_for(ft, m, txid, auth) else {
            return;
        };
        let code = if repr.peers.is_empty() {
            Some(400)
        } else {
            repr.peers.iter().find_map(|p| self.check_peer(relay, *p))
        };
        if let Some(code) = code {
            self.reply_error(ft, m, txid, code, Some(auth), |_| {});
            return;
        }
        let (now, lifetime, max) = (
            self.now,
            self.config.permission_lifetime,
            self.config.max_permissions,
        );
        let Some(alloc) = self.allocations.get_mut(&ft) else {
            return;
        };
        let new = repr
            .peers
            .iter()
            .filter(|p| !alloc.permissions.contains_key(&p.ip()))
            .count();
        if alloc.permissions.len() + new > max {
            self.reply_error(ft, m, txid, 508, Some(auth), |_| {});
            return;
        }
        for p in &repr.peers {
            if alloc.permissions.insert(p.ip(), now + lifetime).is_none() {
                self.counters.permissions_created += 1;
            }
        }
        self.reply_success(ft, m, txid, auth, |_| {});
    }

    fn channel_bind(
        &mut self,
        ft: FiveTuple,
        txid: TransactionId,
        repr: &StunRepr<'_>,
        auth: &Auth,
    ) {
        let m = Method::CHANNEL_BIND;
        let Some(relay) = self.allocation_for(ft, m, txid, auth) else {
            return;
        };
        let now = self.now;
        let (Some(number), Some(&peer)) = (repr.channel, repr.peers.first()) else {
            debug!(?repr.channel, ?repr.peers, "channel bind without number or peer");
            self.reply_error(ft, m, txid, 400, Some(auth), |_| {});
            return;
        };
        if !is_channel_number(number) {
            self.reply_error(ft, m, txid, 400, Some(auth), |_| {});
            return;
        }
        if let Some(code) = self.check_peer(relay, peer) {
            self.reply_error(ft, m, txid, code, Some(auth), |_| {});
            return;
        }
        let Some(alloc) = self.allocations.get_mut(&ft) else {
            return;
        };
        alloc.quarantine.retain(|(_, _, until)| *until > now);
        // RFC 8656 §12.2: a number bound to another peer, or a peer bound to another number,
        // is a bad request; so is either of them within 5 minutes of such a binding expiring.
        let conflict = alloc.channels.get(&number).is_some_and(|b| b.peer != peer)
            || alloc
                .channel_by_peer
                .get(&peer)
                .is_some_and(|n| *n != number)
            || alloc
                .quarantine
                .iter()
                .any(|(n, p, _)| (*n == number) != (*p == peer));
        if conflict {
            debug!(number, %peer, "channel bind conflicts with a binding");
            self.reply_error(ft, m, txid, 400, Some(auth), |_| {});
            return;
        }
        let fresh = alloc
            .channels
            .insert(
                number,
                ChannelBinding {
                    peer,
                    expires: now + self.config.channel_lifetime,
                },
            )
            .is_none();
        alloc.channel_by_peer.insert(peer, number);
        if fresh {
            self.counters.channels_bound += 1;
        }
        if alloc
            .permissions
            .insert(peer.ip(), now + self.config.permission_lifetime)
            .is_none()
        {
            self.counters.permissions_created += 1;
        }
        self.reply_success(ft, m, txid, auth, |_| {});
    }

    fn handle_send(&mut self, ft: FiveTuple, repr: &StunRepr<'_>) {
        let (Some(&peer), Some(data)) = (repr.peers.first(), repr.data) else {
            self.drop_packet(DropReason::Malformed);
            return;
        };
        self.relay_to_peer(ft, peer, data);
    }

    fn handle_client_channel_data(&mut self, ft: FiveTuple, data: &[u8]) {
        let Ok(cd) = ChannelData::new_checked(data) else {
            self.drop_packet(DropReason::Malformed);
            return;
        };
        let (now, rate) = (self.now, self.config.bandwidth_bytes_per_sec);
        // One lookup of the allocation per packet: channel, permission, bandwidth, relay.
        let verdict = match self.allocations.get_mut(&ft) {
            None => Err(DropReason::NoAllocation),
            Some(a) => match a.channels.get(&cd.channel()) {
                Some(b) if b.expires > now => {
                    let peer = b.peer;
                    a.admit(peer, cd.data().len(), now, rate)
                        .map(|()| (a.relay, peer))
                }
                _ => Err(DropReason::UnknownChannel),
            },
        };
        self.send_to_peer(verdict, cd.data());
    }

    /// Checks that `ft` has an allocation that permits `peer` and has the bandwidth for `len`
    /// bytes; counts the drop when not.
    fn admit(&mut self, ft: FiveTuple, peer: SocketAddr, len: usize) -> bool {
        let (now, rate) = (self.now, self.config.bandwidth_bytes_per_sec);
        let verdict = match self.allocations.get_mut(&ft) {
            None => Err(DropReason::NoAllocation),
            Some(a) => a.admit(peer, len, now, rate),
        };
        if let Err(reason) = verdict {
            self.drop_packet(reason);
            return false;
        }
        true
    }

    /// A Send indication's data for `peer`.
    fn relay_to_peer(&mut self, ft: FiveTuple, peer: SocketAddr, data: &[u8]) {
        let (now, rate) = (self.now, self.config.bandwidth_bytes_per_sec);
        let verdict = match self.allocations.get_mut(&ft) {
            None => Err(DropReason::NoAllocation),
            Some(a) => a
                .admit(peer, data.len(), now, rate)
                .map(|()| (a.relay, peer)),
        };
        self.send_to_peer(verdict, data);
    }

    /// Sends `data` from the relay address to the peer, or counts why not.
    fn send_to_peer(&mut self, verdict: Result<(SocketAddr, SocketAddr), DropReason>, data: &[u8]) {
        let (relay, peer) = match verdict {
            Ok(pair) => pair,
            Err(reason) => {
                self.drop_packet(reason);
                return;
            }
        };
        self.counters.client_to_peer.packets += 1;
        self.counters.client_to_peer.bytes += data.len() as u64;
        self.push_transmit(Transmit {
            transport: Transport::Udp,
            source: relay,
            destination: peer,
            contents: data.to_vec(),
        });
    }

    fn sweep(&mut self, now: Instant) {
        self.reservations.retain(|_, (_, exp)| *exp > now);
        let quarantine = self.config.channel_quarantine;
        let mut expired = Vec::new();
        for (ft, a) in &mut self.allocations {
            if a.expires <= now {
                expired.push(*ft);
                continue;
            }
            a.permissions.retain(|_, exp| *exp > now);
            let lapsed: Vec<u16> = a
                .channels
                .iter()
                .filter(|(_, b)| b.expires <= now)
                .map(|(n, _)| *n)
                .collect();
            for n in lapsed {
                if let Some(b) = a.channels.remove(&n) {
                    a.channel_by_peer.remove(&b.peer);
                    a.quarantine.push((n, b.peer, b.expires + quarantine));
                }
            }
            a.quarantine.retain(|(_, _, until)| *until > now);
        }
        for ft in expired {
            self.remove_allocation(ft);
            self.counters.allocations_expired += 1;
        }
    }
}

impl Allocation {
    /// Whether `peer` may be sent `len` bytes now: a permission, then the bandwidth.
    fn admit(
        &mut self,
        peer: SocketAddr,
        len: usize,
        now: Instant,
        rate: u64,
    ) -> Result<(), DropReason> {
        if !self.permitted(peer.ip(), now) {
            Err(DropReason::NoPermission)
        } else if self.bucket.take(len, now, rate) {
            Ok(())
        } else {
            Err(DropReason::Bandwidth)
        }
    }

    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .get(&ip.to_canonical())
            .or_else(|| self.permissions.get(&ip))
            .is_some_and(|exp| *exp > now)
    }
}

fn unknown_attributes(b: &mut MessageBuilder, kinds: &[u16]) {
    let v: Vec<u8> = kinds.iter().flat_map(|k| k.to_be_bytes()).collect();
    b.attribute(attr::UNKNOWN_ATTRIBUTES, &v);
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// A token bucket in bytes, kept in nano-bytes so that no fraction is lost between packets.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    nano_bytes: u128,
    last: Instant,
}

impl TokenBucket {
    fn new(now: Instant, rate: u64) -> Self {
        Self {
            nano_bytes: u128::from(rate) * 1_000_000_000,
            last: now,
        }
    }

    /// Takes `len` bytes at `now` if the bucket (capacity: one second at `rate`) holds them.
    fn take(&mut self, len: usize, now: Instant, rate: u64) -> bool {
        if rate == 0 {
            return true;
        }
        let cap = u128::from(rate) * 1_000_000_000;
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = self.last.max(now);
        self.nano_bytes = (self.nano_bytes + elapsed * u128::from(rate)).min(cap);
        let need = len as u128 * 1_000_000_000;
        if self.nano_bytes >= need {
            self.nano_bytes -= need;
            true
        } else {
            false
        }
    }
}

/// SplitMix64: the server's seeded RNG (port choice, Data indication transaction IDs).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes12(&mut self) -> [u8; 12] {
        let mut b = [0; 12];
        b[..8].copy_from_slice(&self.next().to_be_bytes());
        b[8..].copy_from_slice(&self.next().to_be_bytes()[..4]);
        b
    }
}
