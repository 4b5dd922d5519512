//! One softphone media leg: a WebRTC peer connection that sends an Opus-like RTP stream and
//! measures what it receives. The agent's leg reaches its remote only through a TURN relay
//! (relay-only ICE, as the softphone is configured); the anchor's leg is a host on loopback, as
//! the vendor's media servers are public hosts the agent's relay sends to.
//!
//! `rtc` is sans-I/O and gathers no candidates itself, so this is the glue a browser has built
//! in: allocate on the TURN server, offer the relayed address as the only candidate, create a
//! permission for every remote address, route the peer connection's datagrams through the
//! relay, and feed what the relay delivers back in with the relayed address as the local one.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::{
    CandidateConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit, RTCIceServer,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::turn::client::{Client, ClientConfig, Event as TurnEvent};

use crate::measure::{MediaMeter, Stamp};

/// Opus: 48 kHz RTP clock, 20 ms frames.
pub const CLOCK_RATE: u32 = 48_000;
/// One 20 ms frame in RTP timestamp units.
pub const FRAME_TICKS: u32 = 960;
/// Payload bytes of one frame: Opus at 32 kbit/s, 20 ms.
pub const PAYLOAD_BYTES: usize = 80;

/// The TURN server a relay-only leg allocates on, and its credentials.
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
}

/// What a peer leg needs to know.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The TURN server of a relay-only leg; `None` for a host leg on loopback (the anchor).
    pub turn: Option<TurnCredentials>,
    /// Whether this side answers (the anchor) rather than offers (the agent).
    pub answering: bool,
    /// The instant all send stamps are measured from (shared by both legs of a call).
    pub epoch: Instant,
}

/// Milestones of a leg, as instants.
#[derive(Debug, Clone, Copy, Default)]
pub struct LegTimes {
    /// The TURN allocation succeeded (the relay candidate is known).
    pub allocated: Option<Instant>,
    /// ICE connected.
    pub ice_connected: Option<Instant>,
    /// DTLS (the peer connection) connected.
    pub connected: Option<Instant>,
    /// First RTP packet received.
    pub first_rtp: Option<Instant>,
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
    /// The peer connection failed after ICE (DTLS).
    DtlsFailed,
    /// The SDP could not be used.
    Sdp(String),
    /// A socket error.
    Io(String),
}

