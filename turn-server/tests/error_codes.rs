//! Every error code RFC 8489/8656 assign, each from the case that causes it:
//! 400 401 403 420 437 438 440 441 442 443 486 508.
mod common;

use common::{Client, Harness, config, five_tuple};
use turn_server::Faults;
use turn_server::wire::{Class, Method, attr};

fn udp(b: &mut turn_server::wire::MessageBuilder) {
    b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
}

#[test]
fn allocate_errors() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(42000), "alice", "alice-pw");
    // 401 without credentials (the transact helper answers it; check the raw exchange).
    let txid = c.txid();
    let out = h.send(c.ft, &c.request(Method::ALLOCATE, txid, udp));
    let r = common::parse_response(&out[0].contents);
    assert_eq!(
        (r.code, r.realm.as_deref()),
        (Some(401), Some(common::REALM))
    );
    assert!(!r.signed);
    // 400: no REQUESTED-TRANSPORT.
    assert_eq!(c.transact(&mut h, Method::ALLOCATE, |_| {}).code, Some(400));
    // 442: TCP relaying asked.
    let r = c.transact(&mut h, Method::ALLOCATE, |b| {
        b.u32_attribute(attr::REQUESTED_TRANSPORT, 6 << 24);
    });
    assert_eq!(r.code, Some(442));
    assert!(r.signed, "errors after authentication are signed");
    // 420: DONT-FRAGMENT (we cannot set DF) and unknown comprehension-required attributes.
    let r = c.transact(&mut h, Method::ALLOCATE, |b| {
        udp(b);
        b.attribute(attr::DONT_FRAGMENT, &[]);
    });
    assert_eq!(
        (r.code, r.unknown.clone()),
        (Some(420), vec![attr::DONT_FRAGMENT])
    );
    let r = c.transact(&mut h, Method::ALLOCATE, |b| {
        udp(b);
        b.attribute(0x0077, b"?");
    });
    assert_eq!((r.code, r.unknown.clone()), (Some(420), vec![0x0077]));
    // 440: IPv6 relaying asked with no IPv6 relay address; unknown family.
    for family in [2u32, 9] {
        let r = c.transact(&mut h, Method::ALLOCATE, |b| {
            udp(b);
            b.u32_attribute(attr::REQUESTED_ADDRESS_FAMILY, family << 24);
        });
        assert_eq!(r.code, Some(440));
    }
    // 508: a reservation token we never gave; 400: EVEN-PORT and RESERVATION-TOKEN together.
    let r = c.transact(&mut h, Method::ALLOCATE, |b| {
        udp(b);
        b.attribute(attr::RESERVATION_TOKEN, &[1; 8]);
    });
    assert_eq!(r.code, Some(508));
    let r = c.transact(&mut h, Method::ALLOCATE, |b| {
        udp(b);
        b.attribute(attr::EVEN_PORT, &[0])
            .attribute(attr::RESERVATION_TOKEN, &[1; 8]);
    });
    assert_eq!(r.code, Some(400));
    // EVEN-PORT without R is honoured.
    let r = c.transact(&mut h, Method::ALLOCATE, |b| {
        udp(b);
        b.attribute(attr::EVEN_PORT, &[0]);
    });
    assert_eq!(r.class, Class::Success);
    assert_eq!(r.relayed.unwrap().port() % 2, 0);
}

