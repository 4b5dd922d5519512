//! `sim`: the softphone media-path simulator's command line.
//!
//! Not built yet: this binary only describes itself. See the README's status section.

use clap::Parser;

/// Runs softphone calls through an emulated agent network (VDI, hub-and-spoke WAN, VPN, home
/// Wi-Fi, firewalls) and a TURN relay, and says whether the network passes the 2 % error-rate
/// test.
///
/// Status: not implemented yet — this build only prints its help.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("sim: not implemented yet; see `sim --help` and the README");
    std::process::exit(2);
}
