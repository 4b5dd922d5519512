//! The tokio edge on real loopback sockets: relayed bytes arrive intact both ways (UDP and TCP
//! clients), the fault-injection control API (Handle and HTTP `/faults`) does what it says,
//! and `/metrics` serves Prometheus text that agrees with the counters.
// Real sockets: waits are bounded with socket timeouts and the wall clock.
#![allow(clippy::disallowed_methods)]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::{Client, transact_udp};
use turn_server::io::{self, Running, Settings};
use turn_server::wire::{ChannelData, Class, Method, attr};
use turn_server::{Faults, FiveTuple, Transport};

fn start(faults: Faults) -> Running {
    let mut core = common::config();
    core.min_port = 49152;
    core.max_port = 65535;
    io::start(Settings {
        core,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls_listen: vec![],
        tls_files: None,
        tls_pem: None,
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        http_faults: true,
        faults,
    })
    .expect("server starts")
}

fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

fn client_for(sock: &UdpSocket, server: SocketAddr) -> Client {
    let ft = FiveTuple {
        transport: Transport::Udp,
        client: sock.local_addr().unwrap(),
        server,
    };
    Client::new(ft, "alice", "alice-pw")
}

fn allocate(c: &mut Client, sock: &UdpSocket, server: SocketAddr) -> SocketAddr {
    let r = transact_udp(c, sock, server, Method::ALLOCATE, |b| {
        b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
    })
    .expect("an answer");
    assert_eq!(r.class, Class::Success, "{r:?}");
    r.relayed.unwrap()
}

fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn udp_client_relays_intact_bytes_both_ways() {
    let server = start(Faults::default());
    let addr = server.bound.udp[0];
    let sock = udp();
    let mut c = client_for(&sock, addr);
    let relay = allocate(&mut c, &sock, addr);
    let peer = udp();
    let peer_addr = peer.local_addr().unwrap();
    let r = transact_udp(&mut c, &sock, addr, Method::CHANNEL_BIND, |b| {
        b.u32_attribute(attr::CHANNEL_NUMBER, 0x4001 << 16)
            .xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
    })
    .unwrap();
    assert_eq!(r.class, Class::Success);
    let mut buf = [0u8; 2048];
    for i in 0..50u8 {
        let payload: Vec<u8> = (0..160)
            .map(|j| i.wrapping_mul(31).wrapping_add(j))
            .collect();
        sock.send_to(&ChannelData::<&[u8]>::emit(0x4001, &payload, false), addr)
            .unwrap();
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!((from, &buf[..n]), (relay, &payload[..]));
        peer.send_to(&payload, relay).unwrap();
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        let cd = ChannelData::new_checked(&buf[..n]).unwrap();
        assert_eq!((cd.channel(), cd.data()), (0x4001, &payload[..]));
    }
    // /metrics agrees.
    let text = http(
        server.bound.metrics.unwrap(),
        "GET /metrics HTTP/1.1\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains("turn_relayed_packets_total{direction=\"client_to_peer\"} 50"),
        "{text}"
    );
    assert!(
        text.contains("turn_relayed_bytes_total{direction=\"peer_to_client\"} 8000"),
        "{text}"
    );
    assert!(text.contains("turn_channels 1"), "{text}");
    let snap = server.stop();
    assert_eq!(snap.counters.peer_to_client.packets, 50);
}

