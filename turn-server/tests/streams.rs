//! TCP/TLS connections in the sans-I/O core: replies owed before a framing error go out before
//! the close; frames cut anywhere are the same frames; connections past the per-source and
//! total limits are refused; one without an allocation is closed at its idle deadline, exactly;
//! partial frames are bounded in all; the `drop_streams` fault closes and refuses.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, Harness, config, parse_response};
use turn_server::wire::{Class, MessageBuilder, Method, TransactionId};
use turn_server::{Config, DropReason, Faults, FiveTuple, StreamClose, StreamRefusal, Transport};

fn tcp(client: &str) -> FiveTuple {
    FiveTuple {
        transport: Transport::Tcp,
        client: client.parse().unwrap(),
        server: "127.0.0.1:3478".parse().unwrap(),
    }
}

fn binding(i: u8) -> Vec<u8> {
    MessageBuilder::new(Method::BINDING, Class::Request, TransactionId([i; 12])).finish()
}

fn harness(config: Config) -> Harness {
    let mut h = Harness::new(config);
    h.framed = true;
    h
}

#[test]
fn replies_owed_before_a_framing_error_go_out_before_the_close() {
    let mut h = harness(config());
    let ft = tcp("10.0.0.1:40000");
    h.server.handle_stream_opened(h.now, ft).unwrap();
    // Three requests and one byte that frames nothing (top bits 11), in one read.
    let mut bytes: Vec<u8> = (1..=3).flat_map(binding).collect();
    bytes.push(0xFF);
    let out = h.stream(ft, &bytes);
    let txids: Vec<[u8; 12]> = out
        .iter()
        .map(|t| {
            let r = parse_response(&t.contents);
            assert_eq!((r.method, r.class), (Method::BINDING, Class::Success));
            t.contents[8..20].try_into().unwrap()
        })
        .collect();
    assert_eq!(txids, [[1; 12], [2; 12], [3; 12]], "every reply, in order");
    assert!(out.iter().all(|t| t.destination == ft.client));
    // The close was asked for after the three replies had been handed out.
    assert_eq!(h.closed_streams, [(ft, StreamClose::Framing, 3)]);
    // Nothing more is read from it.
    assert!(h.stream(ft, &binding(4)).is_empty());
    let c = h.server.counters();
    assert_eq!(c.requests.get("binding"), Some(&3));
    assert_eq!(c.closed(StreamClose::Framing), 1);
    assert_eq!(c.dropped(DropReason::Malformed), 1);
    h.server.handle_connection_closed(h.now, ft);
    assert_eq!(h.server.gauges().streams, 0);
}

#[test]
fn frames_cut_anywhere_are_the_same_frames() {
    let messages: Vec<u8> = (1..=3).flat_map(binding).collect();
    for cut in 0..=messages.len() {
        let mut h = harness(config());
        let ft = tcp("10.0.0.1:40000");
        let mut out = h.stream(ft, &messages[..cut]);
        let whole = cut / 20;
        assert_eq!(out.len(), whole, "cut at {cut}");
        assert_eq!(h.server.gauges().stream_buffered_bytes, cut % 20);
        out.extend(h.stream(ft, &messages[cut..]));
        assert_eq!(out.len(), 3, "cut at {cut}");
        assert_eq!(h.server.gauges().stream_buffered_bytes, 0);
        assert!(h.closed_streams.is_empty());
    }
    // One byte at a time.
    let mut h = harness(config());
    let ft = tcp("10.0.0.1:40000");
    let n: usize = messages.iter().map(|b| h.stream(ft, &[*b]).len()).sum();
    assert_eq!(n, 3);
}

#[test]
fn connections_past_the_limits_are_refused_and_counted() {
    let mut h = harness(Config {
        max_streams: 5,
        max_streams_per_source: 2,
        ..config()
    });
    let now = h.now;
    let a = |port| tcp(&format!("10.0.0.1:{port}"));
    assert_eq!(h.server.handle_stream_opened(now, a(1)), Ok(()));
    assert_eq!(h.server.handle_stream_opened(now, a(2)), Ok(()));
    assert_eq!(
        h.server.handle_stream_opened(now, a(3)),
        Err(StreamRefusal::PerSource)
    );
    for i in 2..=4 {
        let ft = tcp(&format!("10.0.0.{i}:1"));
        assert_eq!(h.server.handle_stream_opened(now, ft), Ok(()));
    }
    assert_eq!(
        h.server.handle_stream_opened(now, tcp("10.0.0.9:1")),
        Err(StreamRefusal::Total)
    );
    // A closed connection frees its place, in all and for its address.
    h.server.handle_connection_closed(now, a(1));
    assert_eq!(h.server.handle_stream_opened(now, a(3)), Ok(()));
    let c = h.server.counters();
    assert_eq!(c.streams_opened, 6);
    assert_eq!(c.refused(StreamRefusal::PerSource), 1);
    assert_eq!(c.refused(StreamRefusal::Total), 1);
    assert_eq!(h.server.gauges().streams, 5);
}

