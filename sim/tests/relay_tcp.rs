//! The TCP relay: streams arrive intact and in order with the configured delay; outages hold a
//! stream rather than cut it; blocked ports are refused; a reset tears down what is open.
#![allow(clippy::disallowed_methods)] // a test: real sockets, the real clock

mod common;
use common::closed;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use sim::netem::{Loss, Path, Schedule, SegmentModel};
use sim::relay::{TcpRelay, TcpRelayConfig};
use sim::scenario::{Policy, PortRule, Transport};

/// A TCP echo server on loopback: echoes each connection until the client closes it. Serves at
/// most `connections` connections, then its thread ends.
fn echo_server(connections: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut s) = stream else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn relay(
    path: Path,
    policy: Policy,
    upstream: SocketAddr,
    reset_after: Option<Duration>,
) -> TcpRelay {
    TcpRelay::start(TcpRelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream,
        path,
        seed: 1,
        policy,
        reset_after,
        server_port: None,
    })
    .unwrap()
}

fn connect(r: &TcpRelay) -> TcpStream {
    let s = TcpStream::connect(r.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[test]
fn streams_arrive_intact_in_order_and_delayed() {
    let upstream = echo_server(1);
    // Jitter and loss on the path: a stream must still arrive whole and in order.
    let m = SegmentModel::new()
        .delay(Duration::from_millis(30))
        .jitter(
            Duration::from_millis(10),
            sim::netem::JitterDistribution::Normal,
            0.0,
        )
        .loss(Loss::Random(0.2));
    let r = relay(Path::symmetric(vec![m]), Policy::default(), upstream, None);
    let mut s = connect(&r);

    s.write_all(b"ping").unwrap();
    let mut pong = [0u8; 4];
    s.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"ping");

    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.clone();
        thread::spawn(move || {
            for chunk in data.chunks(1000) {
                w.write_all(chunk).unwrap();
            }
        })
    };
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "stream damaged or reordered");
    let stats = r.stats();
    r.shutdown();
    assert_eq!(stats.bytes_up.load(Ordering::Relaxed), 300_004);
    assert_eq!(stats.bytes_down.load(Ordering::Relaxed), 300_004);
}

#[test]
fn fixed_delay_is_added_each_way() {
    let upstream = echo_server(1);
    let r = relay(
        Path::symmetric(vec![SegmentModel::new().delay(Duration::from_millis(40))]),
        Policy::default(),
        upstream,
        None,
    );
    let mut s = connect(&r);
    for _ in 0..5 {
        let t = Instant::now();
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(80), "{rtt:?}");
        assert!(rtt < Duration::from_millis(80 + 50), "{rtt:?}");
    }
    r.shutdown();
}

#[test]
fn an_outage_holds_the_stream_instead_of_cutting_it() {
    let upstream = echo_server(1);
    // An outage from 0.1 s to 0.6 s after the relay starts.
    let m = SegmentModel::new().outage(Schedule::Once {
        at: Duration::from_millis(100),
        duration: Duration::from_millis(500),
    });
    let r = relay(Path::symmetric(vec![m]), Policy::default(), upstream, None);
    let started = Instant::now();
    let mut s = connect(&r);
    thread::sleep(Duration::from_millis(150).saturating_sub(started.elapsed()));
    s.write_all(b"held").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"held");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "released before the outage ended"
    );
    r.shutdown();
}

#[test]
fn blocked_tcp_port_is_refused() {
    let upstream = echo_server(1);
    let policy = Policy {
        block: vec![PortRule {
            transport: Transport::Tcp,
            ports: Some(upstream.port()..=upstream.port()),
        }],
        ..Policy::default()
    };
    let r = relay(
        Path::symmetric(vec![SegmentModel::new()]),
        policy,
        upstream,
        None,
    );
    let mut s = connect(&r);
    let _ = s.write_all(b"hello");
    let mut b = [0u8; 5];
    // The relay closes the connection: end of stream or a reset, never an echo.
    assert!(closed(s.read(&mut b)));
    let stats = r.stats();
    r.shutdown();
    assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
}

#[test]
fn reset_tears_down_open_connections_only() {
    let upstream = echo_server(2);
    let r = relay(
        Path::symmetric(vec![SegmentModel::new()]),
        Policy::default(),
        upstream,
        Some(Duration::from_millis(300)),
    );
    let mut early = connect(&r);
    early.write_all(b"a").unwrap();
    let mut b = [0u8; 1];
    early.read_exact(&mut b).unwrap();
    thread::sleep(Duration::from_millis(400));
    assert!(
        closed(early.read(&mut b)),
        "the open connection survived the reset"
    );
    let mut late = connect(&r);
    late.write_all(b"b").unwrap();
    late.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"b");
    let stats = r.stats();
    r.shutdown();
    assert_eq!(stats.reset.load(Ordering::Relaxed), 1);
}

#[test]
fn a_stream_path_never_drops_at_a_rate_queue() {
    // A 50 ms queue at 2 Mbit/s would tail-drop a 16 KiB read (65 ms to serialise): on a byte
    // stream that would cut bytes out of the middle, so the stream form queues without limit.
    let path = Path::symmetric(vec![SegmentModel::new().rate(
        2_000_000,
        sim::netem::QueueLimit::Time(Duration::from_millis(50)),
    )]);
    let stream = sim::relay::tcp::stream_path(&path);
    for m in [&stream.segments[0].up, &stream.segments[0].down] {
        let rate = m.rate.expect("the rate stays");
        assert_eq!(rate.bits_per_second, 2_000_000);
        assert_eq!(
            rate.queue,
            sim::netem::QueueLimit::Time(Duration::MAX),
            "a stream's queue must not drop"
        );
    }
}