#[test]
fn tcp_client_relays_padded_channel_data() {
    let server = start(Faults::default());
    let addr = server.bound.tcp[0];
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let ft = FiveTuple {
        transport: Transport::Tcp,
        client: tcp.local_addr().unwrap(),
        server: addr,
    };
    let mut c = Client::new(ft, "alice", "alice-pw");
    let read_msg = |tcp: &mut TcpStream| -> Vec<u8> {
        let mut head = [0u8; 4];
        tcp.read_exact(&mut head).unwrap();
        let len = turn_server::wire::frame_len(&head).unwrap().unwrap();
        let mut rest = vec![0; len - 4];
        tcp.read_exact(&mut rest).unwrap();
        [&head[..], &rest].concat()
    };
    let exchange = |c: &mut Client, tcp: &mut TcpStream, method, attrs: &dyn Fn(&mut _)| {
        for _ in 0..2 {
            let txid = c.txid();
            tcp.write_all(&c.request(method, txid, attrs)).unwrap();
            let r = common::parse_response(&read_msg(tcp));
            if r.code == Some(401) && c.nonce.is_none() {
                c.nonce = r.nonce.clone();
                continue;
            }
            return r;
        }
        panic!("no answer");
    };
    let r = exchange(
        &mut c,
        &mut tcp,
        Method::ALLOCATE,
        &|b: &mut turn_server::wire::MessageBuilder| {
            b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
        },
    );
    let relay = r.relayed.unwrap();
    let peer = udp();
    let peer_addr = peer.local_addr().unwrap();
    let r = exchange(
        &mut c,
        &mut tcp,
        Method::CHANNEL_BIND,
        &|b: &mut turn_server::wire::MessageBuilder| {
            b.u32_attribute(attr::CHANNEL_NUMBER, 0x7001 << 16)
                .xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
        },
    );
    assert_eq!(r.class, Class::Success);
    let mut buf = [0u8; 2048];
    // Odd lengths exercise the 4-byte padding rule both ways.
    for len in [1usize, 5, 159, 160, 161] {
        let payload: Vec<u8> = (0..len).map(|j| j as u8 ^ 0x5A).collect();
        tcp.write_all(&ChannelData::<&[u8]>::emit(0x7001, &payload, true))
            .unwrap();
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!((from, &buf[..n]), (relay, &payload[..]));
        peer.send_to(&payload, relay).unwrap();
        let msg = read_msg(&mut tcp);
        assert_eq!(msg.len() % 4, 0, "padded on a stream");
        let cd = ChannelData::new_checked(&msg[..]).unwrap();
        assert_eq!(cd.data(), &payload[..]);
    }
    // Closing the connection deletes the allocation.
    drop(tcp);
    let handle = server.handle();
    let mut gone = false;
    for _ in 0..100 {
        if handle.snapshot_blocking().unwrap().gauges.allocations == 0 {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(gone, "allocation deleted with its connection");
}

#[test]
fn faults_via_handle_and_http() {
    let server = start(Faults::default());
    let addr = server.bound.udp[0];
    let handle = server.handle();
    let metrics = server.bound.metrics.unwrap();
    let sock = udp();
    let mut c = client_for(&sock, addr);
    // refuse_allocations → 508.
    handle.set_faults(Faults {
        refuse_allocations: true,
        ..Faults::default()
    });
    let r = transact_udp(&mut c, &sock, addr, Method::ALLOCATE, |b| {
        b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
    })
    .unwrap();
    assert_eq!(r.code, Some(508));
    // fail_auth over HTTP → 401.
    let out = http(metrics, "POST /faults?fail_auth=1 HTTP/1.1\r\n\r\n");
    assert!(out.contains("fail_auth=1"), "{out}");
    let r = transact_udp(&mut c, &sock, addr, Method::ALLOCATE, |b| {
        b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
    })
    .unwrap();
    assert_eq!(r.code, Some(401));
    // unresponsive → nothing at all.
    handle.set_faults(Faults {
        unresponsive: true,
        ..Faults::default()
    });
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(transact_udp(&mut c, &sock, addr, Method::BINDING, |_| {}).is_none());
    // delay → answers come late.
    handle.set_faults(Faults {
        delay: Duration::from_millis(150),
        ..Faults::default()
    });
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let t0 = std::time::Instant::now();
    assert!(transact_udp(&mut c, &sock, addr, Method::BINDING, |_| {}).is_some());
    assert!(t0.elapsed() >= Duration::from_millis(150));
    // drop_streams → a TCP connection is closed and new ones refused.
    handle.set_faults(Faults::default());
    let mut tcp = TcpStream::connect(server.bound.tcp[0]).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    handle.set_faults(Faults {
        drop_streams: true,
        ..Faults::default()
    });
    let mut b = [0u8; 16];
    assert!(
        matches!(tcp.read(&mut b), Ok(0) | Err(_)),
        "connection closed"
    );
    let snap = handle.snapshot_blocking().unwrap();
    assert_eq!(snap.counters.closed(turn_server::StreamClose::Fault), 1);
    assert_eq!(snap.counters.dropped(turn_server::DropReason::Fault), 1);
    let text = http(metrics, "GET /metrics HTTP/1.1\r\n\r\n");
    assert!(
        text.contains("turn_fault{fault=\"drop_streams\"} 1"),
        "{text}"
    );
    assert!(http(metrics, "POST /faults?bogus=1 HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
}

#[test]
fn http_fault_control_is_off_unless_enabled() {
    let mut core = common::config();
    core.min_port = 49152;
    core.max_port = 65535;
    let server = io::start(Settings {
        core,
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls_listen: vec![],
        tls_files: None,
        tls_pem: None,
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        http_faults: false,
        faults: Faults::default(),
    })
    .unwrap();
    let metrics = server.bound.metrics.unwrap();
    let out = http(metrics, "POST /faults?unresponsive=1 HTTP/1.1\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(http(metrics, "GET /faults HTTP/1.1\r\n\r\n").contains("unresponsive=0"));
}
