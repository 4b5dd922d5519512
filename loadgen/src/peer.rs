//! One softphone media leg: a WebRTC endpoint (ICE, DTLS-SRTP, [`crate::media`]) that sends an
//! Opus-like RTP stream and measures what it receives. The agent's leg reaches its remote only
//! through a TURN relay (relay-only ICE, as the softphone is configured); a host leg on loopback
//! stands for a public host in tests.
//!
//! This is the glue a browser has built in: allocate on the TURN server, offer the relayed
//! address as the only candidate, create a permission for every remote address, route the
//! media plane's datagrams through the relay, and feed what the relay delivers back in with the
//! relayed address as the local one.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::ice::candidate::Candidate;
use rtc::peer_connection::transport::{CandidateConfig, RTCIceCandidate, RTCIceCandidateInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::turn::client::{Client, ClientConfig, Event as TurnEvent};

use crate::measure::MediaMeter;
use crate::media::{MediaEvent, MediaSession, Received, is_rtcp};
use crate::turn_stream::{StreamTransport, TlsSession};

/// Opus: 48 kHz RTP clock, 20 ms frames.
pub const CLOCK_RATE: u32 = 48_000;
/// One 20 ms frame in RTP timestamp units.
pub const FRAME_TICKS: u32 = 960;

/// How a relay-only leg reaches its TURN server (the URL's scheme and `transport`).
#[derive(Debug, Clone)]
pub enum TurnTransport {
    /// `turn:…?transport=udp`.
    Udp,
    /// `turn:…?transport=tcp`: STUN and ChannelData framed on a TCP stream.
    Tcp,
    /// `turns:…`: the same inside TLS, the server's certificate checked for `server_name`.
    Tls {
        /// The name in the URL, which the certificate must carry.
        server_name: String,
        /// Roots and settings.
        config: Arc<rustls::ClientConfig>,
    },
}

impl TurnTransport {
    /// How browsers rank relay candidates by their way to the server (UDP first, TLS last), as
    /// an RFC 8445 §5.1.2.1 local preference.
    fn local_preference(&self) -> u32 {
        match self {
            Self::Udp => 65_535,
            Self::Tcp => 32_767,
            Self::Tls { .. } => 16_383,
        }
    }

    fn protocol(&self) -> TransportProtocol {
        match self {
            Self::Udp => TransportProtocol::UDP,
            Self::Tcp | Self::Tls { .. } => TransportProtocol::TCP,
        }
    }
}

/// One TURN server a relay-only leg allocates on, and its credentials.
#[derive(Debug, Clone)]
pub struct TurnCredentials {
    /// The TURN server, already resolved.
    pub server: SocketAddr,
    /// TURN username.
    pub username: String,
    /// TURN password.
    pub password: String,
    /// TURN realm.
    pub realm: String,
    /// UDP, TCP or TLS.
    pub transport: TurnTransport,
}

/// What a peer leg needs to know.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The TURN servers of a relay-only leg, all allocated on at once as a browser gathers
    /// from every `iceServers` URL; empty for a host leg on loopback (a far end in tests).
    pub turn: Vec<TurnCredentials>,
    /// Whether this side answers (a far end in tests and calibration runs; `sim run`'s anchor
    /// is its own media server) rather than offers (the agent).
    pub answering: bool,
    /// The instant all send stamps are measured from (shared by both legs of a call).
    pub epoch: Instant,
}

/// Milestones of a leg, as instants.
#[derive(Debug, Clone, Copy, Default)]
pub struct LegTimes {
    /// The first TURN allocation succeeded (a relay candidate is known).
    pub allocated: Option<Instant>,
    /// ICE connected.
    pub ice_connected: Option<Instant>,
    /// DTLS connected (SRTP keyed).
    pub connected: Option<Instant>,
    /// First RTP packet received.
    pub first_rtp: Option<Instant>,
    /// Since when ICE has been disconnected (the selected pair heard nothing for the
    /// disconnected timeout), until it connects again.
    pub ice_disconnected: Option<Instant>,
    /// When ICE last connected again after a disconnection.
    pub ice_reconnected: Option<Instant>,
    /// Times ICE went from connected to disconnected.
    pub ice_connections_lost: u32,
}

