//! Our agent's leg against a WebRTC stack we did not write: `rtc`'s full `RTCPeerConnection`
//! (the webrtc-rs port of pion) answering on a host socket, the agent relay-only through our
//! TURN server. Both DTLS roles: the answerer passive (our leg the client, as against the
//! anchor) and active (`rtc`'s default: our leg the server). Media both ways, each side's
//! stream read by the other's RTP stack.
#![allow(clippy::disallowed_methods)] // real sockets, real clock

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use loadgen::leg::{PeerConfig, TurnCredentials, TurnTransport};
use loadgen::peer::Peer;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

/// `rtc`'s peer connection answering on a loopback host socket.
struct RtcAnswerer {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    sender: RTCRtpSenderId,
    connected: bool,
    sent: u16,
    /// RTP packets received, and how many carried our send stamp.
    received: u64,
    opus: u64,
}

impl RtcAnswerer {
    fn new(now: Instant, role: RTCDtlsRole) -> Self {
        let mut media = MediaEngine::default();
        media.register_default_codecs().unwrap();
        let setting = SettingEngineBuilder::default()
            .with_answering_dtls_role(role)
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_setting_engine(setting)
            .with_media_engine(media)
            .build(now)
            .unwrap();
        let track = MediaStreamTrack::new(
            "rtc-stream".into(),
            "rtc-audio".into(),
            "rtc audio".into(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(0x0bad_cafe),
                    ..Default::default()
                },
                codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_OPUS.to_owned(),
                    clock_rate: 48_000,
                    channels: 2,
                    sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                    rtcp_feedback: vec![],
                },
                ..Default::default()
            }],
        );
        let sender = pc.add_track(track).unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let local = socket.local_addr().unwrap();
        Self {
            pc,
            socket,
            local,
            sender,
            connected: false,
            sent: 0,
            received: 0,
            opus: 0,
        }
    }

    fn answer(&mut self, now: Instant, offer: &str) -> (String, RTCIceCandidateInit) {
        let offer = RTCSessionDescription::offer(offer.to_owned()).unwrap();
        self.pc.set_remote_description(now, offer).unwrap();
        let answer = self.pc.create_answer(None).unwrap();
        self.pc.set_local_description(now, answer.clone()).unwrap();
        let candidate = rtc::ice::candidate::candidate_host::CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: self.local.ip().to_string(),
                port: self.local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .unwrap();
        let init = RTCIceCandidate::from(&candidate).to_json().unwrap();
        self.pc.add_local_candidate(init.clone()).unwrap();
        (answer.sdp, init)
    }

    fn drive(&mut self, now: Instant) {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            let _ = self.pc.handle_read(TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: self.local,
                    peer_addr: from,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: BytesMut::from(&buf[..n]),
            });
        }
        let _ = self.pc.handle_timeout(now);
        while let Some(event) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                RTCPeerConnectionState::Connected,
            ) = event
            {
                self.connected = true;
            }
        }
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, packet) = message {
                self.received += 1;
                // Our frames' payloads are the Opus loop's, frame number = sequence number.
                let frame = loadgen::audio::opus_frame(u64::from(packet.header.sequence_number));
                self.opus += u64::from(packet.payload[..] == *frame);
            }
        }
        while let Some(t) = self.pc.poll_write() {
            let _ = self.socket.send_to(&t.message, t.transport.peer_addr);
        }
    }

    fn send_frame(&mut self, now: Instant) {
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
        let packet = rtc::rtp::packet::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: pt,
                sequence_number: self.sent,
                timestamp: u32::from(self.sent) * 960,
                ssrc: 0x0bad_cafe,
                ..Default::default()
            },
            payload: Bytes::from(vec![0x5a; 80]),
        };
        if sender.write_rtp(now, packet).is_ok() {
            self.sent += 1;
        }
    }
}

fn call_against_rtc(role: RTCDtlsRole) {
    let server = turn_server::io::start(turn_server::io::Settings::loopback(
        "agent",
        "agent-pw",
        "sim.local",
    ))
    .unwrap();
    let epoch = Instant::now();
    let now = Instant::now();
    let mut agent = Peer::new(
        PeerConfig {
            turn: vec![TurnCredentials {
                server: server.bound.udp[0],
                username: "agent".into(),
                password: "agent-pw".into(),
                realm: "sim.local".into(),
                transport: TurnTransport::Udp,
            }],
            answering: false,
            epoch,
            entropy: loadgen::entropy::Entropy::Os,
        },
        0x1000_0001,
        now,
    )
    .unwrap();
    let mut rtc = RtcAnswerer::new(now, role);
    let (answer, candidate) = rtc.answer(now, &agent.leg.offer());
    agent.leg.accept(now, &answer).unwrap();
    agent.leg.add_remote_candidate(now, &candidate).unwrap();

    let start = Instant::now();
    while !agent.leg.gathering_done() && start.elapsed() < Duration::from_secs(5) {
        agent.drive(Instant::now());
        std::thread::sleep(Duration::from_millis(1));
    }
    for c in agent.leg.local_candidates() {
        rtc.pc.add_remote_candidate(c.clone()).unwrap();
    }
    let mut next_frame: Option<Instant> = None;
    while start.elapsed() < Duration::from_secs(4) {
        let now = Instant::now();
        agent.drive(now);
        rtc.drive(now);
        if agent.leg.times.connected.is_some() && rtc.connected {
            let due = *next_frame.get_or_insert(now);
            if now >= due {
                agent.send_frame(now);
                rtc.send_frame(now);
                next_frame = Some(due + Duration::from_millis(20));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = agent.leg.times;
    assert!(t.ice_connected.is_some(), "{role:?}: ICE never connected");
    assert!(t.connected.is_some(), "{role:?}: DTLS never connected");
    assert!(rtc.connected, "{role:?}: rtc never connected");
    // A couple of seconds of 20 ms frames each way after a sub-second setup on loopback.
    assert!(rtc.sent >= 50, "{role:?}: rtc sent {}", rtc.sent);
    let got = agent.leg.meter.received();
    assert!(
        got + 3 >= u64::from(rtc.sent),
        "{role:?}: we read {got} of rtc's {} frames",
        rtc.sent
    );
    let ours = agent.leg.frames_sent();
    assert!(ours >= 50, "{role:?}: we sent {ours}");
    assert!(
        rtc.received + 3 >= ours && rtc.opus == rtc.received,
        "{role:?}: rtc read {} ({} our Opus frames) of our {ours} frames",
        rtc.received,
        rtc.opus
    );
    eprintln!(
        "{role:?}: rtc sent {} we read {got}; we sent {ours} rtc read {}",
        rtc.sent, rtc.received
    );
    // rtc's report interceptor is off here; ours still sends one sender report a second.
    assert!(agent.leg.rtcp_sent >= 1, "{role:?}: no RTCP sent");
    let _ = server.stop();
}

#[test]
fn our_leg_is_the_dtls_client_against_a_passive_rtc_answerer() {
    call_against_rtc(RTCDtlsRole::Server);
}

#[test]
fn our_leg_is_the_dtls_server_against_an_active_rtc_answerer() {
    call_against_rtc(RTCDtlsRole::Client);
}
