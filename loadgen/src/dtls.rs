//! DTLS-SRTP for a leg (RFC 5764): the handshake's configuration (the peer's certificate held to
//! its SDP fingerprint, RFC 8122 §5), the SRTP keys it exports, and [`FlightTimer`], the
//! retransmission timer of its flights as Chromium runs it. Both ends use it: the agent's media
//! plane ([`crate::media`]) and the anchor's media server (in `sim`).
//!
//! `rtc`'s handshaker retransmits on a fixed interval (1 s by default) at most 7 times, and drops
//! its timer for good when the peer repeats an earlier flight while it waits (the peer's
//! retransmission crossing ours), where RFC 6347 §4.2.4 has the flight sent again. So `rtc`'s
//! timer is only a flag here: [`FlightTimer`] decides when a flight is sent again, has `rtc`
//! regenerate it while it can (fresh record sequence numbers), and otherwise sends it as it
//! was last sent (a record the peer lost is new to it; one it has is dropped by its replay
//! window, RFC 6347 §4.1.2.6).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::crypto::RTCCryptoProvider;
use rtc::dtls::config::{
    ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig,
    VerifyPeerCertificateFn,
};
use rtc::dtls::crypto::Certificate;
use rtc::dtls::endpoint::{Endpoint, EndpointEvent};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

use crate::media::fingerprint;

/// The shortest first retransmission timeout: Chromium's `kMinHandshakeTimeout` (WebRTC
/// `p2p/dtls/dtls_transport.cc`, which sets it to twice ICE's round-trip estimate, clamped).
pub const MIN_INITIAL_TIMEOUT: Duration = Duration::from_millis(50);
/// The longest first retransmission timeout: Chromium's `kMaxHandshakeTimeout`.
pub const MAX_INITIAL_TIMEOUT: Duration = Duration::from_millis(3000);
/// The first timeout without a round-trip estimate (an ICE-lite end sends no checks to time):
/// BoringSSL's default (`ssl->initial_timeout_duration_ms`, 1 s).
pub const DEFAULT_INITIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// The timeout doubles at each expiry up to this (BoringSSL `dtls1_double_timeout`, 60 s).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Expiries of one flight's timer before the handshake fails: BoringSSL's `DTLS1_MAX_TIMEOUTS`
/// (`ssl/d1_lib.cc`); the 13th expiry fails it.
pub const MAX_TIMEOUTS: u32 = 12;
/// How many times `rtc` regenerates one flight before it fails the handshake itself
/// (rtc-dtls' fixed `DEFAULT_MAXIMUM_RETRANSMIT_NUMBER`); past it, the flight goes out as sent.
const RTC_RETRANSMITS: u32 = 7;
/// The retransmit interval given to `rtc`: its timer only says that it can regenerate the
/// flight; [`FlightTimer`] says when.
pub const RTC_FLIGHT_INTERVAL: Duration = Duration::from_millis(1);

/// A datagram as a leg sends it: (local address, remote address, bytes).
pub type Datagram = (SocketAddr, SocketAddr, BytesMut);

/// The first retransmission timeout for a round-trip estimate, as Chromium picks it: twice the
/// round trip, clamped to [`MIN_INITIAL_TIMEOUT`]…[`MAX_INITIAL_TIMEOUT`];
/// [`DEFAULT_INITIAL_TIMEOUT`] without one.
pub fn initial_timeout(rtt: Option<Duration>) -> Duration {
    rtt.filter(|r| !r.is_zero())
        .map_or(DEFAULT_INITIAL_TIMEOUT, |r| {
            (2 * r).clamp(MIN_INITIAL_TIMEOUT, MAX_INITIAL_TIMEOUT)
        })
}

