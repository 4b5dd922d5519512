//! The media plane of a leg, built from `rtc`'s parts without its peer connection: full ICE
//! (`rtc::ice`), DTLS 1.2 (`rtc::dtls`) with the peer's certificate held to its SDP fingerprint
//! (RFC 8122 §5), SRTP/SRTCP keyed from the handshake (RFC 5764 §4.2, `rtc::srtp`), 20 ms Opus
//! frames ([`crate::audio`]) with their send stamp in an RTP header extension negotiated in the
//! SDP ([`SEND_STAMP_URI`], RFC 8285), and RTCP sender reports with a reception report (RFC
//! 3550 §6.4).
//!
//! Why not `RTCPeerConnection`: its per-packet pipeline (eight handlers, each with its own
//! queue of large message structs) cost about 0.25 % of a core per connection, half of the
//! simulator's whole budget at 200 calls; this plane does the same protocol work per packet
//! with a decrypt or an encrypt and one queue.
//!
//! Sans-I/O like the rest: datagrams in through [`MediaSession::handle_read`] with their local
//! and remote addresses, datagrams out through [`MediaSession::poll_transmit`], timers through
//! [`MediaSession::poll_timeout`] / [`MediaSession::handle_timeout`]. Datagrams are told apart by
//! their first byte (RFC 7983 §7): STUN 0–3, DTLS 20–63, SRTP and SRTCP 128–191, and SRTCP from
//! SRTP by its packet type (RFC 5761 §4).
//!
//! The anchor's media server (in `sim`) shares the DTLS, SRTP, RTP and RTCP pieces below and
//! answers ICE-lite on one socket for every call.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::crypto::RTCCryptoProvider;
use rtc::dtls::config::HandshakeConfig;
use rtc::dtls::crypto::Certificate;
use rtc::dtls::endpoint::Endpoint;
use rtc::ice::candidate::{Candidate, CandidateType, unmarshal_candidate};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::ice::state::ConnectionState;
use rtc::ice::{Agent, AgentConfig, Event};
use rtc::sansio::Protocol;
use rtc::shared::{TransportContext, TransportMessage, TransportProtocol};
use rtc::srtp::context::Context;

use crate::dtls::{FlightTimer, Handshake, Retransmission, dtls_config, read_dtls};
use crate::leg::{CLOCK_RATE, FRAME_TICKS};
use crate::measure::{MediaMeter, Stamp};
use crate::sdp::{self, Description, Local};

/// RTCP report interval (browsers send about one a second for audio).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// ICE's check pacing, Ta (RFC 8445 §14.2), as browsers pace checks.
const CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Checks per pair before it fails: 20 × 50 ms keeps the 1 s window a lossy path needs.
const CHECKS_PER_PAIR: u16 = 20;
/// DTLS runs over whatever pair ICE selected: the endpoint keys its one association on this
/// placeholder, and the session sends its records on the selected pair (as `rtc` does).
const DTLS_PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9));

/// Something the media plane reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEvent {
    /// ICE selected a pair.
    IceConnected,
    /// ICE found no working pair, or lost it for good.
    IceFailed,
    /// The selected pair has heard nothing for ICE's disconnected timeout: the path is down,
    /// perhaps only for a while (a browser's `iceConnectionState` `disconnected`).
    IceDisconnected,
    /// The DTLS handshake finished and SRTP is keyed.
    Connected,
    /// The DTLS handshake failed (a certificate that does not match the fingerprint, an alert,
    /// no common SRTP profile).
    DtlsFailed,
}

/// Why a media session cannot be built or go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The crypto provider, the certificate or the ICE agent could not be made.
    #[error("{0}")]
    Setup(String),
    /// The other side's description cannot be used.
    #[error(transparent)]
    Sdp(#[from] sdp::SdpError),
    /// A candidate could not be read or added.
    #[error("candidate: {0}")]
    Candidate(String),
}

fn setup_error(e: impl std::fmt::Display) -> MediaError {
    MediaError::Setup(e.to_string())
}

