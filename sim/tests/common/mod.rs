//! Helpers shared by the integration tests.

/// Whether a read saw the connection end (end of stream or a reset), not a read timeout on a
/// connection that is still open.
#[allow(dead_code)] // not every test file reads streams
pub(crate) fn closed(read: std::io::Result<usize>) -> bool {
    match read {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Drives `agent` for `talk`, sending a 20 ms frame whenever one is due once it is connected
/// (what an agent's media loop does, on a 1 ms tick).
#[allow(dead_code, clippy::disallowed_methods)] // not every test file talks; real clock
pub(crate) fn talk(agent: &mut loadgen::peer::Peer, talk: std::time::Duration) {
    use std::time::{Duration, Instant};
    let start = Instant::now();
    let mut next_frame = None;
    while start.elapsed() < talk {
        let now = Instant::now();
        agent.drive(now);
        if agent.leg.times.connected.is_some() {
            let due = *next_frame.get_or_insert(now);
            if now >= due {
                agent.send_frame(now);
                next_frame = Some(due + Duration::from_millis(20));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Debian's Chromium, which the browser interop tests drive headless.
#[allow(dead_code)]
pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether Chromium is there: installed now when it is not and we can (root, Debian). On CI
/// (`CI` set, `.ci/run` installs it first) its absence is a failure; elsewhere the caller skips
/// loudly.
#[allow(dead_code)]
pub(crate) fn chromium() -> bool {
    use std::path::Path;
    if !Path::new(CHROMIUM).exists() {
        let _ = std::process::Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "chromium",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    let there = Path::new(CHROMIUM).exists();
    assert!(
        there || std::env::var_os("CI").is_none(),
        "{CHROMIUM} is missing and could not be installed"
    );
    if !there {
        eprintln!(
            "\n\n!!! SKIPPED: {CHROMIUM} is missing and could not be installed (run as root, or \
             apt-get install chromium)\n"
        );
    }
    there
}

/// Opens `url` in headless Chromium (a fresh profile in `dir`, fake microphone, autoplay, our
/// self-signed certificates accepted) and waits, at most `limit`, for the page to close itself.
/// Returns the JSON of the page's last `console.log('RESULT ' + …)` line, and the browser's log.
#[allow(dead_code, clippy::disallowed_methods)] // real processes, real clock
pub(crate) fn run_page(
    url: &str,
    dir: &std::path::Path,
    limit: std::time::Duration,
) -> (Option<serde_json::Value>, String) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            // Our signalling and TURN certificates are self-signed.
            "--ignore-certificate-errors",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = reader.join().unwrap_or_default();
    // Chromium logs `"RESULT {…}", source: … (N)`: cut at the JSON's end.
    let result = log.lines().rev().find_map(|l| {
        let (_, r) = l.split_once("RESULT ")?;
        let end = r.rfind('}')? + 1;
        serde_json::from_str(&r[..end]).ok()
    });
    (result, log)
}

/// The vendor's side as `sim run` starts it, on loopback, named `127.0.0.1` (the address a
/// browser's page is given), for a browser interop test.
#[allow(dead_code, clippy::disallowed_methods)] // real clock
pub(crate) fn browser_vendor_side(seed: u64) -> sim::run::VendorSide {
    sim::run::VendorSide::start(
        seed,
        &["127.0.0.1".to_owned()],
        "127.0.0.1:0".parse().expect("an address"),
        std::time::Instant::now(),
        reports::emodel::Codec::OPUS,
        sim::anchor::AnchorBehaviour::Answer,
        None,
        &sim::run::Deployed::default(),
    )
    .expect("the vendor side starts")
}

/// A call's two legs for a `PairedCall`: a relay-only agent allocating on the TURN server at
/// `turn` (user `agent`, password `agent-pw`, realm `sim.local`), and the anchor, a host the
/// agent's relay sends to.
#[allow(dead_code)] // not every test file pairs legs
pub(crate) fn agent_and_anchor(
    turn: std::net::SocketAddr,
    epoch: std::time::Instant,
) -> (loadgen::leg::PeerConfig, loadgen::leg::PeerConfig) {
    use loadgen::leg::{PeerConfig, TurnCredentials, TurnTransport};
    let agent = PeerConfig {
        turn: vec![TurnCredentials {
            server: turn,
            username: "agent".into(),
            password: "agent-pw".into(),
            realm: "sim.local".into(),
            transport: TurnTransport::Udp,
        }],
        answering: false,
        epoch,
        entropy: loadgen::entropy::Entropy::Os,
    };
    let anchor = PeerConfig {
        turn: Vec::new(),
        answering: true,
        epoch,
        entropy: loadgen::entropy::Entropy::Os,
    };
    (agent, anchor)
}

/// Which driver runs a scenario: real time (sockets, threads, the wall clock) or virtual
/// time (the same cores on a simulated clock).
#[allow(dead_code)] // not every test file runs scenarios
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Clock {
    Real,
    Virtual,
}

/// Runs the scenario `text` (named `name`) with `sim run` into a fresh folder under the
/// temporary directory; returns the folder and its call records.
#[allow(dead_code)] // not every test file runs scenarios
pub(crate) fn run_scenario(
    name: &str,
    text: &str,
) -> (std::path::PathBuf, Vec<reports::CallRecord>) {
    run_scenario_on(Clock::Real, name, text)
}

/// Runs the scenario `text` (named `name`) on `clock` (`sim run`, or `sim run
/// --virtual-time`) into a fresh folder under the temporary directory; returns the folder and
/// its call records.
#[allow(dead_code)] // not every test file runs scenarios
pub(crate) fn run_scenario_on(
    clock: Clock,
    name: &str,
    text: &str,
) -> (std::path::PathBuf, Vec<reports::CallRecord>) {
    let scenario = sim::scenario::Scenario::parse(&format!("{name}.toml"), name, text).unwrap();
    let dir = std::env::temp_dir().join(format!("sim-{name}-{clock:?}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = sim::run::RunOptions {
        out: Some(dir.clone()),
        plain_progress: true,
        ..sim::run::RunOptions::default()
    };
    match clock {
        Clock::Real => sim::run::run(&scenario, &options).map(drop),
        Clock::Virtual => sim::virtual_time::scenario::run(&scenario, &options).map(drop),
    }
    .unwrap();
    let records = reports::record::read_records(&dir.join("calls.jsonl"))
        .unwrap()
        .records;
    (dir, records)
}

/// The sum of `counter` over the components of the run in `dir` whose names start with
/// `prefix` (from its `summary.json`).
#[allow(dead_code)] // not every test file reads components
pub(crate) fn component_total(dir: &std::path::Path, prefix: &str, counter: &str) -> u64 {
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    summary["components"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .filter_map(|(_, v)| v[counter].as_u64())
        .sum()
}

/// A CPU control group of this test's own with a quota of `percent` of one core, removed on
/// drop; `None` where this machine cannot make one.
#[allow(dead_code)] // only the overload tests starve a process
pub(crate) struct CpuGroup(pub(crate) std::path::PathBuf);

impl CpuGroup {
    #[allow(dead_code)]
    pub(crate) fn new(percent: u64) -> Option<Self> {
        let name = format!("sim-overload-test-{}", std::process::id());
        // cgroup v1's cpu controller, or v2's unified hierarchy with cpu enabled.
        let v1 = std::path::Path::new("/sys/fs/cgroup/cpu");
        if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(name);
            std::fs::create_dir_all(&dir).ok()?;
            let group = Self(dir);
            std::fs::write(group.0.join("cpu.cfs_period_us"), "100000").ok()?;
            std::fs::write(
                group.0.join("cpu.cfs_quota_us"),
                (percent * 1_000).to_string(),
            )
            .ok()?;
            return Some(group);
        }
        let v2 = std::path::Path::new("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(v2.join("cgroup.subtree_control")).ok()?;
        if !controllers.split_whitespace().any(|c| c == "cpu") {
            return None;
        }
        let dir = v2.join(name);
        std::fs::create_dir_all(&dir).ok()?;
        let group = Self(dir);
        std::fs::write(
            group.0.join("cpu.max"),
            format!("{} 100000", percent * 1_000),
        )
        .ok()?;
        Some(group)
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}