/// The handshake flight (RFC 6347 §4.2.4, numbered 1–6) that a datagram's records belong to,
/// sent by a client (`from_client`) or a server; `None` for alerts and application data.
///
/// 1 ClientHello · 2 HelloVerifyRequest · 3 ClientHello with its cookie · 4 ServerHello …
/// ServerHelloDone · 5 Certificate, ClientKeyExchange, CertificateVerify, ChangeCipherSpec,
/// Finished · 6 ChangeCipherSpec, Finished. A datagram of several records is the latest flight
/// among them.
pub fn flight_of(datagram: &[u8], from_client: bool) -> Option<u8> {
    const HEADER: usize = 13;
    let mut flight = None;
    let mut rest = datagram;
    while rest.len() >= HEADER {
        let epoch = u16::from_be_bytes([rest[3], rest[4]]);
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let Some(body) = rest.get(HEADER..HEADER + len) else {
            break;
        };
        let finishing = if from_client { 5 } else { 6 };
        let this = match (rest[0], epoch) {
            // ChangeCipherSpec, or the encrypted Finished.
            (20, _) | (22, 1..) => Some(finishing),
            (22, 0) => match body.first() {
                Some(1) => Some(if client_hello_cookie(body) { 3 } else { 1 }),
                Some(3) => Some(2),
                Some(2 | 12 | 13 | 14) => Some(4),
                Some(11) => Some(if from_client { 5 } else { 4 }),
                Some(15 | 16) => Some(5),
                _ => None,
            },
            _ => None,
        };
        flight = flight.max(this);
        rest = &rest[HEADER + len..];
    }
    flight
}

/// Whether a ClientHello (its handshake message, header included) carries a cookie: the answer
/// to a HelloVerifyRequest (RFC 6347 §4.2.1).
fn client_hello_cookie(message: &[u8]) -> bool {
    // Handshake header (12), client_version (2), random (32), then the session id.
    let Some(&session) = message.get(12 + 2 + 32) else {
        return false;
    };
    message
        .get(12 + 2 + 32 + 1 + usize::from(session))
        .is_some_and(|&cookie| cookie > 0)
}

/// What a handshake's timer decides at an expiry ([`FlightTimer::handle_timeout`] carries it
/// out).
#[derive(Debug)]
enum Expiry {
    /// Nothing is due.
    Nothing,
    /// `rtc` is to regenerate its flight: call its `handle_timeout` and send what it queues.
    Rtc,
    /// Send these datagrams again, as they were last sent.
    Resend(Vec<Datagram>),
    /// The flight went unanswered [`MAX_TIMEOUTS`] times: the handshake failed.
    GaveUp,
}

/// What [`FlightTimer::handle_timeout`] did, for its caller to finish.
#[derive(Debug)]
pub enum Retransmission {
    /// Nothing was due.
    Nothing,
    /// `rtc` regenerated its flight: send what its endpoint queued.
    Regenerated,
    /// Send these datagrams again, as they were last sent.
    Resend(Vec<Datagram>),
    /// The handshake failed (retransmissions spent, or `rtc` refused): send what its endpoint
    /// queued, if anything, and give the leg up.
    Failed,
}

/// The retransmission timer of one DTLS handshake's flights, as Chromium runs it (the
/// constants above), and what it saw, for a failed handshake's detail.
#[derive(Debug, Default)]
pub struct FlightTimer {
    is_client: bool,
    initial: Duration,
    started: Option<Instant>,
    /// The flight last sent: its number, when, its datagrams.
    sent: Option<(u8, Instant)>,
    datagrams: Vec<Datagram>,
    /// Expiries of the current flight's timer, and how many of them `rtc` answered.
    timeouts: u32,
    rtc_timeouts: u32,
    /// Flights sent again, in all.
    retransmissions: u32,
    /// The peer's latest flight, and when its latest datagram came.
    received: Option<(u8, Instant)>,
    /// The peer sent again a flight this end had answered: the answer was lost, and goes
    /// again now (RFC 6347 §4.2.4), not at the next expiry.
    repeated: bool,
    /// Flights sent again because the peer repeated its own.
    answered_repeats: u32,
    gave_up: bool,
}

