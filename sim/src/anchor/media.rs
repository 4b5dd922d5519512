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
//! - 20 ms Opus frames on the shared frame grid (`loadgen::audio`), stamped in the header
//!   extension when the offer asked for it, RTCP sender reports with a reception report of the
//!   agent's stream every second (RFC 3550 §6.4), and the agent's stream measured: with its
//!   send stamps from our agents, by arrival and RTP timestamps alone from any other client.
//!
//! - Consent (RFC 7675): a leg whose agent has sent no check the leg could answer for
//!   [`CONSENT_TIMEOUT`] — a closed page, a dead agent — stops sending for good (only an ICE
//!   restart could bring it back, RFC 7675 §5.1), and the anchor hears of
//!   it ([`LegEvent::ConsentLost`]). An ICE-lite leg sends no checks of its own (RFC 7675 §4
//!   leaves consent to the full agent), so the agent's checks are the only sign of consent; a
//!   browser sends one every 4–6 s, our agents every 2 s.
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
use std::time::{Duration, Instant};

use bytes::BytesMut;
use reports::emodel::Codec;
use reports::record::MediaStats;
use rtc::crypto::RTCCryptoProvider;
use rtc::dtls::crypto::Certificate;
use rtc::dtls::endpoint::Endpoint;
use rtc::shared::TransportProtocol;
use rtc::srtp::context::Context;
use turn_server::wire::{self, Class, IntegrityKind, MessageBuilder, Method, StunPacket, StunRepr};

use loadgen::clock::ntp_now;
use loadgen::dtls::{FlightTimer, Handshake, Retransmission, dtls_config, read_dtls};
use loadgen::measure::{FarEndView, MediaMeter};
use loadgen::media::{
    REPORT_INTERVAL, Reception, fingerprint, frame_packet, is_rtcp, rtp_parts, send_stamp,
    sender_report,
};
use loadgen::sdp::Description;

use super::recording::{Event as Recorded, Recorder, Recording};

/// USE-CANDIDATE (RFC 8445 §16.1).
const USE_CANDIDATE: u16 = 0x0025;
/// Media frame interval.
const FRAME: Duration = Duration::from_millis(20);
/// Longest sleep without a deadline: commands wake the thread through its eventfd anyway.
const IDLE: Duration = Duration::from_millis(500);
/// How long datagrams from a closed leg's address count as its tail, not as strays.
const AFTER_CLOSE: Duration = Duration::from_secs(5);
/// Consent lapses this long after the last check answered (RFC 7675 §5.1: 30 s).
pub const CONSENT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the media server tells the anchor about a leg on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LegEvent {
    /// No check from the agent for [`CONSENT_TIMEOUT`]: the leg has stopped sending.
    ConsentLost {
        /// The call.
        call_id: String,
    },
}

/// What a leg hands back when its call ends.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Its measurement of the agent's stream.
    pub received: MediaStats,
    /// Frames it sent.
    pub frames_sent: u64,
    /// Bytes it sent, every header counted.
    pub wire_bytes_sent: u64,
    /// Its pacing error.
    pub pacing: reports::Distribution,
    /// Its stream as the agent reported it in RTCP reception reports (`None` without one).
    pub far_end: Option<MediaStats>,
    /// How long after the leg opened its DTLS handshake completed (`None`: it never did).
    pub connected_after: Option<Duration>,
    /// When it received its first RTP packet, after it opened.
    pub first_rtp_after: Option<Duration>,
    /// What its DTLS handshake got to, when ICE nominated a pair but the handshake did not
    /// complete (flights last sent and received, retransmissions: [`FlightTimer::detail`]);
    /// `None` when it completed, or when no check ever nominated a pair.
    pub dtls_progress: Option<String>,
    /// Its recording, relative to the run folder, when the server records.
    pub recording: Option<String>,
    /// ICE restarts the agent made on it.
    pub ice_restarts: u32,
    /// What the customer and the third party heard, when the call became a conference.
    pub conference: Option<(reports::Heard, reports::Heard)>,
}

