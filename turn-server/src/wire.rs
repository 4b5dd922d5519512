//! Wire formats: STUN messages (RFC 8489 §5, §14) with the TURN attributes (RFC 8656 §18) and
//! TURN ChannelData (RFC 8656 §12.4), in smoltcp's two layers.
//!
//! - [`StunPacket`] is a checked, zero-copy view of a buffer: header fields and an iterator over
//!   raw attributes. [`StunPacket::new_checked`] rejects anything that is not a well-formed STUN
//!   message (length, magic cookie, attribute framing), so nothing after it can index out of
//!   bounds.
//! - [`StunRepr`] is the parsed form the server works with: every attribute it understands,
//!   decoded, plus where MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT sit so that they can be
//!   checked against the original bytes.
//! - [`MessageBuilder`] emits a message, computing MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256
//!   and FINGERPRINT over the bytes written so far.
//! - [`ChannelData`] is the 4-byte-header framing of relayed data on a channel.
//!
//! [`frame_len`] tells a stream transport (TCP, TLS) how long the next frame is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// The magic cookie, the second 32-bit word of every RFC 5389/8489 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of the STUN header in bytes.
pub const HEADER_LEN: usize = 20;
/// Length of the ChannelData header in bytes.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;
/// XOR value of the FINGERPRINT attribute ("STUN" in ASCII).
const FINGERPRINT_XOR: u32 = 0x5354_554E;

mod field {
    use std::ops::Range;
    pub(super) const TYPE: Range<usize> = 0..2;
    pub(super) const LENGTH: Range<usize> = 2..4;
    pub(super) const COOKIE: Range<usize> = 4..8;
    pub(super) const TRANSACTION_ID: Range<usize> = 8..20;
    pub(super) const CHANNEL: Range<usize> = 0..2;
    pub(super) const CHANNEL_LENGTH: Range<usize> = 2..4;
}

/// Attribute type codes (RFC 8489 §18.3, RFC 8656 §18).
pub mod attr {
    /// MAPPED-ADDRESS.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (HMAC-SHA1).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// CHANNEL-NUMBER.
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME.
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS.
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA.
    pub const DATA: u16 = 0x0013;
    /// REALM.
    pub const REALM: u16 = 0x0014;
    /// NONCE.
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS.
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY.
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// EVEN-PORT.
    pub const EVEN_PORT: u16 = 0x0018;
    /// REQUESTED-TRANSPORT.
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// DONT-FRAGMENT.
    pub const DONT_FRAGMENT: u16 = 0x001A;
    /// MESSAGE-INTEGRITY-SHA256.
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// PASSWORD-ALGORITHM.
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    /// USERHASH.
    pub const USERHASH: u16 = 0x001E;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RESERVATION-TOKEN.
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// PASSWORD-ALGORITHMS (comprehension-optional).
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    /// ALTERNATE-DOMAIN (comprehension-optional).
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    /// SOFTWARE (comprehension-optional).
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT (comprehension-optional).
    pub const FINGERPRINT: u16 = 0x8028;
    /// ADDITIONAL-ADDRESS-FAMILY (comprehension-optional).
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    /// RESPONSE-ORIGIN (comprehension-optional).
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// ICMP (comprehension-optional).
    pub const ICMP: u16 = 0x8004;
}

/// A STUN method (RFC 8489 §18.2, RFC 8656 §17).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    /// Binding.
    pub const BINDING: Self = Self(0x001);
    /// Allocate.
    pub const ALLOCATE: Self = Self(0x003);
    /// Refresh.
    pub const REFRESH: Self = Self(0x004);
    /// Send (indication only).
    pub const SEND: Self = Self(0x006);
    /// Data (indication only).
    pub const DATA: Self = Self(0x007);
    /// CreatePermission.
    pub const CREATE_PERMISSION: Self = Self(0x008);
    /// ChannelBind.
    pub const CHANNEL_BIND: Self = Self(0x009);

    /// A short lowercase name, used as a metrics label.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self.0 {
            0x001 => "binding",
            0x003 => "allocate",
            0x004 => "refresh",
            0x006 => "send",
            0x007 => "data",
            0x008 => "create_permission",
            0x009 => "channel_bind",
            _ => "other",
        }
    }
}

/// The class of a STUN message (RFC 8489 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// A request, answered by a success or error response.
    Request,
    /// An indication, never answered.
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