/// Why a leg failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegError {
    /// The TURN server rejected the allocation's credentials.
    TurnAuth(String),
    /// The TURN server refused the allocation.
    TurnAllocation(String),
    /// The TURN server never answered (unreachable: blocked port, dead node).
    TurnUnreachable,
    /// ICE failed.
    IceFailed,
    /// The DTLS handshake failed after ICE.
    DtlsFailed,
    /// The SDP could not be used.
    Sdp(String),
    /// A socket error.
    Io(String),
}

/// The TURN client's first retransmission timeout, milliseconds: Chromium's.
const TURN_INITIAL_RTO_MS: u64 = 250;

/// How an allocation's TURN client reaches its server.
#[derive(Debug)]
enum Wire {
    Udp(UdpSocket),
    Stream(Box<StreamTransport>),
}

/// One TURN allocation of a relay-only leg.
struct Allocation {
    client: Client,
    wire: Wire,
    transport: TurnTransport,
    server: SocketAddr,
    /// The local end of the way to the server: the relay candidate's base.
    local: SocketAddr,
    relay: Option<SocketAddr>,
    permitted: HashSet<SocketAddr>,
    /// CreatePermission transactions in flight, by peer: one per peer at a time, as a browser
    /// asks (the TURN client would start a new one, with its own retransmissions, for every
    /// datagram that waits for the permission).
    requested: Vec<(rtc::stun::message::TransactionId, SocketAddr)>,
    /// Why the allocation failed.
    error: Option<LegError>,
    /// Datagrams the media plane sent through this relay.
    sent: u64,
}

impl Allocation {
    /// Starts allocating on `t`'s server.
    fn start(t: &TurnCredentials, now: Instant) -> Result<Self, LegError> {
        let io = |e: io::Error| LegError::Io(e.to_string());
        let (wire, local) = match &t.transport {
            TurnTransport::Udp => {
                let socket = UdpSocket::bind(loopback_for(t.server)).map_err(io)?;
                socket.set_nonblocking(true).map_err(io)?;
                let local = socket.local_addr().map_err(io)?;
                (Wire::Udp(socket), local)
            }
            TurnTransport::Tcp | TurnTransport::Tls { .. } => {
                let tls = match &t.transport {
                    TurnTransport::Tls {
                        server_name,
                        config,
                    } => Some(TlsSession::new(config.clone(), server_name).map_err(LegError::Io)?),
                    _ => None,
                };
                let stream = StreamTransport::connect(t.server, tls).map_err(io)?;
                let local = stream.local_addr().map_err(io)?;
                (Wire::Stream(Box::new(stream)), local)
            }
        };
        let fail = |e: rtc::shared::error::Error| LegError::TurnAllocation(e.to_string());
        let provider = rtc::crypto::default_provider().map_err(err)?;
        let mut client = Client::new(
            ClientConfig {
                stun_serv_addr: String::new(),
                turn_serv_addr: t.server.to_string(),
                local_addr: local,
                transport_protocol: t.transport.protocol(),
                username: t.username.clone(),
                password: t.password.clone(),
                realm: t.realm.clone(),
                software: "softphone-sim".to_owned(),
                // Chromium's first STUN/TURN retransmission timeout (WebRTC
                // `p2p/base/stun_request.cc`, `STUN_INITIAL_RTO`); it doubles from there. rtc
                // caps the doubling at 1.6 s and sends 7 times (RFC 8489 §6.2.1's Rc), where
                // Chromium goes on to 8 s and 9 sends: within the 8 s ICE collection timeout the
                // two send alike up to the fourth try.
                rto_in_ms: TURN_INITIAL_RTO_MS,
                allocation_refresh_interval_cap: None,
            },
            provider,
        )
        .map_err(fail)?;
        client.allocate(now).map_err(fail)?;
        Ok(Self {
            client,
            wire,
            transport: t.transport.clone(),
            server: t.server,
            local,
            relay: None,
            permitted: HashSet::new(),
            requested: Vec::new(),
            error: None,
            sent: 0,
        })
    }

