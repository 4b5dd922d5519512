//! Records for tests: a plausible completed call, and a proptest strategy over every field that
//! the summary reads.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use reports::record::{IceCounters, MediaStats};
use reports::{
    CallIdentity, CallKind, CallRecord, Distribution, Failure, FailureClass, Milestones, Outcome,
    SCHEMA_VERSION, SessionState, Shard, Unit,
};

/// A completed inbound call of 10 s with clean media.
pub fn completed_call(n: u32) -> CallRecord {
    CallRecord {
        schema_version: SCHEMA_VERSION,
        identity: CallIdentity {
            run: "office-200-20261127T091500Z".into(),
            call: format!("c{n:04}"),
            agent: format!("agent-{:03}", n % 50),
            scenario: "office-200".into(),
            site: "hq".into(),
            profile: "office-lan".into(),
            kind: CallKind::Inbound,
            shard: Shard::WHOLE,
        },
        started_unix_ms: 1_795_000_000_000 + u64::from(n) * 100,
        milestones: Milestones {
            local_media_us: Some(1_000),
            local_description_us: Some(3_000),
            signalling_connected_us: Some(15_000),
            ice_collected_us: Some(9_000),
            invite_sent_us: Some(15_500),
            answer_received_us: Some(40_000),
            accepted_us: Some(45_000),
            ice_connected_us: Some(60_000),
            dtls_connected_us: Some(75_000),
            first_rtp_us: Some(95_000),
            hangup_us: Some(10_095_000),
            ended_us: Some(10_100_000),
        },
        last_state: SessionState::Disconnected,
        outcome: Outcome::Completed,
        failure: None,
        ice: IceCounters::default(),
        relay_transport: Some(reports::RelayTransport::Udp),
        agent_to_anchor: Some(media(500, 0, &[5_000, 5_200, 4_900])),
        anchor_to_agent: Some(media(500, 0, &[5_100])),
        recording: None,
        conference: None,
    }
}

pub fn media(packets: u64, lost: u64, delays_us: &[u64]) -> MediaStats {
    let mut jitter = Distribution::new(Unit::Micros);
    let mut delay = Distribution::new(Unit::Micros);
    for &d in delays_us {
        delay.record(d);
        jitter.record(d / 50);
    }
    MediaStats {
        packets_sent: packets,
        wire_bytes_sent: packets * 218,
        packets_expected: packets,
        packets_received: packets - lost,
        duplicates: 0,
        packets_lost: lost,
        late_lost: 0,
        loss_bursts: if lost > 0 {
            BTreeMap::from([(1, lost)])
        } else {
            BTreeMap::new()
        },
        jitter,
        one_way_delay: delay,
        jitter_buffer_delay_ms: 20.0,
        rtcp_reports: 2,
        send_pacing_error: Distribution::new(Unit::Micros),
        r_factor: 93.0,
        mos: 4.4,
    }
}

fn arb_distribution(unit: Unit) -> impl Strategy<Value = Distribution> {
    prop::collection::vec(0u64..5_000_000, 0..20).prop_map(move |values| {
        let mut d = Distribution::new(unit);
        for v in values {
            d.record(v);
        }
        d
    })
}

fn arb_media() -> impl Strategy<Value = MediaStats> {
    (
        (0u64..3000, 0u64..100, 0u64..5),
        prop::collection::btree_map(1u32..12, 1u64..20, 0..4),
        arb_distribution(Unit::Micros),
        arb_distribution(Unit::Micros),
        1.0f64..4.5,
    )
        .prop_map(|((expected, lost, dups), bursts, jitter, delay, mos)| {
            let lost = lost.min(expected);
            MediaStats {
                packets_sent: expected,
                wire_bytes_sent: expected * 218,
                packets_expected: expected,
                packets_received: expected - lost,
                duplicates: dups,
                packets_lost: lost,
                late_lost: dups,
                loss_bursts: bursts,
                jitter,
                one_way_delay: delay,
                jitter_buffer_delay_ms: 20.0,
                rtcp_reports: 1,
                send_pacing_error: Distribution::new(Unit::Micros),
                r_factor: 80.0,
                mos,
            }
        })
}

fn arb_milestone() -> impl Strategy<Value = Option<u64>> {
    prop::option::of(0u64..20_000_000)
}

/// Any record the summary must count: every outcome, class, kind, phase reached or not.
pub fn arb_record() -> impl Strategy<Value = CallRecord> {
    (
        (
            0u32..1000,
            prop::sample::select(CallKind::ALL.to_vec()),
            prop::sample::select(vec!["hq", "branch", "home"]),
        ),
        (0u32..4, prop::sample::select(vec!["run-a", "run-b"])),
        prop::sample::select(Outcome::ALL.to_vec()),
        prop::sample::select(FailureClass::ALL.to_vec()),
        prop::collection::vec(arb_milestone(), 12),
        prop::option::of(arb_media()),
        prop::option::of(arb_media()),
        1_795_000_000_000u64..1_795_000_100_000,
    )
        .prop_map(
            |((n, kind, site), (shard, run), outcome, class, m, a2b, b2a, start)| {
                let mut r = completed_call(n);
                r.identity.kind = kind;
                r.identity.site = site.into();
                r.identity.run = run.into();
                r.identity.shard = Shard {
                    index: shard,
                    count: 4,
                };
                r.started_unix_ms = start;
                r.outcome = outcome;
                r.failure = outcome.is_error().then(|| Failure {
                    class,
                    detail: "test".into(),
                    ccp_message: None,
                    own_lateness: None,
                });
                r.milestones = Milestones {
                    local_media_us: m[0],
                    local_description_us: m[1],
                    signalling_connected_us: m[2],
                    ice_collected_us: m[3],
                    invite_sent_us: m[4],
                    answer_received_us: m[5],
                    accepted_us: m[6],
                    ice_connected_us: m[7],
                    dtls_connected_us: m[8],
                    first_rtp_us: m[9],
                    hangup_us: m[10],
                    ended_us: m[11],
                };
                r.agent_to_anchor = a2b;
                r.anchor_to_agent = b2a;
                r
            },
        )
}
