//! What an outsider can make the server hold, on real loopback sockets: TCP and TLS connections
//! that hold no allocation are closed within the idle timeout (one that allocates stays);
//! replies owed before a framing error are written before the connection closes, over TCP and
//! TLS; and the real binary, under a lowered descriptor limit, refuses a flood of connections
//! from one address past its per-source cap, then from many past its total, while another
//! address still allocates over UDP, TCP and TLS and `/metrics` answers; and a client that
//! does not read holds no more than its queue's limit.
// Real sockets and processes: waits are bounded with socket timeouts and the wall clock.
#![allow(clippy::disallowed_methods)]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Client, connect_from, read_frame, test_certificate, tls_over, transact_stream, transact_udp,
};
use turn_server::io::{self, Running, Settings};
use turn_server::wire::{Class, MessageBuilder, Method, TransactionId, attr};
use turn_server::{FiveTuple, StreamClose, Transport};

fn start(idle: Duration, cert: &(String, String, Vec<u8>)) -> Running {
    let mut core = common::config();
    core.min_port = 49152;
    core.max_port = 65535;
    core.stream_idle_timeout = idle;
    io::start(Settings {
        core,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls_listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls_pem: Some((cert.0.clone(), cert.1.clone())),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..Settings::default()
    })
    .expect("server starts")
}

/// How long after `since` the peer closed `s`; `None` if it was still open when the read
/// timeout ran out. Bytes read on the way are discarded.
fn closed_after(s: &mut (impl Read + ?Sized), since: Instant) -> Option<Duration> {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(since.elapsed()),
        }
    }
}

fn binding(i: u8) -> Vec<u8> {
    MessageBuilder::new(Method::BINDING, Class::Request, TransactionId([i; 12])).finish()
}

fn allocate_attrs(b: &mut MessageBuilder) {
    b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
}

fn stream_client(s: &TcpStream, server: SocketAddr, transport: Transport, user: &str) -> Client {
    let ft = FiveTuple {
        transport,
        client: s.local_addr().unwrap(),
        server,
    };
    Client::new(ft, user, &format!("{user}-pw"))
}

#[test]
fn connections_without_an_allocation_are_closed_within_the_idle_timeout() {
    let cert = test_certificate();
    let idle = Duration::from_secs(1);
    let server = start(idle, &cert);
    let (tcp_addr, tls_addr) = (server.bound.tcp[0], server.bound.tls[0]);
    let lo = IpAddr::from([127, 0, 0, 1]);
    let t0 = Instant::now();
    // Silent over TCP; a Binding but no allocation over TCP; no ClientHello over TLS; a TLS
    // handshake and nothing after it.
    let mut silent = connect_from(lo, tcp_addr).unwrap();
    let mut binding_only = connect_from(lo, tcp_addr).unwrap();
    binding_only.write_all(&binding(1)).unwrap();
    assert!(read_frame(&mut binding_only).is_some(), "Binding answered");
    let mut no_hello = connect_from(lo, tls_addr).unwrap();
    let mut tls_idle = tls_over(connect_from(lo, tls_addr).unwrap(), &cert.2);
    let mut c = stream_client(tls_idle.get_ref(), tls_addr, Transport::Tls, "bob");
    let r = transact_stream(&mut c, &mut tls_idle, Method::BINDING, |_| {}).unwrap();
    assert_eq!(r.class, Class::Success, "TLS handshake and a Binding");
    // And one that allocates, over TCP: it must outlive the timeout.
    let mut allocating = connect_from(lo, tcp_addr).unwrap();
    let mut a = stream_client(&allocating, tcp_addr, Transport::Tcp, "alice");
    let r = transact_stream(&mut a, &mut allocating, Method::ALLOCATE, allocate_attrs).unwrap();
    assert_eq!(r.class, Class::Success, "{r:?}");

    for (name, s) in [
        ("silent TCP", &mut silent as &mut dyn Read),
        ("TCP with a Binding", &mut binding_only),
        ("TLS without ClientHello", &mut no_hello),
        ("idle TLS", &mut tls_idle),
    ] {
        let after = closed_after(s, t0).unwrap_or_else(|| panic!("{name}: still open"));
        // The server's clock starts at accept, after our connect: never before the timeout.
        assert!(after >= idle, "{name}: closed after {after:?}");
        assert!(
            after < idle + Duration::from_secs(2),
            "{name}: closed after {after:?}"
        );
    }
    let r = transact_stream(&mut a, &mut allocating, Method::BINDING, |_| {});
    assert!(
        r.is_some_and(|r| r.class == Class::Success),
        "the allocating connection is still served after {:?}",
        t0.elapsed()
    );
    let snap = server.stop();
    assert_eq!(snap.counters.closed(StreamClose::Idle), 4);
    assert_eq!(snap.counters.allocations_created, 1);
}

