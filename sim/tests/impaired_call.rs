//! A real call whose agent leg crosses an impaired path (60 ms one way, 2 % random loss) through
//! the UDP relay to our TURN server: the receivers measure the delay and loss the path applies.
#![allow(clippy::disallowed_methods)] // real sockets, real clock
mod common;

use std::time::{Duration, Instant};

use loadgen::pair::PairedCall;
use reports::emodel::Codec;
use sim::netem::{Loss, Path, SegmentModel};
use sim::relay::{UdpRelay, UdpRelayConfig};
use sim::scenario::Policy;
use turn_server::io::{self, Settings};

#[test]
fn delay_and_loss_of_the_path_are_measured() {
    let server = io::start(Settings::loopback("agent", "agent-pw", "sim.local")).unwrap();
    let turn = server.bound.udp[0];

    let path = Path::symmetric(vec![
        SegmentModel::new()
            .delay(Duration::from_millis(60))
            .loss(Loss::Random(0.02)),
    ]);
    let relay = UdpRelay::start(UdpRelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: turn,
        path,
        seed: 9,
        policy: Policy::default(),
        server_port: None,
    })
    .unwrap();

    let epoch = Instant::now();
    // The agent reaches TURN through the impaired path; the anchor (the vendor's side) is a host
    // the agent's relay sends to.
    let (agent, anchor) = common::agent_and_anchor(relay.local_addr(), epoch);
    let mut call = PairedCall::new(agent, anchor).unwrap();
    call.connect(Duration::from_secs(15)).unwrap();
    let talk = Duration::from_secs(10);
    call.talk(talk);
    let (to_anchor, to_agent) = call.finish(Codec::OPUS);
    relay.shutdown();
    drop(server);

    let frames = 500.0;
    for (dir, m) in [("agent→anchor", &to_anchor), ("anchor→agent", &to_agent)] {
        let delay_ms = m.one_way_delay.quantile(0.5).unwrap() as f64 / 1000.0;
        let lost = m.packets_lost as f64;
        println!(
            "{dir}: delay p50 {delay_ms:.2} ms, lost {lost} of {}, MOS {:.2}",
            m.packets_expected, m.mos
        );
        // Delay: every packet crosses the 60 ms path once, plus loopback and the peers' 1 ms
        // driving tick; the histogram keeps two significant digits (±1 %).
        assert!((59.0..64.0).contains(&delay_ms), "{dir}: {delay_ms} ms");
        // Loss: Binomial(500, 0.02) has mean 10 and sd √(500·0.02·0.98) = 3.13; 5 sd → ±15.7.
        assert!((lost - frames * 0.02).abs() <= 15.7, "{dir}: {lost} lost");
        assert_eq!(m.packets_sent, 500);
    }
}
