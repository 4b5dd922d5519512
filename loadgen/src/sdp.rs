//! The offer/answer of a softphone leg (RFC 8829, JSEP): what a leg reads from the other side's
//! description, and the offer or answer it writes — one Opus audio section, BUNDLE, rtcp-mux,
//! DTLS-SRTP. An answer takes the DTLS server role (`a=setup:passive`, RFC 5763 §5) and
//! rejects any other section with port 0 (RFC 8843 §7.3.3); a media server (the anchor)
//! answers ICE-lite (RFC 8445 §2.5), as vendors' media servers do.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// What a leg needs from the other side's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// `a=ice-ufrag` of the audio section (or the session).
    pub ice_ufrag: String,
    /// `a=ice-pwd`.
    pub ice_pwd: String,
    /// `a=fingerprint:sha-256` value, lower case.
    pub fingerprint: String,
    /// `a=setup`: `actpass` (an offer), `active` or `passive`.
    pub setup: String,
    /// `a=ice-lite`: the other side sends no checks of its own.
    pub ice_lite: bool,
    /// Every m-section in order: its kind, its `a=mid`, its payload types.
    pub sections: Vec<Section>,
    /// Index in [`Self::sections`] of the audio section.
    pub audio: usize,
    /// The payload type the description gives Opus.
    pub opus_pt: u8,
    /// The id its audio section gives our send-stamp header extension
    /// (`a=extmap:ID urn:x-softphone-sim:…`, RFC 8285 §8), if it has it.
    pub send_stamp: Option<u8>,
}

/// One m-section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// `audio`, `video`, `application`.
    pub kind: String,
    /// The section's protocol (`UDP/TLS/RTP/SAVPF` …).
    pub proto: String,
    /// Its format list.
    pub formats: String,
    /// `a=mid`, if any.
    pub mid: Option<String>,
}

/// Why a description cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// A required attribute is missing.
    #[error("the description has no {0}")]
    Missing(&'static str),
    /// Something is present but unusable.
    #[error("the description's {0}")]
    Unusable(String),
}

impl Description {
    /// Reads a description. Session-level ICE and DTLS attributes apply where the audio section
    /// has none of its own.
    pub fn parse(sdp: &str) -> Result<Self, SdpError> {
        #[derive(Default)]
        struct Attrs {
            ufrag: Option<String>,
            pwd: Option<String>,
            fingerprint: Option<String>,
            setup: Option<String>,
            opus: Option<u8>,
            send_stamp: Option<u8>,
        }
        let mut session = Attrs::default();
        let mut ice_lite = false;
        let mut media: Vec<(Section, Attrs)> = Vec::new();
        for line in sdp.lines().map(str::trim_end) {
            if let Some(m) = line.strip_prefix("m=") {
                let mut parts = m.splitn(4, ' ');
                let kind = parts.next().unwrap_or_default().to_owned();
                let _port = parts.next();
                let proto = parts.next().unwrap_or_default().to_owned();
                let formats = parts.next().unwrap_or_default().to_owned();
                media.push((
                    Section {
                        kind,
                        proto,
                        formats,
                        mid: None,
                    },
                    Attrs::default(),
                ));
                continue;
            }
            let Some(attr) = line.strip_prefix("a=") else {
                continue;
            };
            let (key, value) = attr.split_once(':').unwrap_or((attr, ""));
            let (section, attrs) = match media.last_mut() {
                Some((s, a)) => (Some(s), a),
                None => (None, &mut session),
            };
            match key {
                "ice-lite" => ice_lite = true,
                "ice-ufrag" => attrs.ufrag = Some(value.to_owned()),
                "ice-pwd" => attrs.pwd = Some(value.to_owned()),
                "setup" => attrs.setup = Some(value.to_owned()),
                "fingerprint" => {
                    if let Some(v) = value.strip_prefix("sha-256 ") {
                        attrs.fingerprint = Some(v.trim().to_ascii_lowercase());
                    }
                }
                "mid" => {
                    if let Some(s) = section {
                        s.mid = Some(value.to_owned());
                    }
                }
                "extmap" => {
                    // `ID[/direction] URI [attributes]`
                    let mut parts = value.split_whitespace();
                    let id = parts.next().and_then(|i| i.split('/').next()?.parse().ok());
                    if parts.next() == Some(crate::media::SEND_STAMP_URI) {
                        attrs.send_stamp = id.filter(|i| (1..=14).contains(i));
                    }
                }
                "rtpmap" => {
                    let (pt, codec) = value.split_once(' ').unwrap_or((value, ""));
                    if codec.to_ascii_lowercase().starts_with("opus/48000")
                        && let Ok(pt) = pt.parse()
                    {
                        attrs.opus.get_or_insert(pt);
                    }
                }
                _ => {}
            }
        }
        let audio = media
            .iter()
            .position(|(s, a)| s.kind == "audio" && a.opus.is_some())
            .ok_or(SdpError::Missing("audio section with Opus"))?;
        let a = &media[audio].1;
        let pick = |own: &Option<String>, shared: &Option<String>, what| {
            own.clone()
                .or_else(|| shared.clone())
                .ok_or(SdpError::Missing(what))
        };
        let ice_ufrag = pick(&a.ufrag, &session.ufrag, "a=ice-ufrag")?;
        let ice_pwd = pick(&a.pwd, &session.pwd, "a=ice-pwd")?;
        let fingerprint = pick(
            &a.fingerprint,
            &session.fingerprint,
            "a=fingerprint:sha-256",
        )?;
        let setup = pick(&a.setup, &session.setup, "a=setup")?;
        // RFC 8445 §5.3: ufrag at least 4 characters, password at least 22.
        if ice_ufrag.len() < 4 || ice_pwd.len() < 22 {
            return Err(SdpError::Unusable("ICE credentials are too short".into()));
        }
        let opus_pt = a.opus.unwrap_or_default();
        let send_stamp = a.send_stamp;
        Ok(Self {
            ice_ufrag,
            ice_pwd,
            fingerprint,
            setup,
            ice_lite,
            sections: media.into_iter().map(|(s, _)| s).collect(),
            audio,
            opus_pt,
            send_stamp,
        })
    }
}