impl Class {
    const fn bits(self) -> u16 {
        match self {
            Self::Request => 0b00,
            Self::Indication => 0b01,
            Self::Success => 0b10,
            Self::Error => 0b11,
        }
    }
}

/// The 96-bit transaction ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TransactionId(pub [u8; 12]);

/// Why bytes are not a STUN message or ChannelData frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than the header, or than the length the header declares.
    #[error("truncated")]
    Truncated,
    /// The top two bits are not zero, or the length is not a multiple of 4.
    #[error("not a STUN message")]
    NotStun,
    /// The magic cookie is wrong (an RFC 3489 client or garbage).
    #[error("bad magic cookie")]
    BadCookie,
    /// An attribute runs past the end of the message.
    #[error("attribute overruns the message")]
    AttributeOverrun,
    /// An attribute we understand has a malformed value.
    #[error("malformed attribute {0:#06x}")]
    BadAttribute(u16),
    /// FINGERPRINT present but wrong, or not last.
    #[error("bad fingerprint")]
    BadFingerprint,
    /// ChannelData with a channel number outside 0x4000–0x7FFF.
    #[error("bad channel number")]
    BadChannel,
}

/// Computes a STUN frame's total length (header + body + stream padding) from its first four
/// bytes, for stream transports (RFC 8656 §12.5: ChannelData is padded to 4 bytes on streams).
///
/// Returns `Ok(None)` when fewer than 4 bytes are available and the first byte (if any) can
/// start a frame.
///
/// # Errors
/// [`WireError::NotStun`] if the first two bits are neither `00` (STUN) nor `01` (ChannelData):
/// known from the first byte, so that a stream is not left waiting for three more.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    match buf.first().map(|b| b >> 6) {
        None => return Ok(None),
        Some(0b00 | 0b01) => {}
        Some(_) => return Err(WireError::NotStun),
    }
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if buf[0] >> 6 == 0 {
        Ok(Some(HEADER_LEN + len))
    } else {
        Ok(Some(CHANNEL_DATA_HEADER_LEN + len.next_multiple_of(4)))
    }
}

/// A raw attribute: its type, its value, and where its header starts in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// The attribute type.
    pub kind: u16,
    /// The value without padding.
    pub value: &'a [u8],
    /// Offset of the attribute header from the start of the message.
    pub offset: usize,
}

/// A checked view of a STUN message.
#[derive(Debug, Clone, Copy)]
pub struct StunPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> StunPacket<T> {
    /// Wraps a buffer after checking the header, the declared length and every attribute's
    /// framing. Bytes after the declared length are not part of the message.
    ///
    /// # Errors
    /// Any [`WireError`] describing the first problem found.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let buf = buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if buf[0] & 0xC0 != 0 {
            return Err(WireError::NotStun);
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if len % 4 != 0 {
            return Err(WireError::NotStun);
        }
        let c = &buf[field::COOKIE];
        if u32::from_be_bytes([c[0], c[1], c[2], c[3]]) != MAGIC_COOKIE {
            return Err(WireError::BadCookie);
        }
        if buf.len() < HEADER_LEN + len {
            return Err(WireError::Truncated);
        }
        let packet = Self { buffer };
        let mut at = HEADER_LEN;
        let end = HEADER_LEN + len;
        while at < end {
            if end - at < 4 {
                return Err(WireError::AttributeOverrun);
            }
            let alen = usize::from(u16::from_be_bytes([
                packet.buffer.as_ref()[at + 2],
                packet.buffer.as_ref()[at + 3],
            ]));
            at += 4 + alen.next_multiple_of(4);
            if at > end {
                return Err(WireError::AttributeOverrun);
            }
        }
        Ok(packet)
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn word(&self, range: Range<usize>) -> u16 {
        let b = &self.bytes()[range];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The message type's method.
    #[must_use]
    pub fn method(&self) -> Method {
        let t = self.word(field::TYPE);
        Method((t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2))
    }

    /// The message type's class.
    #[must_use]
    pub fn class(&self) -> Class {
        let t = self.word(field::TYPE);
        match ((t >> 7) & 0b10) | ((t >> 4) & 0b01) {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        }
    }

    /// The body length declared in the header (attributes, without the header).
    #[must_use]
    pub fn body_len(&self) -> usize {
        usize::from(self.word(field::LENGTH))
    }

    /// The transaction ID.
    #[must_use]
    pub fn transaction_id(&self) -> TransactionId {
        let mut id = [0; 12];
        id.copy_from_slice(&self.bytes()[field::TRANSACTION_ID]);
        TransactionId(id)
    }

    /// The message bytes (header and body, nothing after).
    #[must_use]
    pub fn message(&self) -> &[u8] {
        &self.bytes()[..HEADER_LEN + self.body_len()]
    }

    /// Iterates over the attributes in order.
    pub fn attributes(&self) -> impl Iterator<Item = RawAttribute<'_>> {
        let msg = self.message();
        let mut at = HEADER_LEN;
        std::iter::from_fn(move || {
            // `new_checked` proved every attribute header and value lies inside `msg`.
            if at + 4 > msg.len() {
                return None;
            }
            let kind = u16::from_be_bytes([msg[at], msg[at + 1]]);
            let len = usize::from(u16::from_be_bytes([msg[at + 2], msg[at + 3]]));
            let attr = RawAttribute {
                kind,
                value: &msg[at + 4..at + 4 + len],
                offset: at,
            };
            at += 4 + len.next_multiple_of(4);
            Some(attr)
        })
    }
}