/// SHA-256 fingerprint of a DER certificate, `AB:CD:…` (RFC 8122 §5).
pub fn fingerprint(crypto: &Arc<dyn RTCCryptoProvider>, der: &[u8]) -> Result<String, String> {
    let hash = crypto
        .crypto()
        .hash(rtc::crypto::HashAlgorithm::Sha256, der)
        .map_err(|e| e.to_string())?;
    Ok(hash
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// Sequence number, timestamp, SSRC and payload of a plain RTP packet (RFC 3550 §5.1).
pub fn rtp_parts(packet: &[u8]) -> Option<(u16, u32, u32, &[u8])> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let seq = u16::from_be_bytes([packet[2], packet[3]]);
    let timestamp = u32::from_be_bytes(packet[4..8].try_into().ok()?);
    let ssrc = u32::from_be_bytes(packet[8..12].try_into().ok()?);
    let mut start = 12 + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        let words = u16::from_be_bytes(packet.get(start + 2..start + 4)?.try_into().ok()?);
        start += 4 + 4 * usize::from(words);
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*packet.last()?))?;
    }
    Some((seq, timestamp, ssrc, packet.get(start..end)?))
}

/// Whether a datagram on the muxed RTP/RTCP port is (S)RTCP: version 2 and a packet type in
/// 192–223 (RFC 5761 §4; the first 8 bytes of SRTCP are not encrypted).
pub fn is_rtcp(data: &[u8]) -> bool {
    data.len() >= 8 && data[0] >> 6 == 2 && (192..=223).contains(&data[1])
}

/// The RTP header extension (RFC 8285) that carries a frame's send [`Stamp`]: our legs offer
/// it, answer it when offered, and measure one-way delay and late loss with it. A browser
/// neither offers nor answers it, and its media is measured without it.
pub const SEND_STAMP_URI: &str = "urn:x-softphone-sim:rtp-hdrext:send-stamp";
/// The extension's id in our offers (an answer takes the offer's).
pub const SEND_STAMP_ID: u8 = 14;
/// The one-byte-header extension profile (RFC 8285 §4.2).
const ONE_BYTE_PROFILE: [u8; 2] = [0xBE, 0xDE];
/// Extension bytes a stamped frame carries: the profile and length, one element (its header
/// byte and 6 bytes of data), padded to a 32-bit word.
const STAMP_EXTENSION_BYTES: usize = 4 + 8;

