//! The whole sans-I/O server fed arbitrary client datagrams, TCP stream bytes cut anywhere and
//! peer datagrams on a fuzzed clock: no input may panic it, and every output must be bounded.
//! (`turn-server/tests/fuzz.rs` runs the same entry points on the stable toolchain in
//! `cargo test`, with the accounting checked.)
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use turn_server::{Config, Event, FiveTuple, Server, Transport};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut config = Config::default();
    config
        .peer_policy
        .allow
        .extend(turn_server::policy::loopback());
    config
        .credentials
        .users
        .insert("u".into(), turn_server::auth::Secret("p".into()));
    let mut server = Server::new(config, start, 1_700_000_000);
    let ft = FiveTuple {
        transport: if data.first().is_some_and(|b| b & 1 == 1) {
            Transport::Tcp
        } else {
            Transport::Udp
        },
        client: "127.0.0.1:40000".parse().unwrap(),
        server: "127.0.0.1:3478".parse().unwrap(),
    };
    let stream = FiveTuple {
        transport: Transport::Tcp,
        client: "127.0.0.1:40001".parse().unwrap(),
        ..ft
    };
    let mut now = start;
    // Split the input into chunks: [kind, len, bytes...]
    let mut rest = data;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], usize::from(rest[1]));
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        now += Duration::from_millis(u64::from(kind) * 97);
        match kind % 4 {
            0 => server.handle_packet(now, ft, body),
            3 => server.handle_stream_data(now, stream, body),
            1 => server.handle_peer_packet(
                now,
                "127.0.0.1:50000".parse().unwrap(),
                "127.0.0.1:9".parse().unwrap(),
                body,
            ),
            _ => server.handle_timeout(now),
        }
        for _ in 0..100 {
            let mut idle = server.poll_transmit().is_none();
            match server.poll_event() {
                Some(Event::OpenRelay { request, .. }) => {
                    server.handle_relay_opened(now, request, kind & 4 == 0);
                    idle = false;
                }
                Some(Event::CloseStream { five_tuple, .. }) => {
                    server.handle_connection_closed(now, five_tuple);
                    idle = false;
                }
                Some(_) => idle = false,
                None => {}
            }
            if idle {
                break;
            }
        }
    }
});