    /// Reads what the server sent into the TURN client.
    fn read(&mut self, now: Instant, buf: &mut [u8]) {
        let (local_addr, transport_protocol) = (self.local, self.transport.protocol());
        let context = |peer_addr| TransportContext {
            local_addr,
            peer_addr,
            ecn: None,
            transport_protocol,
        };
        let mut messages = Vec::new();
        match &mut self.wire {
            Wire::Udp(socket) => loop {
                match socket.recv_from(buf) {
                    Ok((n, from)) => messages.push((from, BytesMut::from(&buf[..n]))),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => {
                        self.error.get_or_insert(LegError::Io(e.to_string()));
                        break;
                    }
                }
            },
            Wire::Stream(stream) => {
                let mut frames = Vec::new();
                let failed = match stream.recv(&mut frames) {
                    Err(e) => Some(e.to_string()),
                    Ok(()) if stream.closed => Some("the TURN server closed the connection".into()),
                    Ok(()) => None,
                };
                if let Some(why) = failed {
                    self.fail_stream(&why);
                }
                messages.extend(frames.into_iter().map(|f| (self.server, f)));
            }
        }
        for (from, message) in messages {
            // A malformed message is the server's problem, not a reason to stop.
            let _ = self.client.handle_read(TaggedBytesMut {
                now,
                transport: context(from),
                message,
            });
        }
    }

    /// Records a broken stream (the first failure stays): before the allocation, the server
    /// is unreachable on that transport.
    fn fail_stream(&mut self, why: &str) {
        let failure = if self.relay.is_none() {
            LegError::TurnUnreachable
        } else {
            LegError::Io(why.to_owned())
        };
        self.error.get_or_insert(failure);
    }

    /// Sends what the TURN client has to say.
    fn write(&mut self) {
        while let Some(t) = self.client.poll_write() {
            match &mut self.wire {
                Wire::Udp(socket) => {
                    let _ = socket.send_to(&t.message, t.transport.peer_addr);
                }
                Wire::Stream(stream) => {
                    if let Err(e) = stream.send(&t.message) {
                        self.fail_stream(&e.to_string());
                    }
                }
            }
        }
        if let Wire::Stream(stream) = &mut self.wire
            && let Err(e) = stream.flush()
        {
            self.fail_stream(&e.to_string());
        }
    }

    /// Asks for a permission for `addr` unless one is in place or asked for already.
    fn permit(&mut self, now: Instant, addr: SocketAddr) {
        if self.permitted.contains(&addr) || self.requested.iter().any(|(_, a)| *a == addr) {
            return;
        }
        if let Some(relay) = self.relay
            && let Ok(mut r) = self.client.relay(relay)
            && let Ok(Some(tx)) = r.create_permission(now, addr)
        {
            self.requested.push((tx, addr));
        }
    }

    /// A CreatePermission transaction ended: granted (`Some(peer)`) or not.
    fn permission_answered(
        &mut self,
        tx: rtc::stun::message::TransactionId,
        granted: Option<SocketAddr>,
    ) {
        self.requested.retain(|(t, _)| *t != tx);
        if let Some(peer) = granted {
            self.permitted.insert(peer);
        }
    }

    /// Releases the allocation (a Refresh with lifetime 0, queued for [`Self::write`]).
    fn release(&mut self, now: Instant) {
        if let Some(relay) = self.relay
            && let Ok(mut r) = self.client.relay(relay)
        {
            let _ = r.close(now);
        }
    }

