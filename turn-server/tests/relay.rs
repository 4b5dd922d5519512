//! The happy path through the core: allocate, permit, bind, relay both ways (ChannelData and
//! Send/Data indications, padded on streams), refresh, delete; counters agree.
mod common;

use common::{Client, Harness, config, five_tuple, parse_response};
use turn_server::Transport;
use turn_server::wire::{ChannelData, Class, Method, StunPacket, StunRepr, attr};

#[test]
fn binding_answers_with_the_mapped_address() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(40000), "alice", "alice-pw");
    let r = c.transact(&mut h, Method::BINDING, |_| {});
    assert_eq!(r.class, Class::Success);
    assert_eq!(r.mapped, Some(c.ft.client));
}

#[test]
fn relays_channel_data_and_indications_both_ways() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(40001), "alice", "alice-pw");
    let relay = c.allocate(&mut h);
    assert!((50000..=50099).contains(&relay.port()));
    assert_eq!(relay.ip(), c.ft.server.ip());
    let peer = "127.0.0.1:9000".parse().unwrap();

    // Without a permission nothing passes, either way.
    assert!(h.send(c.ft, &c.send_indication(peer, b"early")).is_empty());
    assert!(h.peer_send(relay, peer, b"early").is_empty());

    assert_eq!(c.permit(&mut h, peer).class, Class::Success);
    let out = h.send(c.ft, &c.send_indication(peer, b"hello peer"));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].source, out[0].destination), (relay, peer));
    assert_eq!(out[0].contents, b"hello peer");

    // Peer → client without a channel: a Data indication.
    let out = h.peer_send(relay, peer, b"hello client");
    assert_eq!(out[0].destination, c.ft.client);
    let p = StunPacket::new_checked(&out[0].contents[..]).unwrap();
    assert_eq!((p.method(), p.class()), (Method::DATA, Class::Indication));
    let repr = StunRepr::parse(&p).unwrap();
    assert_eq!(repr.peers, vec![peer]);
    assert_eq!(repr.data, Some(&b"hello client"[..]));

    // With a channel: ChannelData both ways, unpadded on UDP.
    assert_eq!(c.bind(&mut h, 0x4000, peer).class, Class::Success);
    let out = h.send(c.ft, &ChannelData::<&[u8]>::emit(0x4000, b"rtp", false));
    assert_eq!(out[0].contents, b"rtp");
    let out = h.peer_send(relay, peer, b"rtp back");
    assert_eq!(
        out[0].contents,
        ChannelData::<&[u8]>::emit(0x4000, b"rtp back", false)
    );

    let c2p = h.server.counters().client_to_peer;
    let p2c = h.server.counters().peer_to_client;
    assert_eq!((c2p.packets, c2p.bytes), (2, 13));
    assert_eq!((p2c.packets, p2c.bytes), (2, 20));
    let g = h.server.gauges();
    assert_eq!((g.allocations, g.permissions, g.channels), (1, 1, 1));

    // Refresh with lifetime 0 deletes the allocation and closes the relay.
    let r = c.refresh(&mut h, 0);
    assert_eq!((r.class, r.lifetime), (Class::Success, Some(0)));
    assert_eq!(h.closed_relays, vec![relay]);
    assert!(h.peer_send(relay, peer, b"late").is_empty());
    assert_eq!(h.server.gauges().allocations, 0);
    assert_eq!(c.refresh(&mut h, 600).code, Some(437));
}

#[test]
fn channel_data_is_padded_on_streams_and_connection_close_deletes() {
    let mut h = Harness::new(config());
    let mut ft = five_tuple(40002);
    ft.transport = Transport::Tcp;
    let mut c = Client::new(ft, "bob", "bob-pw");
    let relay = c.allocate(&mut h);
    let peer = "127.0.0.1:9001".parse().unwrap();
    assert_eq!(c.bind(&mut h, 0x4FFF, peer).class, Class::Success);
    // A padded frame from the client is accepted; the reply is padded too.
    let out = h.send(ft, &ChannelData::<&[u8]>::emit(0x4FFF, b"abcde", true));
    assert_eq!(out[0].contents, b"abcde");
    let out = h.peer_send(relay, peer, b"xyz");
    assert_eq!(out[0].transport, Transport::Tcp);
    assert_eq!(out[0].contents, vec![0x4F, 0xFF, 0, 3, b'x', b'y', b'z', 0]);
    h.server.handle_connection_closed(h.now, ft);
    h.drain();
    assert_eq!(h.closed_relays, vec![relay]);
    assert_eq!(h.server.counters().allocations_deleted, 1);
}