/// The plain RTP packet of frame number `frame`, carrying `opus` (20 ms of Opus at 48 kHz,
/// [`crate::audio`]), the marker on the first (a talkspurt begins, RFC 3551 §4.1), with its
/// send stamp in the header extension `stamp_id` when the call negotiated one.
pub fn frame_packet(
    frame: u64,
    opus: &[u8],
    payload_type: u8,
    ssrc: u32,
    sent: Duration,
    stamp_id: Option<u8>,
) -> Vec<u8> {
    let mut packet = Vec::with_capacity(12 + STAMP_EXTENSION_BYTES + opus.len());
    packet.push(if stamp_id.is_some() { 0x90 } else { 0x80 });
    packet.push(payload_type | if frame == 0 { 0x80 } else { 0 });
    // The frame count, wrapping at 16 and 32 bits.
    packet.extend_from_slice(&(frame as u16).to_be_bytes());
    packet.extend_from_slice(&(frame as u32).wrapping_mul(FRAME_TICKS).to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    if let Some(id) = stamp_id {
        packet.extend_from_slice(&ONE_BYTE_PROFILE);
        packet.extend_from_slice(&2u16.to_be_bytes());
        // The element's header: its id and its length less one (RFC 8285 §4.2).
        packet.push((id << 4) | (Stamp::LEN as u8 - 1));
        packet.extend_from_slice(&Stamp { sent }.to_bytes());
        packet.push(0);
    }
    packet.extend_from_slice(opus);
    packet
}

/// The send stamp in a plain RTP packet's header extension element `id`, if it carries one.
/// Elements of the one-byte form are walked (RFC 8285 §4.2: padding bytes of 0 between them,
/// id 15 ends the walk); the two-byte form carries no stamp of ours.
pub fn send_stamp(packet: &[u8], id: u8) -> Option<Stamp> {
    if packet.len() < 12 || packet[0] & 0x10 == 0 {
        return None;
    }
    let start = 12 + 4 * usize::from(packet[0] & 0x0f);
    let header = packet.get(start..start + 4)?;
    if header[..2] != ONE_BYTE_PROFILE {
        return None;
    }
    let words = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut data = packet.get(start + 4..start + 4 + 4 * words)?;
    while let Some((&first, rest)) = data.split_first() {
        if first == 0 {
            data = rest;
            continue;
        }
        let (element, len) = (first >> 4, usize::from(first & 0x0f) + 1);
        if element == 15 {
            return None;
        }
        let value = rest.get(..len)?;
        if element == id {
            return Stamp::from_bytes(value);
        }
        data = &rest[len..];
    }
    None
}

/// RFC 3550 §6.4.1 reception statistics of the other side's stream, for the reports a leg sends.
#[derive(Debug, Default)]
pub struct Reception {
    ssrc: Option<u32>,
    base: u32,
    /// Highest sequence number, extended with its cycle count.
    max: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// The middle 32 bits of the last sender report's NTP time, and when it arrived.
    last_sr: Option<(u32, Instant)>,
}

impl Reception {
    /// Accounts for an RTP packet.
    pub fn on_rtp(&mut self, ssrc: u32, seq: u16) {
        if self.ssrc.is_none() {
            self.ssrc = Some(ssrc);
            self.base = u32::from(seq);
            self.max = u32::from(seq);
        }
        let delta = seq.wrapping_sub(self.max as u16) as i16;
        if delta > 0 {
            let cycles = self.max & 0xffff_0000;
            let wrapped = seq < self.max as u16;
            self.max = (if wrapped { cycles + 0x1_0000 } else { cycles }) | u32::from(seq);
        }
        self.received += 1;
    }

    /// Accounts for a decrypted RTCP compound packet: a sender report's NTP time is echoed in
    /// the next reception report (LSR/DLSR, for the sender's round-trip time).
    pub fn on_rtcp(&mut self, now: Instant, plain: &[u8]) {
        if plain.len() >= 16 && plain[1] == 200 {
            let ntp = u64::from_be_bytes(plain[8..16].try_into().unwrap_or_default());
            self.last_sr = Some(((ntp >> 16) as u32, now));
        }
    }

    /// The reception report for now; `None` before any RTP.
    pub fn report(
        &mut self,
        now: Instant,
        jitter_ticks: u32,
    ) -> Option<rtc::rtcp::reception_report::ReceptionReport> {
        let ssrc = self.ssrc?;
        let expected = self.max.wrapping_sub(self.base) + 1;
        let lost = expected.saturating_sub(self.received);
        let expected_interval = expected - self.expected_prior;
        let received_interval = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = (lost_interval << 8)
            .checked_div(expected_interval)
            .map_or(0, |f| f.min(255) as u8);
        let (last_sender_report, delay) = match self.last_sr {
            // DLSR in units of 1/65536 s (RFC 3550 §6.4.1).
            Some((lsr, at)) => (
                lsr,
                (now.saturating_duration_since(at).as_secs_f64() * 65536.0) as u32,
            ),
            None => (0, 0),
        };
        Some(rtc::rtcp::reception_report::ReceptionReport {
            ssrc,
            fraction_lost,
            total_lost: lost.min(0x7f_ffff),
            last_sequence_number: self.max,
            jitter: jitter_ticks,
            last_sender_report,
            delay,
        })
    }
}

/// Seconds from 1900 to 1970 (RFC 5905's era 0).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A wall-clock time (since the Unix epoch) in NTP format (RFC 5905: seconds since 1900 in
/// the high 32 bits).
pub fn ntp(since: Duration) -> u64 {
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    ((since.as_secs() + NTP_UNIX_OFFSET) << 32) | frac
}

/// A plain sender report of `frames_sent` frames (`payload_bytes` of Opus) with the reception
/// report of the other side's stream, ready for SRTCP.
pub fn sender_report(
    now: Instant,
    ntp_time: u64,
    ssrc: u32,
    (frames_sent, payload_bytes): (u64, u64),
    reception: &mut Reception,
    meter: &MediaMeter,
) -> Option<BytesMut> {
    let jitter_ticks = (meter.jitter_ms() * f64::from(CLOCK_RATE) / 1000.0) as u32;
    let report = rtc::rtcp::sender_report::SenderReport {
        ssrc,
        ntp_time,
        rtp_time: (frames_sent as u32).wrapping_mul(FRAME_TICKS),
        packet_count: frames_sent as u32,
        // RFC 3550 §6.4.1: payload octets, wrapping at 32 bits.
        octet_count: payload_bytes as u32,
        reports: reception.report(now, jitter_ticks).into_iter().collect(),
        profile_extensions: Bytes::new(),
    };
    let packets: [Box<dyn rtc::rtcp::packet::Packet>; 1] = [Box::new(report)];
    rtc::rtcp::packet::marshal(&packets).ok()
}

/// What [`MediaSession::handle_read`] found in a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// An RTP packet, measured into the meter.
    Rtp,
    /// An RTCP packet.
    Rtcp,
    /// Anything else (ICE, DTLS, or a datagram dropped).
    Other,
}