/// A leg to open: the offer it answers and what the answer said.
#[derive(Debug)]
pub struct LegSpec {
    /// The call's id.
    pub call_id: String,
    /// The call as its agent names it (the invite's `callContextToken`): its recording's name.
    pub call: String,
    /// The agent's offer.
    pub offer: Description,
    /// The leg's ICE username fragment (in the answer).
    pub ice_ufrag: String,
    /// The leg's ICE password (in the answer).
    pub ice_pwd: String,
    /// The leg's SSRC (in the answer).
    pub ssrc: u32,
    /// Stop sending media this long after connecting (a fault to inject).
    pub silent_after: Option<Duration>,
    /// How long after the agent's last check consent lapses ([`CONSENT_TIMEOUT`]; shorter
    /// only in tests).
    pub consent_timeout: Duration,
}

/// An ICE restart of a leg (RFC 8445 §9): the agent's new offer and the leg's new credentials.
#[derive(Debug)]
pub struct Restart {
    /// The call.
    pub call_id: String,
    /// The agent's restart offer (its new ufrag and password).
    pub offer: Description,
    /// The leg's new ICE username fragment (in the answer).
    pub ice_ufrag: String,
    /// The leg's new ICE password (in the answer).
    pub ice_pwd: String,
}

enum Command {
    Open(Box<LegSpec>),
    Restart(Box<Restart>),
    Conference(String),
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
    /// Datagrams the socket would not take (a full send buffer: the machine is overloaded).
    pub send_failed: AtomicU64,
    /// Datagrams from a leg's address shortly after the leg closed: the agent's last frames
    /// and its close_notify crossing the hang-up. Expected, so not counted in `dropped`.
    pub after_close: AtomicU64,
    /// Legs that stopped sending because consent lapsed (the agent went away).
    pub consent_lost: AtomicU64,
    /// Recordings started.
    pub recordings: AtomicU64,
    /// Recording events dropped because the recorder fell behind (the recordings conceal
    /// what they missed: the machine was overloaded, not the network).
    pub recording_dropped: AtomicU64,
    /// Recordings that could not be written (a full disk, a missing folder).
    pub recording_failed: AtomicU64,
    /// Frames of the agent's side the recordings concealed (lost, late or undecodable).
    pub recording_concealed: AtomicU64,
}

impl MediaCounters {
    /// Its counters, named as in `summary.json`'s `components`.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        reports::components::snapshot(&[
            ("dropped_datagrams", &self.dropped),
            ("after_close", &self.after_close),
            ("dtls_failures", &self.dtls_failures),
            ("consent_lost", &self.consent_lost),
            ("recordings", &self.recordings),
            ("recording_dropped", &self.recording_dropped),
            ("recording_failed", &self.recording_failed),
            ("recording_concealed", &self.recording_concealed),
            (reports::components::SEND_FAILED, &self.send_failed),
        ])
    }
}