#[test]
fn even_port_reserves_the_next_port_for_its_token() {
    let mut h = Harness::new(config());
    let mut rtp = Client::new(five_tuple(42100), "alice", "alice-pw");
    let r = rtp.transact(&mut h, Method::ALLOCATE, |b| {
        udp(b);
        b.attribute(attr::EVEN_PORT, &[0x80]);
    });
    assert_eq!(r.class, Class::Success);
    let even = r.relayed.unwrap();
    assert_eq!(even.port() % 2, 0);
    let p = turn_server::wire::StunPacket::new_checked(&r.bytes[..]).unwrap();
    let token = p
        .attributes()
        .find(|a| a.kind == attr::RESERVATION_TOKEN)
        .unwrap()
        .value;
    let token = token.to_vec();
    let mut rtcp = Client::new(five_tuple(42101), "alice", "alice-pw");
    let r = rtcp.transact(&mut h, Method::ALLOCATE, |b| {
        udp(b);
        b.attribute(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(r.relayed.map(|a| a.port()), Some(even.port() + 1));
    // A token is good once.
    let mut again = Client::new(five_tuple(42102), "alice", "alice-pw");
    let r = again.transact(&mut h, Method::ALLOCATE, |b| {
        udp(b);
        b.attribute(attr::RESERVATION_TOKEN, &token);
    });
    assert_eq!(r.code, Some(508));
}

#[test]
fn auth_errors() {
    let mut h = Harness::new(config());
    // 401: wrong password, unknown user.
    let mut c = Client::new(five_tuple(42001), "alice", "wrong");
    assert_eq!(c.transact(&mut h, Method::ALLOCATE, udp).code, Some(401));
    let mut c = Client::new(five_tuple(42002), "mallory", "x");
    assert_eq!(c.transact(&mut h, Method::ALLOCATE, udp).code, Some(401));
    // 438: a nonce we never minted.
    let mut c = Client::new(five_tuple(42003), "alice", "alice-pw");
    c.nonce = Some("0000000000000000ffffffffffffffff".into());
    let r = c.transact(&mut h, Method::ALLOCATE, udp);
    assert_eq!(r.class, Class::Success, "438 then a fresh nonce succeeds");
    assert_eq!(h.server.counters().error_count(438), 1);
    // 400: MESSAGE-INTEGRITY without USERNAME/REALM/NONCE.
    let txid = c.txid();
    let mut b = turn_server::wire::MessageBuilder::new(Method::REFRESH, Class::Request, txid);
    b.integrity(turn_server::wire::IntegrityKind::Sha1, b"k");
    let out = h.send(c.ft, &b.finish());
    assert_eq!(common::parse_response(&out[0].contents).code, Some(400));
    // 441: another user on the allocation's 5-tuple.
    let mut b = Client::new(c.ft, "bob", "bob-pw");
    assert_eq!(b.refresh(&mut h, 600).code, Some(441));
    // The fail_auth fault: every credential is wrong.
    h.server.set_faults(Faults {
        fail_auth: true,
        ..Faults::default()
    });
    assert_eq!(c.refresh(&mut h, 600).code, Some(401));
    assert!(
        h.server
            .counters()
            .dropped(turn_server::DropReason::AuthFailed)
            >= 3
    );
}

#[test]
fn permission_and_channel_errors() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(42010), "alice", "alice-pw");
    // 437: no allocation.
    assert_eq!(
        c.permit(&mut h, "127.0.0.1:1".parse().unwrap()).code,
        Some(437)
    );
    c.allocate(&mut h);
    // 403: private, link-local, CGNAT, multicast peers are denied by default.
    for peer in [
        "10.0.0.1:5",
        "192.168.1.1:5",
        "169.254.0.1:5",
        "100.64.0.1:5",
        "224.0.0.1:5",
    ] {
        assert_eq!(
            c.permit(&mut h, peer.parse().unwrap()).code,
            Some(403),
            "{peer}"
        );
        assert_eq!(
            c.bind(&mut h, 0x4000, peer.parse().unwrap()).code,
            Some(403),
            "{peer}"
        );
    }
    // 443: an IPv6 peer on an IPv4 relay.
    assert_eq!(
        c.permit(&mut h, "[2001:db8::1]:5".parse().unwrap()).code,
        Some(443)
    );
    // 400: no XOR-PEER-ADDRESS; bad channel numbers.
    assert_eq!(
        c.transact(&mut h, Method::CREATE_PERMISSION, |_| {}).code,
        Some(400)
    );
    let peer = "127.0.0.1:5".parse().unwrap();
    assert_eq!(c.bind(&mut h, 0x3FFF, peer).code, Some(400));
    assert_eq!(c.bind(&mut h, 0x8000, peer).code, Some(400));
    // A public peer is allowed.
    assert_eq!(
        c.permit(&mut h, "198.51.100.7:5".parse().unwrap()).class,
        Class::Success
    );
}

#[test]
fn quotas_and_refusal() {
    let mut config = config();
    config.user_quota = 2;
    config.total_quota = 3;
    let mut h = Harness::new(config);
    for port in [43000, 43001] {
        Client::new(five_tuple(port), "alice", "alice-pw").allocate(&mut h);
    }
    // 486: alice's quota.
    let mut c = Client::new(five_tuple(43002), "alice", "alice-pw");
    assert_eq!(c.transact(&mut h, Method::ALLOCATE, udp).code, Some(486));
    Client::new(five_tuple(43003), "bob", "bob-pw").allocate(&mut h);
    // 486: the server's total.
    let mut c = Client::new(five_tuple(43004), "bob", "bob-pw");
    assert_eq!(c.transact(&mut h, Method::ALLOCATE, udp).code, Some(486));
    // 508: refuse_allocations fault.
    let mut config = common::config();
    config.min_port = 50000;
    let mut h = Harness::new(config);
    h.server.set_faults(Faults {
        refuse_allocations: true,
        ..Faults::default()
    });
    let mut c = Client::new(five_tuple(43005), "alice", "alice-pw");
    assert_eq!(c.transact(&mut h, Method::ALLOCATE, udp).code, Some(508));
}

#[test]
fn port_range_exhaustion_is_508() {
    let mut config = config();
    config.min_port = 50000;
    config.max_port = 50001;
    let mut h = Harness::new(config);
    Client::new(five_tuple(44000), "alice", "alice-pw").allocate(&mut h);
    Client::new(five_tuple(44001), "alice", "alice-pw").allocate(&mut h);
    let mut c = Client::new(five_tuple(44002), "alice", "alice-pw");
    assert_eq!(c.transact(&mut h, Method::ALLOCATE, udp).code, Some(508));
}

#[test]
fn faults_unresponsive_and_delay() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(45000), "alice", "alice-pw");
    h.server.set_faults(Faults {
        unresponsive: true,
        ..Faults::default()
    });
    let txid = c.txid();
    assert!(
        h.send(c.ft, &c.request(Method::BINDING, txid, |_| {}))
            .is_empty()
    );
    assert_eq!(
        h.server.counters().dropped(turn_server::DropReason::Fault),
        1
    );
    let delay = std::time::Duration::from_millis(40);
    h.server.set_faults(Faults {
        delay,
        ..Faults::default()
    });
    assert!(
        h.send(c.ft, &c.request(Method::BINDING, txid, |_| {}))
            .is_empty()
    );
    assert_eq!(h.server.poll_timeout(), Some(h.now + delay));
    assert!(
        h.advance(delay - std::time::Duration::from_millis(1))
            .is_empty()
    );
    assert_eq!(h.advance(std::time::Duration::from_millis(1)).len(), 1);
}