/// A WebRTC peer with one Opus-like audio track.
pub struct Peer {
    pc: RTCPeerConnection,
    /// The TURN client of a relay-only leg.
    turn: Option<Client>,
    socket: UdpSocket,
    local: SocketAddr,
    config: PeerConfig,
    relay: Option<SocketAddr>,
    local_candidate: Option<RTCIceCandidateInit>,
    remotes: HashSet<SocketAddr>,
    permitted: HashSet<SocketAddr>,
    waiting: VecDeque<(SocketAddr, BytesMut, Instant)>,
    sender: RTCRtpSenderId,
    ssrc: u32,
    seq: u16,
    frames_sent: u64,
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
            .field("local", &self.local)
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

fn err(e: impl std::fmt::Display) -> LegError {
    LegError::Sdp(e.to_string())
}

impl Peer {
    /// Binds a UDP socket on loopback and starts the TURN allocation (a relay-only leg) or
    /// offers the socket as a host candidate (a host leg).
    pub fn new(config: PeerConfig, ssrc: u32, now: Instant) -> Result<Self, LegError> {
        let io = |e: io::Error| LegError::Io(e.to_string());
        let bind: SocketAddr = if config.turn.as_ref().is_none_or(|t| t.server.is_ipv4()) {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        }
        .parse()
        .map_err(|_| LegError::Io("bind".into()))?;
        let socket = UdpSocket::bind(bind).map_err(io)?;
        socket.set_nonblocking(true).map_err(io)?;
        let local = socket.local_addr().map_err(io)?;

        let mut media = MediaEngine::default();
        media.register_default_codecs().map_err(err)?;
        let setting = SettingEngineBuilder::default()
            // pion's 2 s wait before nominating relay pairs would show up as setup time.
            .with_relay_acceptance_min_wait(Some(Duration::ZERO))
            // RFC 8445 §14.2's pacing, Ta = 50 ms, as browsers pace checks; pion's 200 ms would
            // add up to 200 ms of setup while the controlling side waits to nominate. 20 checks
            // keep the 1 s window a lossy path needs.
            .with_ice_connection_attempts(Some(Duration::from_millis(50)), Some(20))
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .build();
        let rtc_config = RTCConfigurationBuilder::new()
            .with_ice_servers(
                config
                    .turn
                    .iter()
                    .map(|t| RTCIceServer {
                        urls: vec![format!("turn:{}?transport=udp", t.server)],
                        username: t.username.clone(),
                        credential: t.password.clone(),
                    })
                    .collect(),
            )
            .build();
        // RTCP sender and receiver reports both ways (RFC 3550 §6.4), as a browser sends them.
        let interceptors =
            rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports(
                rtc::interceptor::Registry::new(),
            );
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(rtc_config)
            .with_setting_engine(setting)
            .with_media_engine(media)
            .with_interceptor_registry(interceptors)
            .build(now)
            .map_err(err)?;
        let track = MediaStreamTrack::new(
            format!("stream-{ssrc}"),
            format!("audio-{ssrc}"),
            "softphone audio".to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_OPUS.to_owned(),
                    clock_rate: CLOCK_RATE,
                    channels: 2,
                    sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                    rtcp_feedback: vec![],
                },
                ..Default::default()
            }],
        );
        let sender = pc.add_track(track).map_err(err)?;

        let (turn, local_candidate) = match &config.turn {
            Some(credentials) => (Some(allocate(credentials, local, now)?), None),
            None => {
                let host = host_candidate(local).map_err(LegError::Io)?;
                pc.add_local_candidate(host.clone()).map_err(err)?;
                (None, Some(host))
            }
        };
        Ok(Self {
            pc,
            turn,
            socket,
            local,
            meter: MediaMeter::new(config.epoch),
            config,
            relay: None,
            local_candidate,
            remotes: HashSet::new(),
            permitted: HashSet::new(),
            waiting: VecDeque::new(),
            sender,
            ssrc,
            seq: 0,
            frames_sent: 0,
            wire_bytes_sent: 0,
            rtcp_sent: 0,
            pacing: reports::Distribution::new(reports::Unit::Micros),
            times: LegTimes::default(),
            error: None,
            buf: vec![0u8; 2048],
        })
    }

    /// The leg's socket (for readiness: [`Self::drive`] whenever it is readable).
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// The leg's candidate: a relay leg's once its allocation succeeded, a host leg's at once.
    pub fn local_candidate(&self) -> Option<&RTCIceCandidateInit> {
        self.local_candidate.as_ref()
    }

    /// Creates and applies the offer (the agent's side).
    pub fn offer(&mut self, now: Instant) -> Result<RTCSessionDescription, LegError> {
        let offer = self.pc.create_offer(None).map_err(err)?;
        self.pc
            .set_local_description(now, offer.clone())
            .map_err(err)?;
        Ok(offer)
    }

    /// Applies an offer and answers it (the anchor's side).
    pub fn answer(
        &mut self,
        now: Instant,
        offer: RTCSessionDescription,
    ) -> Result<RTCSessionDescription, LegError> {
        self.pc.set_remote_description(now, offer).map_err(err)?;
        let answer = self.pc.create_answer(None).map_err(err)?;
        self.pc
            .set_local_description(now, answer.clone())
            .map_err(err)?;
        Ok(answer)
    }

    /// Applies the answer (the agent's side).
    pub fn accept(&mut self, now: Instant, answer: RTCSessionDescription) -> Result<(), LegError> {
        self.pc.set_remote_description(now, answer).map_err(err)
    }

    /// Adds the remote's candidate and asks the relay to let it in.
    pub fn add_remote_candidate(
        &mut self,
        now: Instant,
        candidate: RTCIceCandidateInit,
    ) -> Result<(), LegError> {
        if let Some(addr) = candidate_address(&candidate.candidate) {
            self.remotes.insert(addr);
            self.permit(now, addr);
        }
        self.pc.add_remote_candidate(candidate).map_err(err)
    }

    /// Sends the frame scheduled for `due` (now, late by `now − due`).
    pub fn send_frame_due(&mut self, now: Instant, due: Instant) {
        self.pacing.record(
            u64::try_from(now.saturating_duration_since(due).as_micros()).unwrap_or(u64::MAX),
        );
        self.send_frame(now);
    }

    /// Sends one 20 ms frame, stamped with its send instant and sequence.
    pub fn send_frame(&mut self, now: Instant) {
        if self.times.connected.is_none() {
            return;
        }
        let Some(mut sender) = self.pc.rtp_sender(self.sender) else {
            return;
        };
        let Some(pt) = sender
            .get_parameters()
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_OPUS))
            .map(|c| c.payload_type)
        else {
            return;
        };
        let mut payload = vec![0u8; PAYLOAD_BYTES];
        Stamp {
            sent: now.saturating_duration_since(self.config.epoch),
            frame: self.frames_sent,
        }
        .write(&mut payload);
        let packet = rtc::rtp::packet::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: pt,
                sequence_number: self.seq,
                timestamp: (self.frames_sent as u32).wrapping_mul(FRAME_TICKS),
                ssrc: self.ssrc,
                marker: self.frames_sent == 0,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        };
        if sender.write_rtp(now, packet).is_ok() {
            self.seq = self.seq.wrapping_add(1);
            self.frames_sent += 1;
        }
    }

    /// Frames sent so far.
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent
    }

    /// Reads what the socket has, runs due timers, and sends what is ready. Call it whenever the
    /// socket may be readable and at [`Self::poll_timeout`].
    pub fn drive(&mut self, now: Instant) {
        loop {
            match self.socket.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    let msg = TaggedBytesMut {
                        now,
                        transport: TransportContext {
                            local_addr: self.local,
                            peer_addr: from,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: BytesMut::from(&self.buf[..n]),
                    };
                    // A malformed datagram is the sender's problem, not a reason to stop.
                    match &mut self.turn {
                        Some(turn) => {
                            let _ = turn.handle_read(msg);
                        }
                        None => self.deliver(msg),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    self.error.get_or_insert(LegError::Io(e.to_string()));
                    break;
                }
            }
        }
        if let Some(turn) = &mut self.turn
            && turn.poll_timeout().is_some_and(|t| t <= now)
        {
            let _ = turn.handle_timeout(now);
        }
        if self.pc.poll_timeout().is_some_and(|t| t <= now) {
            let _ = self.pc.handle_timeout(now);
        }
        self.turn_events(now);
        self.pc_events(now);
        self.flush(now);
    }

    /// When [`Self::drive`] must run next at the latest.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.turn.as_mut().and_then(Client::poll_timeout),
            self.pc.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn permit(&mut self, now: Instant, addr: SocketAddr) {
        let (Some(relay), Some(turn)) = (self.relay, &mut self.turn) else {
            return;
        };
        if let Ok(mut r) = turn.relay(relay) {
            let _ = r.create_permission(now, addr);
        }
    }

    fn turn_events(&mut self, now: Instant) {
        while let Some(event) = self.turn.as_mut().and_then(Client::poll_event) {
            match event {
                TurnEvent::AllocateResponse(_, relay) => {
                    self.relay = Some(relay);
                    self.times.allocated = Some(now);
                    match relay_candidate(relay, self.local) {
                        Ok(init) => {
                            let _ = self.pc.add_local_candidate(init.clone());
                            self.local_candidate = Some(init);
                        }
                        Err(e) => self.error = Some(LegError::TurnAllocation(e)),
                    }
                    for addr in self.remotes.clone() {
                        self.permit(now, addr);
                    }
                }
                TurnEvent::AllocateError(_, e) => {
                    let text = e.to_string();
                    self.error = Some(
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
                TurnEvent::TransactionTimeout(_) if self.relay.is_none() => {
                    self.error = Some(LegError::TurnUnreachable);
                }
                TurnEvent::CreatePermissionResponse(_, peer) => {
                    self.permitted.insert(peer);
                }
                TurnEvent::DataIndicationOrChannelData(_, from, data) => {
                    let Some(relay) = self.relay else { continue };
                    if !self.remotes.contains(&from) {
                        // A peer-reflexive remote: let it in too.
                        self.remotes.insert(from);
                        self.permit(now, from);
                    }
                    self.deliver(TaggedBytesMut {
                        now,
                        transport: TransportContext {
                            local_addr: relay,
                            peer_addr: from,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: data,
                    });
                }
                _ => {}
            }
        }
    }

    /// Hands a datagram from the remote to the peer connection.
    fn deliver(&mut self, msg: TaggedBytesMut) {
        if is_rtcp(&msg.message) {
            // Counted here: `rtc`'s report interceptors consume SR/RR themselves.
            self.meter.rtcp_reports += 1;
        }
        let _ = self.pc.handle_read(msg);
    }

    fn pc_events(&mut self, now: Instant) {
        while let Some(event) = self.pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                    RTCIceConnectionState::Connected,
                ) => {
                    self.times.ice_connected.get_or_insert(now);
                }
                RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                    RTCIceConnectionState::Failed,
                ) => {
                    self.error.get_or_insert(LegError::IceFailed);
                }
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                    RTCPeerConnectionState::Connected,
                ) => {
                    self.times.connected.get_or_insert(now);
                }
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                    RTCPeerConnectionState::Failed,
                ) => {
                    self.error
                        .get_or_insert(if self.times.ice_connected.is_some() {
                            LegError::DtlsFailed
                        } else {
                            LegError::IceFailed
                        });
                }
                _ => {}
            }
        }
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, packet) = message {
                self.times.first_rtp.get_or_insert(now);
                self.meter.on_rtp(
                    now,
                    packet.header.sequence_number,
                    packet.header.timestamp,
                    &packet.payload,
                );
            }
        }
    }

    fn flush(&mut self, now: Instant) {
        while let Some(t) = self.pc.poll_write() {
            self.waiting
                .push_back((t.transport.peer_addr, t.message, t.now));
        }
        if self.turn.is_none() {
            while let Some((peer, data, _)) = self.waiting.pop_front() {
                // IPv4 + UDP headers on the wire.
                self.wire_bytes_sent += data.len() as u64 + 28;
                if is_rtcp(&data) {
                    self.rtcp_sent += 1;
                }
                let _ = self.socket.send_to(&data, peer);
            }
            return;
        }
        if let (Some(relay), Some(turn)) = (self.relay, &mut self.turn) {
            let mut still = VecDeque::new();
            while let Some((peer, data, at)) = self.waiting.pop_front() {
                if !self.permitted.contains(&peer) {
                    self.remotes.insert(peer);
                    if let Ok(mut r) = turn.relay(relay) {
                        let _ = r.create_permission(now, peer);
                    }
                    // Datagrams older than a second are stale (ICE retransmits its checks).
                    if now.saturating_duration_since(at) < Duration::from_secs(1) {
                        still.push_back((peer, data, at));
                    }
                    continue;
                }
                // IPv4 + UDP + ChannelData headers on the wire.
                self.wire_bytes_sent += data.len() as u64 + 28 + 4;
                if is_rtcp(&data) {
                    self.rtcp_sent += 1;
                }
                if let Ok(mut r) = turn.relay(relay) {
                    let _ = r.send_to(now, &data, peer);
                }
            }
            self.waiting = still;
        }
        while let Some(t) = self.turn.as_mut().and_then(Client::poll_write) {
            let _ = self.socket.send_to(&t.message, t.transport.peer_addr);
        }
    }

    /// Closes the peer connection and releases the allocation.
    pub fn close(&mut self, now: Instant) {
        let _ = self.pc.close();
        if let (Some(relay), Some(turn)) = (self.relay, &mut self.turn)
            && let Ok(mut r) = turn.relay(relay)
        {
            let _ = r.close(now);
        }
        self.flush(now);
    }
}

