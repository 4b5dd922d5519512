//! The edge: relays that sit between the agents and the servers and apply the path engine in
//! real time — [`udp`] for media (TURN over UDP), [`tcp`] for byte streams (TURN over TCP/TLS,
//! the signalling WebSocket), and [`proxy`], the sockets of the TLS-inspecting proxy on the
//! signalling path (its decisions are the [`crate::inspection`] core).

pub mod proxy;
pub mod tcp;
pub mod udp;

pub use proxy::{InspectingProxy, InspectingProxyConfig, InspectionCa, InspectionPolicy};
pub use tcp::{TcpRelay, TcpRelayConfig};
pub use udp::{RelayStats, UdpRelay, UdpRelayConfig};
