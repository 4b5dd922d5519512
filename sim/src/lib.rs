//! The softphone media-path simulator: network-path emulation, scenarios, and (later) the run
//! orchestrator, signalling endpoint and media anchor.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod bench;
pub mod dns;
pub mod netem;
pub mod profiles;
pub mod relay;
pub mod scenario;