/// One leg's ICE, DTLS and SRTP with one remote.
pub struct MediaSession {
    crypto: Arc<dyn RTCCryptoProvider>,
    certificate: Certificate,
    fingerprint: String,
    ice: Agent,
    ice_ufrag: String,
    ice_pwd: String,
    controlling: bool,
    /// The wall clock (since the Unix epoch) at an instant: the sender reports' NTP time.
    wall: (Instant, Duration),
    ssrc: u32,
    /// The Opus payload type agreed.
    payload_type: u8,
    /// The send stamp's header extension id, when the other side agreed to it.
    send_stamp: Option<u8>,
    dtls: Endpoint,
    /// The client's handshake configuration, until ICE selects a pair to start it on.
    dtls_client: Option<Arc<HandshakeConfig>>,
    /// When the handshake's flights go again.
    dtls_timer: FlightTimer,
    /// Local (a relay candidate is its own base) and remote address of the selected pair.
    selected: Option<(SocketAddr, SocketAddr)>,
    srtp: Option<(Context, Context)>,
    reception: Reception,
    next_report: Option<Instant>,
    frames_sent: u64,
    /// Opus bytes sent (for the sender reports' octet count).
    payload_bytes_sent: u64,
    transmits: VecDeque<(SocketAddr, SocketAddr, BytesMut)>,
    events: VecDeque<MediaEvent>,
    /// When the last STUN message from the other side arrived (a check or its answer).
    last_stun: Option<Instant>,
    /// What it sends.
    signal: crate::audio::Signal,
    /// What it hears, decoded and measured, while it listens for test tones.
    listener: Option<Listener>,
}

/// Decodes a leg's incoming audio in arrival order and measures test tones in it.
struct Listener {
    decoder: Option<opus_pure::OpusDecoder>,
    pcm: Vec<f32>,
    meter: crate::audio::ToneMeter,
    /// Frames still to decode before measuring: those already on their way when it began,
    /// and the decoder's settling.
    skip: u32,
}

/// Frames a listener decodes before it measures (200 ms).
const LISTEN_AFTER: u32 = 10;

impl Listener {
    fn hear(&mut self, payload: &[u8]) {
        let Some(decoder) = &mut self.decoder else {
            return;
        };
        if let Ok(n) = decoder.decode(payload, self.pcm.len(), &mut self.pcm)
            && n == crate::audio::FRAME_SAMPLES
        {
            if self.skip > 0 {
                self.skip -= 1;
            } else {
                self.meter.frame(&self.pcm[..n]);
            }
        }
    }
}

impl std::fmt::Debug for MediaSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaSession")
            .field("selected", &self.selected)
            .field("keyed", &self.srtp.is_some())
            .finish_non_exhaustive()
    }
}

impl MediaSession {
    /// A session with a fresh certificate and ICE credentials drawn from `crypto` (see
    /// [`crate::entropy`]); `controlling` for the offerer. `unix_now` is the wall clock at `now`
    /// (since the Unix epoch), for the sender reports' NTP timestamps.
    pub fn new(
        now: Instant,
        unix_now: Duration,
        controlling: bool,
        ssrc: u32,
        crypto: Arc<dyn RTCCryptoProvider>,
    ) -> Result<Self, MediaError> {
        let certificate =
            crate::entropy::certificate("softphone", &crypto).map_err(MediaError::Setup)?;
        let fingerprint =
            fingerprint(&crypto, &certificate.certificate[0]).map_err(MediaError::Setup)?;
        let (ice_ufrag, ice_pwd) =
            crate::entropy::ice_credentials(crypto.random()).map_err(MediaError::Setup)?;
        let config = AgentConfig {
            local_ufrag: ice_ufrag.clone(),
            local_pwd: ice_pwd.clone(),
            candidate_types: vec![CandidateType::Host, CandidateType::Relay],
            network_types: vec![NetworkType::Udp4, NetworkType::Udp6],
            check_interval: CHECK_INTERVAL,
            max_binding_requests: Some(CHECKS_PER_PAIR),
            is_controlling: controlling,
            // pion's waits before nominating would show up as setup time.
            host_acceptance_min_wait: Some(Duration::ZERO),
            relay_acceptance_min_wait: Some(Duration::ZERO),
            multicast_dns_mode: MulticastDnsMode::Disabled,
            ..Default::default()
        };
        let ice = Agent::new(now, Arc::new(config), crypto.clone()).map_err(setup_error)?;
        Ok(Self {
            dtls: Endpoint::new(DTLS_PEER, TransportProtocol::UDP, None),
            crypto,
            certificate,
            fingerprint,
            ice,
            ice_ufrag,
            ice_pwd,
            controlling,
            wall: (now, unix_now),
            ssrc,
            payload_type: sdp::OPUS_PT,
            send_stamp: None,
            dtls_client: None,
            dtls_timer: FlightTimer::default(),
            selected: None,
            srtp: None,
            reception: Reception::default(),
            next_report: None,
            frames_sent: 0,
            payload_bytes_sent: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            last_stun: None,
            signal: crate::audio::Signal::Speech,
            listener: None,
        })
    }

