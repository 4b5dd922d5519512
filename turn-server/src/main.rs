//! `turn-server`: the STUN/TURN relay on every simulated call's media path (RFC 8489, RFC 8656).
//!
//! Not built yet: this binary only describes itself. See the README's status section.

use clap::Parser;

/// A STUN/TURN relay (RFC 8489 / RFC 8656) for softphone media: UDP, TCP and TLS listeners,
/// long-term and time-limited credentials, no open relay by default.
///
/// Status: not implemented yet — this build only prints its help.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("turn-server: not implemented yet; see `turn-server --help` and the README");
    std::process::exit(2);
}
