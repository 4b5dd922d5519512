//! One softphone media leg, sans-I/O: a WebRTC endpoint (ICE, DTLS-SRTP, [`crate::media`]) that
//! sends an Opus-like RTP stream and measures what it receives. The agent's leg reaches its
//! remote only through a TURN relay (relay-only ICE, as the softphone is configured); a host leg
//! stands for a public host in tests.
//!
//! This is the glue a browser has built in: allocate on the TURN server, offer the relayed
//! address as the only candidate, create a permission for every remote address, route the
//! media plane's datagrams through the relay, and feed what the relay delivers back in with the
//! relayed address as the local one.
//!
//! The leg owns no socket and reads no clock (STYLE.md): its driver hands it what each of its
//! *wires* received ([`Leg::handle_datagram`], [`Leg::handle_wire_error`]) with the instant,
//! runs it at [`Leg::poll_timeout`] ([`Leg::handle_timeout`]), and sends what
//! [`Leg::poll_transmit`] gives on the wire it names. A wire is the leg's way out: a host leg's
//! one socket, or one per TURN allocation (a UDP socket, or a TCP/TLS stream whose framing the
//! driver does). [`crate::peer::Peer`] drives it on real sockets; a virtual-time driver drives it
//! on a simulated clock.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::crypto::RTCCryptoProvider;
use rtc::ice::candidate::Candidate;
use rtc::peer_connection::transport::{CandidateConfig, RTCIceCandidate, RTCIceCandidateInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::turn::client::{Client, ClientConfig, Event as TurnEvent};

use crate::entropy::Entropy;
use crate::measure::MediaMeter;
use crate::media::{MediaEvent, MediaSession, Received, is_rtcp};

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
    /// Where its certificate, keys, credentials and handshake randoms come from.
    pub entropy: Entropy,
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

/// A datagram (or, on a stream wire, one STUN message or ChannelData frame) to send.
#[derive(Debug)]
pub struct Transmit {
    /// The wire to send it on: the leg's wires are numbered from 0 in the order they were
    /// opened, [`Leg::new`]'s first, then each [`Leg::restart_ice`]'s.
    pub wire: usize,
    /// Where to: the remote (host leg) or the TURN server.
    pub to: SocketAddr,
    /// The bytes.
    pub data: BytesMut,
}

/// What a wire is, for its driver: the socket to open for it.
#[derive(Debug, Clone)]
pub enum WireKind {
    /// A host leg's UDP socket on loopback.
    Host,
    /// A UDP socket, TCP or TLS stream to a TURN server.
    Turn(TurnCredentials),
}

/// One TURN allocation of a relay-only leg.
struct Allocation {
    client: Client,
    transport: TurnTransport,
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
    /// Starts allocating on `t`'s server from the wire whose local end is `local`.
    fn start(
        t: &TurnCredentials,
        local: SocketAddr,
        now: Instant,
        provider: Arc<dyn RTCCryptoProvider>,
    ) -> Result<Self, LegError> {
        let fail = |e: rtc::shared::error::Error| LegError::TurnAllocation(e.to_string());
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
            transport: t.transport.clone(),
            local,
            relay: None,
            permitted: HashSet::new(),
            requested: Vec::new(),
            error: None,
            sent: 0,
        })
    }

    /// Feeds one message from the server to the TURN client.
    fn read(&mut self, now: Instant, from: SocketAddr, message: BytesMut) {
        // A malformed message is the server's problem, not a reason to stop.
        let _ = self.client.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: self.transport.protocol(),
            },
            message,
        });
    }

    /// Records a broken wire (the first failure stays): before the allocation, the server is
    /// unreachable on that transport.
    fn fail_wire(&mut self, why: &str) {
        let failure = if self.relay.is_none() {
            LegError::TurnUnreachable
        } else {
            LegError::Io(why.to_owned())
        };
        self.error.get_or_insert(failure);
    }

    /// Moves what the TURN client has to say to `out`, as wire `wire`'s.
    fn write(&mut self, wire: usize, out: &mut VecDeque<Transmit>) {
        while let Some(t) = self.client.poll_write() {
            out.push_back(Transmit {
                wire,
                to: t.transport.peer_addr,
                data: t.message,
            });
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

/// A WebRTC peer with one Opus-like audio track, without its sockets.
pub struct Leg {
    media: MediaSession,
    /// The randomness of its media session and TURN clients (restarts allocate from it too).
    crypto: Arc<dyn RTCCryptoProvider>,
    /// The host address of a host leg (its wire 0).
    host: Option<SocketAddr>,
    /// The allocations of a relay-only leg, one per TURN server (allocation `i` on wire
    /// `wire_base + i`).
    allocations: Vec<Allocation>,
    /// The wire of the first allocation: wires are numbered in the order they were opened
    /// over the leg's life, so a restart's new wires never take an old one's number while the
    /// old one still has its release to send.
    wire_base: usize,
    config: PeerConfig,
    local_candidates: Vec<RTCIceCandidateInit>,
    remotes: HashSet<SocketAddr>,
    /// Datagrams from the media plane not yet sent: local address, remote, data, when.
    waiting: VecDeque<(SocketAddr, SocketAddr, BytesMut, Instant)>,
    /// What is ready to go out, in order.
    transmits: VecDeque<Transmit>,
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
}

impl std::fmt::Debug for Leg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leg")
            .field("host", &self.host)
            .field(
                "relays",
                &self.allocations.iter().map(|a| a.relay).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn err(e: impl std::fmt::Display) -> LegError {
    LegError::Sdp(e.to_string())
}

impl Leg {
    /// The wires a leg of `config` needs, in the order [`Self::new`] takes their local ends:
    /// a host leg's one socket, or one per TURN server of a relay-only leg (and, for a
    /// restart on other servers, [`Self::restart_ice`]'s).
    pub fn wires(config: &PeerConfig) -> Vec<WireKind> {
        if config.turn.is_empty() {
            vec![WireKind::Host]
        } else {
            config.turn.iter().cloned().map(WireKind::Turn).collect()
        }
    }

    /// A leg whose wires' local ends are `locals` (as [`Self::wires`] lists them): a host leg
    /// offers its one as a host candidate; a relay-only leg starts a TURN allocation on every
    /// configured server, as a browser gathers from every `iceServers` URL.
    ///
    /// `unix_now` is the wall clock at `now` (since the Unix epoch): the edge reads it, a
    /// virtual-time driver derives it from its simulated clock.
    pub fn new(
        config: PeerConfig,
        ssrc: u32,
        now: Instant,
        unix_now: Duration,
        locals: &[SocketAddr],
    ) -> Result<Self, LegError> {
        let wanted = Self::wires(&config).len();
        if locals.len() != wanted {
            return Err(LegError::Io(format!(
                "{} wires given, the leg has {wanted}",
                locals.len()
            )));
        }
        // The answering side takes the DTLS server role (`a=setup:passive`, RFC 5763 §5): the
        // offerer sends its ClientHello once its own ICE has selected a pair. With the answerer
        // as client, 15 % of setups took ~200 ms longer from ICE to DTLS (the answerer's
        // ClientHello raced the offerer's ICE completion and was lost).
        let crypto = config.entropy.provider().map_err(LegError::Io)?;
        let mut media = MediaSession::new(now, unix_now, !config.answering, ssrc, crypto.clone())
            .map_err(|e| LegError::Sdp(e.to_string()))?;
        let (mut host, mut local_candidates) = (None, Vec::new());
        if config.turn.is_empty() {
            let local = locals[0];
            let (candidate, init) = host_candidate(local).map_err(LegError::Io)?;
            media.add_local_candidate(candidate).map_err(err)?;
            local_candidates.push(init);
            host = Some(local);
        }
        let allocations = config
            .turn
            .iter()
            .zip(locals)
            .map(|(t, &local)| Allocation::start(t, local, now, crypto.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut leg = Self {
            media,
            crypto,
            host,
            allocations,
            wire_base: 0,
            meter: MediaMeter::new(config.epoch),
            config,
            local_candidates,
            remotes: HashSet::new(),
            waiting: VecDeque::new(),
            transmits: VecDeque::new(),
            wire_bytes_sent: 0,
            rtcp_sent: 0,
            pacing: reports::Distribution::new(reports::Unit::Micros),
            times: LegTimes::default(),
            error: None,
        };
        leg.write_allocations();
        Ok(leg)
    }

    /// Takes a datagram (or stream frame) that wire `wire` received from `from`. Run
    /// [`Self::handle_timeout`] after a batch of them: it acts on what they brought.
    pub fn handle_datagram(&mut self, now: Instant, wire: usize, from: SocketAddr, data: BytesMut) {
        if let Some(local) = self.host {
            if wire == 0 {
                self.deliver(now, local, from, data);
            }
        } else if let Some(a) = self.allocation_mut(wire) {
            a.read(now, from, data);
        }
    }

    /// Wire `wire` broke (`why`): a stream closed or failed, or a socket error. Before its
    /// allocation succeeded, its server counts as unreachable on that transport.
    pub fn handle_wire_error(&mut self, wire: usize, why: &str) {
        if self.host.is_some() {
            self.error.get_or_insert(LegError::Io(why.to_owned()));
        } else if let Some(a) = self.allocation_mut(wire) {
            a.fail_wire(why);
        }
    }

    fn allocation_mut(&mut self, wire: usize) -> Option<&mut Allocation> {
        let i = wire.checked_sub(self.wire_base)?;
        self.allocations.get_mut(i)
    }

    /// Whether wire `wire` is dead (its allocation failed, or a restart replaced it): its
    /// driver can close it once [`Self::poll_transmit`] is drained.
    pub fn wire_failed(&self, wire: usize) -> bool {
        match wire.checked_sub(self.wire_base) {
            Some(i) => self.allocations.get(i).is_some_and(|a| a.error.is_some()),
            None => self.host.is_none(),
        }
    }

    /// Runs the timers that are due and acts on what arrived: TURN and media events, then
    /// queues what is ready to send ([`Self::poll_transmit`]). Call it after a batch of
    /// [`Self::handle_datagram`] and at [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        for a in &mut self.allocations {
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

    /// When [`Self::handle_timeout`] must run next at the latest.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.allocations
            .iter_mut()
            .filter_map(|a| a.client.poll_timeout())
            .chain(self.media.poll_timeout())
            .min()
    }

    /// The next datagram to send, in order.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
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
    /// otherwise; their last words are in [`Self::poll_transmit`] before the new wires' first),
    /// new ones start on every server of `turn` (the names looked up again, so possibly other
    /// nodes than before) from the wires whose local ends are `locals` (as [`Self::wires`]
    /// lists them for the new servers; they take the next wire numbers), and the media plane takes fresh
    /// ICE credentials, keeping DTLS and SRTP. Returns the new offer; the new relay candidates
    /// come as the allocations succeed ([`Self::gathering_done`]).
    pub fn restart_ice(
        &mut self,
        now: Instant,
        turn: Vec<TurnCredentials>,
        locals: &[SocketAddr],
    ) -> Result<String, LegError> {
        if locals.len() != turn.len() {
            return Err(LegError::Io(format!(
                "{} wires given for {} TURN servers",
                locals.len(),
                turn.len()
            )));
        }
        self.release_allocations(now);
        self.wire_base += self.allocations.len();
        self.config.turn = turn;
        self.allocations = self
            .config
            .turn
            .iter()
            .zip(locals)
            .map(|(t, &local)| Allocation::start(t, local, now, self.crypto.clone()))
            .collect::<Result<_, _>>()?;
        self.write_allocations();
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

    /// As a call ends: the media figures of the stream `sender` sent and this leg measured.
    /// The meter is spent (a fresh one takes its place).
    pub fn received_from(
        &mut self,
        sender: &Self,
        codec: reports::emodel::Codec,
    ) -> reports::record::MediaStats {
        let fresh = MediaMeter::new(self.config.epoch);
        std::mem::replace(&mut self.meter, fresh).finish(
            sender.frames_sent(),
            sender.wire_bytes_sent,
            codec,
        )
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
            if self.host.is_some() {
                self.wire_bytes_sent += data.len() as u64 + 28; // IPv4 + UDP
                self.rtcp_sent += u64::from(rtcp);
                self.transmits.push_back(Transmit {
                    wire: 0,
                    to: peer,
                    data,
                });
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
        self.write_allocations();
    }

    /// Queues what every allocation's TURN client has to say.
    fn write_allocations(&mut self) {
        for (i, a) in self.allocations.iter_mut().enumerate() {
            a.write(self.wire_base + i, &mut self.transmits);
        }
    }

    /// Releases every allocation (best effort) and queues the Refreshes that say so.
    fn release_allocations(&mut self, now: Instant) {
        for a in &mut self.allocations {
            a.release(now);
        }
        self.write_allocations();
    }

    /// Closes the media plane and releases the allocations.
    pub fn close(&mut self, now: Instant) {
        self.media.close(now);
        // The media plane's last datagrams (DTLS close_notify) leave through the allocations
        // before their release: queued behind it, the server would drop them as for no
        // allocation.
        self.flush(now);
        self.release_allocations(now);
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
