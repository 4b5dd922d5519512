//! The anchor's media server: every call's leg on one UDP socket and one thread, as a vendor's
//! media server runs, instead of a peer connection, a socket and a task per call.
//!
//! Each leg is a real ICE-lite + DTLS-SRTP endpoint built from `rtc`'s parts:
//! - ICE-lite (RFC 8445 §2.5): the agent's full ICE agent sends the checks; the server answers
//!   Binding requests that carry the leg's short-term credentials (RFC 8489 §9.1) and takes the
//!   address the agent nominates (USE-CANDIDATE) as the leg's remote.
//! - DTLS 1.2 server (`rtc::dtls`), the client's certificate checked against the offer's
//!   `a=fingerprint` (RFC 8122 §5).
//! - SRTP/SRTCP keyed from the handshake (RFC 5764 §4.2, `rtc::srtp`).
//! - 20 ms frames on the shared frame grid, RTCP sender reports with a reception report of the
//!   agent's stream every second (RFC 3550 §6.4), and the agent's stream measured.
//!
//! Datagrams are told apart by their first byte (RFC 7983 §7): STUN 0–3, DTLS 20–63, SRTP and
//! SRTCP 128–191, and SRTCP from SRTP by its packet type (RFC 5761 §4). The thread sleeps in
//! `ppoll` until the next frame or a datagram, which gives it sub-millisecond pacing without a
//! timer thread.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use reports::emodel::Codec;
use reports::record::MediaStats;
use rtc::crypto::RTCCryptoProvider;
use rtc::dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType};
use rtc::dtls::crypto::Certificate;
use rtc::dtls::endpoint::{Endpoint, EndpointEvent};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::shared::TransportProtocol;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use turn_server::wire::{self, Class, IntegrityKind, MessageBuilder, Method, StunPacket, StunRepr};

use loadgen::measure::{MediaMeter, Stamp};
use loadgen::peer::{FRAME_TICKS, PAYLOAD_BYTES};

use super::sdp::Offer;

/// USE-CANDIDATE (RFC 8445 §16.1).
const USE_CANDIDATE: u16 = 0x0025;
/// Media frame interval.
const FRAME: Duration = Duration::from_millis(20);
/// RTCP report interval, as the agents' `rtc` report interceptors use.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest sleep without a deadline: commands wake the thread through its eventfd anyway.
const IDLE: Duration = Duration::from_millis(500);

/// What a leg hands back when its call ends: its measurement of the agent's stream, the frames
/// and wire bytes it sent, and its pacing error.
pub type Ended = (MediaStats, u64, u64, reports::Distribution);

/// A leg to open: the offer it answers and what the answer said.
#[derive(Debug)]
pub struct LegSpec {
    /// The call's id.
    pub call_id: String,
    /// The agent's offer.
    pub offer: Offer,
    /// The leg's ICE username fragment (in the answer).
    pub ice_ufrag: String,
    /// The leg's ICE password (in the answer).
    pub ice_pwd: String,
    /// The leg's SSRC (in the answer).
    pub ssrc: u32,
    /// Stop sending media this long after connecting (a fault to inject).
    pub silent_after: Option<Duration>,
}

enum Command {
    Open(Box<LegSpec>),
    Close {
        call_id: String,
        reply: tokio::sync::oneshot::Sender<Ended>,
    },
}

/// Counters of the media server, for the run's diagnostics.
#[derive(Debug, Default)]
pub struct MediaCounters {
    /// Datagrams dropped: malformed STUN, checks with wrong credentials, DTLS or SRTP from an
    /// address no leg nominated, SRTP that failed authentication.
    pub dropped: AtomicU64,
    /// Legs whose DTLS handshake failed (a certificate that does not match the offer's
    /// fingerprint, among others).
    pub dtls_failures: AtomicU64,
}

