//! The anchor's media server without its socket, thread or clock — its core: every call's
//! leg (ICE-lite, DTLS server, SRTP, the frames and sender reports it sends, the agent's
//! stream it measures), driven by the datagrams and instants its caller passes in
//! (`handle_datagram`, `handle_timeout`, `poll_transmit`, `poll_event`). `super::media`'s
//! `MediaServer` is its real-time edge: one UDP socket and a thread sleeping in `ppoll`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use reports::emodel::Codec;
use rtc::crypto::RTCCryptoProvider;
use rtc::dtls::crypto::Certificate;
use rtc::dtls::endpoint::Endpoint;
use rtc::shared::TransportProtocol;
use rtc::srtp::context::Context;
use turn_server::wire::{self, Class, IntegrityKind, MessageBuilder, Method, StunPacket, StunRepr};

use loadgen::dtls::{FlightTimer, Handshake, Retransmission, dtls_config, read_dtls};
use loadgen::measure::{FarEndView, MediaMeter};
use loadgen::media::{
    REPORT_INTERVAL, Reception, frame_packet, is_rtcp, rtp_parts, send_stamp, sender_report,
};

use super::media::{Ended, LegEvent, LegSpec, MediaCounters, Restart};
use super::recording::{Event as Recorded, Recorder};

/// USE-CANDIDATE (RFC 8445 §16.1).
const USE_CANDIDATE: u16 = 0x0025;
/// Media frame interval.
const FRAME: Duration = Duration::from_millis(20);
/// How long datagrams from a closed leg's address count as its tail, not as strays.
const AFTER_CLOSE: Duration = Duration::from_secs(5);

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

/// Every call's leg of the anchor's media server, without its socket or clock (the core):
/// datagrams and instants in, datagrams and events out.
pub(crate) struct MediaCore {
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
    /// What the server tells the anchor on its own.
    events: VecDeque<LegEvent>,
    /// Datagrams to send, in order: to, bytes.
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    /// The wall clock (since the Unix epoch) at an instant: the sender reports' NTP time.
    wall: (Instant, Duration),
    /// Where connected legs' audio goes, when the run records.
    recorder: Option<Recorder>,
}

/// IP and UDP header bytes of a datagram to `to`.
fn ip_udp_overhead(to: SocketAddr) -> u64 {
    if to.is_ipv4() { 28 } else { 48 }
}

