//! Softphone agents placing real WebRTC calls: relay-only ICE through TURN, DTLS-SRTP, an
//! Opus RTP stream each way, measured at each receiver.
//!
//! - [`audio`]: the Opus frames every leg sends (a speech-like test signal, looped);
//! - [`clock`]: sleeping with microsecond precision (tokio's timers have 1 ms);
//! - [`driver`]: a call's session driven from async code by socket readiness and timers (its
//!   real-time edge);
//! - [`entropy`]: where a leg's randomness comes from (the OS, or a seed in virtual time);
//! - [`leg`]: one media leg, sans-I/O — the media plane ([`media`]: ICE, DTLS-SRTP ([`dtls`]),
//!   RTP/RTCP, with the offer/answer of [`sdp`]) glued to TURN clients;
//! - [`peer`]: a leg on real sockets (its real-time edge);
//! - [`lateness`]: how late this process's own senders were, as they send;
//! - [`measure`]: what a receiver measures and the call record's media figures;
//! - [`pair`]: both legs of a call on one thread, signalling in process (tests, calibration);
//! - [`runner`]: many calls at a concurrency and ramp;
//! - [`session`]: one call's session state machine (a sans-I/O core), ending in its call
//!   record;
//! - [`signalling`]: the JSON-RPC 2.0 over WebSocket/TLS client and its wire types;
//! - [`turn_stream`]: TURN over TCP and TLS, framed on the stream;
//! - [`turn_url`]: `turn:` and `turns:` URLs.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod audio;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod clock;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod driver;
pub mod dtls;
pub mod entropy;
pub mod lateness;
pub mod leg;
pub mod measure;
pub mod media;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod overload;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod pair;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod peer;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod runner;
pub mod sdp;
pub mod session;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod signalling;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod turn_stream;
pub mod turn_url;