/// The running media server.
#[derive(Debug)]
pub struct MediaServer {
    commands: Option<mpsc::Sender<Command>>,
    wake: Arc<OwnedFd>,
    address: SocketAddr,
    fingerprint: String,
    thread: Option<JoinHandle<()>>,
    /// Its counters.
    pub counters: Arc<MediaCounters>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl MediaServer {
    /// Binds a UDP socket on `ip` (port 0) and starts the server's thread, `anchor-media`.
    /// Media stamps count from `epoch`; `codec` is the E-model's.
    pub fn start(ip: std::net::IpAddr, epoch: Instant, codec: Codec) -> io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        socket.set_nonblocking(true)?;
        let address = socket.local_addr()?;
        let crypto = rtc::crypto::default_provider().map_err(other)?;
        let certificate =
            Certificate::generate_self_signed(vec!["anchor".to_owned()], crypto.crypto())
                .map_err(other)?;
        let fingerprint = fingerprint(&crypto, &certificate.certificate[0])?;
        let wake = Arc::new(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
        )?);
        let counters = Arc::new(MediaCounters::default());
        let (tx, rx) = mpsc::channel();
        let mut server = Server {
            socket,
            address,
            epoch,
            codec,
            crypto,
            certificate,
            legs: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_call: HashMap::new(),
            by_remote: HashMap::new(),
            next_id: 0,
            counters: counters.clone(),
            buf: vec![0u8; 2048],
        };
        let wake_fd = wake.clone();
        let thread = std::thread::Builder::new()
            .name("anchor-media".into())
            .spawn(move || server.run(&rx, &wake_fd))?;
        Ok(Self {
            commands: Some(tx),
            wake,
            address,
            fingerprint,
            thread: Some(thread),
            counters,
        })
    }

    /// The server's address: every leg's one host candidate.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// SHA-256 fingerprint of the server's DTLS certificate, `AB:CD:…` (for `a=fingerprint`).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn send(&self, command: Command) {
        if let Some(tx) = &self.commands {
            let _ = tx.send(command);
            let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        }
    }

    /// Opens a leg: from now on the server answers its checks and handshake.
    pub fn open(&self, spec: LegSpec) {
        self.send(Command::Open(Box::new(spec)));
    }

    /// Closes a call's leg; its figures arrive on `reply` (dropped if the call is unknown).
    pub fn close(&self, call_id: String, reply: tokio::sync::oneshot::Sender<Ended>) {
        self.send(Command::Close { call_id, reply });
    }
}

