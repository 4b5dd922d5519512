//! The `turn-server` binary: a bad config file is refused with file:line:column, a good start
//! serves within a second and prints its addresses, and SIGTERM shuts it down cleanly with the
//! final counters logged.
// Real processes: waits are bounded with the wall clock.
#![allow(clippy::disallowed_methods)]
mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use turn_server::wire::{Class, MessageBuilder, Method, TransactionId};

const BIN: &str = env!("CARGO_BIN_EXE_turn-server");

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("turn-server-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn unknown_config_field_is_refused_with_its_position() {
    let path = temp_file(
        "bad.toml",
        "realm = \"x\"\n[users]\nalice = \"pw\"\n[faults]\ndelay = 3\n",
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:5:1: unknown field `delay`", path.display())),
        "{err}"
    );
}

#[test]
fn starts_within_a_second_serves_and_stops_on_sigterm() {
    let path = temp_file(
        "good.toml",
        "realm = \"bin.test\"\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\
         metrics = \"127.0.0.1:0\"\n[users]\nbob = \"from-file\"\n",
    );
    let t0 = Instant::now();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args([
            "--user",
            "alice:pw",
            "--allow-loopback-peers",
            "--log",
            "info",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready = t0.elapsed();
    assert!(
        line.starts_with("turn-server ready udp=127.0.0.1:"),
        "{line}"
    );
    assert!(ready < Duration::from_secs(1), "ready after {ready:?}");
    let udp: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("udp="))
        .unwrap()
        .parse()
        .unwrap();
    // A Binding request is answered.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let req = MessageBuilder::new(Method::BINDING, Class::Request, TransactionId([4; 12]))
        .finish_with_fingerprint();
    sock.send_to(&req, udp).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    let r = common::parse_response(&buf[..n]);
    assert_eq!(
        (r.class, r.mapped),
        (Class::Success, Some(sock.local_addr().unwrap()))
    );
    // SIGTERM: clean exit, final counters in the log.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("final counters"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "no colour codes in a log that is not a terminal"
    );
}