impl MediaCore {
    /// Opens a leg: from now on it answers its checks and handshake.
    pub(crate) fn open(&mut self, now: Instant, spec: Box<LegSpec>) {
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
            opened: now,
            first_rtp: None,
            failed: false,
            last_check: now,
            consent_lost: false,
            recording: None,
            restarts: 0,
            bridge: None,
        };
        self.legs.insert(id, leg);
    }

    /// Restarts a leg's ICE (see [`MediaServer::restart`]).
    pub(crate) fn restart(&mut self, now: Instant, r: Restart) {
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
        leg.last_check = now;
        leg.consent_lost = false;
        leg.restarts += 1;
    }

    /// Closes a call's leg and gives its figures (`None` for an unknown call).
    pub(crate) fn close(&mut self, now: Instant, call_id: &str) -> Option<Ended> {
        let id = self.by_call.remove(call_id)?;
        let mut leg = self.legs.remove(&id)?;
        self.by_ufrag.remove(&leg.spec.ice_ufrag);
        if let (Some(_), Some(r)) = (&leg.recording, &self.recorder) {
            r.send(Recorded::Stop { leg: id });
        }
        if let Some(remote) = leg.remote {
            self.by_remote.remove(&remote);
            self.closed
                .retain(|_, at| now.saturating_duration_since(*at) < AFTER_CLOSE);
            self.closed.insert(remote, now);
            // close_notify, so the agent's DTLS ends cleanly.
            let _ = leg.dtls.stop(now, remote);
            flush_dtls(&mut self.transmits, &mut leg);
        }
        let meter = std::mem::replace(&mut leg.meter, MediaMeter::new(self.epoch));
        let received = meter.received();
        let since_open = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(leg.opened));
        Some(Ended {
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
        })
    }

    /// Makes a call a conference (see [`MediaServer::conference`]).
    pub(crate) fn conference(&mut self, call_id: &str) {
        if let Some(leg) = self
            .by_call
            .get(call_id)
            .and_then(|id| self.legs.get_mut(id))
        {
            leg.bridge
                .get_or_insert_with(|| Box::new(super::bridge::Bridge::new()));
        }
    }

    /// The next datagram to send: to, bytes.
    pub(crate) fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next thing to tell the anchor.
    pub(crate) fn poll_event(&mut self) -> Option<LegEvent> {
        self.events.pop_front()
    }

    /// The wall clock at `now` as NTP time.
    fn ntp(&self, now: Instant) -> u64 {
        let (at, unix) = self.wall;
        loadgen::media::ntp(unix + now.saturating_duration_since(at))
    }

    /// A datagram that arrived from `from`.
    pub(crate) fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Some(&first) = data.first() else {
            return self.drop_one();
        };
        match first {
            0..=3 => self.on_stun(now, from, data),
            // DTLS and SRTP only from the address a call nominated.
            20..=63 | 128..=191 => match self.by_remote.get(&from).copied() {
                Some(id) if first < 64 => self.on_dtls(now, id, from, data),
                Some(id) => {
                    if !self.on_srtp(now, id, data) {
                        self.drop_one();
                    }
                }
                None => self.stray(from),
            },
            _ => self.drop_one(),
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
    fn on_stun(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
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
        transmit(&mut self.transmits, leg, &response, from);
        leg.last_check = now;
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
        flush_dtls(&mut self.transmits, leg);
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
        let ntp = self.ntp(now);
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
            leg.far_end.on_rtcp(&plain, ntp);
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

    /// Runs what is due at `now` (frames, reports, DTLS retransmissions, consent); returns
    /// when the next thing is due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Option<Instant> {
        let ntp = self.ntp(now);
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
                self.events.push_back(LegEvent::ConsentLost {
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
                    Retransmission::Regenerated => flush_dtls(&mut self.transmits, leg),
                    Retransmission::Resend(flight) => {
                        for (_, to, bytes) in &flight {
                            transmit(&mut self.transmits, leg, bytes, *to);
                        }
                    }
                    Retransmission::Failed => {
                        leg.failed = true;
                        self.counters.dtls_failures.fetch_add(1, Ordering::Relaxed);
                        flush_dtls(&mut self.transmits, leg);
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
                        send_frame(&mut self.transmits, self.epoch, now, remote, leg);
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
                    send_report(&mut self.transmits, now, ntp, remote, leg);
                    leg.next_report = Some(due + REPORT_INTERVAL);
                }
                soonest(leg.next_report.unwrap_or(due));
            }
        }
        next
    }
}

/// What the core sends: to, bytes.
type Out = VecDeque<(SocketAddr, Vec<u8>)>;

/// Queues `bytes` to `to` for `leg`, adding them to its wire bytes (a send the edge then fails
/// is counted there, as `send_failed`).
fn transmit(out: &mut Out, leg: &mut Leg, bytes: &[u8], to: SocketAddr) {
    leg.wire_bytes_sent += bytes.len() as u64 + ip_udp_overhead(to);
    out.push_back((to, bytes.to_vec()));
}

fn flush_dtls(out: &mut Out, leg: &mut Leg) {
    let (mut flight, mut at) = (Vec::new(), None);
    while let Some(t) = leg.dtls.poll_transmit() {
        let to = t.transport.peer_addr;
        transmit(out, leg, &t.message, to);
        at = Some(t.now);
        flight.push((t.transport.local_addr, to, t.message));
    }
    if let (Some(at), false) = (at, leg.srtp.is_some()) {
        leg.dtls_timer.sent(at, flight);
    }
}

fn send_frame(out: &mut Out, epoch: Instant, now: Instant, remote: SocketAddr, leg: &mut Leg) {
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
    leg.payload_bytes_sent += opus.len() as u64;
    leg.frames_sent += 1;
    transmit(out, leg, &protected, remote);
}

/// A sender report with the reception report of the agent's stream.
fn send_report(out: &mut Out, now: Instant, ntp: u64, remote: SocketAddr, leg: &mut Leg) {
    let Some(plain) = sender_report(
        now,
        ntp,
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
    transmit(out, leg, &protected, remote);
}

impl MediaCore {
    /// A server at `address` with `certificate` (from `crypto`), its media stamps counting from
    /// `epoch`, the wall clock reading `unix` at `now`; `codec` is the E-model's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        address: SocketAddr,
        crypto: Arc<dyn RTCCryptoProvider>,
        certificate: Certificate,
        epoch: Instant,
        codec: Codec,
        counters: Arc<MediaCounters>,
        recorder: Option<Recorder>,
        (now, unix): (Instant, Duration),
    ) -> Self {
        Self {
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
            counters,
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            wall: (now, unix),
            recorder,
        }
    }
}