/// The integrity attribute a message carried, with what is needed to check it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integrity<'a> {
    /// MESSAGE-INTEGRITY (HMAC-SHA1, 20 bytes).
    Sha1 {
        /// Offset of the attribute header.
        offset: usize,
        /// The HMAC value.
        value: &'a [u8],
    },
    /// MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, 16 to 32 bytes, a multiple of 4).
    Sha256 {
        /// Offset of the attribute header.
        offset: usize,
        /// The (possibly truncated) HMAC value.
        value: &'a [u8],
    },
}

/// Which HMAC a response should carry: the one the request used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IntegrityKind {
    /// MESSAGE-INTEGRITY.
    #[default]
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256.
    Sha256,
}

/// A parsed STUN message: the attributes this server understands.
///
/// Only the first occurrence of an attribute counts (RFC 8489 §14), except XOR-PEER-ADDRESS
/// which CreatePermission may repeat. Attributes after MESSAGE-INTEGRITY(-SHA256) other than
/// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are ignored (RFC 8489 §14.5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StunRepr<'a> {
    /// USERNAME.
    pub username: Option<&'a str>,
    /// USERHASH is present (we do not support it: answered as a bad request).
    pub userhash: bool,
    /// REALM.
    pub realm: Option<&'a str>,
    /// NONCE.
    pub nonce: Option<&'a str>,
    /// PASSWORD-ALGORITHM number (1 = MD5, 2 = SHA-256).
    pub password_algorithm: Option<u16>,
    /// PASSWORD-ALGORITHMS as the client echoed it (RFC 8489 §9.2.4 bid-down protection).
    pub password_algorithms: Option<&'a [u8]>,
    /// The first integrity attribute.
    pub integrity: Option<Integrity<'a>>,
    /// FINGERPRINT was present (and correct: a wrong one fails parsing).
    pub fingerprint: bool,
    /// LIFETIME, seconds.
    pub lifetime: Option<u32>,
    /// REQUESTED-TRANSPORT protocol number.
    pub requested_transport: Option<u8>,
    /// REQUESTED-ADDRESS-FAMILY (1 = IPv4, 2 = IPv6).
    pub requested_family: Option<u8>,
    /// ADDITIONAL-ADDRESS-FAMILY was present.
    pub additional_family: Option<u8>,
    /// DONT-FRAGMENT was present.
    pub dont_fragment: bool,
    /// EVEN-PORT, with its R bit.
    pub even_port: Option<bool>,
    /// RESERVATION-TOKEN.
    pub reservation_token: Option<[u8; 8]>,
    /// XOR-PEER-ADDRESS values, in order (at most [`StunRepr::MAX_PEERS`]).
    pub peers: Vec<SocketAddr>,
    /// CHANNEL-NUMBER.
    pub channel: Option<u16>,
    /// DATA.
    pub data: Option<&'a [u8]>,
    /// Comprehension-required attribute types not understood (for 420 UNKNOWN-ATTRIBUTES).
    pub unknown: Vec<u16>,
}

impl<'a> StunRepr<'a> {
    /// Most XOR-PEER-ADDRESS attributes kept from one message.
    pub const MAX_PEERS: usize = 32;