    /// IP, transport and TURN framing bytes around a relayed datagram of `len` bytes.
    fn wire_overhead(&self, len: usize) -> u64 {
        match self.transport {
            // IPv4 + UDP + ChannelData.
            TurnTransport::Udp => 28 + 4,
            // IPv4 + TCP + ChannelData padded to four (+ a TLS record's 22 bytes).
            TurnTransport::Tcp => 40 + 4 + (len.next_multiple_of(4) - len) as u64,
            TurnTransport::Tls { .. } => 40 + 4 + (len.next_multiple_of(4) - len) as u64 + 22,
        }
    }
}

/// A WebRTC peer with one Opus-like audio track.
pub struct Peer {
    media: MediaSession,
    /// The host socket of a host leg.
    host: Option<(UdpSocket, SocketAddr)>,
    /// The allocations of a relay-only leg, one per TURN server.
    allocations: Vec<Allocation>,
    config: PeerConfig,
    local_candidates: Vec<RTCIceCandidateInit>,
    remotes: HashSet<SocketAddr>,
    /// Datagrams from the media plane not yet sent: local address, remote, data, when.
    waiting: VecDeque<(SocketAddr, SocketAddr, BytesMut, Instant)>,
    /// Bytes sent on the wire for media, with IP, UDP and TURN framing.
    pub wire_bytes_sent: u64,
    /// RTCP packets sent (SRTCP, told apart by their packet type byte, RFC 5761 §4).
    pub rtcp_sent: u64,
    /// How late each frame was sent against its schedule, µs.
    pub pacing: reports::Distribution,
    /// Milestones.
    pub times: LegTimes,
    /// What this leg measures of the media it receives.
    pub meter: MediaMeter,
    /// Set when the leg failed.
    pub error: Option<LegError>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("host", &self.host.as_ref().map(|h| h.1))
            .field(
                "relays",
                &self.allocations.iter().map(|a| a.relay).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn loopback_for(server: SocketAddr) -> SocketAddr {
    if server.is_ipv4() {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
    }
}

fn err(e: impl std::fmt::Display) -> LegError {
    LegError::Sdp(e.to_string())
}

impl Peer {
    /// Starts a TURN allocation on every configured server (a relay-only leg), or binds a UDP
    /// socket on loopback and offers it as a host candidate (a host leg).
    pub fn new(config: PeerConfig, ssrc: u32, now: Instant) -> Result<Self, LegError> {
        // Before the leg's first frame is due (a no-op once the process has the loop).
        crate::audio::prepare();
        // The answering side takes the DTLS server role (`a=setup:passive`, RFC 5763 §5): the
        // offerer sends its ClientHello once its own ICE has selected a pair. With the answerer
        // as client, 15 % of setups took ~200 ms longer from ICE to DTLS (the answerer's
        // ClientHello raced the offerer's ICE completion and was lost).
        let mut media = MediaSession::new(now, !config.answering, ssrc)
            .map_err(|e| LegError::Sdp(e.to_string()))?;
        let (mut host, mut local_candidates) = (None, Vec::new());
        if config.turn.is_empty() {
            let io = |e: io::Error| LegError::Io(e.to_string());
            let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(io)?;
            socket.set_nonblocking(true).map_err(io)?;
            let local = socket.local_addr().map_err(io)?;
            let (candidate, init) = host_candidate(local).map_err(LegError::Io)?;
            media.add_local_candidate(candidate).map_err(err)?;
            local_candidates.push(init);
            host = Some((socket, local));
        }
        let allocations = config
            .turn
            .iter()
            .map(|t| Allocation::start(t, now))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            media,
            host,
            allocations,
            meter: MediaMeter::new(config.epoch),
            config,
            local_candidates,
            remotes: HashSet::new(),
            waiting: VecDeque::new(),
            wire_bytes_sent: 0,
            rtcp_sent: 0,
            pacing: reports::Distribution::new(reports::Unit::Micros),
            times: LegTimes::default(),
            error: None,
            buf: vec![0u8; 2048],
        })
    }