#[test]
fn bandwidth_cap_drops_excess() {
    let mut config = config();
    config.bandwidth_bytes_per_sec = 1000;
    let mut h = Harness::new(config);
    let mut c = Client::new(five_tuple(46000), "alice", "alice-pw");
    let relay = c.allocate(&mut h);
    let peer = "127.0.0.1:9300".parse().unwrap();
    c.permit(&mut h, peer);
    let sent: usize = (0..20)
        .map(|_| h.peer_send(relay, peer, &[0; 100]).len())
        .sum();
    assert_eq!(sent, 10, "one second of burst at 1000 B/s");
    assert_eq!(
        h.server
            .counters()
            .dropped(turn_server::DropReason::Bandwidth),
        10
    );
    h.advance(std::time::Duration::from_millis(500));
    let sent: usize = (0..20)
        .map(|_| h.peer_send(relay, peer, &[0; 100]).len())
        .sum();
    assert_eq!(sent, 5);
}

#[test]
fn ipv6_relay_when_configured() {
    let mut config = config();
    config.relay_ipv6 = Some("::1".parse().unwrap());
    let mut h = Harness::new(config);
    let mut c = Client::new(five_tuple(48000), "alice", "alice-pw");
    let r = c.transact(&mut h, Method::ALLOCATE, |b| {
        udp(b);
        b.u32_attribute(attr::REQUESTED_ADDRESS_FAMILY, 2 << 24);
    });
    assert_eq!(r.class, Class::Success);
    assert_eq!(r.relayed.unwrap().ip().to_string(), "::1");
    // 443: an IPv4 peer on an IPv6 relay; a Refresh naming IPv4 likewise.
    assert_eq!(
        c.permit(&mut h, "127.0.0.1:5".parse().unwrap()).code,
        Some(443)
    );
    assert_eq!(
        c.permit(&mut h, "[::1]:5".parse().unwrap()).class,
        Class::Success
    );
    let r = c.transact(&mut h, Method::REFRESH, |b| {
        b.u32_attribute(attr::REQUESTED_ADDRESS_FAMILY, 1 << 24);
    });
    assert_eq!(r.code, Some(443));
}