#[test]
fn allocate_retransmission_gets_the_same_answer() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(40003), "alice", "alice-pw");
    c.transact(&mut h, Method::BINDING, |_| {});
    // Get a nonce first.
    let r = c.transact(&mut h, Method::REFRESH, |_| {});
    assert_eq!(r.code, Some(437));
    let txid = c.txid();
    let req = c.request(Method::ALLOCATE, txid, |b| {
        b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
    });
    let first = h.send(c.ft, &req);
    let again = h.send(c.ft, &req);
    assert_eq!(first[0].contents, again[0].contents);
    assert_eq!(parse_response(&first[0].contents).class, Class::Success);
    // A new Allocate on the same 5-tuple is a mismatch.
    let r = c.transact(&mut h, Method::ALLOCATE, |b| {
        b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
    });
    assert_eq!(r.code, Some(437));
}

#[test]
fn relay_bind_failures_are_retried_then_answered_508() {
    let mut h = Harness::new(config());
    h.refuse_open = 3;
    let mut c = Client::new(five_tuple(40004), "alice", "alice-pw");
    c.allocate(&mut h);
    h.refuse_open = 100;
    let mut c2 = Client::new(five_tuple(40005), "alice", "alice-pw");
    let r = c2.transact(&mut h, Method::ALLOCATE, |b| {
        b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
    });
    assert_eq!(r.code, Some(508));
    assert_eq!(h.server.gauges().allocations, 1);
}

#[test]
fn sha256_integrity_is_answered_in_kind() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(40006), "alice", "alice-pw");
    c.integrity = turn_server::wire::IntegrityKind::Sha256;
    c.allocate(&mut h);
    let r = c.refresh(&mut h, 700);
    let p = StunPacket::new_checked(&r.bytes[..]).unwrap();
    assert!(
        p.attributes()
            .any(|a| a.kind == attr::MESSAGE_INTEGRITY_SHA256)
    );
    assert_eq!(r.lifetime, Some(700));
}

#[test]
fn time_limited_credentials_authenticate_until_expiry() {
    let mut h = Harness::new(config());
    let user = format!("{}:carol", common::UNIX_START + 100);
    let pw = turn_server::auth::time_limited_password("s3cret", &user);
    let mut c = Client::new(five_tuple(40007), &user, &pw);
    c.allocate(&mut h);
    h.advance(std::time::Duration::from_secs(101));
    // The allocation lives on, but the expired credential no longer authenticates.
    let r = c.refresh(&mut h, 600);
    assert_eq!(r.code, Some(401));
}

#[test]
fn a_relay_opened_after_its_client_left_is_closed_again() {
    let mut h = Harness::new(config());
    let mut ft = five_tuple(40010);
    ft.transport = Transport::Tcp;
    let mut c = Client::new(ft, "alice", "alice-pw");
    h.held = Some(Vec::new());
    // The first round trip is the 401 challenge; the second leaves an OpenRelay pending.
    let txid = c.txid();
    let challenge = h.send(ft, &c.request(Method::ALLOCATE, txid, |_| {}));
    c.nonce = parse_response(&challenge[0].contents).nonce;
    let txid = c.txid();
    let req = c.request(Method::ALLOCATE, txid, |b| {
        b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
    });
    assert!(
        h.send(ft, &req).is_empty(),
        "no answer before the relay is open"
    );
    let held = h.held.take().unwrap();
    assert_eq!(held.len(), 1);
    h.server.handle_connection_closed(h.now, ft);
    h.server.handle_relay_opened(h.now, held[0], true);
    assert!(h.drain().is_empty());
    assert_eq!(h.closed_relays.len(), 1);
    assert_eq!(h.server.gauges().allocations, 0);
}
