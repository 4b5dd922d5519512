//! The named network profiles of DESIGN §5: defaults a scenario names and overrides.
//!
//! Each profile is a chain of segments, agent side first, with the same model both ways unless
//! stated. The numbers and the assumptions behind them are in each constructor's doc; `sim
//! profiles` prints them. Jitter amounts are standard deviations.

use std::time::Duration;

use crate::netem::{JitterDistribution, Loss, QueueLimit, Schedule, Segment, SegmentModel};

/// A named profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The name scenarios use.
    pub name: &'static str,
    /// One line on what it stands for.
    pub summary: &'static str,
    /// Its segments, agent side first.
    pub segments: Vec<Segment>,
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// Gilbert loss (lose every packet in the bad state, none in the good one) with a long-run loss
/// rate and mean burst length: r = 1/burst, p = rate·r/(1 − rate).
pub fn gilbert(rate: f64, mean_burst: f64) -> Loss {
    let r = 1.0 / mean_burst;
    Loss::GilbertElliott {
        p: rate * r / (1.0 - rate),
        r,
        loss_in_bad: 1.0,
        loss_in_good: 0.0,
    }
}

fn segment(name: &str, model: SegmentModel, shared: bool) -> Segment {
    Segment {
        name: name.to_owned(),
        up: model.clone(),
        down: model,
        shared,
    }
}

/// Every built-in profile, in the order of DESIGN §5's table.
pub fn all() -> Vec<Profile> {
    vec![
        direct_connect(),
        office_lan(),
        hub_and_spoke(),
        vdi(),
        remote_vpn(),
        home_wifi(),
    ]
}

/// The profile called `name`.
pub fn by_name(name: &str) -> Option<Profile> {
    all().into_iter().find(|p| p.name == name)
}

/// `direct-connect`: a dedicated link to the provider — 2 ms one way, 0.5 ms normal jitter, no
/// loss.
pub fn direct_connect() -> Profile {
    let m = SegmentModel::new()
        .delay(ms(2))
        .jitter(us(500), JitterDistribution::Normal, 0.0);
    Profile {
        name: "direct-connect",
        summary: "dedicated link, 2 ms, 0.5 ms jitter",
        segments: vec![segment("direct-connect", m, false)],
    }
}

/// `office-lan`: a switched office LAN and a clean internet breakout — 5 ms, 1 ms normal jitter,
/// no loss.
pub fn office_lan() -> Profile {
    let m = SegmentModel::new()
        .delay(ms(5))
        .jitter(ms(1), JitterDistribution::Normal, 0.0);
    Profile {
        name: "office-lan",
        summary: "office LAN, 5 ms, 1 ms jitter",
        segments: vec![segment("office-lan", m, false)],
    }
}

/// `hub-and-spoke`: a branch whose traffic hops to a regional hub before the internet edge —
/// three hops, 35 ms and 5 ms jitter in all (σ adds in quadrature: √(1² + 3² + 3.87²) = 5):
/// branch LAN 3 ms ± 1 ms; the MPLS hop to the hub 20 ms ± 3 ms with 0.1 % random loss; the
/// hub's internet uplink 12 ms ± 3.87 ms, **shared** by every call of the site, 100 Mbit/s with a
/// 50 ms queue.
pub fn hub_and_spoke() -> Profile {
    let lan = SegmentModel::new()
        .delay(ms(3))
        .jitter(ms(1), JitterDistribution::Normal, 0.0);
    let mpls = SegmentModel::new()
        .delay(ms(20))
        .jitter(ms(3), JitterDistribution::Normal, 0.0)
        .loss(Loss::Random(0.001));
    let uplink = SegmentModel::new()
        .delay(ms(12))
        .jitter(us(3_873), JitterDistribution::Normal, 0.0)
        .rate(100_000_000, QueueLimit::Time(ms(50)));
    Profile {
        name: "hub-and-spoke",
        summary: "3 hops via a regional hub, 35 ms, 5 ms jitter, 0.1 % loss, shared 100 Mbit/s hub uplink",
        segments: vec![
            segment("branch-lan", lan, false),
            segment("mpls-to-hub", mpls, false),
            segment("hub-uplink", uplink, true),
        ],
    }
}

/// `vdi`: the softphone runs inside a virtual desktop; media crosses the VDI host and its
/// display protocol's network — 25 ms, 8 ms normal jitter, 0.3 % random loss, and host CPU
/// contention that stalls the media for 150 ms every 20 s (held, then released in a burst).
pub fn vdi() -> Profile {
    let m = SegmentModel::new()
        .delay(ms(25))
        .jitter(ms(8), JitterDistribution::Normal, 0.0)
        .loss(Loss::Random(0.003))
        .stall(Schedule::Periodic {
            every: ms(20_000),
            duration: ms(150),
            offset: ms(20_000),
        });
    Profile {
        name: "vdi",
        summary: "VDI host, 25 ms, 8 ms jitter, 0.3 % loss, 150 ms stalls every 20 s",
        segments: vec![segment("vdi-host", m, false)],
    }
}

/// `remote-vpn`: a home agent on a full-tunnel corporate VPN — 60 ms, 20 ms normal jitter with
/// 0.25 correlation (internet paths queue), 1 % loss in Gilbert bursts of 3 packets on average,
/// an MTU of 1400 with 73 bytes of IPsec ESP-in-UDP encapsulation, and a 2 s outage every
/// 10 min while the tunnel rekeys.
pub fn remote_vpn() -> Profile {
    let m = SegmentModel {
        overhead: 73,
        ..SegmentModel::new()
            .delay(ms(60))
            .jitter(ms(20), JitterDistribution::Normal, 0.25)
            .loss(gilbert(0.01, 3.0))
            .mtu(1400)
            .outage(Schedule::Periodic {
                every: ms(600_000),
                duration: ms(2_000),
                offset: ms(600_000),
            })
    };
    Profile {
        name: "remote-vpn",
        summary: "full-tunnel VPN, 60 ms, 20 ms jitter, 1 % bursty loss, MTU 1400, 2 s rekey every 10 min",
        segments: vec![segment("vpn-tunnel", m, false)],
    }
}

/// `home-wifi`: a home broadband link over Wi-Fi — 15 ms, 30 ms Pareto jitter (retransmissions
/// make a heavy tail of late packets), 1.5 % loss in Gilbert bursts of 4 packets on average, and
/// a 300 ms handover outage every minute (roaming, a microwave oven, a neighbour's network).
pub fn home_wifi() -> Profile {
    let m = SegmentModel::new()
        .delay(ms(15))
        .jitter(ms(30), JitterDistribution::Pareto, 0.0)
        .loss(gilbert(0.015, 4.0))
        .outage(Schedule::Periodic {
            every: ms(60_000),
            duration: ms(300),
            offset: ms(60_000),
        });
    Profile {
        name: "home-wifi",
        summary: "home Wi-Fi, 15 ms, 30 ms heavy-tailed jitter, 1.5 % bursty loss, 300 ms handovers every minute",
        segments: vec![segment("home-wifi", m, false)],
    }
}