    /// Parses the attributes of a checked packet.
    ///
    /// # Errors
    /// [`WireError::BadAttribute`] when an understood attribute is malformed,
    /// [`WireError::BadFingerprint`] when FINGERPRINT is wrong or not last.
    pub fn parse<T: AsRef<[u8]>>(packet: &'a StunPacket<T>) -> Result<Self, WireError> {
        let txid = packet.transaction_id();
        let msg = packet.message();
        let mut repr = Self::default();
        let mut seen_integrity = false;
        let mut seen_fingerprint = false;
        let mut seen: u64 = 0;
        for a in packet.attributes() {
            if seen_fingerprint {
                // Nothing may follow FINGERPRINT.
                return Err(WireError::BadFingerprint);
            }
            if a.kind == attr::FINGERPRINT {
                let v = <[u8; 4]>::try_from(a.value).map_err(|_| WireError::BadFingerprint)?;
                if u32::from_be_bytes(v) != fingerprint(&msg[..a.offset], msg.len()) {
                    return Err(WireError::BadFingerprint);
                }
                seen_fingerprint = true;
                repr.fingerprint = true;
                continue;
            }
            if seen_integrity {
                // Only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT may follow MESSAGE-INTEGRITY;
                // everything else after it is ignored (RFC 8489 §14.5).
                continue;
            }
            // Only the first occurrence of an attribute counts; a small bitmap of the
            // understood types (< 64) tracks which we have seen.
            if a.kind < 64 && a.kind != attr::XOR_PEER_ADDRESS {
                if seen & (1 << a.kind) != 0 {
                    continue;
                }
                seen |= 1 << a.kind;
            }
            let bad = || WireError::BadAttribute(a.kind);
            match a.kind {
                attr::USERNAME => repr.username = Some(text(a.value, 513).ok_or_else(bad)?),
                attr::USERHASH => repr.userhash = true,
                attr::REALM => repr.realm = Some(text(a.value, 763).ok_or_else(bad)?),
                attr::NONCE => repr.nonce = Some(text(a.value, 763).ok_or_else(bad)?),
                attr::PASSWORD_ALGORITHM => {
                    if a.value.len() < 4 {
                        return Err(bad());
                    }
                    repr.password_algorithm = Some(u16::from_be_bytes([a.value[0], a.value[1]]));
                }
                attr::PASSWORD_ALGORITHMS => repr.password_algorithms = Some(a.value),
                attr::MESSAGE_INTEGRITY => {
                    if a.value.len() != 20 {
                        return Err(bad());
                    }
                    repr.integrity = Some(Integrity::Sha1 {
                        offset: a.offset,
                        value: a.value,
                    });
                    seen_integrity = true;
                }
                attr::MESSAGE_INTEGRITY_SHA256 => {
                    if !(16..=32).contains(&a.value.len()) || a.value.len() % 4 != 0 {
                        return Err(bad());
                    }
                    repr.integrity = Some(Integrity::Sha256 {
                        offset: a.offset,
                        value: a.value,
                    });
                    seen_integrity = true;
                }
                attr::LIFETIME => repr.lifetime = Some(be_u32(a.value).ok_or_else(bad)?),
                attr::REQUESTED_TRANSPORT => {
                    repr.requested_transport = Some(*a.value.first().ok_or_else(bad)?);
                    if a.value.len() != 4 {
                        return Err(bad());
                    }
                }
                attr::REQUESTED_ADDRESS_FAMILY => {
                    repr.requested_family = Some(*a.value.first().ok_or_else(bad)?);
                }
                attr::DONT_FRAGMENT => repr.dont_fragment = true,
                attr::EVEN_PORT => {
                    repr.even_port = Some(a.value.first().ok_or_else(bad)? & 0x80 != 0);
                }
                attr::RESERVATION_TOKEN => {
                    repr.reservation_token = Some(a.value.try_into().map_err(|_| bad())?);
                }
                attr::XOR_PEER_ADDRESS if repr.peers.len() < Self::MAX_PEERS => {
                    repr.peers
                        .push(decode_xor_address(a.value, &txid).ok_or_else(bad)?);
                }
                attr::CHANNEL_NUMBER => {
                    let v = be_u32(a.value).ok_or_else(bad)?;
                    // The channel number is the top 16 bits; RFFU must be 0 but is ignored.
                    repr.channel = Some(u16::try_from(v >> 16).map_err(|_| bad())?);
                }
                attr::DATA => repr.data = Some(a.value),
                attr::ADDITIONAL_ADDRESS_FAMILY => {
                    repr.additional_family = Some(*a.value.first().ok_or_else(bad)?);
                }
                kind if kind < 0x8000
                    && !is_known_required(kind)
                    && !repr.unknown.contains(&kind)
                    && repr.unknown.len() < 16 =>
                {
                    repr.unknown.push(kind);
                }
                _ => {}
            }
        }
        Ok(repr)
    }

