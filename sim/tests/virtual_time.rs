//! The media path in virtual time: real ICE, DTLS and SRTP legs, the path engine and the TURN
//! core on one simulated clock. The path's loss and delay come out of the far ends' meters as
//! the path put them in.
#![allow(clippy::disallowed_methods)] // one real instant to start the simulated clock from

use std::time::{Duration, Instant};

use sim::netem::{Loss, Path, SegmentModel};
use sim::virtual_time::{CallOutcome, MediaRun, run_media};

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
        let CallOutcome::Completed { up, down, setup } = call else {
            panic!("{call:?}");
        };
        // Allocation, ICE and DTLS each cost round trips of 60 ms over this path.
        assert!(
            *setup > Duration::from_millis(120) && *setup < Duration::from_secs(3),
            "{setup:?}"
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
        let CallOutcome::Completed { up, down, .. } = call else {
            panic!("{call:?}");
        };
        for m in [up, down] {
            // Nothing on the way takes simulated time: no packet may wait for the next wake-up.
            let max = m.one_way_delay.max().unwrap();
            assert!(max < 1_000, "one-way delay max {max} µs");
        }
    }
}