/// The running media server.
#[derive(Debug)]
pub struct MediaServer {
    commands: Option<mpsc::Sender<Command>>,
    wake: Arc<OwnedFd>,
    address: SocketAddr,
    fingerprint: String,
    thread: Option<JoinHandle<()>>,
    events: Option<tokio::sync::mpsc::UnboundedReceiver<LegEvent>>,
    /// Its counters.
    pub counters: Arc<MediaCounters>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl MediaServer {
    /// Binds a UDP socket on `ip` (port 0) and starts the server's thread, `anchor-media`.
    /// Media stamps count from `epoch`; `codec` is the E-model's. With `recording`, every leg
    /// that connects is recorded ([`recording`](super::recording)).
    pub fn start(
        ip: std::net::IpAddr,
        epoch: Instant,
        codec: Codec,
        recording: Option<Recording>,
    ) -> io::Result<Self> {
        // The Opus loop, before the first leg sends.
        loadgen::audio::prepare();
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        socket.set_nonblocking(true)?;
        let address = socket.local_addr()?;
        let crypto = loadgen::entropy::Entropy::Os.provider().map_err(other)?;
        let certificate = loadgen::entropy::certificate("anchor", &crypto).map_err(other)?;
        let fingerprint = fingerprint(&crypto, &certificate.certificate[0]).map_err(other)?;
        let wake = Arc::new(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
        )?);
        let counters = Arc::new(MediaCounters::default());
        let recorder = recording
            .map(|r| Recorder::start(r, counters.clone()))
            .transpose()?;
        let (tx, rx) = mpsc::channel();
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
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
            closed: HashMap::new(),
            next_id: 0,
            counters: counters.clone(),
            events: events_tx,
            buf: vec![0u8; 2048],
            recorder,
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
            events: Some(events),
            counters,
        })
    }

    /// What the server says about legs on its own (once: the first caller takes it).
    pub fn take_events(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<LegEvent>> {
        self.events.take()
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

    /// Restarts a leg's ICE: from now on it answers checks with its new credentials only and
    /// takes the pair they nominate; DTLS and SRTP carry on, and a leg whose consent had
    /// lapsed sends again (RFC 7675 §5.1: only a restart brings it back).
    pub fn restart(&self, restart: Restart) {
        self.send(Command::Restart(Box::new(restart)));
    }

    /// Makes a call a conference: from the next frame on, its leg sends the agent a mix of the
    /// customer and a third party, and each of those hears the other and the agent
    /// (the anchor's `bridge` module).
    pub fn conference(&self, call_id: String) {
        self.send(Command::Conference(call_id));
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
    /// Opus bytes sent (the sender reports' octet count).
    payload_bytes_sent: u64,
    wire_bytes_sent: u64,
    pacing: reports::Distribution,
    meter: MediaMeter,
    reception: Reception,
    /// The agent's reception reports of the leg's stream.
    far_end: FarEndView,
    /// When the handshake's flights go again (no round-trip estimate: ICE-lite sends no checks
    /// to time).
    dtls_timer: FlightTimer,
    opened: Instant,
    first_rtp: Option<Instant>,
    failed: bool,
    /// When the leg last answered a check of the agent's (its opening, before the first).
    last_check: Instant,
    /// Consent lapsed: the leg sends nothing more.
    consent_lost: bool,
    /// Its recording's path in the run folder, while its audio is recorded.
    recording: Option<String>,
    /// ICE restarts the agent made.
    restarts: u32,
    /// The conference it is in, once the call became one.
    bridge: Option<Box<super::bridge::Bridge>>,
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
    /// Addresses of legs closed in the last [`AFTER_CLOSE`], with when they closed.
    closed: HashMap<SocketAddr, Instant>,
    next_id: u64,
    counters: Arc<MediaCounters>,
    events: tokio::sync::mpsc::UnboundedSender<LegEvent>,
    buf: Vec<u8>,
    /// Where connected legs' audio goes, when the run records.
    recorder: Option<Recorder>,
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
                    Ok(Command::Restart(r)) => self.restart(*r),
                    Ok(Command::Conference(call_id)) => {
                        if let Some(leg) = self
                            .by_call
                            .get(&call_id)
                            .and_then(|id| self.legs.get_mut(id))
                        {
                            leg.bridge
                                .get_or_insert_with(|| Box::new(super::bridge::Bridge::new()));
                        }
                    }
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
        let config = dtls_config(
            &self.crypto,
            &self.certificate,
            &spec.offer.fingerprint,
            false,
        );
        let Ok(config) = config else {
            self.counters.dtls_failures.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let id = self.next_id;
        self.next_id += 1;
        self.by_ufrag.insert(spec.ice_ufrag.clone(), id);
        self.by_call.insert(spec.call_id.clone(), id);
        let ssrc = spec.ssrc;
        let leg = Leg {
            spec,
            remote: None,
            dtls: Endpoint::new(self.address, TransportProtocol::UDP, Some(Arc::new(config))),
            srtp: None,
            connected: None,
            next_frame: None,
            next_report: None,
            frames_sent: 0,
            payload_bytes_sent: 0,
            wire_bytes_sent: 0,
            pacing: reports::Distribution::new(reports::Unit::Micros),
            meter: MediaMeter::new(self.epoch),
            reception: Reception::default(),
            far_end: FarEndView::new(ssrc),
            dtls_timer: FlightTimer::new(false),
            opened: Instant::now(),
            first_rtp: None,
            failed: false,
            last_check: Instant::now(),
            consent_lost: false,
            recording: None,
            restarts: 0,
            bridge: None,
        };
        self.legs.insert(id, leg);
    }

    fn restart(&mut self, r: Restart) {
        let Some(&id) = self.by_call.get(&r.call_id) else {
            return;
        };
        let Some(leg) = self.legs.get_mut(&id) else {
            return;
        };
        self.by_ufrag.remove(&leg.spec.ice_ufrag);
        self.by_ufrag.insert(r.ice_ufrag.clone(), id);
        leg.spec.ice_ufrag = r.ice_ufrag;
        leg.spec.ice_pwd = r.ice_pwd;
        // The DTLS role, fingerprint and codec stay as the first offer agreed them.
        leg.spec.offer.ice_ufrag = r.offer.ice_ufrag;
        leg.spec.offer.ice_pwd = r.offer.ice_pwd;
        leg.last_check = Instant::now();
        leg.consent_lost = false;
        leg.restarts += 1;
    }

    fn close(&mut self, call_id: &str, reply: tokio::sync::oneshot::Sender<Ended>) {
        let Some(id) = self.by_call.remove(call_id) else {
            return;
        };
        let Some(mut leg) = self.legs.remove(&id) else {
            return;
        };
        self.by_ufrag.remove(&leg.spec.ice_ufrag);
        if let (Some(_), Some(r)) = (&leg.recording, &self.recorder) {
            r.send(Recorded::Stop { leg: id });
        }
        if let Some(remote) = leg.remote {
            self.by_remote.remove(&remote);
            let now = Instant::now();
            self.closed
                .retain(|_, at| now.saturating_duration_since(*at) < AFTER_CLOSE);
            self.closed.insert(remote, now);
            // close_notify, so the agent's DTLS ends cleanly.
            let _ = leg.dtls.stop(now, remote);
            flush_dtls(&self.socket, &self.counters, &mut leg);
        }
        let meter = std::mem::replace(&mut leg.meter, MediaMeter::new(self.epoch));
        let received = meter.received();
        let since_open = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(leg.opened));
        let _ = reply.send(Ended {
            // What the agent sent is the agent's to report: `packets_sent` is what arrived.
            received: meter.finish(received, 0, self.codec),
            frames_sent: leg.frames_sent,
            wire_bytes_sent: leg.wire_bytes_sent,
            far_end: leg
                .far_end
                .stats(leg.frames_sent, leg.wire_bytes_sent, self.codec),
            connected_after: since_open(leg.connected),
            first_rtp_after: since_open(leg.first_rtp),
            dtls_progress: (leg.connected.is_none() && leg.remote.is_some())
                .then(|| leg.dtls_timer.detail()),
            recording: leg.recording.take(),
            ice_restarts: leg.restarts,
            conference: leg.bridge.as_ref().map(|b| b.heard()),
            pacing: leg.pacing,
        });
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
                // DTLS and SRTP only from the address a call nominated.
                first @ (20..=63 | 128..=191) => match self.by_remote.get(&from).copied() {
                    Some(id) if first < 64 => self.on_dtls(now, id, from, &data[..n]),
                    Some(id) => {
                        if !self.on_srtp(now, id, &data[..n]) {
                            self.drop_one();
                        }
                    }
                    None => self.stray(from),
                },
                _ => self.drop_one(),
            }
            self.buf = data;
        }
    }

    fn drop_one(&self) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// DTLS or SRTP from an address no leg nominated: the tail of a call just hung up, or a
    /// stray.
    fn stray(&self, from: SocketAddr) {
        if self.closed.contains_key(&from) {
            self.counters.after_close.fetch_add(1, Ordering::Relaxed);
        } else {
            self.drop_one();
        }
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
        transmit(&self.socket, &self.counters, leg, &response, from);
        leg.last_check = Instant::now();
        if packet.attributes().any(|a| a.kind == USE_CANDIDATE) && leg.remote != Some(from) {
            if let Some(old) = leg.remote.replace(from) {
                self.by_remote.remove(&old);
            }
            self.by_remote.insert(from, id);
        }
    }

    fn on_dtls(&mut self, now: Instant, id: u64, from: SocketAddr, data: &[u8]) {
        let Some(leg) = self.legs.get_mut(&id) else {
            return;
        };
        if leg.failed {
            return;
        }
        let keyed = leg.srtp.is_some();
        if !keyed {
            leg.dtls_timer.received(now, data);
        }
        let step = read_dtls(
            &mut leg.dtls,
            now,
            from,
            BytesMut::from(data),
            &self.crypto,
            keyed,
        );
        flush_dtls(&self.socket, &self.counters, leg);
        match step {
            Handshake::Keyed(contexts) => {
                leg.srtp = Some(*contexts);
                leg.connected = Some(now);
                leg.next_frame = Some(loadgen::clock::next_slot(self.epoch, now));
                leg.next_report = Some(now + REPORT_INTERVAL);
                if let Some(r) = &mut self.recorder {
                    leg.recording = Some(r.start_leg(id, &leg.spec.call));
                }
            }
            Handshake::Failed => {
                leg.failed = true;
                self.counters.dtls_failures.fetch_add(1, Ordering::Relaxed);
            }
            Handshake::Going => {}
        }
    }

    /// Reads SRTP or SRTCP from leg `id`; `false` when the packet is dropped (before the
    /// handshake keyed SRTP, failing authentication, or not RTP).
    fn on_srtp(&mut self, now: Instant, id: u64, data: &[u8]) -> bool {
        let Some(leg) = self.legs.get_mut(&id) else {
            return true;
        };
        let Some((_, inbound)) = &mut leg.srtp else {
            return false;
        };
        if is_rtcp(data) {
            let Ok(plain) = inbound.decrypt_rtcp(data) else {
                return false;
            };
            leg.meter.rtcp_reports += 1;
            leg.reception.on_rtcp(now, &plain);
            leg.far_end.on_rtcp(&plain, ntp_now());
            return true;
        }
        let Ok(plain) = inbound.decrypt_rtp(data) else {
            return false;
        };
        let Some((seq, timestamp, ssrc, payload)) = rtp_parts(&plain) else {
            return false;
        };
        let stamp = leg
            .spec
            .offer
            .send_stamp
            .and_then(|id| send_stamp(&plain, id));
        leg.first_rtp.get_or_insert(now);
        if let Some(bridge) = &mut leg.bridge {
            bridge.agent_frame(payload);
        }
        if let (Some(_), Some(r)) = (&leg.recording, &self.recorder) {
            r.send(Recorded::Agent {
                leg: id,
                timestamp,
                payload: payload.to_vec(),
            });
        }
        leg.reception.on_rtp(ssrc, seq);
        leg.meter.on_rtp(now, seq, timestamp, stamp);
        true
    }

    /// Runs what is due at `now` (frames, reports, DTLS retransmissions); returns when the next
    /// thing is due.
    fn due(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut soonest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for (&id, leg) in &mut self.legs {
            if leg.consent_lost {
                continue;
            }
            let lapses = leg.last_check + leg.spec.consent_timeout;
            if lapses <= now {
                leg.consent_lost = true;
                self.counters.consent_lost.fetch_add(1, Ordering::Relaxed);
                let _ = self.events.send(LegEvent::ConsentLost {
                    call_id: leg.spec.call_id.clone(),
                });
                continue;
            }
            soonest(lapses);
            let Some(remote) = leg.remote else { continue };
            if leg.srtp.is_none() {
                if leg.failed {
                    continue;
                }
                match leg
                    .dtls_timer
                    .handle_timeout(now, false, &mut leg.dtls, remote)
                {
                    Retransmission::Nothing => {}
                    Retransmission::Regenerated => flush_dtls(&self.socket, &self.counters, leg),
                    Retransmission::Resend(flight) => {
                        for (_, to, bytes) in &flight {
                            transmit(&self.socket, &self.counters, leg, bytes, *to);
                        }
                    }
                    Retransmission::Failed => {
                        leg.failed = true;
                        self.counters.dtls_failures.fetch_add(1, Ordering::Relaxed);
                        flush_dtls(&self.socket, &self.counters, leg);
                    }
                }
                if let Some(t) = leg.dtls_timer.deadline(leg.failed) {
                    soonest(t);
                }
                continue;
            }
            if let Some(due) = leg.next_frame {
                if due <= now {
                    let connected = leg.connected.unwrap_or(now);
                    let silent = leg.spec.silent_after.is_some_and(|d| now >= connected + d);
                    let frame = leg.frames_sent;
                    if !silent {
                        let late = now.saturating_duration_since(due);
                        leg.pacing
                            .record(u64::try_from(late.as_micros()).unwrap_or(u64::MAX));
                        loadgen::lateness::record(loadgen::lateness::Sender::Anchor, late);
                        send_frame(&self.socket, &self.counters, self.epoch, now, remote, leg);
                    }
                    if let (Some(_), Some(r)) = (&leg.recording, &self.recorder) {
                        r.send(Recorded::Tick {
                            leg: id,
                            customer: (leg.frames_sent > frame).then_some(frame),
                        });
                    }
                    leg.next_frame = Some(due + FRAME);
                }
                soonest(leg.next_frame.unwrap_or(due));
            }
            if let Some(due) = leg.next_report {
                if due <= now {
                    send_report(&self.socket, &self.counters, now, remote, leg);
                    leg.next_report = Some(due + REPORT_INTERVAL);
                }
                soonest(leg.next_report.unwrap_or(due));
            }
        }
        next
    }
}

