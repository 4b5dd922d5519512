//! The edge: relays that sit between the agents and the servers and apply the path engine in
//! real time — [`udp`] for media (TURN over UDP), [`tcp`] for byte streams (TURN over TCP/TLS,
//! the signalling WebSocket).

pub mod tcp;
pub mod udp;

pub use tcp::{TcpRelay, TcpRelayConfig};
pub use udp::{RelayStats, UdpRelay, UdpRelayConfig};
