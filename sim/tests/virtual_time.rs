//! The media path in virtual time: real ICE, DTLS and SRTP legs, the path engine and the TURN
//! core on one simulated clock. The path's loss and delay come out of the far ends' meters as
//! the path put them in.
#![allow(clippy::disallowed_methods)] // one real instant to start the simulated clock from

use std::time::{Duration, Instant};

use loadgen::session::Timeouts;
use reports::{CallKind, CallRecord, FailureClass, Outcome};
use sim::anchor::AnchorBehaviour;
use sim::netem::{JitterDistribution, Loss, Path, QueueLimit, SegmentModel};
use sim::virtual_time::{MediaRun, run_media, run_plan};

/// 24 calls set up at once share their frames' instants: on three threads their own work is
/// shared at those instants, and every record and count is what one thread gives.
#[test]
fn sharing_the_calls_work_across_threads_changes_no_result() {
    let run = MediaRun {
        path: Path::symmetric(vec![
            SegmentModel::new()
                .delay(Duration::from_millis(20))
                .loss(Loss::Random(0.01)),
        ]),
        calls: 24,
        talk: Duration::from_secs(3),
        seed: 5,
    };
    let on = |threads| {
        let plan = sim::virtual_time::Plan {
            threads,
            ..run.plan()
        };
        run_plan(
            &plan,
            Instant::now(),
            Duration::from_secs(1_800_000_000),
            &mut |_| {},
        )
        .unwrap()
    };
    let (one, three) = (on(1), on(3));
    assert_eq!(one.shared_instants, 0);
    // Each of the talk's 150 frame slots at least (the 24 calls were set up in step).
    assert!(three.shared_instants >= 150, "{}", three.shared_instants);
    let records = |r: &sim::virtual_time::MediaResult| {
        r.calls
            .iter()
            .map(|c| serde_json::to_string(&c.record).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(records(&one), records(&three));
    assert!(one.calls.iter().all(|c| c.completed().is_some()));
    assert_eq!(one.simulated, three.simulated);
    assert_eq!(
        format!("{:?}", one.components),
        format!("{:?}", three.components)
    );
}

#[test]
fn calls_over_a_lossy_delayed_path_measure_what_the_path_did() {
    const LOSS: f64 = 0.02;
    let run = MediaRun {
        path: Path::symmetric(vec![
            SegmentModel::new()
                .delay(Duration::from_millis(30))
                .loss(Loss::Random(LOSS)),
        ]),
        calls: 4,
        talk: Duration::from_secs(30),
        seed: 11,
    };
    let result = run_media(&run, Instant::now(), Duration::from_secs(1_800_000_000)).unwrap();
    assert!(
        result.simulated >= Duration::from_secs(30) && result.simulated < Duration::from_secs(40),
        "{:?}",
        result.simulated
    );
    let (mut expected, mut lost) = (0u64, 0u64);
    for call in &result.calls {
        let Some((up, down)) = call.completed() else {
            panic!("{call:?}");
        };
        let m = &call.record.milestones;
        let ms = |us: Option<u64>| Duration::from_micros(us.unwrap());
        let (connected, collected, answer, accepted, dtls) = (
            ms(m.signalling_connected_us),
            ms(m.ice_collected_us),
            ms(m.answer_received_us),
            ms(m.accepted_us),
            ms(m.dtls_connected_us),
        );
        // Every step costs round trips of 60 ms over this path: TLS 1.3 and the upgrade two,
        // the allocation two (its 401 first), invite and accept one each, then ICE and DTLS.
        let rtt = Duration::from_millis(60);
        assert!(connected >= 2 * rtt && collected >= 2 * rtt, "{m:?}");
        assert!(answer >= connected.max(collected) + rtt, "{m:?}");
        assert!(accepted >= answer + rtt, "{m:?}");
        assert!(
            dtls > accepted + rtt && dtls < Duration::from_secs(3),
            "{m:?}"
        );
        for m in [up, down] {
            expected += m.packets_expected;
            lost += m.packets_lost;
            let p50 = m.one_way_delay.quantile(0.5).unwrap();
            // The path's 30 ms; nothing else takes simulated time.
            assert!(
                (30_000..30_100).contains(&p50),
                "one-way delay p50 {p50} µs"
            );
        }
    }
    // ~1,500 packets a direction a call: the loss is binomial, 4.5 standard errors either side.
    let n = expected as f64;
    let rate = lost as f64 / n;
    let se = (LOSS * (1.0 - LOSS) / n).sqrt();
    assert!(n > 10_000.0, "{n} packets");
    assert!(
        (rate - LOSS).abs() < 4.5 * se,
        "loss {rate} of {n}, want {LOSS} ± {}",
        4.5 * se
    );
}

#[test]
fn a_path_without_delay_delivers_at_once() {
    let run = MediaRun {
        path: Path::symmetric(vec![SegmentModel::new()]),
        calls: 2,
        talk: Duration::from_secs(5),
        seed: 3,
    };
    let result = run_media(&run, Instant::now(), Duration::from_secs(1_800_000_000)).unwrap();
    for call in &result.calls {
        let Some((up, down)) = call.completed() else {
            panic!("{call:?}");
        };
        for m in [up, down] {
            // Nothing on the way takes simulated time: no packet may wait for the next wake-up.
            let max = m.one_way_delay.max().unwrap();
            assert!(max < 1_000, "one-way delay max {max} µs");
        }
    }
}

/// Every call's figures, as the run folder would hold them.
fn figures(run: &MediaRun) -> Vec<String> {
    let result = run_media(run, Instant::now(), Duration::from_secs(1_800_000_000)).unwrap();
    result
        .calls
        .iter()
        .map(|c| match c.completed() {
            Some((up, down)) => format!(
                "{:?} {} {}",
                c.record.milestones,
                serde_json::to_string(up).unwrap(),
                serde_json::to_string(down).unwrap()
            ),
            None => format!("{:?}", c.record.failure),
        })
        .collect()
}

#[test]
fn one_seed_replays_the_same_figures() {
    // Jitter, loss and a rate limit: the path's draws, the handshakes' sizes (serialisation
    // time) and the order packets meet in the queue all show in the figures.
    let mut run = MediaRun {
        path: Path::symmetric(vec![
            SegmentModel::new()
                .delay(Duration::from_millis(20))
                .jitter(Duration::from_millis(5), JitterDistribution::Normal, 0.0)
                .loss(Loss::Random(0.02))
                .rate(1_000_000, QueueLimit::Time(Duration::from_millis(50))),
        ]),
        calls: 6,
        talk: Duration::from_secs(8),
        seed: 5,
    };
    let once = figures(&run);
    assert!(once.iter().all(|c| c.contains("packets_sent")), "{once:?}");
    // With ring's random ECDSA nonces the handshakes' byte counts differed between two runs.
    assert_eq!(once, figures(&run));
    run.seed = 6;
    assert_ne!(once, figures(&run), "the seed changes nothing");
}

/// One call of `kind` over a 5 ms path against an anchor that behaves so, with the short
/// timeouts of `call_e2e.rs`: its record.
fn one_call(kind: CallKind, anchor: AnchorBehaviour, talk: Duration) -> CallRecord {
    let mut plan = MediaRun {
        path: Path::symmetric(vec![SegmentModel::new().delay(Duration::from_millis(5))]),
        calls: 1,
        talk,
        seed: 5,
    }
    .plan();
    plan.calls[0].identity.kind = kind;
    plan.anchor = anchor;
    plan.dead_air = Duration::from_secs(1);
    plan.timeouts = Timeouts {
        websocket_connect: Duration::from_secs(2),
        ice_collection: Duration::from_secs(2),
        invite_answer: Duration::from_secs(1),
        ..Timeouts::default()
    };
    let mut result = run_plan(
        &plan,
        Instant::now(),
        Duration::from_secs(1_800_000_000),
        &mut |_| {},
    )
    .unwrap();
    let record = result.calls.remove(0).record;
    record.check().unwrap();
    record
}

/// The failure paths `call_e2e.rs` runs in real time give the same outcome and class in
/// virtual time: the same session and anchor cores decide them.
#[test]
fn the_anchors_failure_paths_give_the_real_time_classes() {
    let secs = Duration::from_secs;
    let cases = [
        (
            CallKind::Inbound,
            AnchorBehaviour::NeverAnswer,
            secs(1),
            Outcome::Failed,
            Some(FailureClass::SignallingHandshakeFailure),
        ),
        (
            CallKind::Inbound,
            AnchorBehaviour::Refuse(486),
            secs(1),
            Outcome::Failed,
            Some(FailureClass::UserBusy),
        ),
        (
            CallKind::Inbound,
            AnchorBehaviour::GoSilentAfter(Duration::from_millis(800)),
            secs(5),
            Outcome::Dropped,
            Some(FailureClass::MediaTimeout),
        ),
        (
            CallKind::Transfer,
            AnchorBehaviour::RefuseMidCall(500),
            secs(3),
            Outcome::Dropped,
            Some(FailureClass::TransferFailure),
        ),
        (
            CallKind::Conference,
            AnchorBehaviour::RefuseMidCall(500),
            secs(3),
            Outcome::Dropped,
            Some(FailureClass::ConferenceFailure),
        ),
        (
            CallKind::Missed,
            AnchorBehaviour::Answer,
            secs(1),
            Outcome::Completed,
            None,
        ),
        (
            CallKind::HoldResume,
            AnchorBehaviour::Answer,
            secs(3),
            Outcome::Completed,
            None,
        ),
    ];
    for (kind, anchor, talk, outcome, class) in cases {
        let r = one_call(kind, anchor, talk);
        assert_eq!(r.outcome, outcome, "{kind:?} {anchor:?}: {:?}", r.failure);
        assert_eq!(
            r.failure.as_ref().map(|f| f.class),
            class,
            "{kind:?} {anchor:?}"
        );
        if kind == CallKind::Missed {
            assert!(r.milestones.accepted_us.is_none() && r.agent_to_anchor.is_none());
        }
        if class == Some(FailureClass::UserBusy) {
            let message = r.failure.and_then(|f| f.ccp_message);
            assert_eq!(message.as_deref(), Some("Softphone call UserBusy error."));
        }
    }
}
