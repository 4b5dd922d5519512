//! A STUN/TURN relay (RFC 8489, RFC 8656) with a sans-I/O core, for the softphone media-path
//! simulator and for network teams testing their firewalls.
//!
//! - [`wire`]: STUN messages and ChannelData, checked views and emitters (smoltcp style);
//! - [`auth`]: long-term and time-limited (coturn `use-auth-secret`) credentials, nonces;
//! - [`policy`]: which peer addresses may be relayed to (no open relay by default);
//! - [`server`]: the sans-I/O [`Server`]: allocations, permissions, channels, auth, faults;
//! - [`streams`]: TCP/TLS connections in the core: framing, limits, idle timeout;
//! - [`config`]: the TOML configuration file and its errors with file:line:column;
//! - [`io`]: the tokio edge: UDP/TCP/TLS listeners, relayed sockets, `/metrics`, control API.

//!
//! The core is driven like this (the edge in [`io`] does the same with sockets):
//!
//! ```
//! use std::time::{Duration, Instant};
//! use turn_server::{Config, Event, FiveTuple, Server, Transport};
//!
//! let start = Instant::now();
//! let mut server = Server::new(Config::default(), start, 1_700_000_000);
//! let client = FiveTuple {
//!     transport: Transport::Udp,
//!     client: "127.0.0.1:40000".parse().unwrap(),
//!     server: "127.0.0.1:3478".parse().unwrap(),
//! };
//! // A Binding request (RFC 8489 §3) with transaction ID 1..=12.
//! let mut request = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
//! request.extend(1..=12u8);
//! server.handle_packet(start, client, &request);
//! // Drain: transmits and events, then sleep until `poll_timeout`.
//! let response = server.poll_transmit().expect("a Binding response");
//! assert_eq!(response.destination, client.client);
//! assert!(server.poll_event().is_none());
//! server.handle_timeout(start + Duration::from_secs(1));
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod io;
pub mod policy;
pub mod server;
pub mod streams;
pub mod wire;

pub use server::{
    Config, Counters, DropReason, Event, Faults, FiveTuple, Gauges, RelayRequest, Server, Traffic,
    Transmit, Transport,
};
pub use streams::{StreamClose, StreamRefusal};