/// Datagrams of one flight arrive together; a datagram of the same flight this long after the
/// previous one is the peer's retransmission (half Chromium's shortest first timeout: no peer
/// repeats a flight sooner).
const REPEAT_GAP: Duration = Duration::from_millis(25);

impl FlightTimer {
    /// The timer of a handshake in which this end is the client (`is_client`) or the server,
    /// with no round-trip estimate yet.
    pub fn new(is_client: bool) -> Self {
        Self {
            is_client,
            initial: DEFAULT_INITIAL_TIMEOUT,
            ..Self::default()
        }
    }

    /// ICE's round-trip estimate of the pair the handshake runs on (see [`initial_timeout`]).
    pub fn set_rtt(&mut self, rtt: Option<Duration>) {
        self.initial = initial_timeout(rtt);
    }

    /// The first retransmission timeout in use.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// Flights sent again so far.
    pub fn retransmissions(&self) -> u32 {
        self.retransmissions
    }

    /// `rtc` sent `datagrams` at `now` (one flight, or its retransmission when it is the
    /// same flight again).
    pub fn sent(&mut self, now: Instant, datagrams: Vec<Datagram>) {
        let Some(flight) = datagrams
            .iter()
            .filter_map(|(_, _, d)| flight_of(d, self.is_client))
            .max()
        else {
            return;
        };
        self.started.get_or_insert(now);
        if self.sent.is_some_and(|(last, _)| last == flight) {
            self.retransmissions += 1;
        } else {
            self.timeouts = 0;
            self.rtc_timeouts = 0;
            self.repeated = false;
        }
        self.sent = Some((flight, now));
        self.datagrams = datagrams;
    }

    /// A DTLS datagram from the peer arrived at `now`.
    pub fn received(&mut self, now: Instant, datagram: &[u8]) {
        if let Some(flight) = flight_of(datagram, !self.is_client) {
            self.started.get_or_insert(now);
            let repeat = self.received.is_some_and(|(last, at)| {
                last == flight && now.saturating_duration_since(at) >= REPEAT_GAP
            });
            // A repeat of the flight our latest one answers: the peer never got ours.
            if repeat && self.sent.is_some_and(|(ours, _)| ours > flight) {
                self.repeated = true;
            }
            self.received = Some((flight, now));
        }
    }

    /// The current flight's timeout: the first one, doubled at each expiry, at most
    /// [`MAX_TIMEOUT`].
    fn timeout(&self) -> Duration {
        self.initial
            .saturating_mul(1 << self.timeouts.min(16))
            .min(MAX_TIMEOUT)
    }

    /// When the flight last sent must go again, unless the handshake is `done` (after it, the
    /// last flight goes again only when the peer repeats its own, which `rtc` does).
    pub fn deadline(&self, done: bool) -> Option<Instant> {
        if done || self.gave_up {
            return None;
        }
        self.sent.map(|(_, at)| {
            if self.repeated {
                at
            } else {
                at + self.timeout()
            }
        })
    }

