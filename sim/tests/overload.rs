//! A run starved of CPU by a tiny quota is `invalid`, never `fail`: `sim run` in a control
//! group whose CPU quota is 15 % of one core, with the lateness named in every output.
//!
//! Needs root and a cgroup CPU controller (v1 `cpu` or v2): it makes its own group and
//! removes it after. Without them it says so and skips.
#![allow(clippy::disallowed_methods)] // a real process, a real clock

mod common;

use common::CpuGroup;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCENARIO: &str = r#"
[run]
name = "starved"
seed = 5
threshold = "50%"

[agents]
calls = 6
concurrency = 6
ramp = "50/s"
call_duration = "4s"

[turn]
urls = ["turn:turn.sim.local:3478?transport=udp"]

[[site]]
name = "hq"
path = ["office-lan"]
"#;

#[test]
fn a_run_starved_by_a_cpu_quota_is_invalid_and_names_what_was_late() {
    let Some(group) = CpuGroup::new(15) else {
        eprintln!("skipped: cannot make a CPU control group here (needs root and cgroup cpu)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("sim-overload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("starved.toml");
    std::fs::write(&file, SCENARIO).unwrap();
    let out = dir.join("run");
    // The shell joins the group, then becomes `sim run`: every thread it starts is in it.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && exec "$2" run "$3" --out "$4" --plain"#)
        .arg("sh")
        .arg(&group.0)
        .arg(env!("CARGO_BIN_EXE_sim"))
        .arg(&file)
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: 6 calls of 4 s take about 10 s under the quota.
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sim run under the quota did not finish in 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(4),
        "exit status 4 (invalid)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("starved: INVALID"), "{stdout}");
    assert!(
        stdout.contains("neither passes nor fails the network"),
        "{stdout}"
    );
    assert!(stdout.contains("late: cpu quota"), "{stdout}");

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["verdict"], "invalid");
    let spans = summary["own_lateness"]["spans"].as_array().unwrap();
    let throttled: u64 = spans
        .iter()
        .filter(|s| s["cause"] == "throttled" && s["component"] == "cpu quota")
        .map(|s| s["to_unix_ms"].as_u64().unwrap() - s["from_unix_ms"].as_u64().unwrap())
        .sum();
    // At 15 % of a core the process cannot keep up for most of the calls' talk time.
    assert!(throttled >= 2_000, "throttled {throttled} ms: {spans:?}");
    assert!(
        spans.iter().any(|s| s["cause"] == "pacing"),
        "the senders' lateness is named too: {spans:?}"
    );
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.starts_with("# starved: INVALID"), "{md}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("INVALID") && html.contains("cpu quota"));
    let _ = std::fs::remove_dir_all(&dir);
}
