//! Shards as deploy/k8s runs them, on one machine: one `sim serve` process (fixed signalling
//! port, a certificate it was given, a TURN password it was told) and 4 `loadgen` processes, each
//! taking its shard from JOB_COMPLETION_INDEX and LOADGEN_SHARDS as an Indexed Job's pod does and
//! writing a run folder; `sim report` merges them. The merge equals one run of the same calls (all
//! the records summarised at once) in every count and histogram, and the vendor side's own
//! record holds the same calls. Every process counts send stamps from a wall-clock epoch
//! (SIM_MEDIA_EPOCH, as pods on different machines do), and one-way delay still measures the
//! loopback path. A shard starved by a CPU quota says `invalid`, and so does the merge.
#![allow(clippy::disallowed_methods)] // real processes, real sockets, real clock

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHARDS: u32 = 4;

/// The tests that place calls run one at a time: a starved shard beside the four would make
/// them late for want of CPU, which they would rightly report.
static MACHINE: std::sync::Mutex<()> = std::sync::Mutex::new(());
const CALLS_PER_SHARD: u32 = 3;
const HOST: &str = "vendor.sim.local";
const PASSWORD: &str = "shard-test-secret";

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sim-shards-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sim"))
}

/// The `loadgen` binary, built beside `sim` (a no-op under `cargo test --workspace`, which has
/// just built it; a run of this test alone would otherwise use a stale one).
fn loadgen() -> Command {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "loadgen", "--bin", "loadgen"]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "building loadgen");
    });
    Command::new(Path::new(env!("CARGO_BIN_EXE_sim")).with_file_name("loadgen"))
}

/// Waits for `child` until `deadline`, killing it past that.
fn wait(child: &mut Child, deadline: Instant, what: &str) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} still running at its deadline");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn summary(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A `sim serve` process as the vendor Deployment runs it, and what the agents need of it.
struct Vendor {
    child: Child,
    /// Its TURN server's UDP address.
    turn: String,
    /// Its signalling port.
    port: u16,
    /// The certificate the agents trust.
    cert: PathBuf,
    /// The media epoch every process is given.
    epoch: u64,
    drain: Option<std::thread::JoinHandle<()>>,
}

/// A test that fails part-way must not leave its `sim serve` running.
impl Drop for Vendor {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Vendor {
    /// Starts `sim serve` with a certificate, port, password and media epoch it is given, as
    /// deploy/k8s/vendor.yaml does, recording its calls in `dir`/vendor.
    fn start(dir: &Path) -> Self {
        let ck = rcgen::generate_simple_self_signed(vec![HOST.to_owned()]).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        // A port the OS gave, then freed: the deployment's fixed Service port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // An hour ago, as every pod of a deployment is given it.
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 3600;
        let mut child = sim()
            .args(["serve", "--listen", "127.0.0.1", "--host", HOST])
            .args(["--signalling-port", &port.to_string()])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--ca-out")
            .arg(dir.join("written-ca.pem"))
            .arg("--out")
            .arg(dir.join("vendor"))
            .env("SIM_TURN_PASSWORD", PASSWORD)
            .env("SIM_MEDIA_EPOCH", epoch.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut turn, mut signalling) = (None, None);
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("TURN        turn:") {
                turn = rest.split('?').next().map(str::to_owned);
                assert!(line.contains(&format!("password {PASSWORD}")), "{line}");
            }
            if line.starts_with("signalling") {
                signalling = Some(line.clone());
            }
            if line.starts_with("serving") {
                break;
            }
        }
        // Whatever else it prints must not fill the pipe.
        let drain = std::thread::spawn(move || lines.for_each(drop));
        let turn = turn.expect("sim serve printed no TURN address");
        let signalling = signalling.expect("sim serve printed no signalling line");
        assert!(
            signalling.contains(&format!("wss://{HOST}:{port}/rtc at 127.0.0.1:{port}")),
            "{signalling}"
        );
        // It hands out the certificate it was given, not one of its own.
        assert_eq!(
            std::fs::read_to_string(dir.join("written-ca.pem")).unwrap(),
            ck.cert.pem()
        );
        Self {
            child,
            turn,
            port,
            cert,
            epoch,
            drain: Some(drain),
        }
    }