#[test]
fn a_connection_without_an_allocation_is_closed_at_its_idle_deadline() {
    let mut h = harness(config());
    let timeout = h.server.config().stream_idle_timeout;
    assert_eq!(
        timeout,
        Duration::from_secs(60),
        "coturn's max-allocate-timeout"
    );
    let silent = tcp("10.0.0.1:1");
    let binding_only = tcp("10.0.0.2:1");
    let allocating = tcp("10.0.0.3:1");
    for ft in [silent, binding_only, allocating] {
        h.server.handle_stream_opened(h.now, ft).unwrap();
    }
    assert_eq!(h.server.poll_timeout(), Some(h.epoch + timeout));
    h.advance(Duration::from_secs(10));
    // Traffic without an allocation does not keep a connection open.
    assert_eq!(h.stream(binding_only, &binding(1)).len(), 1);
    let mut c = Client::new(allocating, "alice", "alice-pw");
    c.allocate(&mut h);
    h.advance(timeout - Duration::from_secs(10) - Duration::from_millis(1));
    assert!(h.closed_streams.is_empty(), "{:?}", h.closed_streams);
    h.advance(Duration::from_millis(1));
    let closed: Vec<_> = h
        .closed_streams
        .iter()
        .map(|(ft, r, _)| (*ft, *r))
        .collect();
    assert_eq!(
        closed,
        [
            (silent, StreamClose::Idle),
            (binding_only, StreamClose::Idle)
        ]
    );
    for ft in [silent, binding_only] {
        h.server.handle_connection_closed(h.now, ft);
    }
    // An allocation keeps it open as long as it lives; once it ends, the clock starts again.
    h.advance(Duration::from_secs(100));
    assert_eq!(h.closed_streams.len(), 2);
    let r = c.refresh(&mut h, 0);
    assert_eq!(r.class, Class::Success);
    let ended = h.now;
    h.advance(timeout - Duration::from_millis(1));
    assert_eq!(h.closed_streams.len(), 2);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.now - ended, timeout);
    assert_eq!(
        h.closed_streams.last().map(|(ft, r, _)| (*ft, *r)),
        Some((allocating, StreamClose::Idle))
    );
    assert_eq!(h.server.counters().closed(StreamClose::Idle), 3);
}

#[test]
fn partial_frames_are_bounded_in_all() {
    let mut h = harness(Config {
        stream_buffer_budget: 100,
        ..config()
    });
    // The header of a 1,000-byte message and 40 of its bytes: 60 bytes held.
    let mut big = binding(1);
    big[2..4].copy_from_slice(&980u16.to_be_bytes());
    big.resize(60, 0);
    let (a, b) = (tcp("10.0.0.1:1"), tcp("10.0.0.2:1"));
    assert!(h.stream(a, &big).is_empty());
    assert_eq!(h.server.gauges().stream_buffered_bytes, 60);
    assert!(h.stream(b, &big).is_empty());
    let closed: Vec<_> = h
        .closed_streams
        .iter()
        .map(|(ft, r, _)| (*ft, *r))
        .collect();
    assert_eq!(closed, [(b, StreamClose::Buffer)]);
    assert_eq!(h.server.gauges().stream_buffered_bytes, 60);
    // Closing frees what a connection held.
    h.server.handle_connection_closed(h.now, a);
    assert_eq!(h.server.gauges().stream_buffered_bytes, 0);
}

#[test]
fn the_drop_streams_fault_closes_every_connection_and_refuses_new_ones() {
    let mut h = harness(config());
    let (a, b) = (tcp("10.0.0.1:1"), tcp("10.0.0.2:1"));
    for ft in [a, b] {
        h.server.handle_stream_opened(h.now, ft).unwrap();
    }
    h.server.set_faults(Faults {
        drop_streams: true,
        ..Faults::default()
    });
    h.drain();
    let mut closed: Vec<SocketAddr> = h
        .closed_streams
        .iter()
        .map(|(ft, _, _)| ft.client)
        .collect();
    closed.sort();
    assert_eq!(closed, [a.client, b.client]);
    assert_eq!(
        h.server.handle_stream_opened(h.now, tcp("10.0.0.3:1")),
        Err(StreamRefusal::Fault)
    );
    let c = h.server.counters();
    assert_eq!(
        (
            c.closed(StreamClose::Fault),
            c.refused(StreamRefusal::Fault)
        ),
        (2, 1)
    );
}