    /// Verifies the integrity attribute against the message bytes with `key`.
    ///
    /// Returns `false` when there is no integrity attribute.
    #[must_use]
    pub fn verify_integrity(&self, message: &[u8], key: &[u8]) -> bool {
        match self.integrity {
            Some(Integrity::Sha1 { offset, value }) => {
                let mac = hmac_sha1(key, &message[..offset], offset + 24 - HEADER_LEN);
                constant_time_eq(&mac, value)
            }
            Some(Integrity::Sha256 { offset, value }) => {
                let mac = hmac_sha256(key, &message[..offset], offset + 36 - HEADER_LEN);
                constant_time_eq(&mac[..value.len()], value)
            }
            None => false,
        }
    }

    /// Which integrity attribute a response to this message should carry.
    #[must_use]
    pub fn integrity_kind(&self) -> IntegrityKind {
        match self.integrity {
            Some(Integrity::Sha256 { .. }) => IntegrityKind::Sha256,
            _ => IntegrityKind::Sha1,
        }
    }
}

/// Comprehension-required attributes this server knows (and may ignore where they do not
/// apply), so they are never reported as unknown.
const fn is_known_required(kind: u16) -> bool {
    matches!(
        kind,
        attr::MAPPED_ADDRESS
            | attr::USERNAME
            | attr::MESSAGE_INTEGRITY
            | attr::ERROR_CODE
            | attr::UNKNOWN_ATTRIBUTES
            | attr::CHANNEL_NUMBER
            | attr::LIFETIME
            | attr::XOR_PEER_ADDRESS
            | attr::DATA
            | attr::REALM
            | attr::NONCE
            | attr::XOR_RELAYED_ADDRESS
            | attr::REQUESTED_ADDRESS_FAMILY
            | attr::EVEN_PORT
            | attr::REQUESTED_TRANSPORT
            | attr::MESSAGE_INTEGRITY_SHA256
            | attr::PASSWORD_ALGORITHM
            | attr::USERHASH
            | attr::XOR_MAPPED_ADDRESS
            | attr::RESERVATION_TOKEN
            // DONT-FRAGMENT is deliberately absent: the server handles it explicitly.
            | 0x0024 // PRIORITY (ICE)
            | 0x0025 // USE-CANDIDATE (ICE)
    ) || kind == attr::DONT_FRAGMENT
}

fn text(value: &[u8], max: usize) -> Option<&str> {
    if value.len() > max {
        return None;
    }
    std::str::from_utf8(value).ok()
}

fn be_u32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(<[u8; 4]>::try_from(value).ok()?))
}