    /// The arguments and environment of a `loadgen` shard aimed at it.
    fn shard(&self, cmd: &mut Command, calls: u32, folder: &Path) {
        let port = self.port;
        cmd.args(["--signalling", &format!("wss://{HOST}:{port}/rtc")])
            .args(["--signalling-addr", &format!("127.0.0.1:{port}")])
            .arg("--ca")
            .arg(&self.cert)
            .args(["--turn", &format!("turn:{}?transport=udp", self.turn)])
            .args(["--turn-password", PASSWORD])
            .args(["--calls", &calls.to_string()])
            .args(["--concurrency", &calls.to_string()])
            .args(["--ramp", "20", "--duration", "2", "--run", "k8s-local"])
            .arg("--folder")
            .arg(folder)
            .env("SIM_MEDIA_EPOCH", self.epoch.to_string());
    }

    /// Stops it as Kubernetes stops a pod, with SIGTERM: it must still write its run folder.
    fn stop(mut self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let status = wait(
            &mut self.child,
            Instant::now() + Duration::from_secs(30),
            "sim serve",
        );
        assert!(status.success(), "sim serve: {status}");
        if let Some(drain) = self.drain.take() {
            drain.join().unwrap();
        }
    }
}

#[test]
fn four_loadgen_shards_against_one_sim_serve_merge_into_one_run_of_the_same_calls() {
    let _machine = MACHINE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = temp("k8s");
    let vendor = Vendor::start(&dir);

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut shards: Vec<Child> = (0..SHARDS)
        .map(|i| {
            let mut shard = loadgen();
            vendor.shard(&mut shard, CALLS_PER_SHARD, &dir.join(format!("shard-{i}")));
            shard
                .env("JOB_COMPLETION_INDEX", i.to_string())
                .env("LOADGEN_SHARDS", SHARDS.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Every call completes (exit 0); a shard whose own pacing fell behind on a busy machine
    // says so (exit 4, its folder `invalid`) and the merge must say it too.
    let mut invalid = false;
    for (i, s) in shards.iter_mut().enumerate() {
        let status = wait(s, deadline, &format!("loadgen shard {i}"));
        assert!(matches!(status.code(), Some(0 | 4)), "shard {i}: {status}");
        invalid |= status.code() == Some(4);
    }

    vendor.stop();

    let shard_dirs: Vec<PathBuf> = (0..SHARDS)
        .map(|i| dir.join(format!("shard-{i}")))
        .collect();
    let merged = dir.join("merged");
    let out = sim()
        .arg("report")
        .args(&shard_dirs)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert_exits_by_verdict(&out, &merged);

    // One run of the same calls: every shard's records in one folder, summarised at once.
    let one = dir.join("one-run");
    std::fs::create_dir_all(&one).unwrap();
    let mut jsonl = String::new();
    for d in &shard_dirs {
        jsonl.push_str(&std::fs::read_to_string(d.join("calls.jsonl")).unwrap());
    }
    std::fs::write(one.join("calls.jsonl"), &jsonl).unwrap();
    std::fs::copy(shard_dirs[0].join("summary.json"), one.join("summary.json")).unwrap();
    let out = sim().arg("report").arg(&one).output().unwrap();
    assert_exits_by_verdict(&out, &one);

    let (m, o) = (summary(&merged), summary(&one));
    // Equal as summaries: every count, and every histogram's recorded values and counts (the
    // encoded histograms may differ in the bucket range they allocated).
    let as_summary = |v: &serde_json::Value| -> reports::RunSummary {
        serde_json::from_value(v["summary"].clone()).unwrap()
    };
    assert_eq!(as_summary(&m), as_summary(&o), "counts and histograms");
    assert_eq!(m["error_rate"], o["error_rate"]);
    let total = u64::from(SHARDS * CALLS_PER_SHARD);
    assert_eq!(m["error_rate"]["attempts"], total);
    // Each side read the other's stamps on the same timeline: a loopback path's delay, not
    // 0 (a sender's epoch later than ours) nor an hour (one side on its own epoch).
    let merged_summary = as_summary(&m);
    for (way, d) in [
        (
            "anchor → agent",
            &merged_summary.anchor_to_agent.one_way_delay,
        ),
        (
            "agent → anchor",
            &as_summary(&summary(&dir.join("vendor")))
                .agent_to_anchor
                .one_way_delay,
        ),
    ] {
        let p50 = d.quantile(0.5).expect("delays measured");
        assert!(
            (1..50_000).contains(&p50),
            "{way}: one-way delay p50 {p50} µs"
        );
    }
    // 12 calls cannot prove 2 % (README: 189 can), but every one completed.
    assert_eq!(m["summary"]["outcomes"]["completed"], total, "{m:#}");
    // A shard that fell behind makes the merge invalid, even when the merged pacing histogram,
    // diluted by the shards that kept time, is under the limit (the one-run summary of the
    // same records cannot know, and says inconclusive then).
    assert_eq!(
        m["verdict"],
        if invalid { "invalid" } else { "inconclusive" },
        "{:#}",
        m["late_parts"]
    );

    // Each shard named its calls by its index and recorded it.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(merged.join("calls.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len() as u64, total);
    for i in 0..SHARDS {
        let of_shard: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| r["identity"]["shard"]["index"] == i)
            .collect();
        assert_eq!(of_shard.len() as u32, CALLS_PER_SHARD, "shard {i}");
        for r in of_shard {
            assert_eq!(r["identity"]["shard"]["count"], SHARDS);
            let call = r["identity"]["call"].as_str().unwrap();
            assert!(call.starts_with(&format!("s{i}-")), "{call}");
        }
    }
    let html = std::fs::read_to_string(merged.join("report.html")).unwrap();
    assert!(
        html.contains(&format!("{total}")),
        "the merged report counts the calls"
    );

    // The vendor side saw the same calls, measured from its end.
    let v = summary(&dir.join("vendor"));
    assert_eq!(v["error_rate"]["attempts"], total, "{v:#}");
    assert_eq!(
        v["summary"]["outcomes"]["completed"],
        m["summary"]["outcomes"]["completed"]
    );
}

#[test]
fn an_indexed_job_pod_without_its_shard_count_is_refused() {
    let out = loadgen()
        .args(["--signalling", "wss://vendor.sim.local:1/rtc"])
        .args(["--signalling-addr", "127.0.0.1:1", "--ca", "/dev/null"])
        .args([
            "--turn",
            "turn:127.0.0.1:1?transport=udp",
            "--turn-password",
            "x",
        ])
        .env("JOB_COMPLETION_INDEX", "2")
        .env_remove("LOADGEN_SHARDS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("JOB_COMPLETION_INDEX is 2") && err.contains("LOADGEN_SHARDS"),
        "{err}"
    );
}

#[test]
fn a_shard_starved_by_a_cpu_quota_is_invalid_and_so_is_the_merge() {
    let _machine = MACHINE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(group) = common::CpuGroup::new(15) else {
        eprintln!("skipped: cannot make a CPU control group here (needs root and cgroup cpu)");
        return;
    };
    let dir = temp("starved");
    let vendor = Vendor::start(&dir);
    let folder = dir.join("shard-0");
    // The shell joins the group, then becomes loadgen: every thread it starts is in it. The
    // vendor side stays outside, at full speed.
    let mut shard = Command::new("sh");
    shard
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(&group.0)
        .arg(loadgen().get_program());
    vendor.shard(&mut shard, 6, &folder);
    let mut child = shard
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait(
        &mut child,
        Instant::now() + Duration::from_secs(180),
        "the starved shard",
    );
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    vendor.stop();
    assert_eq!(status.code(), Some(4), "exit status 4 (invalid)\n{stdout}");
    assert!(
        stdout.contains("neither passes nor fails the network") && stdout.contains("late: "),
        "{stdout}"
    );
    let s = summary(&folder);
    assert_eq!(s["verdict"], "invalid", "{s:#}");
    assert!(
        s["own_lateness"]["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(|sp| sp["cause"] == "throttled")),
        "the quota is named: {:#}",
        s["own_lateness"]
    );
    // A merge holding an invalid shard is invalid: it keeps the shard's lateness.
    let merged = dir.join("merged");
    let out = sim()
        .arg("report")
        .arg(&folder)
        .arg(dir.join("vendor"))
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert_eq!(summary(&merged)["verdict"], "invalid");
    assert_eq!(
        out.status.code(),
        Some(4),
        "an invalid merge exits 4: {out:?}"
    );
}

/// `sim report` exits with the folder's verdict, as `sim run` does.
fn assert_exits_by_verdict(out: &std::process::Output, folder: &Path) {
    let verdict = summary(folder)["verdict"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let code = match verdict.as_str() {
        "pass" => 0,
        "fail" => 1,
        "inconclusive" => 2,
        "invalid" => 4,
        other => panic!("verdict {other:?}"),
    };
    assert_eq!(out.status.code(), Some(code), "verdict {verdict}: {out:?}");
}
