//! Interop with Debian's coturn client tools over real loopback sockets: `turnutils_stunclient`
//! (Binding) and `turnutils_uclient` (Allocate, CreatePermission, ChannelBind, relayed data)
//! against our server over UDP, TCP and TLS, with long-term and time-limited credentials. Each
//! test asserts that every message came back and that our counters agree with the client's.
//!
//! The tools are installed with apt-get when missing; when that is impossible the tests say so
//! loudly and pass without running (they never fake a result).
// Real processes on real sockets: these tests bound their waits with the wall clock.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use turn_server::auth::{Credentials, Secret};
use turn_server::io::{self, Running, Settings};
use turn_server::policy::loopback;
use turn_server::{Config, Faults};

/// Installs coturn once per test binary; `false` (after a loud message) when impossible.
fn coturn_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let have = || {
            Command::new("sh")
                .args(["-c", "command -v turnutils_uclient && command -v turnutils_peer"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if have() {
            return true;
        }
        let script = "export DEBIAN_FRONTEND=noninteractive; S=; [ \"$(id -u)\" -eq 0 ] || S=sudo; \
                      $S apt-get update -qq && $S apt-get install -y -qq --no-install-recommends coturn";
        let installed = Command::new("sh").args(["-c", script]).status();
        if have() {
            return true;
        }
        // `.ci/run` installs coturn first: on CI a missing coturn is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "coturn's tools are missing and could not be installed (apt-get: {installed:?})"
        );
        eprintln!(
            "\n\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SKIPPING coturn interop tests: the `coturn` package cannot be installed\n\
             !!! (apt-get: {installed:?}). Nothing was verified against coturn's tools.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        false
    })
}

const SECRET: &str = "interop-secret";

fn start_server() -> Running {
    let mut users = HashMap::new();
    users.insert("alice".to_owned(), Secret("alice-pw".into()));
    let mut core = Config {
        realm: "interop.test".into(),
        credentials: Credentials {
            users,
            static_auth_secret: Some(Secret(SECRET.into())),
        },
        ..Config::default()
    };
    core.peer_policy.allow.extend(loopback());
    io::start(Settings {
        core,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls_listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls_files: None,
        tls_pem: None,
        metrics: None,
        http_faults: false,
        faults: Faults::default(),
    })
    .expect("server starts")
}

/// A child process killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command to completion within `limit`, returning its stdout and stderr together.
fn run(cmd: &mut Command, limit: Duration) -> String {
    let mut child = Guard(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("coturn tool runs"),
    );
    let deadline = Instant::now() + limit;
    loop {
        if let Some(_status) = child.0.try_wait().unwrap() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{cmd:?} did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

/// A free UDP port on loopback for `turnutils_peer`.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The last `tot_send_msgs=N, tot_recv_msgs=M` pair uclient printed.
fn totals(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .rfind(|l| l.contains("start_mclient: tot_send_msgs="))
        .unwrap_or_else(|| panic!("no totals in uclient output:\n{out}"));
    let num = |key: &str| -> u64 {
        let rest = &line[line.find(key).unwrap() + key.len()..];
        rest.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    (num("tot_send_msgs="), num("tot_recv_msgs="))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Creds {
    LongTerm,
    TimeLimited,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Udp,
    Tcp,
    Tls,
}

/// One uclient run: 2 clients × `N` messages of 160 bytes, through our relay to an echoing
/// `turnutils_peer` (or client to client with `-y`).
fn uclient(via: Via, creds: Creds, client_to_client: bool) {
    if !coturn_available() {
        return;
    }
    const N: u64 = 10;
    let server = start_server();
    let handle = server.handle();
    let port = match via {
        Via::Udp | Via::Tcp => server.bound.udp[0].port(),
        Via::Tls => server.bound.tls[0].port(),
    };
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args([
        "-n",
        &N.to_string(),
        "-m",
        "2",
        "-l",
        "160",
        "-p",
        &port.to_string(),
    ]);
    match creds {
        Creds::LongTerm => cmd.args(["-u", "alice", "-w", "alice-pw"]),
        Creds::TimeLimited => cmd.args(["-u", "carol", "-W", SECRET]),
    };
    match via {
        Via::Udp => {}
        Via::Tcp => {
            cmd.arg("-t");
        }
        Via::Tls => {
            cmd.args(["-t", "-S"]);
        }
    }
    let _peer;
    if client_to_client {
        cmd.arg("-y");
    } else {
        let peer_port = free_udp_port();
        _peer = Guard(
            Command::new("turnutils_peer")
                .args(["-p", &peer_port.to_string(), "-L", "127.0.0.1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(200));
        cmd.args(["-e", "127.0.0.1", "-r", &peer_port.to_string()]);
    }
    cmd.arg("127.0.0.1");
    let out = run(&mut cmd, Duration::from_secs(60));
    let (sent, received) = totals(&out);
    assert!(
        out.contains("Total lost packets 0 (0.000000%)"),
        "loss reported:\n{out}"
    );
    // 2 clients; with -y uclient pairs them up and both ends of each pair send.
    let expected = if client_to_client { 4 * N } else { 2 * N };
    assert_eq!(sent, expected, "{out}");
    assert_eq!(received, sent, "every message came back:\n{out}");
    let snap = handle.snapshot_blocking().expect("server running");
    let c = &snap.counters;
    // Client → relay → echoing peer → relay → client, or, with -y, client → its relay → the
    // other client's relay → the other client: either way each message is counted once in
    // each direction.
    assert_eq!(c.client_to_peer.packets, sent);
    assert_eq!(c.peer_to_client.packets, received);
    assert_eq!(c.client_to_peer.bytes, 160 * sent, "payloads relayed whole");
    assert_eq!(c.peer_to_client.bytes, 160 * received);
    assert!(c.allocations_created >= 2);
    assert!(c.channels_bound >= 2, "uclient binds channels by default");
    assert_eq!(c.dropped(turn_server::DropReason::Malformed), 0);
    if via != Via::Udp {
        assert!(snap.counters.streams_opened >= 2);
    }
    let _ = server.stop();
}

#[test]
fn stunclient_gets_its_reflexive_address() {
    if !coturn_available() {
        return;
    }
    let server = start_server();
    let addr: SocketAddr = server.bound.udp[0];
    let out = run(
        Command::new("turnutils_stunclient").args(["-p", &addr.port().to_string(), "127.0.0.1"]),
        Duration::from_secs(20),
    );
    assert!(out.contains("UDP reflexive addr: 127.0.0.1:"), "{out}");
    let snap = server.stop();
    assert!(snap.counters.requests.get("binding").copied().unwrap_or(0) >= 1);
}

#[test]
fn uclient_udp_long_term_with_echo_peer() {
    uclient(Via::Udp, Creds::LongTerm, false);
}

#[test]
fn uclient_udp_time_limited_client_to_client() {
    uclient(Via::Udp, Creds::TimeLimited, true);
}

#[test]
fn uclient_tcp_long_term_client_to_client() {
    uclient(Via::Tcp, Creds::LongTerm, true);
}

#[test]
fn uclient_tcp_time_limited_with_echo_peer() {
    uclient(Via::Tcp, Creds::TimeLimited, false);
}

#[test]
fn uclient_tls_long_term_with_echo_peer() {
    uclient(Via::Tls, Creds::LongTerm, false);
}

#[test]
fn uclient_tls_time_limited_client_to_client() {
    uclient(Via::Tls, Creds::TimeLimited, true);
}