/// Decodes an XOR-encoded address value (RFC 8489 §14.2) of a message with `txid`.
#[must_use]
pub fn decode_xor_address(value: &[u8], txid: &TransactionId) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match (value[1], value.len()) {
        (0x01, 8) => {
            let mut ip = [0; 4];
            for (i, b) in ip.iter_mut().enumerate() {
                *b = value[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 20) => {
            let mut ip = [0; 16];
            for (i, b) in ip.iter_mut().enumerate() {
                let k = if i < 4 { cookie[i] } else { txid.0[i - 4] };
                *b = value[4 + i] ^ k;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HMAC over `prefix` as if its header's length field said `length`.
fn hmac_sha1(key: &[u8], prefix: &[u8], length: usize) -> [u8; 20] {
    // Keys of any length are accepted by HMAC; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    feed_with_length(|b| mac.update(b), prefix, length);
    mac.finalize().into_bytes().into()
}

fn hmac_sha256(key: &[u8], prefix: &[u8], length: usize) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    feed_with_length(|b| mac.update(b), prefix, length);
    mac.finalize().into_bytes().into()
}

/// Feeds a message prefix to a hash with the header's length field replaced: MESSAGE-INTEGRITY
/// and FINGERPRINT are computed as if the message ended right after the attribute itself.
fn feed_with_length(mut feed: impl FnMut(&[u8]), prefix: &[u8], length: usize) {
    feed(&prefix[..2]);
    // A STUN body never exceeds 65535 bytes: `length` comes from offsets inside one.
    feed(&u16::try_from(length).unwrap_or(u16::MAX).to_be_bytes());
    feed(&prefix[4..]);
}

/// FINGERPRINT over a message prefix that ends at the FINGERPRINT attribute, given the total
/// message length.
fn fingerprint(prefix: &[u8], total_len: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    feed_with_length(|b| h.update(b), prefix, total_len - HEADER_LEN);
    h.finalize() ^ FINGERPRINT_XOR
}

/// Emits a STUN message attribute by attribute.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    buf: Vec<u8>,
    txid: TransactionId,
}

impl MessageBuilder {
    /// Starts a message of `method` and `class`.
    #[must_use]
    pub fn new(method: Method, class: Class, txid: TransactionId) -> Self {
        let m = method.0;
        let c = class.bits();
        let t = (m & 0x000F)
            | ((m & 0x0070) << 1)
            | ((m & 0x0F80) << 2)
            | ((c & 0b01) << 4)
            | ((c & 0b10) << 7);
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&t.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&txid.0);
        Self { buf, txid }
    }

    /// Appends an attribute with raw value bytes (padded to 4 bytes with zeros).
    pub fn attribute(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        // Values we emit are short (addresses, text under 764 bytes, relayed data that fitted
        // in a 64 KiB datagram): saturating is never reached in practice.
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = value.len().next_multiple_of(4) - value.len();
        self.buf.extend_from_slice(&[0; 3][..pad]);
        self.set_length(self.buf.len());
        self
    }

    /// Appends a 32-bit attribute value.
    pub fn u32_attribute(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attribute(kind, &value.to_be_bytes())
    }

    /// Appends an XOR-encoded address attribute (XOR-MAPPED-, XOR-RELAYED-, XOR-PEER-ADDRESS).
    pub fn xor_address(&mut self, kind: u16, addr: SocketAddr) -> &mut Self {
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let mut v = Vec::with_capacity(20);
        match addr.ip() {
            IpAddr::V4(ip) => {
                v.extend_from_slice(&[0, 1]);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend(ip.octets().iter().zip(cookie).map(|(b, k)| b ^ k));
            }
            IpAddr::V6(ip) => {
                v.extend_from_slice(&[0, 2]);
                v.extend_from_slice(&port.to_be_bytes());
                let key = cookie.iter().chain(self.txid.0.iter());
                v.extend(ip.octets().iter().zip(key).map(|(b, k)| b ^ k));
            }
        }
        self.attribute(kind, &v)
    }

    /// Appends MAPPED-ADDRESS (plain, for RFC 3489-era clients).
    pub fn mapped_address(&mut self, addr: SocketAddr) -> &mut Self {
        let mut v = vec![0];
        match addr.ip() {
            IpAddr::V4(ip) => {
                v.push(1);
                v.extend_from_slice(&addr.port().to_be_bytes());
                v.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                v.push(2);
                v.extend_from_slice(&addr.port().to_be_bytes());
                v.extend_from_slice(&ip.octets());
            }
        }
        self.attribute(attr::MAPPED_ADDRESS, &v)
    }

    /// Appends ERROR-CODE with the standard reason phrase.
    pub fn error_code(&mut self, code: u16) -> &mut Self {
        let mut v = vec![
            0,
            0,
            u8::try_from(code / 100).unwrap_or(0),
            (code % 100) as u8,
        ];
        v.extend_from_slice(reason_phrase(code).as_bytes());
        self.attribute(attr::ERROR_CODE, &v)
    }

    /// Appends MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 computed with `key`.
    pub fn integrity(&mut self, kind: IntegrityKind, key: &[u8]) -> &mut Self {
        let offset = self.buf.len();
        match kind {
            IntegrityKind::Sha1 => {
                let mac = hmac_sha1(key, &self.buf, offset + 24 - HEADER_LEN);
                self.attribute(attr::MESSAGE_INTEGRITY, &mac)
            }
            IntegrityKind::Sha256 => {
                let mac = hmac_sha256(key, &self.buf, offset + 36 - HEADER_LEN);
                self.attribute(attr::MESSAGE_INTEGRITY_SHA256, &mac)
            }
        }
    }

    /// Appends FINGERPRINT and returns the finished message.
    #[must_use]
    pub fn finish_with_fingerprint(mut self) -> Vec<u8> {
        let total = self.buf.len() + 8;
        let crc = fingerprint(&self.buf, total);
        self.attribute(attr::FINGERPRINT, &crc.to_be_bytes());
        self.buf
    }

    /// Returns the finished message.
    #[must_use]
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn set_length(&mut self, total: usize) {
        let len = u16::try_from(total - HEADER_LEN).unwrap_or(u16::MAX);
        self.buf[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }
}

/// The reason phrase RFC 8489 §14.8 and RFC 8656 §19 give for an error code.
#[must_use]
pub const fn reason_phrase(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

/// A checked view of a ChannelData message (RFC 8656 §12.4).
#[derive(Debug, Clone, Copy)]
pub struct ChannelData<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ChannelData<T> {
    /// Checks the channel number range (0x4000–0x7FFF) and that the declared length fits.
    /// Trailing bytes (stream padding) are allowed and ignored.
    ///
    /// # Errors
    /// [`WireError::Truncated`] or [`WireError::BadChannel`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < CHANNEL_DATA_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let channel = u16::from_be_bytes([b[0], b[1]]);
        if !is_channel_number(channel) {
            return Err(WireError::BadChannel);
        }
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        if b.len() < CHANNEL_DATA_HEADER_LEN + len {
            return Err(WireError::Truncated);
        }
        Ok(Self { buffer })
    }

    /// The channel number.
    #[must_use]
    pub fn channel(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::CHANNEL];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The application data, without padding.
    #[must_use]
    pub fn data(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let len = usize::from(u16::from_be_bytes([
            b[field::CHANNEL_LENGTH][0],
            b[field::CHANNEL_LENGTH][1],
        ]));
        &b[CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len]
    }

    /// Emits ChannelData for `data` on `channel`; `pad` rounds it up to 4 bytes, as stream
    /// transports require (RFC 8656 §12.5).
    #[must_use]
    pub fn emit(channel: u16, data: &[u8], pad: bool) -> Vec<u8> {
        let total = if pad {
            data.len().next_multiple_of(4)
        } else {
            data.len()
        };
        let mut v = Vec::with_capacity(CHANNEL_DATA_HEADER_LEN + total);
        v.extend_from_slice(&channel.to_be_bytes());
        v.extend_from_slice(&u16::try_from(data.len()).unwrap_or(u16::MAX).to_be_bytes());
        v.extend_from_slice(data);
        v.resize(CHANNEL_DATA_HEADER_LEN + total, 0);
        v
    }
}

/// Whether `n` is a valid TURN channel number: 0x4000 through 0x7FFF.
///
/// RFC 8656 §12 narrowed the range to 0x4000–0x4FFF, but RFC 5766's 0x4000–0x7FFF is what
/// deployed clients pick from (libwebrtc in every browser, coturn's `turnutils_uclient`), and a
/// server that refused 0x5000–0x7FFF would fail their ChannelBinds at random. Every number in
/// the wider range still starts with the bits `01`, so demultiplexing is unaffected.
#[must_use]
pub const fn is_channel_number(n: u16) -> bool {
    n >= 0x4000 && n <= 0x7FFF
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 §2.1: sample request with short-term credentials, password
    /// "VOkJxbRl1RmTxUk/WvJxBt".
    const RFC5769_REQUEST: &str = "000100582112a442b7e7a701bc34d686fa87dfae\
        802200105354554e207465737420636c69656e74\
        002400046e0001ff80290008932ff9b151263b36\
        000600096576746a3a68367659202020\
        000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2\
        80280004e57a3bcf";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc5769_short_term_request_verifies() {
        let bytes = hex(RFC5769_REQUEST);
        let p = StunPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.method(), Method::BINDING);
        assert_eq!(p.class(), Class::Request);
        let r = StunRepr::parse(&p).unwrap();
        assert!(r.fingerprint);
        assert_eq!(r.username, Some("evtj:h6vY"));
        assert!(r.verify_integrity(p.message(), b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!r.verify_integrity(p.message(), b"wrong"));
    }

    #[test]
    fn builder_round_trips_with_integrity_and_fingerprint() {
        let txid = TransactionId([7; 12]);
        let peer4: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let peer6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        for kind in [IntegrityKind::Sha1, IntegrityKind::Sha256] {
            let mut b = MessageBuilder::new(Method::ALLOCATE, Class::Success, txid);
            b.xor_address(attr::XOR_PEER_ADDRESS, peer4)
                .xor_address(attr::XOR_PEER_ADDRESS, peer6)
                .u32_attribute(attr::LIFETIME, 600)
                .attribute(attr::USERNAME, b"bob")
                .integrity(kind, b"key");
            let bytes = b.finish_with_fingerprint();
            let p = StunPacket::new_checked(&bytes[..]).unwrap();
            assert_eq!(p.method(), Method::ALLOCATE);
            assert_eq!(p.class(), Class::Success);
            assert_eq!(p.transaction_id(), txid);
            let r = StunRepr::parse(&p).unwrap();
            assert_eq!(r.peers, vec![peer4, peer6]);
            assert_eq!(r.lifetime, Some(600));
            assert!(r.fingerprint);
            assert_eq!(r.integrity_kind(), kind);
            assert!(r.verify_integrity(p.message(), b"key"));
        }
    }

    #[test]
    fn every_method_and_class_round_trips() {
        for m in [0x001, 0x003, 0x004, 0x006, 0x007, 0x008, 0x009, 0xFFF] {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let bytes = MessageBuilder::new(Method(m), c, TransactionId::default()).finish();
                let p = StunPacket::new_checked(&bytes[..]).unwrap();
                assert_eq!((p.method(), p.class()), (Method(m), c));
            }
        }
    }

    #[test]
    fn corrupted_fingerprint_is_rejected() {
        let mut b = MessageBuilder::new(Method::BINDING, Class::Request, TransactionId([1; 12]));
        b.attribute(attr::SOFTWARE, b"x");
        let mut bytes = b.finish_with_fingerprint();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let p = StunPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(StunRepr::parse(&p), Err(WireError::BadFingerprint));
    }

    #[test]
    fn framing_errors_are_reported() {
        assert_eq!(
            StunPacket::new_checked(&[0u8; 10][..]).err(),
            Some(WireError::Truncated)
        );
        let mut b =
            MessageBuilder::new(Method::BINDING, Class::Request, TransactionId([1; 12])).finish();
        b[4] = 0;
        assert_eq!(
            StunPacket::new_checked(&b[..]).err(),
            Some(WireError::BadCookie)
        );
        // An attribute that claims more bytes than the message has.
        let mut b = MessageBuilder::new(Method::BINDING, Class::Request, TransactionId([1; 12]));
        b.attribute(attr::SOFTWARE, b"abcd");
        let mut bytes = b.finish();
        bytes[HEADER_LEN + 3] = 200;
        assert_eq!(
            StunPacket::new_checked(&bytes[..]).err(),
            Some(WireError::AttributeOverrun)
        );
    }

    #[test]
    fn channel_data_padding_and_framing() {
        let padded = ChannelData::<&[u8]>::emit(0x4001, b"hello", true);
        assert_eq!(padded.len(), 12);
        assert_eq!(frame_len(&padded).unwrap(), Some(12));
        let cd = ChannelData::new_checked(&padded[..]).unwrap();
        assert_eq!((cd.channel(), cd.data()), (0x4001, &b"hello"[..]));
        let unpadded = ChannelData::<&[u8]>::emit(0x4FFF, b"hello", false);
        assert_eq!(unpadded.len(), 9);
        assert!(ChannelData::new_checked(&unpadded[..8]).is_err());
        assert_eq!(
            ChannelData::new_checked(&[0x80, 0, 0, 0][..]).err(),
            Some(WireError::BadChannel)
        );
        assert_eq!(frame_len(&[0xC0, 0, 0, 0]), Err(WireError::NotStun));
        assert_eq!(
            frame_len(&[0xFF]),
            Err(WireError::NotStun),
            "known from one byte"
        );
        assert_eq!(frame_len(&[0x40]), Ok(None));
    }

    #[test]
    fn unknown_comprehension_required_attributes_are_listed() {
        let mut b = MessageBuilder::new(Method::ALLOCATE, Class::Request, TransactionId([1; 12]));
        b.attribute(0x0031, b"?").attribute(0x8031, b"optional");
        let bytes = b.finish();
        let p = StunPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(StunRepr::parse(&p).unwrap().unknown, vec![0x0031]);
    }
}