    /// The leg's sockets, for readiness: [`Self::drive`] whenever one is readable, or writable
    /// while [`Self::wants_write`].
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let host = self.host.iter().map(|(s, _)| s.as_fd());
        let relays = self.allocations.iter().map(|a| match &a.wire {
            Wire::Udp(s) => s.as_fd(),
            Wire::Stream(s) => s.fd(),
        });
        host.chain(relays).collect()
    }

    /// Whether a stream to a TURN server waits to be writable.
    pub fn wants_write(&self) -> bool {
        self.allocations.iter().any(|a| match &a.wire {
            Wire::Stream(s) => a.error.is_none() && s.wants_write(),
            Wire::Udp(_) => false,
        })
    }

    /// The leg's candidates so far: a relay leg's, one per allocation that succeeded; a host
    /// leg's, at once.
    pub fn local_candidates(&self) -> &[RTCIceCandidateInit] {
        &self.local_candidates
    }

    /// How the leg reached the relay that carried its traffic (the allocation ICE chose, seen
    /// as the one most datagrams went through); `None` for a host leg or before any was sent.
    pub fn relay_transport(&self) -> Option<reports::RelayTransport> {
        self.allocations
            .iter()
            .filter(|a| a.sent > 0)
            .max_by_key(|a| a.sent)
            .map(|a| match a.transport {
                TurnTransport::Udp => reports::RelayTransport::Udp,
                TurnTransport::Tcp => reports::RelayTransport::Tcp,
                TurnTransport::Tls { .. } => reports::RelayTransport::Tls,
            })
    }

    /// Whether candidate gathering is over: every allocation succeeded or failed.
    pub fn gathering_done(&self) -> bool {
        self.allocations
            .iter()
            .all(|a| a.relay.is_some() || a.error.is_some())
    }

    /// Why no relay candidate came: the most telling failure of the allocations (credentials
    /// refused, then allocation refused, then no answer), `None` while any is pending.
    pub fn allocation_error(&self) -> Option<LegError> {
        let rank = |e: &LegError| match e {
            LegError::TurnAuth(_) => 0,
            LegError::TurnAllocation(_) => 1,
            _ => 2,
        };
        self.allocations
            .iter()
            .filter_map(|a| a.error.clone())
            .min_by_key(rank)
    }

    /// Creates and applies the offer (the agent's side).
    pub fn offer(&self) -> String {
        self.media.offer()
    }

    /// Applies an offer and answers it (the answering side).
    pub fn answer(&mut self, now: Instant, offer: &str) -> Result<String, LegError> {
        self.media.answer(now, offer).map_err(err)
    }

    /// Applies the answer (the agent's side).
    pub fn accept(&mut self, now: Instant, answer: &str) -> Result<(), LegError> {
        self.media.accept(now, answer).map_err(err)
    }

    /// Adds the remote's candidate and asks the relay to let it in.
    pub fn add_remote_candidate(
        &mut self,
        now: Instant,
        candidate: &RTCIceCandidateInit,
    ) -> Result<(), LegError> {
        if let Some(addr) = candidate_address(&candidate.candidate) {
            self.remotes.insert(addr);
            for a in &mut self.allocations {
                a.permit(now, addr);
            }
        }
        self.media
            .add_remote_candidate(&candidate.candidate)
            .map_err(err)
    }

    /// Starts an ICE restart as a browser does it for `createOffer({iceRestart: true})` after
    /// `setConfiguration` with the servers again: the old allocations are released (best
    /// effort: their path may be the one that is down, and the server's lifetime ends them
    /// otherwise), new ones start on every server of `turn` (the names looked up again, so
    /// possibly other nodes than before), and the media plane takes fresh ICE
    /// credentials, keeping DTLS and SRTP. Returns the new offer; the new relay candidates
    /// come as the allocations succeed ([`Self::gathering_done`]), and [`Self::fds`] changes.
    pub fn restart_ice(
        &mut self,
        now: Instant,
        turn: Vec<TurnCredentials>,
    ) -> Result<String, LegError> {
        for a in &mut self.allocations {
            a.release(now);
            a.write();
        }
        self.config.turn = turn;
        self.allocations = self
            .config
            .turn
            .iter()
            .map(|t| Allocation::start(t, now))
            .collect::<Result<_, _>>()?;
        self.local_candidates.clear();
        self.waiting.clear();
        self.media.restart_ice(now).map_err(err)
    }

    /// Sends `signal` from the next frame on (`MediaSession::set_signal`).
    pub fn set_signal(&mut self, signal: crate::audio::Signal) {
        self.media.set_signal(signal);
    }

    /// Measures the conference tones in what arrives from now on (`MediaSession::listen`).
    pub fn listen(&mut self) {
        self.media.listen();
    }

    /// The conference tones' levels in what arrived since [`Self::listen`].
    pub fn heard(&self) -> Option<reports::Heard> {
        self.media.heard()
    }

    /// When the remote's last STUN message (a check, or the answer to one) arrived.
    pub fn last_stun(&self) -> Option<Instant> {
        self.media.last_stun()
    }

    /// Applies the answer to a restart's offer and the remote's candidates in it.
    pub fn accept_restart(
        &mut self,
        now: Instant,
        answer: &str,
        candidates: &[RTCIceCandidateInit],
    ) -> Result<(), LegError> {
        self.media.accept_restart(now, answer).map_err(err)?;
        for c in candidates {
            self.add_remote_candidate(now, c)?;
        }
        Ok(())
    }

    /// Sends the frame scheduled for `due` (now, late by `now − due`).
    pub fn send_frame_due(&mut self, now: Instant, due: Instant) {
        let late = now.saturating_duration_since(due);
        self.pacing
            .record(u64::try_from(late.as_micros()).unwrap_or(u64::MAX));
        crate::lateness::record(crate::lateness::Sender::Agents, late);
        self.send_frame(now);
    }

    /// Sends one 20 ms frame, stamped with its send instant and sequence.
    pub fn send_frame(&mut self, now: Instant) {
        if self.times.connected.is_none() {
            return;
        }
        self.media
            .send_frame(now.saturating_duration_since(self.config.epoch));
        self.flush(now);
    }

    /// What the DTLS handshake got to: flights last sent and received, retransmissions.
    pub fn dtls_progress(&self) -> String {
        self.media.dtls_progress()
    }

    /// Frames sent so far.
    pub fn frames_sent(&self) -> u64 {
        self.media.frames_sent()
    }

    /// Reads what the sockets have, runs due timers, and sends what is ready. Call it whenever
    /// a socket may be readable (or writable, see [`Self::wants_write`]) and at
    /// [`Self::poll_timeout`].
    pub fn drive(&mut self, now: Instant) {
        if let Some((socket, local)) = &self.host {
            let local = *local;
            let mut received = Vec::new();
            loop {
                match socket.recv_from(&mut self.buf) {
                    Ok((n, from)) => received.push((from, BytesMut::from(&self.buf[..n]))),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => {
                        self.error.get_or_insert(LegError::Io(e.to_string()));
                        break;
                    }
                }
            }
            for (from, message) in received {
                self.deliver(now, local, from, message);
            }
        }
        for a in &mut self.allocations {
            a.read(now, &mut self.buf);
            if a.client.poll_timeout().is_some_and(|t| t <= now) {
                let _ = a.client.handle_timeout(now);
            }
        }
        // It runs only the timers that are due.
        self.media.handle_timeout(now, &self.meter);
        self.turn_events(now);
        self.media_events(now);
        self.flush(now);
    }

    /// When [`Self::drive`] must run next at the latest.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.allocations
            .iter_mut()
            .filter_map(|a| a.client.poll_timeout())
            .chain(self.media.poll_timeout())
            .min()
    }

    fn turn_events(&mut self, now: Instant) {
        for i in 0..self.allocations.len() {
            while let Some(event) = self.allocations[i].client.poll_event() {
                self.turn_event(i, now, event);
            }
        }
    }

    fn turn_event(&mut self, i: usize, now: Instant, event: TurnEvent) {
        let a = &mut self.allocations[i];
        match event {
            TurnEvent::AllocateResponse(_, relay) => {
                a.relay = Some(relay);
                self.times.allocated.get_or_insert(now);
                match relay_candidate(relay, a.local, &a.transport) {
                    Ok((candidate, init)) => {
                        let _ = self.media.add_local_candidate(candidate);
                        self.local_candidates.push(init);
                    }
                    Err(e) => a.error = Some(LegError::TurnAllocation(e)),
                }
                for &addr in &self.remotes {
                    a.permit(now, addr);
                }
            }
            TurnEvent::AllocateError(_, e) => {
                let text = e.to_string();
                a.error = Some(
                    if text.contains("401")
                        || text.to_ascii_lowercase().contains("unauthor")
                        || text.contains("441")
                    {
                        LegError::TurnAuth(text)
                    } else {
                        LegError::TurnAllocation(text)
                    },
                );
            }
            TurnEvent::TransactionTimeout(_) if a.relay.is_none() => {
                a.error.get_or_insert(LegError::TurnUnreachable);
            }
            TurnEvent::CreatePermissionResponse(tx, peer) => a.permission_answered(tx, Some(peer)),
            // Refused or unanswered (a stale nonce, loss): the next datagram for the peer asks
            // again.
            TurnEvent::CreatePermissionError(tx, _) | TurnEvent::TransactionTimeout(tx) => {
                a.permission_answered(tx, None);
            }
            TurnEvent::DataIndicationOrChannelData(_, from, data) => {
                let Some(relay) = a.relay else { return };
                if self.remotes.insert(from) {
                    // A peer-reflexive remote: let it in everywhere too.
                    for a in &mut self.allocations {
                        a.permit(now, from);
                    }
                }
                self.deliver(now, relay, from, data);
            }
            _ => {}
        }
    }

    /// Hands a datagram from the remote to the media plane.
    fn deliver(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, data: BytesMut) {
        if self
            .media
            .handle_read(now, local, from, data, &mut self.meter)
            == Received::Rtp
        {
            self.times.first_rtp.get_or_insert(now);
        }
    }

    fn media_events(&mut self, now: Instant) {
        while let Some(event) = self.media.poll_event() {
            match event {
                MediaEvent::IceConnected => {
                    self.times.ice_connected.get_or_insert(now);
                    if self.times.ice_disconnected.take().is_some() {
                        self.times.ice_reconnected = Some(now);
                    }
                }
                MediaEvent::IceDisconnected => {
                    if self.times.ice_disconnected.is_none() {
                        self.times.ice_disconnected = Some(now);
                        self.times.ice_connections_lost += 1;
                    }
                }
                MediaEvent::IceFailed => {
                    self.error.get_or_insert(LegError::IceFailed);
                }
                MediaEvent::Connected => {
                    self.times.connected.get_or_insert(now);
                }
                MediaEvent::DtlsFailed => {
                    self.error.get_or_insert(LegError::DtlsFailed);
                }
            }
        }
    }

    fn flush(&mut self, now: Instant) {
        // Datagrams held for a permission go first, then the media plane's new ones straight
        // from its queue; what still lacks a permission is held again.
        let mut held = std::mem::take(&mut self.waiting);
        loop {
            let Some((local, peer, data, at)) = held.pop_front().or_else(|| {
                self.media
                    .poll_transmit()
                    .map(|(local, peer, data)| (local, peer, data, now))
            }) else {
                break;
            };
            let rtcp = is_rtcp(&data);
            if let Some((socket, _)) = &self.host {
                self.wire_bytes_sent += data.len() as u64 + 28; // IPv4 + UDP
                self.rtcp_sent += u64::from(rtcp);
                let _ = socket.send_to(&data, peer);
                continue;
            }
            // The allocation whose relay the media plane sends from (a relay candidate is
            // its own base, RFC 8445 §5.1.1); a local socket address only if no relay matches,
            // since a TCP and a UDP socket may share a port number.
            let by = |f: &dyn Fn(&Allocation) -> bool| self.allocations.iter().position(f);
            let Some(i) = by(&|a| a.relay == Some(local))
                .or_else(|| by(&|a| a.local == local))
                .or_else(|| by(&|a| a.relay.is_some()))
            else {
                continue;
            };
            let a = &mut self.allocations[i];
            let Some(relay) = a.relay else { continue };
            if !a.permitted.contains(&peer) {
                self.remotes.insert(peer);
                a.permit(now, peer);
                // Datagrams older than a second are stale (ICE retransmits its checks).
                if now.saturating_duration_since(at) < Duration::from_secs(1) {
                    self.waiting.push_back((local, peer, data, at));
                }
                continue;
            }
            self.wire_bytes_sent += data.len() as u64 + a.wire_overhead(data.len());
            a.sent += 1;
            self.rtcp_sent += u64::from(rtcp);
            if let Ok(mut r) = a.client.relay(relay) {
                let _ = r.send_to(now, &data, peer);
            }
        }
        for a in &mut self.allocations {
            a.write();
        }
    }

    /// Closes the media plane and releases the allocations.
    pub fn close(&mut self, now: Instant) {
        self.media.close(now);
        // The media plane's last datagrams (DTLS close_notify) leave through the allocations
        // before their release: queued behind it, the server would drop them as for no
        // allocation.
        self.flush(now);
        for a in &mut self.allocations {
            a.release(now);
        }
        self.flush(now);
    }
}