#[test]
fn replies_owed_before_a_framing_error_are_written_before_the_close() {
    let cert = test_certificate();
    let server = start(Duration::from_secs(60), &cert);
    let lo = IpAddr::from([127, 0, 0, 1]);
    // Three Binding requests and one byte that frames nothing, in one write, 50 times.
    let mut write: Vec<u8> = (1..=3).flat_map(binding).collect();
    write.push(0xFF);
    for (transport, addr) in [
        (Transport::Tcp, server.bound.tcp[0]),
        (Transport::Tls, server.bound.tls[0]),
    ] {
        let mut replies = 0;
        for _ in 0..50 {
            let tcp = connect_from(lo, addr).unwrap();
            let mut s: Box<dyn ReadWrite> = match transport {
                Transport::Tls => Box::new(tls_over(tcp, &cert.2)),
                _ => Box::new(tcp),
            };
            s.write_all(&write).unwrap();
            s.flush().unwrap();
            for i in 1..=3u8 {
                let frame =
                    read_frame(&mut s).unwrap_or_else(|| panic!("{transport:?}: reply {i}"));
                assert_eq!(frame[8..20], [i; 12], "{transport:?}: replies in order");
                replies += 1;
            }
            assert!(
                closed_after(&mut s, Instant::now()).is_some(),
                "{transport:?}: closed after the framing error"
            );
        }
        assert_eq!(replies, 150, "{transport:?}");
    }
    let snap = server.stop();
    assert_eq!(snap.counters.closed(StreamClose::Framing), 100);
    assert_eq!(snap.counters.requests.get("binding"), Some(&300));
    assert_eq!(snap.edge.send_failed, 0);
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The real binary under `ulimit -n DESCRIPTORS` (soft and hard: it cannot raise it).
const DESCRIPTORS: u32 = 256;

struct Binary {
    child: Child,
    udp: SocketAddr,
    tcp: SocketAddr,
    tls: SocketAddr,
    metrics: SocketAddr,
    log: std::sync::mpsc::Receiver<String>,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_binary(cert: &(String, String, Vec<u8>), extra: &[&str]) -> Binary {
    let dir = std::env::temp_dir().join(format!("turn-server-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &cert.0).unwrap();
    std::fs::write(&key_path, &cert.1).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {DESCRIPTORS} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_turn-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--user",
            "alice:alice-pw",
            "--realm",
            common::REALM,
            "--allow-loopback-peers",
            "--cert",
        ])
        .arg(&cert_path)
        .arg("--pkey")
        .arg(&key_path)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let field = |name: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    Binary {
        udp: field("udp"),
        tcp: field("tcp"),
        tls: field("tls"),
        metrics: field("metrics"),
        child,
        log,
    }
}

fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

/// Connections the server has taken from its listen backlog: accepted or refused.
fn dealt_with(text: &str) -> u64 {
    metric(text, "turn_stream_connections_total")
        + ["per_source", "total", "fault"]
            .iter()
            .map(|r| {
                metric(
                    text,
                    &format!("turn_streams_refused_total{{reason=\"{r}\"}}"),
                )
            })
            .sum::<u64>()
}

/// Opens `n` connections from `ip` and says how many the server kept (it resets the others as
/// soon as it accepts them); every one stays open in `held`.
fn flood(b: &Binary, ip: IpAddr, n: usize, held: &mut Vec<TcpStream>) -> usize {
    let before = dealt_with(&metrics(b.metrics));
    let mut opened = Vec::new();
    for _ in 0..n {
        match connect_from(ip, b.tcp) {
            Ok(s) => opened.push(s),
            // Refused so fast that the reset came before connect returned.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connect from {ip}: {e}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while dealt_with(&metrics(b.metrics)) < before + n as u64 {
        assert!(
            Instant::now() < deadline,
            "the server did not take {n} connections"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut kept = 0;
    for mut s in opened {
        // A reset is already here; a kept connection has nothing to read.
        s.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        if matches!(s.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            kept += 1;
        }
        held.push(s);
    }
    kept
}

/// Allocates over UDP, TCP and TLS from `ip`; returns the slowest time to allocate.
fn allocate_everywhere(b: &Binary, ip: IpAddr, cert: &[u8]) -> Duration {
    let t = Instant::now();
    allocate_udp(b, ip);
    let mut slowest = t.elapsed();

    let t = Instant::now();
    let mut tcp = connect_from(ip, b.tcp).unwrap();
    let mut c = stream_client(&tcp, b.tcp, Transport::Tcp, "alice");
    let r = transact_stream(&mut c, &mut tcp, Method::ALLOCATE, allocate_attrs).expect("TCP");
    assert_eq!(r.class, Class::Success, "TCP from {ip}: {r:?}");
    slowest = slowest.max(t.elapsed());

    let t = Instant::now();
    let mut tls = tls_over(connect_from(ip, b.tls).unwrap(), cert);
    let mut c = stream_client(tls.get_ref(), b.tls, Transport::Tls, "alice");
    let r = transact_stream(&mut c, &mut tls, Method::ALLOCATE, allocate_attrs).expect("TLS");
    assert_eq!(r.class, Class::Success, "TLS from {ip}: {r:?}");
    slowest.max(t.elapsed())
}

#[test]
fn a_flood_is_refused_past_the_caps_while_others_still_allocate() {
    let cert = test_certificate();
    let per_source = 30;
    let b = start_binary(
        &cert,
        &["--max-streams-per-source", &per_source.to_string()],
    );
    let text = metrics(b.metrics);
    let capacity = metric(&text, "turn_capacity{limit=\"streams\"}");
    assert_eq!(
        metric(&text, "turn_capacity{limit=\"descriptors\"}"),
        u64::from(DESCRIPTORS)
    );
    // Half of what is left after the reserve goes to connections, the rest to relayed sockets.
    assert!(
        (40..u64::from(DESCRIPTORS) / 2).contains(&capacity),
        "capacity {capacity}"
    );
    assert!(
        b.log.recv_timeout(Duration::from_secs(3)).is_ok_and(
            |l| l.contains("holds") && l.contains(&format!("descriptor limit {DESCRIPTORS}"))
        ),
        "the capacity is said at start-up"
    );

    // One address, three times its cap.
    let mut held = Vec::new();
    let flooder = IpAddr::from([127, 0, 0, 1]);
    let kept = flood(&b, flooder, 3 * per_source, &mut held);
    assert_eq!(kept, per_source, "kept from one address");
    let text = metrics(b.metrics);
    assert_eq!(
        metric(&text, "turn_streams_refused_total{reason=\"per_source\"}"),
        2 * per_source as u64
    );
    let other = IpAddr::from([127, 0, 0, 2]);
    let slowest = allocate_everywhere(&b, other, &cert.2);
    eprintln!(
        "flood of one address: another allocated over UDP, TCP and TLS in at most {slowest:?}"
    );

    // Many addresses, until the total is reached: UDP still allocates, metrics still answer.
    // The TCP and TLS connections that allocated above are closed: wait until the server has
    // seen it, so that their places are free.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&metrics(b.metrics), "turn_stream_connections") != kept as u64 {
        assert!(Instant::now() < deadline, "closed connections not released");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut kept_total = kept;
    for i in 3..20u8 {
        kept_total += flood(&b, IpAddr::from([127, 0, 0, i]), per_source, &mut held);
    }
    let text = metrics(b.metrics);
    assert_eq!(kept_total as u64, capacity, "connections held in all");
    assert_eq!(metric(&text, "turn_stream_connections"), capacity);
    assert!(metric(&text, "turn_streams_refused_total{reason=\"total\"}") > 0);
    assert_eq!(
        metric(&text, "turn_accept_failures_total"),
        0,
        "never out of descriptors"
    );
    allocate_udp(&b, other);
    drop(held);
}

/// Allocates over UDP from `ip`.
fn allocate_udp(b: &Binary, ip: IpAddr) {
    let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let ft = FiveTuple {
        transport: Transport::Udp,
        client: udp.local_addr().unwrap(),
        server: b.udp,
    };
    let mut c = Client::new(ft, "alice", "alice-pw");
    let r = transact_udp(&mut c, &udp, b.udp, Method::ALLOCATE, allocate_attrs).expect("UDP");
    assert_eq!(r.class, Class::Success, "UDP from {ip}: {r:?}");
}

#[test]
fn a_client_that_does_not_read_holds_a_bounded_queue() {
    let cert = test_certificate();
    let mut core = common::config();
    core.min_port = 49152;
    core.max_port = 65535;
    core.bandwidth_bytes_per_sec = 0;
    let server = io::start(Settings {
        core,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls_pem: Some((cert.0.clone(), cert.1.clone())),
        ..Settings::default()
    })
    .unwrap();
    let addr = server.bound.tcp[0];
    // A small receive window, so that the server's socket buffer fills soon.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut tcp = TcpStream::from(socket);
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = stream_client(&tcp, addr, Transport::Tcp, "alice");
    let r = transact_stream(&mut c, &mut tcp, Method::ALLOCATE, allocate_attrs).unwrap();
    let relay = r.relayed.unwrap();
    let r = transact_stream(&mut c, &mut tcp, Method::CREATE_PERMISSION, |b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, peer.local_addr().unwrap());
    })
    .unwrap();
    assert_eq!(r.class, Class::Success);
    // 10 MB towards a client that reads nothing.
    let payload = [0x5Au8; 1300];
    let handle = server.handle();
    let mut most = 0;
    for i in 0..8000 {
        peer.send_to(&payload, relay).unwrap();
        // Paced, so that the relayed socket's buffer does not overflow first: what is lost must
        // be lost at the client's queue.
        if i % 25 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        if i % 500 == 0 {
            let snap = handle.snapshot_blocking().unwrap();
            most = most.max(snap.edge.stream_queued_bytes);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let snap = handle.snapshot_blocking().unwrap();
    most = most.max(snap.edge.stream_queued_bytes);
    assert!(most <= 256 << 10, "queued {most} bytes for one client");
    assert!(most > (256 << 10) - 1400, "the queue filled: {most} bytes");
    assert!(
        snap.edge.send_failed > 0,
        "what did not fit was dropped and counted"
    );
    // The client is still served once it reads again.
    let mut read = 0;
    while read < 64 << 10 {
        read += read_frame(&mut tcp).expect("queued data arrives").len();
    }
    drop(tcp);
    let _ = server.stop();
}
