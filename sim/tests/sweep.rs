//! `sim sweep` end to end: a scenario's WAN loss swept until MOS p5 falls below its target,
//! the knee bisected, and the capacity report written; a value the scenario refuses stops the
//! sweep before any call, with its position.
#![allow(clippy::disallowed_methods)] // real sockets, real clock

use std::path::PathBuf;
use std::time::Duration;

use reports::capacity::{PointStatus, SweepFile};
use sim::sweep::{SweepOptions, Vary, sweep};

const SCENARIO: &str = r#"
[run]
name = "lossy-branch"
seed = 11
threshold = "50%"

[agents]
calls = 6
concurrency = 6
ramp = "50/s"
call_duration = "3s"

[turn]
urls = ["turn:turn.sim.local:3478?transport=udp"]

[segment.wan]
delay = "10ms"
loss = "0%"

[[site]]
name = "branch"
path = ["office-lan", "wan"]
"#;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sim-sweep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_loss_sweep_finds_where_mos_p5_falls_below_its_target_and_reports_it() {
    let dir = temp("loss");
    let file = dir.join("lossy-branch.toml");
    std::fs::write(&file, SCENARIO).unwrap();
    let out = dir.join("sweep");
    let vary = Vary::parse("segment.wan.loss=0%..30%", Some("15%")).unwrap();
    let result = sweep(
        &file,
        &vary,
        &SweepOptions {
            out: out.clone(),
            calls: Some(6),
            call_duration: Some(Duration::from_secs(3)),
            refine: 2,
            plain_progress: true,
            ..SweepOptions::default()
        },
    )
    .unwrap();

    // The grid's three points and the bisections between the last good and the first bad.
    let values: Vec<f64> = result.points.iter().map(|p| p.value).collect();
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
    for v in [0.0, 15.0, 30.0] {
        assert!(values.contains(&v), "{values:?}");
    }
    let refined = result.points.iter().filter(|p| p.refined).count();
    assert!((1..=2).contains(&refined), "{:?}", result.points);
    // No loss carries calls; 30 % random loss does not (MOS p5 far below 3.6).
    assert_eq!(
        result.points[0].status,
        PointStatus::Good,
        "{:?}",
        result.points[0]
    );
    let last = result.points.last().unwrap();
    assert_eq!(last.status, PointStatus::Bad, "{last:?}");
    assert!(last.mos_p5.unwrap() < 3.6, "{last:?}");
    let knee = result.knee.as_ref().expect("a knee");
    assert!(knee.larger_is_worse);
    assert!((0.0..15.0).contains(&knee.value), "{knee:?}");
    let (next, why) = knee.next.as_ref().unwrap();
    assert!(why.contains("MOS p5 falls below 3.6"), "{why}");
    assert!(
        result.answer.starts_with(&format!(
            "lossy-branch carries its calls up to segment.wan.loss = {} before MOS p5 falls below 3.6",
            knee.written
        )),
        "{}",
        result.answer
    );
    assert!(
        result.answer.ends_with(&format!("at {next}.")),
        "{}",
        result.answer
    );
    // Every point's bandwidth counts every header: at least the 54 B of them per packet.
    for p in &result.points {
        assert!(p.bytes_per_packet.unwrap() > 54.0, "{p:?}");
        assert!(
            out.join(&p.run).join("summary.json").exists(),
            "{} has its run folder",
            p.written
        );
    }

    // The files: the JSON reads back as written; the page carries the answer and the charts.
    let read: SweepFile =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    // (Floats read back to the nearest representable value, not always the bit-identical one.)
    assert_eq!((&read.knee, &read.answer), (&result.knee, &result.answer));
    let statuses = |s: &SweepFile| {
        s.points
            .iter()
            .map(|p| (p.written.clone(), p.status))
            .collect::<Vec<_>>()
    };
    assert_eq!(statuses(&read), statuses(&result));
    assert_eq!(read.schema_version, reports::capacity::SWEEP_FILE_VERSION);
    let html = std::fs::read_to_string(out.join("sweep.html")).unwrap();
    assert!(html.contains(&result.answer), "the answer leads the page");
    assert_eq!(html.matches("<svg class=\"chart\"").count(), 2);
    assert!(html.contains("Opus payload"), "the bandwidth arithmetic");
    for chart in ["sweep-error-rate", "sweep-mos"] {
        assert!(out.join("charts").join(format!("{chart}.svg")).exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_value_the_scenario_refuses_stops_the_sweep_with_its_position_before_any_call() {
    let dir = temp("refused");
    let file = dir.join("lossy-branch.toml");
    std::fs::write(&file, SCENARIO).unwrap();
    let out = dir.join("sweep");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
        .args([
            "sweep",
            file.to_str().unwrap(),
            "--vary",
            "segment.wan.loss=50%..150%",
        ])
        .args(["--step", "50%", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    // The loss line of the file, where the swept value went.
    assert!(
        stderr.contains("segment.wan.loss = 150%")
            && stderr.contains(&format!("{}:", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains(":18:"), "the line of `loss`: {stderr}");
    assert!(!out.join("points").exists(), "no call was placed");
    let _ = std::fs::remove_dir_all(&dir);
}
