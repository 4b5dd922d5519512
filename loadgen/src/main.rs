//! `loadgen`: softphone agents placing real WebRTC calls (ICE relay-only, DTLS-SRTP, RTP/RTCP).
//!
//! Not built yet: this binary only describes itself. See the README's status section.

use clap::Parser;

/// Softphone agents that place real DTLS-SRTP calls through a TURN relay and a signalling
/// server, measure setup time, jitter, loss and MOS, and write one JSON line per call.
///
/// Status: not implemented yet — this build only prints its help.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("loadgen: not implemented yet; see `loadgen --help` and the README");
    std::process::exit(2);
}