    /// Runs the timer at `now` for the handshake `dtls` holds with `remote`, unless it is
    /// `done`: when a flight is due, has `rtc` regenerate it while it may, or hands back the
    /// flight as last sent.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        done: bool,
        dtls: &mut Endpoint,
        remote: SocketAddr,
    ) -> Retransmission {
        let armed = dtls.poll_timeout(&remote).is_some();
        match self.on_timeout(now, done, armed) {
            Expiry::Nothing => Retransmission::Nothing,
            Expiry::Rtc if dtls.handle_timeout(remote, now).is_err() => Retransmission::Failed,
            Expiry::Rtc => Retransmission::Regenerated,
            Expiry::Resend(flight) => Retransmission::Resend(flight),
            Expiry::GaveUp => Retransmission::Failed,
        }
    }

    /// Runs the timer at `now`; `rtc_armed` when `rtc` holds a retransmit timer (it can
    /// regenerate the flight).
    fn on_timeout(&mut self, now: Instant, done: bool, rtc_armed: bool) -> Expiry {
        if self.deadline(done).is_none_or(|t| t > now) {
            return Expiry::Nothing;
        }
        // Answering the peer's repeat is not an expiry: the timer keeps its backoff.
        if std::mem::take(&mut self.repeated) {
            self.answered_repeats += 1;
        } else {
            self.timeouts += 1;
        }
        if self.timeouts > MAX_TIMEOUTS {
            self.gave_up = true;
            return Expiry::GaveUp;
        }
        if let Some((_, at)) = &mut self.sent {
            *at = now;
        }
        if rtc_armed && self.rtc_timeouts < RTC_RETRANSMITS {
            self.rtc_timeouts += 1;
            return Expiry::Rtc;
        }
        self.retransmissions += 1;
        Expiry::Resend(self.datagrams.clone())
    }

    /// What the handshake got to, for a failure's detail: the flights last sent and received,
    /// when (from the handshake's start), and the retransmissions made.
    pub fn detail(&self) -> String {
        let Some(start) = self.started else {
            return "no flight sent or received".into();
        };
        let at = |t: Instant| t.saturating_duration_since(start).as_secs_f64();
        let sent = match self.sent {
            Some((flight, t)) => format!(
                "last sent flight {flight} at {:.2} s ({} expiries of its timer)",
                at(t),
                self.timeouts
            ),
            None => "sent nothing".into(),
        };
        let received = match self.received {
            Some((flight, t)) => format!("last received flight {flight} at {:.2} s", at(t)),
            None => "received nothing".into(),
        };
        let gave_up = if self.gave_up {
            format!("; gave up after {MAX_TIMEOUTS} expiries")
        } else {
            String::new()
        };
        format!(
            "{sent}; {received}; {} retransmissions in all ({} answering the peer's), first \
             timeout {} ms{gave_up}",
            self.retransmissions,
            self.answered_repeats,
            self.initial.as_millis()
        )
    }
}

/// The DTLS configuration of a leg: its certificate, the SRTP profiles offered (AEAD AES-128-GCM,
/// then AES-CM-128-HMAC-SHA1-80), extended master secret, and the peer's certificate accepted
/// only if it hashes to `expected` (the fingerprint from the peer's SDP); its retransmissions
/// are timed by a [`FlightTimer`].
pub fn dtls_config(
    crypto: &Arc<dyn RTCCryptoProvider>,
    certificate: &Certificate,
    expected: &str,
    is_client: bool,
) -> Result<HandshakeConfig, String> {
    let expected = expected.to_owned();
    let hashing = crypto.clone();
    // The DTLS layer accepts any certificate; this comparison is what authenticates the peer.
    let verify: VerifyPeerCertificateFn = Arc::new(move |certs: &[Vec<u8>], _| {
        let cert = certs
            .first()
            .ok_or(rtc::shared::error::Error::ErrNonCertificate)?;
        match fingerprint(&hashing, cert) {
            Ok(fp) if fp.eq_ignore_ascii_case(&expected) => Ok(()),
            _ => Err(rtc::shared::error::Error::ErrNoMatchingCertificateFingerprint),
        }
    });
    ConfigBuilder::default()
        .with_crypto_provider(crypto.clone())
        .with_certificates(vec![certificate.clone()])
        .with_srtp_protection_profiles(vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ])
        .with_client_auth(ClientAuthType::RequireAnyClientCert)
        .with_insecure_skip_verify(true)
        .with_verify_peer_certificate(Some(verify))
        .with_extended_master_secret(ExtendedMasterSecretType::Require)
        .with_flight_interval(RTC_FLIGHT_INTERVAL)
        .build(is_client, None)
        .map_err(|e| e.to_string())
}

