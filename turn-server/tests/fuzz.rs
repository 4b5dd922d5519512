//! The fuzz targets' entry points on the stable toolchain, in `cargo test`: random and mutated
//! STUN/TURN/ChannelData from clients over UDP and TCP (cut anywhere), from peers, on a jumping
//! clock, with connections opened and closed and faults switched. No input may panic the core;
//! every message is accounted for in its counters (a request, a relayed packet or a drop by
//! reason); the state it holds stays within its limits.
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, Harness, config};
use proptest::prelude::*;
use turn_server::wire::{ChannelData, Method, attr, frame_len};
use turn_server::{Config, DropReason, Faults, FiveTuple, Transport};

/// A message from the corpus, mutated.
#[derive(Debug, Clone)]
struct Mutant {
    index: usize,
    flips: Vec<(usize, u8)>,
    truncate: Option<usize>,
    append: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Op {
    /// A datagram from UDP client `0` or `1`.
    Datagram(bool, Mutant),
    /// Random bytes from a UDP client.
    Noise(Vec<u8>),
    /// Messages on TCP connection `n`, concatenated and cut in two at `cut`.
    Stream(u8, Vec<Mutant>, usize),
    /// TCP connection `n` goes away.
    Hangup(u8),
    /// A peer datagram to the first client's relayed address, or to an unknown one.
    Peer(bool, Vec<u8>),
    /// Time passes.
    Advance(u32),
    /// Faults: unresponsive, drop_streams, delay.
    Faults(bool, bool, bool),
}

fn mutant() -> impl Strategy<Value = Mutant> {
    (
        any::<usize>(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        proptest::option::weighted(0.2, any::<usize>()),
        proptest::collection::vec(any::<u8>(), 0..4),
    )
        .prop_map(|(index, flips, truncate, append)| Mutant {
            index,
            flips,
            truncate,
            append,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), mutant()).prop_map(|(c, m)| Op::Datagram(c, m)),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Op::Noise),
        4 => (0..3u8, proptest::collection::vec(mutant(), 1..4), any::<usize>())
            .prop_map(|(n, m, cut)| Op::Stream(n, m, cut)),
        1 => (0..3u8).prop_map(Op::Hangup),
        2 => (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(known, d)| Op::Peer(known, d)),
        2 => (0..130_000u32).prop_map(Op::Advance),
        1 => (
            proptest::bool::weighted(0.2),
            proptest::bool::weighted(0.2),
            proptest::bool::weighted(0.2)
        )
            .prop_map(|(u, d, l)| Op::Faults(u, d, l)),
    ]
}

fn apply(m: &Mutant, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut b = corpus[m.index % corpus.len()].clone();
    for &(at, mask) in &m.flips {
        if !b.is_empty() {
            let i = at % b.len();
            b[i] ^= mask;
        }
    }
    if let Some(t) = m.truncate {
        b.truncate(t % (b.len() + 1));
    }
    b.extend_from_slice(&m.append);
    b
}

fn ft(transport: Transport, port: u16) -> FiveTuple {
    FiveTuple {
        transport,
        client: SocketAddr::from(([127, 0, 0, 1], port)),
        server: "127.0.0.1:3478".parse().unwrap(),
    }
}

/// Valid messages of a client that has allocated, permitted the peer and bound a channel.
fn corpus(h: &mut Harness, c: &mut Client, peer: SocketAddr) -> Vec<Vec<u8>> {
    c.allocate(h);
    c.permit(h, peer);
    c.bind(h, 0x4000, peer);
    let stream = c.ft.transport.is_stream();
    let mut out = Vec::new();
    for method in [
        Method::BINDING,
        Method::ALLOCATE,
        Method::REFRESH,
        Method::CREATE_PERMISSION,
        Method::CHANNEL_BIND,
    ] {
        let txid = c.txid();
        out.push(c.request(method, txid, |b| {
            b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24)
                .xor_address(attr::XOR_PEER_ADDRESS, peer)
                .u32_attribute(attr::CHANNEL_NUMBER, 0x4000 << 16);
        }));
    }
    out.push(c.send_indication(peer, b"media"));
    out.push(ChannelData::<&[u8]>::emit(0x4000, b"rtp!!", stream));
    out.push(ChannelData::<&[u8]>::emit(0x4001, b"unbound", stream));
    out
}

/// The test's own framing of each connection: how many messages the core must account for.
#[derive(Default)]
struct Framing {
    partial: HashMap<FiveTuple, Vec<u8>>,
}