    /// Sends `signal` from the next frame on.
    pub fn set_signal(&mut self, signal: crate::audio::Signal) {
        self.signal = signal;
    }

    /// From now on, decodes what arrives and measures the level of each conference tone in
    /// it ([`crate::audio::ToneMeter`]).
    pub fn listen(&mut self) {
        self.listener = Some(Listener {
            decoder: opus_pure::OpusDecoder::new(crate::audio::SAMPLE_RATE as i32, 1).ok(),
            pcm: vec![0.0; 5760],
            meter: crate::audio::ToneMeter::conference(),
            skip: LISTEN_AFTER,
        });
    }

    /// What the listener measured of the conference tones.
    pub fn heard(&self) -> Option<reports::Heard> {
        self.listener.as_ref().map(|l| l.meter.heard())
    }

    fn local(&self) -> Local<'_> {
        Local {
            ice_ufrag: &self.ice_ufrag,
            ice_pwd: &self.ice_pwd,
            fingerprint: &self.fingerprint,
            ssrc: self.ssrc,
            address: SocketAddr::from(([127, 0, 0, 1], 9)),
            ice_lite: false,
        }
    }

    /// The offer (the agent's side).
    pub fn offer(&self) -> String {
        sdp::offer(&self.local(), u64::from(self.ssrc))
    }

    /// Applies the other side's offer and returns the answer: DTLS server, checks start.
    pub fn answer(&mut self, now: Instant, offer: &str) -> Result<String, MediaError> {
        let remote = Description::parse(offer)?;
        let config = dtls_config(&self.crypto, &self.certificate, &remote.fingerprint, false)
            .map_err(MediaError::Setup)?;
        self.dtls.set_server_config(Some(Arc::new(config)));
        self.dtls_timer = FlightTimer::new(false);
        self.payload_type = remote.opus_pt;
        // Offered, so answered (sdp::answer echoes it).
        self.send_stamp = remote.send_stamp;
        let answer = sdp::answer(&remote, &self.local(), u64::from(self.ssrc));
        self.start_checks(now, &remote)?;
        Ok(answer)
    }

    /// Applies the other side's answer (the agent's side): its `a=setup` decides the DTLS role.
    pub fn accept(&mut self, now: Instant, answer: &str) -> Result<(), MediaError> {
        let remote = Description::parse(answer)?;
        let is_client = remote.setup != "active";
        let config = dtls_config(
            &self.crypto,
            &self.certificate,
            &remote.fingerprint,
            is_client,
        )
        .map_err(MediaError::Setup)?;
        self.dtls_timer = FlightTimer::new(is_client);
        if is_client {
            self.dtls_client = Some(Arc::new(config));
        } else {
            self.dtls.set_server_config(Some(Arc::new(config)));
        }
        self.payload_type = remote.opus_pt;
        self.send_stamp = remote.send_stamp;
        self.start_checks(now, &remote)
    }

    /// Starts an ICE restart (RFC 8445 §9, JSEP's `createOffer({iceRestart: true})`): fresh
    /// credentials, the old candidates, pairs and selected pair gone, DTLS and SRTP kept (the
    /// association carries on over whichever pair the new checks select). Returns the new
    /// offer; checks start again at [`Self::accept_restart`].
    pub fn restart_ice(&mut self, now: Instant) -> Result<String, MediaError> {
        let (ufrag, pwd) =
            crate::entropy::ice_credentials(self.crypto.random()).map_err(MediaError::Setup)?;
        self.ice
            .restart(now, ufrag.clone(), pwd.clone(), false)
            .map_err(setup_error)?;
        (self.ice_ufrag, self.ice_pwd) = (ufrag, pwd);
        // Nothing is sent on the old pair: its path is the one that went down.
        self.selected = None;
        self.ice_events(now);
        Ok(self.offer())
    }

    /// When the last STUN message from the other side arrived: while it keeps coming, the path
    /// is up even if media is not.
    pub fn last_stun(&self) -> Option<Instant> {
        self.last_stun
    }

    /// Applies the answer to a restart's offer: checks start with the other side's new
    /// credentials.
    pub fn accept_restart(&mut self, now: Instant, answer: &str) -> Result<(), MediaError> {
        let remote = Description::parse(answer)?;
        self.start_checks(now, &remote)
    }

    fn start_checks(&mut self, now: Instant, remote: &Description) -> Result<(), MediaError> {
        // An ICE-lite peer is always controlled (RFC 8445 §6.1.1).
        let controlling = self.controlling || remote.ice_lite;
        self.ice
            .start_connectivity_checks(
                now,
                controlling,
                remote.ice_ufrag.clone(),
                remote.ice_pwd.clone(),
            )
            .map_err(setup_error)?;
        self.ice_events(now);
        Ok(())
    }

    /// Adds a local candidate (a relay from an allocation, or a host socket).
    pub fn add_local_candidate(&mut self, candidate: Candidate) -> Result<(), MediaError> {
        self.ice
            .add_local_candidate(candidate)
            .map(|_| ())
            .map_err(|e| MediaError::Candidate(e.to_string()))
    }

    /// Adds the other side's candidate (`candidate:…` as signalled).
    pub fn add_remote_candidate(&mut self, line: &str) -> Result<(), MediaError> {
        let raw = line.trim().trim_start_matches("a=");
        let raw = raw.strip_prefix("candidate:").unwrap_or(raw);
        let candidate =
            unmarshal_candidate(raw).map_err(|e| MediaError::Candidate(e.to_string()))?;
        self.ice
            .add_remote_candidate(candidate)
            .map(|_| ())
            .map_err(|e| MediaError::Candidate(e.to_string()))
    }

    /// A datagram from `peer` arrived on `local` (a relay address or a host socket).
    pub fn handle_read(
        &mut self,
        now: Instant,
        local: SocketAddr,
        peer: SocketAddr,
        data: BytesMut,
        meter: &mut MediaMeter,
    ) -> Received {
        match data.first() {
            Some(0..=3) => {
                self.last_stun = Some(now);
                let _ = self.ice.handle_read(TransportMessage {
                    now,
                    transport: TransportContext {
                        local_addr: local,
                        peer_addr: peer,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: data,
                });
                self.ice_events(now);
                Received::Other
            }
            Some(20..=63) => {
                self.on_dtls(now, data);
                Received::Other
            }
            Some(128..=191) => self.on_srtp(now, &data, meter),
            _ => Received::Other,
        }
    }

    fn on_dtls(&mut self, now: Instant, data: BytesMut) {
        if self.srtp.is_none() {
            self.dtls_timer.received(now, &data);
        }
        let step = read_dtls(
            &mut self.dtls,
            now,
            DTLS_PEER,
            data,
            &self.crypto,
            self.srtp.is_some(),
        );
        self.dtls_transmits();
        match step {
            Handshake::Keyed(contexts) => {
                self.srtp = Some(*contexts);
                self.next_report = Some(now + REPORT_INTERVAL);
                self.events.push_back(MediaEvent::Connected);
            }
            Handshake::Failed => self.events.push_back(MediaEvent::DtlsFailed),
            Handshake::Going => {}
        }
    }

    fn on_srtp(&mut self, now: Instant, data: &[u8], meter: &mut MediaMeter) -> Received {
        let Some((_, inbound)) = &mut self.srtp else {
            return Received::Other;
        };
        if is_rtcp(data) {
            let Ok(plain) = inbound.decrypt_rtcp(data) else {
                return Received::Other;
            };
            meter.rtcp_reports += 1;
            self.reception.on_rtcp(now, &plain);
            return Received::Rtcp;
        }
        let Ok(plain) = inbound.decrypt_rtp(data) else {
            return Received::Other;
        };
        let Some((seq, timestamp, ssrc, payload)) = rtp_parts(&plain) else {
            return Received::Other;
        };
        if let Some(listener) = &mut self.listener {
            listener.hear(payload);
        }
        let stamp = self.send_stamp.and_then(|id| send_stamp(&plain, id));
        self.reception.on_rtp(ssrc, seq);
        meter.on_rtp(now, seq, timestamp, stamp);
        Received::Rtp
    }

    fn ice_events(&mut self, now: Instant) {
        while let Some(event) = self.ice.poll_event() {
            match event.event {
                Event::ConnectionStateChange(ConnectionState::Connected) => {
                    self.events.push_back(MediaEvent::IceConnected);
                }
                Event::ConnectionStateChange(ConnectionState::Failed) => {
                    self.events.push_back(MediaEvent::IceFailed);
                }
                Event::ConnectionStateChange(ConnectionState::Disconnected) => {
                    self.events.push_back(MediaEvent::IceDisconnected);
                }
                Event::SelectedCandidatePairChange(local, remote) => {
                    self.selected = Some((local.base_addr(), remote.addr()));
                    let rtt = self.pair_rtt(now, local.id(), remote.id());
                    self.dtls_timer.set_rtt(rtt);
                    if let Some(config) = self.dtls_client.take() {
                        // The client's first flight, once there is a pair to send it on.
                        if self.dtls.connect(now, DTLS_PEER, config, None).is_err() {
                            self.events.push_back(MediaEvent::DtlsFailed);
                        }
                        self.dtls_transmits();
                    }
                }
                _ => {}
            }
        }
    }

    fn dtls_transmits(&mut self) {
        let (mut flight, mut at) = (Vec::new(), None);
        while let Some(t) = self.dtls.poll_transmit() {
            if let Some((local, remote)) = self.selected {
                at = Some(t.now);
                flight.push((local, remote, t.message.clone()));
                self.transmits.push_back((local, remote, t.message));
            }
        }
        if let (Some(at), false) = (at, self.srtp.is_some()) {
            self.dtls_timer.sent(at, flight);
        }
    }

    /// ICE's round-trip estimate of the pair of candidates `local` and `remote` (their ids).
    fn pair_rtt(&self, now: Instant, local: &str, remote: &str) -> Option<Duration> {
        self.ice
            .get_candidate_pairs_stats(now)
            .into_iter()
            .find(|p| p.local_candidate_id == local && p.remote_candidate_id == remote)
            .map(|p| Duration::from_secs_f64(p.current_round_trip_time))
    }

    /// What the DTLS handshake got to (for a failure's detail): see [`FlightTimer::detail`].
    pub fn dtls_progress(&self) -> String {
        self.dtls_timer.detail()
    }

    fn send(&mut self, protected: BytesMut) {
        if let Some((local, remote)) = self.selected {
            self.transmits.push_back((local, remote, protected));
        }
    }

    /// Sends frame number [`Self::frames_sent`], stamped `sent` after the epoch; `false` before
    /// DTLS is up.
    pub fn send_frame(&mut self, sent: Duration) -> bool {
        let Some((outbound, _)) = &mut self.srtp else {
            return false;
        };
        let opus = crate::audio::frame(self.signal, self.frames_sent);
        let packet = frame_packet(
            self.frames_sent,
            opus,
            self.payload_type,
            self.ssrc,
            sent,
            self.send_stamp,
        );
        let Ok(protected) = outbound.encrypt_rtp(&packet) else {
            return false;
        };
        self.payload_bytes_sent += opus.len() as u64;
        self.frames_sent += 1;
        self.send(protected);
        true
    }

    /// Frames sent so far.
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent
    }

    /// The next datagram to send: (local address to send from, remote address, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, SocketAddr, BytesMut)> {
        if let Some(t) = self.ice.poll_write() {
            return Some((t.transport.local_addr, t.transport.peer_addr, t.message));
        }
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must run next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.ice.poll_timeout(),
            self.dtls_timer.deadline(self.srtp.is_some()),
            self.next_report,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers due at `now`: ICE checks and keepalives, DTLS retransmissions, reports.
    pub fn handle_timeout(&mut self, now: Instant, meter: &MediaMeter) {
        if self.ice.poll_timeout().is_some_and(|t| t <= now) {
            let _ = self.ice.handle_timeout(now);
            self.ice_events(now);
        }
        let done = self.srtp.is_some();
        match self
            .dtls_timer
            .handle_timeout(now, done, &mut self.dtls, DTLS_PEER)
        {
            Retransmission::Nothing => {}
            Retransmission::Regenerated => self.dtls_transmits(),
            Retransmission::Resend(flight) => self.transmits.extend(flight),
            Retransmission::Failed => {
                self.events.push_back(MediaEvent::DtlsFailed);
                self.dtls_transmits();
            }
        }
        if let Some(due) = self.next_report.filter(|&t| t <= now) {
            self.next_report = Some(due + REPORT_INTERVAL);
            let (at, unix) = self.wall;
            let report = sender_report(
                now,
                ntp(unix + now.saturating_duration_since(at)),
                self.ssrc,
                (self.frames_sent, self.payload_bytes_sent),
                &mut self.reception,
                meter,
            );
            if let (Some(plain), Some((outbound, _))) = (report, &mut self.srtp)
                && let Ok(protected) = outbound.encrypt_rtcp(&plain)
            {
                self.send(protected);
            }
        }
    }

    /// Ends the session: DTLS `close_notify`, ICE closed.
    pub fn close(&mut self, now: Instant) {
        let _ = self.dtls.stop(now, DTLS_PEER);
        self.dtls_transmits();
        let _ = self.ice.close();
        self.next_report = None;
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs one real instant to count from
mod tests {
    use super::*;

    #[test]
    fn reception_counts_loss_across_a_sequence_wrap() {
        let mut r = Reception::default();
        let now = Instant::now();
        // 65530 … 65535, 0 … 9, with 65533 and 2 lost.
        for seq in (65530u16..=65535).chain(0..10) {
            if seq != 65533 && seq != 2 {
                r.on_rtp(9, seq);
            }
        }
        let report = r.report(now, 48).unwrap();
        assert_eq!(report.ssrc, 9);
        assert_eq!(report.last_sequence_number, 0x1_0009);
        assert_eq!(report.total_lost, 2);
        // 2 of 16 lost: 32/256.
        assert_eq!(report.fraction_lost, 32);
        // Nothing new: the next interval lost nothing.
        assert_eq!(r.report(now, 48).unwrap().fraction_lost, 0);
    }

    #[test]
    fn rtp_parts_skip_csrcs_extensions_and_padding() {
        let mut p = vec![0xb1, 111, 0, 5, 0, 0, 0, 9, 0, 0, 0, 7];
        p.extend_from_slice(&[1, 2, 3, 4]); // one CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // extension, one word
        p.extend_from_slice(b"payload");
        p.extend_from_slice(&[0, 0, 3]); // padding, 3 bytes
        let (seq, ts, ssrc, payload) = rtp_parts(&p).unwrap();
        assert_eq!((seq, ts, ssrc, payload), (5, 9, 7, &b"payload"[..]));
        assert_eq!(rtp_parts(&p[..11]), None);
        let mut bad = p.clone();
        *bad.last_mut().unwrap() = 200; // more padding than packet
        assert_eq!(rtp_parts(&bad), None);
    }

    #[test]
    fn a_frame_carries_opus_and_reads_back_with_its_stamp() {
        let packet = frame_packet(
            70_000,
            crate::audio::opus_frame(70_000),
            111,
            5,
            Duration::from_millis(1400),
            Some(SEND_STAMP_ID),
        );
        let (seq, ts, ssrc, payload) = rtp_parts(&packet).unwrap();
        assert_eq!(seq, 70_000u64 as u16);
        assert_eq!(ts, 70_000u32.wrapping_mul(FRAME_TICKS));
        assert_eq!(ssrc, 5);
        assert_eq!(packet[1], 111, "the marker only on frame 0");
        assert_eq!(
            payload,
            crate::audio::opus_frame(70_000),
            "the payload is the Opus frame"
        );
        assert_eq!(packet.len(), 12 + STAMP_EXTENSION_BYTES + payload.len());
        let stamp = send_stamp(&packet, SEND_STAMP_ID).unwrap();
        assert_eq!(stamp.sent, Duration::from_millis(1400));
        assert_eq!(send_stamp(&packet, 3), None, "another id");
        // Not negotiated: no extension at all.
        let plain = frame_packet(1, crate::audio::opus_frame(1), 111, 5, Duration::ZERO, None);
        assert_eq!(plain[0], 0x80);
        assert_eq!(send_stamp(&plain, SEND_STAMP_ID), None);
        assert_eq!(rtp_parts(&plain).unwrap().3, crate::audio::opus_frame(1));
    }

    #[test]
    fn a_stamp_is_found_among_a_browsers_extensions() {
        // Chromium's audio level (id 1, 1 byte) and a transport-wide sequence (id 3, 2 bytes),
        // padding, then ours: 5 + 2 + 7 bytes, padded to 4 words.
        let mut p = vec![0x90, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0xbe, 0xde, 0, 4];
        p.extend_from_slice(&[0x10, 0xAA, 0x31, 0x00, 0x05, 0, 0]);
        p.push((SEND_STAMP_ID << 4) | 5);
        let stamp = Stamp {
            sent: Duration::from_micros(987_654),
        };
        p.extend_from_slice(&stamp.to_bytes());
        p.extend_from_slice(&[0, 0]);
        assert_eq!(p.len(), 16 + 16);
        p.extend_from_slice(b"opus");
        assert_eq!(send_stamp(&p, SEND_STAMP_ID), Some(stamp));
        assert_eq!(rtp_parts(&p).unwrap().3, b"opus");
        // Truncated or of the two-byte form: none, and no panic.
        assert_eq!(send_stamp(&p[..30], SEND_STAMP_ID), None);
        let mut two_byte = p.clone();
        two_byte[12..14].copy_from_slice(&[0x10, 0x00]);
        assert_eq!(send_stamp(&two_byte, SEND_STAMP_ID), None);
    }
}