/// What a leg puts in its offer or answer of its own.
#[derive(Debug, Clone)]
pub struct Local<'a> {
    /// ICE username fragment.
    pub ice_ufrag: &'a str,
    /// ICE password.
    pub ice_pwd: &'a str,
    /// SHA-256 fingerprint of the leg's DTLS certificate, `AB:CD:…`.
    pub fingerprint: &'a str,
    /// The leg's media SSRC.
    pub ssrc: u32,
    /// The address in the origin line.
    pub address: SocketAddr,
    /// Whether the leg is ICE-lite.
    pub ice_lite: bool,
}

/// The payload type an offer gives Opus (the browsers' choice).
pub const OPUS_PT: u8 = 111;

/// Writes an offer: one Opus audio section, `a=setup:actpass` (RFC 8842 §5.2).
pub fn offer(local: &Local<'_>, session_id: u64) -> String {
    let sections = [Section {
        kind: "audio".into(),
        proto: "UDP/TLS/RTP/SAVPF".into(),
        formats: OPUS_PT.to_string(),
        mid: Some("0".into()),
    }];
    let codec = (OPUS_PT, Some(crate::media::SEND_STAMP_ID));
    write(&sections, 0, codec, "actpass", local, session_id)
}

/// Writes the answer to `offer`, as the DTLS server.
pub fn answer(offer: &Description, local: &Local<'_>, session_id: u64) -> String {
    write(
        &offer.sections,
        offer.audio,
        (offer.opus_pt, offer.send_stamp),
        "passive",
        local,
        session_id,
    )
}

/// Writes a description; `codec` is Opus's payload type and the send stamp's extension id.
fn write(
    sections: &[Section],
    audio_index: usize,
    (pt, send_stamp): (u8, Option<u8>),
    setup: &str,
    local: &Local<'_>,
    session_id: u64,
) -> String {
    let mut sdp = String::with_capacity(1024);
    let ip = if local.address.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    };
    let _ = write!(
        sdp,
        "v=0\r\no=- {session_id} 2 IN {ip} {addr}\r\ns=-\r\nt=0 0\r\n",
        addr = local.address.ip()
    );
    let audio = &sections[audio_index];
    if let Some(mid) = &audio.mid {
        let _ = write!(sdp, "a=group:BUNDLE {mid}\r\n");
    }
    if local.ice_lite {
        sdp.push_str("a=ice-lite\r\n");
    }
    sdp.push_str("a=msid-semantic: WMS softphone\r\n");
    for (i, section) in sections.iter().enumerate() {
        if i != audio_index {
            // Rejected (RFC 3264 §6): port 0, the offer's formats, its mid.
            let _ = write!(
                sdp,
                "m={} 0 {} {}\r\nc=IN {ip} 0.0.0.0\r\n",
                section.kind, section.proto, section.formats
            );
            if let Some(mid) = &section.mid {
                let _ = write!(sdp, "a=mid:{mid}\r\n");
            }
            sdp.push_str("a=inactive\r\n");
            continue;
        }
        let _ = write!(
            sdp,
            "m=audio 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN {ip} 0.0.0.0\r\na=rtcp:9 IN {ip} 0.0.0.0\r\n\
             a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=fingerprint:sha-256 {fp}\r\n\
             a=setup:{setup}\r\n",
            ufrag = local.ice_ufrag,
            pwd = local.ice_pwd,
            fp = local.fingerprint,
        );
        if let Some(mid) = &section.mid {
            let _ = write!(sdp, "a=mid:{mid}\r\n");
        }
        if let Some(id) = send_stamp {
            let _ = write!(sdp, "a=extmap:{id} {}\r\n", crate::media::SEND_STAMP_URI);
        }
        let _ = write!(
            sdp,
            "a=sendrecv\r\na=msid:softphone audio\r\na=rtcp-mux\r\na=rtpmap:{pt} opus/48000/2\r\n\
             a=fmtp:{pt} minptime=10;useinbandfec=1\r\na=ssrc:{ssrc} cname:softphone\r\n\
             a=ssrc:{ssrc} msid:softphone audio\r\n",
            ssrc = local.ssrc,
        );
    }
    sdp
}