impl Drop for MediaServer {
    fn drop(&mut self) {
        // A closed command channel ends the thread at its next wake-up.
        self.commands = None;
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fingerprint(crypto: &Arc<dyn RTCCryptoProvider>, der: &[u8]) -> io::Result<String> {
    let hash = crypto
        .crypto()
        .hash(rtc::crypto::HashAlgorithm::Sha256, der)
        .map_err(other)?;
    Ok(hash
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// RFC 3550 §6.4.1 reception statistics of the agent's stream, for the reports the anchor sends.
#[derive(Debug, Default)]
struct Reception {
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
    fn on_rtp(&mut self, ssrc: u32, seq: u16) {
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

    fn report(
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

struct Leg {
    spec: Box<LegSpec>,
    /// The address the agent nominated.
    remote: Option<SocketAddr>,
    dtls: Endpoint,
    /// Outbound and inbound contexts, once the handshake is done.
    srtp: Option<(Context, Context)>,
    connected: Option<Instant>,
    next_frame: Option<Instant>,
    next_report: Option<Instant>,
    frames_sent: u64,
    wire_bytes_sent: u64,
    pacing: reports::Distribution,
    meter: MediaMeter,
    reception: Reception,
    failed: bool,
}

struct Server {
    socket: UdpSocket,
    address: SocketAddr,
    epoch: Instant,
    codec: Codec,
    crypto: Arc<dyn RTCCryptoProvider>,
    certificate: Certificate,
    legs: HashMap<u64, Leg>,
    by_ufrag: HashMap<String, u64>,
    by_call: HashMap<String, u64>,
    by_remote: HashMap<SocketAddr, u64>,
    next_id: u64,
    counters: Arc<MediaCounters>,
    buf: Vec<u8>,
}

/// IP and UDP header bytes of a datagram to `to`.
fn ip_udp_overhead(to: SocketAddr) -> u64 {
    if to.is_ipv4() { 28 } else { 48 }
}

impl Server {
    fn run(&mut self, commands: &mpsc::Receiver<Command>, wake: &OwnedFd) {
        loop {
            loop {
                match commands.try_recv() {
                    Ok(Command::Open(spec)) => self.open(spec),
                    Ok(Command::Close { call_id, reply }) => self.close(&call_id, reply),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            self.receive();
            let now = Instant::now();
            let next = self.due(now);
            let timeout = next
                .map_or(IDLE, |t| t.saturating_duration_since(Instant::now()))
                .min(IDLE);
            if timeout.is_zero() {
                continue;
            }
            let spec = rustix::event::Timespec {
                tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(timeout.subsec_nanos()),
            };
            let mut fds = [
                rustix::event::PollFd::new(&self.socket, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(wake, rustix::event::PollFlags::IN),
            ];
            let _ = rustix::event::poll(&mut fds, Some(&spec));
            if !fds[1].revents().is_empty() {
                let mut count = [0u8; 8];
                let _ = rustix::io::read(wake, &mut count);
            }
        }
    }

    fn open(&mut self, spec: Box<LegSpec>) {
        let expected = spec.offer.fingerprint.clone();
        let fingerprint_crypto = self.crypto.clone();
        // The DTLS layer accepts any certificate; this comparison with the offer's fingerprint
        // is what authenticates the agent (RFC 8122 §5).
        let verify: rtc::dtls::config::VerifyPeerCertificateFn =
            Arc::new(move |certs: &[Vec<u8>], _| {
                let cert = certs
                    .first()
                    .ok_or(rtc::shared::error::Error::ErrNonCertificate)?;
                match fingerprint(&fingerprint_crypto, cert) {
                    Ok(fp) if fp.eq_ignore_ascii_case(&expected) => Ok(()),
                    _ => Err(rtc::shared::error::Error::ErrNoMatchingCertificateFingerprint),
                }
            });
        let config = ConfigBuilder::default()
            .with_crypto_provider(self.crypto.clone())
            .with_certificates(vec![self.certificate.clone()])
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            .with_insecure_skip_verify(true)
            .with_verify_peer_certificate(Some(verify))
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .build(false, None);
        let Ok(config) = config else {
            self.counters.dtls_failures.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let id = self.next_id;
        self.next_id += 1;
        self.by_ufrag.insert(spec.ice_ufrag.clone(), id);
        self.by_call.insert(spec.call_id.clone(), id);
        let leg = Leg {
            spec,
            remote: None,
            dtls: Endpoint::new(self.address, TransportProtocol::UDP, Some(Arc::new(config))),
            srtp: None,
            connected: None,
            next_frame: None,
            next_report: None,
            frames_sent: 0,
            wire_bytes_sent: 0,
            pacing: reports::Distribution::new(reports::Unit::Micros),
            meter: MediaMeter::new(self.epoch),
            reception: Reception::default(),
            failed: false,
        };
        self.legs.insert(id, leg);
    }

    fn close(&mut self, call_id: &str, reply: tokio::sync::oneshot::Sender<Ended>) {
        let Some(id) = self.by_call.remove(call_id) else {
            return;
        };
        let Some(mut leg) = self.legs.remove(&id) else {
            return;
        };
        self.by_ufrag.remove(&leg.spec.ice_ufrag);
        if let Some(remote) = leg.remote {
            self.by_remote.remove(&remote);
            // close_notify, so the agent's DTLS ends cleanly.
            let _ = leg.dtls.stop(Instant::now(), remote);
            flush_dtls(&self.socket, &mut leg);
        }
        let meter = std::mem::replace(&mut leg.meter, MediaMeter::new(self.epoch));
        let received = meter.received();
        // What the agent sent is the agent's to report; it fills `packets_sent` in.
        let _ = reply.send((
            meter.finish(received, 0, self.codec),
            leg.frames_sent,
            leg.wire_bytes_sent,
            leg.pacing,
        ));
    }

    /// Reads every datagram the socket holds.
    fn receive(&mut self) {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // An ICMP error of an earlier send; nothing to do.
                Err(_) => continue,
            };
            let now = Instant::now();
            let data = std::mem::take(&mut self.buf);
            match data[0] {
                0..=3 => self.on_stun(from, &data[..n]),
                20..=63 => self.on_dtls(now, from, &data[..n]),
                128..=191 => self.on_srtp(now, from, &data[..n]),
                _ => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.buf = data;
        }
    }

    fn drop_one(&self) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Answers a connectivity check (ICE-lite: the server sends none of its own).
    fn on_stun(&mut self, from: SocketAddr, data: &[u8]) {
        let Ok(packet) = StunPacket::new_checked(data) else {
            return self.drop_one();
        };
        if packet.method() != Method::BINDING || packet.class() != Class::Request {
            // Binding indications (keepalives) need no answer.
            return;
        }
        let Ok(repr) = StunRepr::parse(&packet) else {
            return self.drop_one();
        };
        // USERNAME is "server ufrag:agent ufrag" (RFC 8445 §7.2.2).
        let Some((ours, theirs)) = repr.username.and_then(|u| u.split_once(':')) else {
            return self.drop_one();
        };
        let Some(&id) = self.by_ufrag.get(ours) else {
            return self.drop_one();
        };
        let Some(leg) = self.legs.get_mut(&id) else {
            return self.drop_one();
        };
        let key = leg.spec.ice_pwd.as_bytes();
        if theirs != leg.spec.offer.ice_ufrag || !repr.verify_integrity(packet.message(), key) {
            return self.drop_one();
        }
        let mut response =
            MessageBuilder::new(Method::BINDING, Class::Success, packet.transaction_id());
        response
            .xor_address(wire::attr::XOR_MAPPED_ADDRESS, from)
            .integrity(IntegrityKind::Sha1, key);
        let response = response.finish_with_fingerprint();
        if self.socket.send_to(&response, from).is_ok() {
            leg.wire_bytes_sent += response.len() as u64 + ip_udp_overhead(from);
        }
        if packet.attributes().any(|a| a.kind == USE_CANDIDATE) && leg.remote != Some(from) {
            if let Some(old) = leg.remote.replace(from) {
                self.by_remote.remove(&old);
            }
            self.by_remote.insert(from, id);
        }
    }

    fn on_dtls(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Some(leg) = nominated(&self.by_remote, &mut self.legs, from, &self.counters) else {
            return;
        };
        if leg.failed {
            return;
        }
        let events = leg.dtls.read(now, from, None, BytesMut::from(data));
        flush_dtls(&self.socket, leg);
        match events {
            Ok(events) => {
                for event in events {
                    if let EndpointEvent::HandshakeComplete = event {
                        match srtp_contexts(&leg.dtls, from, &self.crypto) {
                            Ok(contexts) => {
                                leg.srtp = Some(contexts);
                                leg.connected = Some(now);
                                leg.next_frame = Some(loadgen::clock::next_slot(self.epoch, now));
                                leg.next_report = Some(now + REPORT_INTERVAL);
                            }
                            Err(_) => {
                                leg.failed = true;
                                self.counters.dtls_failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            Err(_) if leg.srtp.is_none() => {
                leg.failed = true;
                self.counters.dtls_failures.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }

    fn on_srtp(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Some(leg) = nominated(&self.by_remote, &mut self.legs, from, &self.counters) else {
            return;
        };
        let Some((_, inbound)) = &mut leg.srtp else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // RTCP packet types 192–223 (RFC 5761 §4).
        if data.len() > 1 && (192..=223).contains(&data[1]) {
            let Ok(plain) = inbound.decrypt_rtcp(data) else {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            };
            leg.meter.rtcp_reports += 1;
            // A sender report: keep the middle of its NTP time for the next reception report.
            if plain.len() >= 16 && plain[1] == 200 {
                let ntp = u64::from_be_bytes(plain[8..16].try_into().unwrap_or_default());
                leg.reception.last_sr = Some(((ntp >> 16) as u32, now));
            }
            return;
        }
        let Ok(plain) = inbound.decrypt_rtp(data) else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some((seq, timestamp, ssrc, payload)) = rtp_parts(&plain) else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        leg.reception.on_rtp(ssrc, seq);
        leg.meter.on_rtp(now, seq, timestamp, payload);
    }

    /// Runs what is due at `now` (frames, reports, DTLS retransmissions); returns when the next
    /// thing is due.
    fn due(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut soonest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for leg in self.legs.values_mut() {
            let Some(remote) = leg.remote else { continue };
            if leg.srtp.is_none() {
                if let Some(t) = leg.dtls.poll_timeout(&remote) {
                    if t <= now {
                        if leg.dtls.handle_timeout(remote, now).is_err() {
                            leg.failed = true;
                        }
                        flush_dtls(&self.socket, leg);
                    }
                    if let Some(t) = leg.dtls.poll_timeout(&remote) {
                        soonest(t);
                    }
                }
                continue;
            }
            if let Some(due) = leg.next_frame {
                if due <= now {
                    let connected = leg.connected.unwrap_or(now);
                    let silent = leg.spec.silent_after.is_some_and(|d| now >= connected + d);
                    if !silent {
                        leg.pacing.record(
                            u64::try_from(now.saturating_duration_since(due).as_micros())
                                .unwrap_or(u64::MAX),
                        );
                        send_frame(&self.socket, self.epoch, now, remote, leg);
                    }
                    leg.next_frame = Some(due + FRAME);
                }
                soonest(leg.next_frame.unwrap_or(due));
            }
            if let Some(due) = leg.next_report {
                if due <= now {
                    send_report(&self.socket, now, remote, leg);
                    leg.next_report = Some(due + REPORT_INTERVAL);
                }
                soonest(leg.next_report.unwrap_or(due));
            }
        }
        next
    }
}

/// The leg whose nominated address `from` is; a datagram from anywhere else is counted dropped.
fn nominated<'a>(
    by_remote: &HashMap<SocketAddr, u64>,
    legs: &'a mut HashMap<u64, Leg>,
    from: SocketAddr,
    counters: &MediaCounters,
) -> Option<&'a mut Leg> {
    let leg = by_remote.get(&from).and_then(|id| legs.get_mut(id));
    if leg.is_none() {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
    leg
}

fn flush_dtls(socket: &UdpSocket, leg: &mut Leg) {
    while let Some(t) = leg.dtls.poll_transmit() {
        let to = t.transport.peer_addr;
        if socket.send_to(&t.message, to).is_ok() {
            leg.wire_bytes_sent += t.message.len() as u64 + ip_udp_overhead(to);
        }
    }
}

/// The SRTP contexts (outbound, inbound) keyed by the handshake with `remote`.
fn srtp_contexts(
    dtls: &Endpoint,
    remote: SocketAddr,
    crypto: &Arc<dyn RTCCryptoProvider>,
) -> Result<(Context, Context), String> {
    let state = dtls
        .get_connection_state(remote)
        .ok_or("no DTLS connection")?;
    let profile = match state.srtp_protection_profile() {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
            ProtectionProfile::Aes128CmHmacSha1_80
        }
        other => return Err(format!("SRTP profile {other:?} was not offered")),
    };
    let mut config = rtc::srtp::config::Config {
        profile,
        ..Default::default()
    };
    let material = state
        .export_keying_material(
            rtc::srtp::config::LABEL_EXTRACTOR_DTLS_SRTP,
            &[],
            config.keying_material_len(),
        )
        .map_err(|e| e.to_string())?;
    config
        .set_session_keys_from_keying_material(material.as_ref(), state.is_client())
        .map_err(|e| e.to_string())?;
    let keys = &config.keys;
    let outbound = Context::new(
        &keys.local_master_key,
        &keys.local_master_salt,
        profile,
        None,
        None,
        crypto.crypto(),
    )
    .map_err(|e| e.to_string())?;
    let inbound = Context::new(
        &keys.remote_master_key,
        &keys.remote_master_salt,
        profile,
        Some(rtc::srtp::option::srtp_replay_protection(64)),
        Some(rtc::srtp::option::srtcp_replay_protection(64)),
        crypto.crypto(),
    )
    .map_err(|e| e.to_string())?;
    Ok((outbound, inbound))
}

/// Sequence number, timestamp, SSRC and payload of a plain RTP packet (RFC 3550 §5.1).
fn rtp_parts(packet: &[u8]) -> Option<(u16, u32, u32, &[u8])> {
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

fn send_frame(socket: &UdpSocket, epoch: Instant, now: Instant, remote: SocketAddr, leg: &mut Leg) {
    let Some((outbound, _)) = &mut leg.srtp else {
        return;
    };
    let frame = leg.frames_sent;
    let mut packet = [0u8; 12 + PAYLOAD_BYTES];
    packet[0] = 0x80;
    // The marker on the first frame, as a talkspurt begins (RFC 3551 §4.1).
    packet[1] = leg.spec.offer.opus_pt | if frame == 0 { 0x80 } else { 0 };
    packet[2..4].copy_from_slice(&(frame as u16).to_be_bytes());
    packet[4..8].copy_from_slice(&(frame as u32).wrapping_mul(FRAME_TICKS).to_be_bytes());
    packet[8..12].copy_from_slice(&leg.spec.ssrc.to_be_bytes());
    Stamp {
        sent: now.saturating_duration_since(epoch),
        frame,
    }
    .write(&mut packet[12..]);
    let Ok(protected) = outbound.encrypt_rtp(&packet) else {
        return;
    };
    if socket.send_to(&protected, remote).is_ok() {
        leg.frames_sent += 1;
        leg.wire_bytes_sent += protected.len() as u64 + ip_udp_overhead(remote);
    }
}

/// Seconds from 1900 to 1970 (RFC 5905's era 0).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

fn ntp_now() -> u64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    ((since.as_secs() + NTP_UNIX_OFFSET) << 32) | frac
}

/// A sender report with the reception report of the agent's stream.
fn send_report(socket: &UdpSocket, now: Instant, remote: SocketAddr, leg: &mut Leg) {
    let jitter_ticks =
        (leg.meter.jitter_ms() * f64::from(loadgen::peer::CLOCK_RATE) / 1000.0) as u32;
    let report = rtc::rtcp::sender_report::SenderReport {
        ssrc: leg.spec.ssrc,
        ntp_time: ntp_now(),
        rtp_time: (leg.frames_sent as u32).wrapping_mul(FRAME_TICKS),
        packet_count: leg.frames_sent as u32,
        octet_count: (leg.frames_sent as usize * PAYLOAD_BYTES) as u32,
        reports: leg
            .reception
            .report(now, jitter_ticks)
            .into_iter()
            .collect(),
        profile_extensions: Bytes::new(),
    };
    let packets: [Box<dyn rtc::rtcp::packet::Packet>; 1] = [Box::new(report)];
    let Ok(plain) = rtc::rtcp::packet::marshal(&packets) else {
        return;
    };
    let Some((outbound, _)) = &mut leg.srtp else {
        return;
    };
    let Ok(protected) = outbound.encrypt_rtcp(&plain) else {
        return;
    };
    if socket.send_to(&protected, remote).is_ok() {
        leg.wire_bytes_sent += protected.len() as u64 + ip_udp_overhead(remote);
    }
}

#[cfg(test)]
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
}