/// The SRTP contexts (outbound, inbound) keyed by the finished handshake with `remote`.
pub fn srtp_contexts(
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

/// What a DTLS record did to a leg's handshake.
#[allow(missing_debug_implementations)] // SRTP contexts are not `Debug`
pub enum Handshake {
    /// Still going (or done earlier and going on with its records).
    Going,
    /// It just finished: the SRTP contexts (outbound, inbound) it keyed.
    Keyed(Box<(Context, Context)>),
    /// It failed before keying SRTP.
    Failed,
}

/// Hands a DTLS record from `remote` to `dtls`; `keyed` when its SRTP is already keyed (an
/// error then, such as a late retransmission, ends nothing).
pub fn read_dtls(
    dtls: &mut Endpoint,
    now: Instant,
    remote: SocketAddr,
    data: BytesMut,
    crypto: &Arc<dyn RTCCryptoProvider>,
    keyed: bool,
) -> Handshake {
    match dtls.read(now, remote, None, data) {
        Ok(events) => {
            if events
                .iter()
                .any(|e| matches!(e, EndpointEvent::HandshakeComplete))
            {
                match srtp_contexts(dtls, remote, crypto) {
                    Ok(contexts) => Handshake::Keyed(Box::new(contexts)),
                    Err(_) => Handshake::Failed,
                }
            } else {
                Handshake::Going
            }
        }
        Err(_) if !keyed => Handshake::Failed,
        Err(_) => Handshake::Going,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test needs one real instant to count from
mod tests {
    use std::collections::VecDeque;

    use rtc::shared::TransportProtocol;

    use super::*;

    const CLIENT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(10, 0, 0, 1),
        5000,
    ));
    const SERVER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(10, 0, 0, 2),
        6000,
    ));

    /// One end of an in-memory handshake.
    struct End {
        dtls: Endpoint,
        timer: FlightTimer,
        peer: SocketAddr,
        keyed: bool,
        failed: bool,
        /// Flights it sent, in order, one entry per send.
        flights: Vec<u8>,
    }

    impl End {
        fn flush(&mut self, now: Instant) -> Vec<Datagram> {
            let mut out = Vec::new();
            while let Some(t) = self.dtls.poll_transmit() {
                out.push((t.transport.local_addr, self.peer, t.message));
            }
            if !self.keyed && !out.is_empty() {
                self.timer.sent(now, out.clone());
            }
            self.note(&out);
            out
        }

        fn note(&mut self, out: &[Datagram]) {
            let is_client = self.peer == SERVER;
            if let Some(f) = out.iter().filter_map(|d| flight_of(&d.2, is_client)).max() {
                self.flights.push(f);
            }
        }
    }

    /// The crypto provider and two identities (certificate, fingerprint).
    type Identities = (Arc<dyn RTCCryptoProvider>, [(Certificate, String); 2]);

    /// Two certificates and their fingerprints, made once: key generation is the slow part.
    fn identities() -> &'static Identities {
        static IDS: std::sync::OnceLock<Identities> = std::sync::OnceLock::new();
        IDS.get_or_init(|| {
            let crypto = rtc::crypto::default_provider().unwrap();
            let make = || {
                let c =
                    Certificate::generate_self_signed(vec!["t".into()], crypto.crypto()).unwrap();
                let fp = fingerprint(&crypto, &c.certificate[0]).unwrap();
                (c, fp)
            };
            let ids = [make(), make()];
            (crypto, ids)
        })
    }

    /// The outcome of one handshake across a path of one-way `delay` on which `drop` decides
    /// each datagram's fate (`true`: lost), run on a virtual clock for at most `limit`.
    struct Outcome {
        done: Option<Duration>,
        client: End,
        server: End,
    }

    fn handshake(
        delay: Duration,
        limit: Duration,
        mut drop: impl FnMut(bool, &[u8]) -> bool,
    ) -> Outcome {
        let (crypto, [(cc, cfp), (sc, sfp)]) = identities();
        let t0 = Instant::now();
        let server_config = dtls_config(crypto, sc, cfp, false).unwrap();
        let client_config = dtls_config(crypto, cc, sfp, true).unwrap();
        let mut client = End {
            dtls: Endpoint::new(CLIENT, TransportProtocol::UDP, None),
            timer: FlightTimer::new(true),
            peer: SERVER,
            keyed: false,
            failed: false,
            flights: Vec::new(),
        };
        client.timer.set_rtt(Some(2 * delay));
        let mut server = End {
            dtls: Endpoint::new(
                SERVER,
                TransportProtocol::UDP,
                Some(Arc::new(server_config)),
            ),
            timer: FlightTimer::new(false),
            peer: CLIENT,
            keyed: false,
            failed: false,
            flights: Vec::new(),
        };
        // (when it arrives, to the client, bytes)
        let mut wire: VecDeque<(Instant, bool, BytesMut)> = VecDeque::new();
        let mut send =
            |wire: &mut VecDeque<_>, now: Instant, to_client: bool, out: Vec<Datagram>| {
                for (_, _, d) in out {
                    if !drop(to_client, &d) {
                        wire.push_back((now + delay, to_client, d));
                    }
                }
            };
        client
            .dtls
            .connect(t0, SERVER, Arc::new(client_config), None)
            .unwrap();
        let out = client.flush(t0);
        send(&mut wire, t0, false, out);
        let mut now = t0;
        loop {
            if client.keyed && server.keyed {
                return Outcome {
                    done: Some(now - t0),
                    client,
                    server,
                };
            }
            let next = [
                wire.front().map(|w| w.0),
                client.timer.deadline(client.keyed || client.failed),
                server.timer.deadline(server.keyed || server.failed),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next.filter(|&t| t <= t0 + limit) else {
                return Outcome {
                    done: None,
                    client,
                    server,
                };
            };
            now = next;
            while wire.front().is_some_and(|w| w.0 <= now) {
                let (_, to_client, data) = wire.pop_front().unwrap();
                let end = if to_client { &mut client } else { &mut server };
                if !end.keyed {
                    end.timer.received(now, &data);
                }
                let from = end.peer;
                match read_dtls(&mut end.dtls, now, from, data, crypto, end.keyed) {
                    Handshake::Keyed(_) => end.keyed = true,
                    Handshake::Failed => end.failed = true,
                    Handshake::Going => {}
                }
                let out = end.flush(now);
                send(&mut wire, now, !to_client, out);
            }
            for to_client in [false, true] {
                // The end that sends towards `!to_client`'s peer.
                let end = if to_client { &mut server } else { &mut client };
                let done = end.keyed || end.failed;
                let out = match end.timer.handle_timeout(now, done, &mut end.dtls, end.peer) {
                    Retransmission::Nothing => continue,
                    Retransmission::Regenerated => end.flush(now),
                    Retransmission::Resend(d) => {
                        end.note(&d);
                        d
                    }
                    Retransmission::Failed => {
                        end.failed = true;
                        end.flush(now)
                    }
                };
                send(&mut wire, now, to_client, out);
            }
        }
    }

    #[test]
    fn the_flights_of_a_clean_handshake_are_numbered_as_rfc_6347_numbers_them() {
        let o = handshake(
            Duration::from_millis(20),
            Duration::from_secs(10),
            |_, _| false,
        );
        let done = o.done.expect("a clean handshake completes");
        assert_eq!(o.client.flights, [1, 3, 5], "client");
        assert_eq!(o.server.flights, [2, 4, 6], "server");
        // Three round trips of 40 ms, nothing retransmitted.
        assert_eq!(done, Duration::from_millis(120));
        assert_eq!(o.client.timer.retransmissions(), 0);
        assert_eq!(o.server.timer.retransmissions(), 0);
        assert!(o.client.timer.detail().contains("last received flight 6"));
    }

    #[test]
    fn the_timer_runs_chromiums_schedule_and_gives_up_at_its_limit() {
        assert_eq!(initial_timeout(None), Duration::from_secs(1));
        assert_eq!(
            initial_timeout(Some(Duration::ZERO)),
            Duration::from_secs(1)
        );
        assert_eq!(
            initial_timeout(Some(Duration::from_millis(1))),
            MIN_INITIAL_TIMEOUT
        );
        assert_eq!(
            initial_timeout(Some(Duration::from_millis(80))),
            Duration::from_millis(160)
        );
        assert_eq!(
            initial_timeout(Some(Duration::from_secs(2))),
            MAX_INITIAL_TIMEOUT
        );

        let t0 = Instant::now();
        let mut timer = FlightTimer::new(true);
        timer.set_rtt(Some(Duration::from_millis(100)));
        assert_eq!(
            timer.deadline(false),
            None,
            "nothing sent, nothing to resend"
        );
        // A ClientHello record: handshake, epoch 0, message type 1, no session id or cookie.
        let mut hello = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 49];
        hello.extend_from_slice(&[1, 0, 0, 37, 0, 0, 0, 0, 0, 0, 0, 37, 0xfe, 0xfd]);
        hello.extend_from_slice(&[0; 32]);
        hello.extend_from_slice(&[0, 0, 0]);
        assert_eq!(flight_of(&hello, true), Some(1));
        timer.sent(t0, vec![(CLIENT, SERVER, BytesMut::from(&hello[..]))]);
        let mut at = t0;
        let mut expected = Duration::from_millis(200);
        for expiry in 1..=MAX_TIMEOUTS {
            let deadline = timer.deadline(false).unwrap();
            assert_eq!(deadline - at, expected, "expiry {expiry}");
            assert!(matches!(
                timer.on_timeout(deadline - Duration::from_millis(1), false, true),
                Expiry::Nothing
            ));
            match timer.on_timeout(deadline, false, true) {
                // rtc regenerates the flight while it may (7 times), then it goes as sent.
                Expiry::Rtc => assert!(expiry <= 7, "expiry {expiry}"),
                Expiry::Resend(d) => {
                    assert!(expiry > 7, "expiry {expiry}");
                    assert_eq!(d.len(), 1);
                    assert_eq!(&d[0].2[..], &hello[..]);
                }
                other => panic!("expiry {expiry}: {other:?}"),
            }
            at = deadline;
            expected = (expected * 2).min(MAX_TIMEOUT);
        }
        // 0.2 + 0.4 + … doubling, capped at 60 s: 12 expiries span 0.2·(2⁹−1) + 3·60 s.
        assert_eq!(at - t0, Duration::from_millis(200 * 511) + 3 * MAX_TIMEOUT);
        let last = timer.deadline(false).unwrap();
        assert!(matches!(
            timer.on_timeout(last, false, true),
            Expiry::GaveUp
        ));
        assert_eq!(timer.deadline(false), None);
        assert!(
            timer.detail().contains("gave up after 12 expiries"),
            "{}",
            timer.detail()
        );
        // Five of the twelve went as sent; rtc's seven are counted when it sends them.
        assert_eq!(timer.retransmissions(), 5);
        // Done: nothing more to send on a timer.
        let mut done = FlightTimer::new(false);
        done.sent(t0, vec![(SERVER, CLIENT, BytesMut::from(&hello[..]))]);
        assert_eq!(done.deadline(true), None);
    }

    #[test]
    fn a_repeat_of_the_flight_answered_sends_the_answer_again_at_once() {
        // One record of a handshake message of `kind`, epoch 0.
        let record = |kind: u8| {
            let d = [22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, kind];
            (SERVER, CLIENT, BytesMut::from(&d[..]))
        };
        let (server_hello, key_exchange) = (record(2), record(16));
        assert_eq!(flight_of(&server_hello.2, false), Some(4));
        assert_eq!(flight_of(&key_exchange.2, true), Some(5));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut timer = FlightTimer::new(true);
        timer.set_rtt(Some(ms(100)));
        timer.received(t0, &server_hello.2);
        timer.sent(t0 + ms(1), vec![key_exchange.clone()]);
        let due = t0 + ms(201);
        assert_eq!(timer.deadline(false), Some(due));
        // The flight's second datagram, just behind the first: not a repeat.
        timer.received(t0 + ms(3), &server_hello.2);
        assert_eq!(timer.deadline(false), Some(due));
        // The server's retransmission (its timer expired: flight 5 was lost): flight 5 goes
        // again now, and the timer's backoff stays where it was.
        let repeat = t0 + ms(150);
        timer.received(repeat, &server_hello.2);
        assert!(timer.deadline(false).is_some_and(|t| t <= repeat));
        match timer.on_timeout(repeat, false, false) {
            Expiry::Resend(d) => assert_eq!(&d[0].2[..], &key_exchange.2[..]),
            other => panic!("{other:?}"),
        }
        assert_eq!(timer.deadline(false), Some(repeat + ms(200)));
        assert!(
            timer.detail().contains("(1 answering the peer's)"),
            "{}",
            timer.detail()
        );
        // Once done, the peer's repeats are `rtc`'s to answer.
        timer.received(repeat + ms(100), &server_hello.2);
        assert_eq!(timer.deadline(true), None);
    }

    #[test]
    fn a_lost_flight_is_sent_again_until_the_handshake_completes() {
        let delay = Duration::from_millis(40);
        // Each flight's first two sends are lost, in each direction (flight 6's resend is
        // provoked by the client repeating flight 5, RFC 6347 §4.2.4).
        for lost_flight in 1..=6u8 {
            let mut seen = 0;
            let o = handshake(delay, Duration::from_secs(10), |to_client, d| {
                let hit = flight_of(d, !to_client) == Some(lost_flight);
                seen += u32::from(hit);
                hit && seen <= 2
            });
            let done = o
                .done
                .unwrap_or_else(|| panic!("flight {lost_flight}: {}", o.client.timer.detail()));
            let sender = if lost_flight % 2 == 1 {
                &o.client
            } else {
                &o.server
            };
            let sends = sender.flights.iter().filter(|&&f| f == lost_flight).count();
            assert!(sends >= 3, "flight {lost_flight} sent {sends} times");
            assert!(
                done < Duration::from_secs(5),
                "flight {lost_flight}: {done:?}"
            );
        }
    }

    #[test]
    fn the_failure_rate_under_random_loss_stays_near_zero_within_the_connect_timeout() {
        // 100 handshakes at each loss rate, 40 ms each way (ICE's 80 ms round trip: a 160 ms
        // first timeout), within the session's 10 s connect timeout. Chromium's schedule sends a
        // flight 6 times in 10 s here, so a flight fails only if all six sends or their answers
        // are lost: (1 − 0.9²)⁶ ≈ 5·10⁻⁵ at 10 %, ×3 flights, ≈ 1.4·10⁻⁴ a handshake. Over 100,
        // one failure has probability ≈ 1.4 %; two, 10⁻⁴: at most one is allowed.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        for loss in [0.01, 0.03, 0.05, 0.10] {
            let mut times = Vec::new();
            let mut failed = Vec::new();
            for _ in 0..100 {
                let o = handshake(
                    Duration::from_millis(40),
                    Duration::from_secs(10),
                    |_, _| uniform() < loss,
                );
                match o.done {
                    Some(t) => times.push(t),
                    None => failed.push(o.client.timer.detail()),
                }
            }
            times.sort();
            let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_millis();
            println!(
                "loss {:>2} %: {} of 100 failed, setup p50 {} ms, p95 {} ms, max {} ms",
                loss * 100.0,
                failed.len(),
                p(0.5),
                p(0.95),
                p(1.0)
            );
            assert!(failed.len() <= 1, "loss {loss}: {failed:#?}");
        }
    }
}