/// A host candidate line (RFC 8839 §5.1), `candidate:` included, without `a=`.
pub fn host_candidate(address: SocketAddr) -> String {
    // Type preference 126 (host), local preference 65535, component 1 (RFC 8445 §5.1.2.1).
    let priority = (126u32 << 24) | (65535 << 8) | (256 - 1);
    format!(
        "candidate:1 1 udp {priority} {} {} typ host",
        address.ip(),
        address.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROWSER_OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\n\
        t=0 0\r\na=group:BUNDLE 0 1\r\na=msid-semantic: WMS\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
        a=ice-ufrag:Bq3x\r\na=ice-pwd:lrbxEA6Zy5pKBTdVNM2sfBhy\r\na=ice-options:trickle\r\n\
        a=fingerprint:sha-256 AA:BB:CC\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\n\
        a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
        a=rtpmap:63 red/48000/2\r\na=rtpmap:9 G722/8000\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n";

    #[test]
    fn a_browser_offer_is_read_and_its_video_section_rejected() {
        let offer = Description::parse(BROWSER_OFFER).unwrap();
        assert_eq!(offer.ice_ufrag, "Bq3x");
        assert_eq!(offer.fingerprint, "aa:bb:cc");
        assert_eq!(offer.setup, "actpass");
        assert_eq!(offer.opus_pt, 111);
        assert_eq!(offer.sections.len(), 2);
        // A browser offers its own extensions, not ours: the answer carries none.
        assert_eq!(offer.send_stamp, None);
        let local = Local {
            ice_ufrag: "anch",
            ice_pwd: "0123456789abcdefghijkl",
            fingerprint: "01:02",
            ssrc: 7,
            address: "127.0.0.1:4000".parse().unwrap(),
            ice_lite: true,
        };
        let sdp = answer(&offer, &local, 1);
        assert!(sdp.contains("a=group:BUNDLE 0\r\n"), "{sdp}");
        assert!(sdp.contains("a=ice-lite\r\n"));
        assert!(sdp.contains("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"));
        assert!(sdp.contains("a=setup:passive\r\n"));
        assert!(
            !sdp.contains("a=extmap"),
            "nothing the browser did not offer"
        );
        assert!(sdp.contains("m=video 0 UDP/TLS/RTP/SAVPF 96\r\n"));
        // Every line ends in CRLF, as RFC 8866 §5 requires.
        assert!(sdp.split("\r\n").all(|l| !l.contains('\n')));
        // rtc reads it back: a real SDP parser agrees with what we wrote.
        let parsed = rtc::sdp::SessionDescription::unmarshal(&mut std::io::Cursor::new(&sdp));
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn a_description_without_what_dtls_srtp_needs_is_refused_with_the_reason() {
        let no_fp = BROWSER_OFFER.replace("a=fingerprint:sha-256 AA:BB:CC\r\n", "");
        assert_eq!(
            Description::parse(&no_fp),
            Err(SdpError::Missing("a=fingerprint:sha-256"))
        );
        let short = BROWSER_OFFER.replace("a=ice-pwd:lrbxEA6Zy5pKBTdVNM2sfBhy", "a=ice-pwd:x");
        assert!(matches!(
            Description::parse(&short),
            Err(SdpError::Unusable(_))
        ));
        let no_opus = BROWSER_OFFER.replace("opus/48000/2", "PCMU/8000");
        assert_eq!(
            Description::parse(&no_opus),
            Err(SdpError::Missing("audio section with Opus"))
        );
        assert!(Description::parse("").is_err());
    }

    #[test]
    fn an_offer_reads_back_and_its_answer_is_ice_lite_only_when_asked() {
        let mut local = Local {
            ice_ufrag: "agnt",
            ice_pwd: "0123456789abcdefghijkl",
            fingerprint: "01:02",
            ssrc: 9,
            address: "127.0.0.1:4000".parse().unwrap(),
            ice_lite: false,
        };
        let sdp = offer(&local, 1);
        let parsed = Description::parse(&sdp).unwrap();
        assert_eq!(parsed.setup, "actpass");
        assert_eq!(parsed.opus_pt, OPUS_PT);
        assert!(!parsed.ice_lite);
        local.ice_lite = true;
        let back = Description::parse(&answer(&parsed, &local, 2)).unwrap();
        assert_eq!(back.setup, "passive");
        assert!(back.ice_lite);
        assert_eq!(back.fingerprint, "01:02");
        // The send stamp is offered and answered with the offer's id.
        assert_eq!(parsed.send_stamp, Some(crate::media::SEND_STAMP_ID));
        assert_eq!(back.send_stamp, Some(crate::media::SEND_STAMP_ID));
    }

    #[test]
    fn the_host_candidate_has_host_priority() {
        let c = host_candidate("127.0.0.1:5000".parse().unwrap());
        assert_eq!(c, "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host");
    }
}