impl Framing {
    /// Messages in `bytes` on `ft` (a framing error counts as one, and ends the connection).
    fn messages(&mut self, ft: FiveTuple, bytes: &[u8]) -> u64 {
        let buf = self.partial.entry(ft).or_default();
        buf.extend_from_slice(bytes);
        let (mut at, mut n) = (0, 0);
        loop {
            match frame_len(&buf[at..]) {
                Ok(Some(len)) if buf.len() - at >= len => {
                    n += 1;
                    at += len;
                }
                Ok(_) => break,
                Err(_) => {
                    buf.clear();
                    return n + 1;
                }
            }
        }
        buf.drain(..at);
        n
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let limits = Config {
        max_streams: 2,
        max_streams_per_source: 2,
        stream_buffer_budget: 4096,
        total_quota: 3,
        max_permissions: 4,
        ..config()
    };
    let (max_streams, budget, quota) = (2, 4096, 3);
    let mut h = Harness::new(limits);
    h.framed = true;
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut udp = Client::new(ft(Transport::Udp, 40000), "alice", "alice-pw");
    let stream_ft = |n: u8| ft(Transport::Tcp, 41000 + u16::from(n));
    h.server.handle_stream_opened(h.now, stream_ft(0)).unwrap();
    let mut tcp = Client::new(stream_ft(0), "bob", "bob-pw");
    let mut messages = corpus(&mut h, &mut udp, peer);
    messages.extend(corpus(&mut h, &mut tcp, peer));
    let relay = h.server.relay_addr(&udp.ft).unwrap();
    // What the prefix cost, so that only the random part is counted below.
    let inputs_before = accounted(&h);
    let mut inputs = 0u64;
    let mut framing = Framing::default();
    let mut open = vec![stream_ft(0)];
    let mut seen_closes = h.closed_streams.len();
    for op in ops {
        match op {
            Op::Datagram(second, m) => {
                let who = if *second { 40001 } else { 40000 };
                h.send(ft(Transport::Udp, who), &apply(m, &messages));
                inputs += 1;
            }
            Op::Noise(bytes) => {
                h.send(ft(Transport::Udp, 40002), bytes);
                inputs += 1;
            }
            Op::Stream(n, ms, cut) => {
                let f = stream_ft(*n);
                if !open.contains(&f) {
                    if h.server.handle_stream_opened(h.now, f).is_err() {
                        continue;
                    }
                    open.push(f);
                }
                let bytes: Vec<u8> = ms.iter().flat_map(|m| apply(m, &messages)).collect();
                let cut = cut % (bytes.len() + 1);
                for chunk in [&bytes[..cut], &bytes[cut..]] {
                    if open.contains(&f) {
                        inputs += framing.messages(f, chunk);
                        h.stream(f, chunk);
                        hang_up_closed(&mut h, &mut seen_closes, &mut open, &mut framing);
                    }
                }
            }
            Op::Hangup(n) => {
                let f = stream_ft(*n);
                h.server.handle_connection_closed(h.now, f);
                h.drain();
                open.retain(|o| *o != f);
                framing.partial.remove(&f);
            }
            Op::Peer(known, data) => {
                let to = if *known {
                    relay
                } else {
                    "127.0.0.1:1".parse().unwrap()
                };
                h.peer_send(to, peer, data);
                inputs += 1;
            }
            Op::Advance(ms) => {
                h.advance(Duration::from_millis(u64::from(*ms)));
            }
            Op::Faults(unresponsive, drop_streams, delay) => {
                h.server.set_faults(Faults {
                    unresponsive: *unresponsive,
                    drop_streams: *drop_streams,
                    delay: Duration::from_millis(if *delay { 30 } else { 0 }),
                    ..Faults::default()
                });
                h.drain();
            }
        }
        hang_up_closed(&mut h, &mut seen_closes, &mut open, &mut framing);
        let g = h.server.gauges();
        prop_assert!(g.allocations <= quota, "{g:?}");
        prop_assert!(g.permissions <= 4 * g.allocations, "{g:?}");
        prop_assert!(g.streams <= max_streams, "{g:?}");
        prop_assert!(g.stream_buffered_bytes <= budget, "{g:?}");
        prop_assert_eq!(
            accounted(&h) - inputs_before,
            inputs,
            "every message is counted once: {:?}",
            h.server.counters()
        );
    }
    Ok(())
}

/// Connections the core asked to close are closed, as the edge would.
fn hang_up_closed(
    h: &mut Harness,
    seen: &mut usize,
    open: &mut Vec<FiveTuple>,
    framing: &mut Framing,
) {
    while *seen < h.closed_streams.len() {
        let (f, _, _) = h.closed_streams[*seen];
        *seen += 1;
        h.server.handle_connection_closed(h.now, f);
        open.retain(|o| *o != f);
        framing.partial.remove(&f);
    }
    h.drain();
}

/// Messages the counters account for: each is a request, a relayed packet or a drop (a
/// request that fails authentication is both a request and an `auth_failed` drop).
fn accounted(h: &Harness) -> u64 {
    let c = h.server.counters();
    let drops: u64 = c.drops.values().sum();
    c.requests.values().sum::<u64>() + c.client_to_peer.packets + c.peer_to_client.packets + drops
        - c.dropped(DropReason::AuthFailed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn random_and_mutated_input_is_accounted_for_and_bounded(
        ops in proptest::collection::vec(op(), 1..48)
    ) {
        run(&ops)?;
    }
}