/// A candidate for the media plane, and as signalled.
fn signalled(candidate: Candidate) -> Result<(Candidate, RTCIceCandidateInit), String> {
    let init = RTCIceCandidate::from(&candidate)
        .to_json()
        .map_err(|e| e.to_string())?;
    Ok((candidate, init))
}

fn host_candidate(local: SocketAddr) -> Result<(Candidate, RTCIceCandidateInit), String> {
    let candidate = rtc::ice::candidate::candidate_host::CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: local.ip().to_string(),
            port: local.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(|e| e.to_string())?;
    signalled(candidate)
}

fn relay_candidate(
    relay: SocketAddr,
    base: SocketAddr,
    transport: &TurnTransport,
) -> Result<(Candidate, RTCIceCandidateInit), String> {
    // RFC 8445 §5.1.2.1 with the relay type preference 0 and component 1.
    let priority = (transport.local_preference() << 8) + 255;
    let candidate = rtc::ice::candidate::candidate_relay::CandidateRelayConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: relay.ip().to_string(),
            port: relay.port(),
            component: 1,
            priority,
            ..Default::default()
        },
        rel_addr: base.ip().to_string(),
        rel_port: base.port(),
        ..Default::default()
    }
    .new_candidate_relay()
    .map_err(|e| e.to_string())?;
    signalled(candidate)
}

/// The transport address of an ICE candidate line (`candidate:F C udp P ADDR PORT typ …`).
pub fn candidate_address(candidate: &str) -> Option<SocketAddr> {
    let parts: Vec<&str> = candidate.split_whitespace().collect();
    let ip: std::net::IpAddr = parts.get(4)?.parse().ok()?;
    let port: u16 = parts.get(5)?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}
