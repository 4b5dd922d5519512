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

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reports::emodel::Codec;
use reports::record::MediaStats;

use loadgen::media::fingerprint;
use loadgen::sdp::Description;

use super::media_core::MediaCore;
use super::recording::{Recorder, Recording};

/// Longest sleep without a deadline: commands wake the thread through its eventfd anyway.
const IDLE: Duration = Duration::from_millis(500);
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
    /// complete (flights last sent and received, retransmissions: [`loadgen::dtls::FlightTimer::detail`]);
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
        let core = MediaCore::new(
            address,
            crypto,
            certificate,
            epoch,
            codec,
            counters.clone(),
            recorder,
            (Instant::now(), loadgen::clock::unix_now()),
        );
        let mut server = Edge {
            core,
            socket,
            counters: counters.clone(),
            events: events_tx,
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

/// The media server's real-time edge: its socket, the commands and events channels, the
/// thread's `ppoll` loop and the real clock around the core.
struct Edge {
    core: MediaCore,
    socket: UdpSocket,
    counters: Arc<MediaCounters>,
    events: tokio::sync::mpsc::UnboundedSender<LegEvent>,
    buf: Vec<u8>,
}

impl Edge {
    fn run(&mut self, commands: &mpsc::Receiver<Command>, wake: &OwnedFd) {
        loop {
            loop {
                let now = Instant::now();
                match commands.try_recv() {
                    Ok(Command::Open(spec)) => self.core.open(now, spec),
                    Ok(Command::Restart(r)) => self.core.restart(now, *r),
                    Ok(Command::Conference(call_id)) => self.core.conference(&call_id),
                    Ok(Command::Close { call_id, reply }) => {
                        if let Some(ended) = self.core.close(now, &call_id) {
                            let _ = reply.send(ended);
                        }
                        self.flush();
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            self.receive();
            let next = self.core.handle_timeout(Instant::now());
            self.flush();
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

    /// Reads every datagram the socket holds, answering each as it comes.
    fn receive(&mut self) {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // An ICMP error of an earlier send; nothing to do.
                Err(_) => continue,
            };
            self.core
                .handle_datagram(Instant::now(), from, &self.buf[..n]);
            self.flush();
        }
    }

    /// Sends what the core queued and passes on what it tells.
    fn flush(&mut self) {
        while let Some((to, bytes)) = self.core.poll_transmit() {
            if self.socket.send_to(&bytes, to).is_err() {
                self.counters.send_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Some(event) = self.core.poll_event() {
            let _ = self.events.send(event);
        }
    }
}