/// Starts the allocation of a relay-only leg.
fn allocate(t: &TurnCredentials, local: SocketAddr, now: Instant) -> Result<Client, LegError> {
    let fail = |e: rtc::shared::error::Error| LegError::TurnAllocation(e.to_string());
    let provider = rtc::crypto::default_provider().map_err(err)?;
    let mut turn = Client::new(
        ClientConfig {
            stun_serv_addr: String::new(),
            turn_serv_addr: t.server.to_string(),
            local_addr: local,
            transport_protocol: TransportProtocol::UDP,
            username: t.username.clone(),
            password: t.password.clone(),
            realm: t.realm.clone(),
            software: "softphone-sim".to_owned(),
            rto_in_ms: 0,
            allocation_refresh_interval_cap: None,
        },
        provider,
    )
    .map_err(fail)?;
    turn.allocate(now).map_err(fail)?;
    Ok(turn)
}

fn host_candidate(local: SocketAddr) -> Result<RTCIceCandidateInit, String> {
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
    RTCIceCandidate::from(&candidate)
        .to_json()
        .map_err(|e| e.to_string())
}

fn relay_candidate(relay: SocketAddr, base: SocketAddr) -> Result<RTCIceCandidateInit, String> {
    let candidate = rtc::ice::candidate::candidate_relay::CandidateRelayConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: relay.ip().to_string(),
            port: relay.port(),
            component: 1,
            ..Default::default()
        },
        rel_addr: base.ip().to_string(),
        rel_port: base.port(),
        ..Default::default()
    }
    .new_candidate_relay()
    .map_err(|e| e.to_string())?;
    RTCIceCandidate::from(&candidate)
        .to_json()
        .map_err(|e| e.to_string())
}

/// Whether a datagram on the muxed RTP/RTCP port is (S)RTCP: version 2 and a packet type in
/// 192–223 (RFC 5761 §4; the first 8 bytes of SRTCP are not encrypted).
fn is_rtcp(data: &[u8]) -> bool {
    data.len() >= 8 && data[0] >> 6 == 2 && (192..=223).contains(&data[1])
}

/// The transport address of an ICE candidate line (`candidate:F C udp P ADDR PORT typ …`).
pub fn candidate_address(candidate: &str) -> Option<SocketAddr> {
    let parts: Vec<&str> = candidate.split_whitespace().collect();
    let ip: std::net::IpAddr = parts.get(4)?.parse().ok()?;
    let port: u16 = parts.get(5)?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}
