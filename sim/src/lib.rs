//! The softphone media-path simulator: the agents' network, emulated.
//!
//! - [`anchor`]: the media anchor, the far end of every call;
//! - [`netem`]: the sans-I/O path engine — segments with delay, jitter, loss, rate, MTU,
//!   outages and stalls, per flow or shared — seeded and deterministic;
//! - [`profiles`]: the six named network profiles of DESIGN §5, calibrated by tests;
//! - [`scenario`]: scenario files, parsed with every error reported at once;
//! - [`inspection`]: the sans-I/O TLS-inspecting proxy (403s, stalls, certificate expiry);
//! - [`relay`]: the edge — UDP and TCP impairment relays and the inspecting proxy's sockets;
//! - [`run`](mod@run): `sim run`, the whole path on one machine and the run folder;
//! - [`overload`]: the simulator's own components watched as a run goes (late, starved);
//! - [`report`]: re-render, merge and compare run folders;
//! - [`sweep`]: `sim sweep`, a scenario at each value of one field, and its knee;
//! - [`serve`]: `sim serve --out`, the run folder of calls any client placed;
//! - [`dns`]: the agents' name resolution under a site's DNS policy;
//! - [`signalling`]: the JSON-RPC 2.0 over WebSocket/TLS endpoint;
//! - [`bench`](mod@bench): the engine's throughput and the relay's added latency, measured.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod anchor;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod bench;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod dns;
pub mod inspection;
pub mod netem;
/// The overload monitor lives with the agents (a `loadgen` shard runs it too).
pub use loadgen::overload;
pub mod profiles;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod relay;
pub mod report;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod run;
pub mod scenario;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod serve;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
mod service;
pub mod signalling;
#[allow(clippy::disallowed_methods)] // an edge: real clock, real sockets
pub mod sweep;
pub mod virtual_time;