/// Sends `bytes` to `to` for `leg`, adding them to its wire bytes, or counts the failure.
fn transmit(
    socket: &UdpSocket,
    counters: &MediaCounters,
    leg: &mut Leg,
    bytes: &[u8],
    to: SocketAddr,
) -> bool {
    if socket.send_to(bytes, to).is_ok() {
        leg.wire_bytes_sent += bytes.len() as u64 + ip_udp_overhead(to);
        true
    } else {
        counters.send_failed.fetch_add(1, Ordering::Relaxed);
        false
    }
}

fn flush_dtls(socket: &UdpSocket, counters: &MediaCounters, leg: &mut Leg) {
    let (mut flight, mut at) = (Vec::new(), None);
    while let Some(t) = leg.dtls.poll_transmit() {
        let to = t.transport.peer_addr;
        transmit(socket, counters, leg, &t.message, to);
        at = Some(t.now);
        flight.push((t.transport.local_addr, to, t.message));
    }
    if let (Some(at), false) = (at, leg.srtp.is_some()) {
        leg.dtls_timer.sent(at, flight);
    }
}

fn send_frame(
    socket: &UdpSocket,
    counters: &MediaCounters,
    epoch: Instant,
    now: Instant,
    remote: SocketAddr,
    leg: &mut Leg,
) {
    let Some((outbound, _)) = &mut leg.srtp else {
        return;
    };
    let sent = now.saturating_duration_since(epoch);
    let offer = &leg.spec.offer;
    // The customer's voice, or in a conference the bridge's mix for the agent.
    let mixed = leg.bridge.as_mut().map(|b| b.mix());
    let opus = mixed
        .as_deref()
        .unwrap_or_else(|| loadgen::audio::opus_frame(leg.frames_sent));
    let packet = frame_packet(
        leg.frames_sent,
        opus,
        offer.opus_pt,
        leg.spec.ssrc,
        sent,
        offer.send_stamp,
    );
    let Ok(protected) = outbound.encrypt_rtp(&packet) else {
        return;
    };
    let payload_bytes = opus.len() as u64;
    if transmit(socket, counters, leg, &protected, remote) {
        leg.payload_bytes_sent += payload_bytes;
        leg.frames_sent += 1;
    }
}

/// A sender report with the reception report of the agent's stream.
fn send_report(
    socket: &UdpSocket,
    counters: &MediaCounters,
    now: Instant,
    remote: SocketAddr,
    leg: &mut Leg,
) {
    let Some(plain) = sender_report(
        now,
        ntp_now(),
        leg.spec.ssrc,
        (leg.frames_sent, leg.payload_bytes_sent),
        &mut leg.reception,
        &leg.meter,
    ) else {
        return;
    };
    let Some((outbound, _)) = &mut leg.srtp else {
        return;
    };
    let Ok(protected) = outbound.encrypt_rtcp(&plain) else {
        return;
    };
    transmit(socket, counters, leg, &protected, remote);
}
