//! Password algorithms (RFC 8489 §9.2): every challenge offers SHA-256 and MD5 behind the nonce
//! cookie, a client may derive its key with SHA-256, and a request that drops or alters the
//! offered list (a bid-down to MD5) is refused.
mod common;

use common::{Client, Harness, config, five_tuple};
use turn_server::auth::PASSWORD_ALGORITHMS;
use turn_server::wire::{Class, IntegrityKind, Method, StunPacket, attr};

fn udp(b: &mut turn_server::wire::MessageBuilder) {
    b.u32_attribute(attr::REQUESTED_TRANSPORT, 17 << 24);
}

#[test]
fn challenges_offer_password_algorithms_behind_the_nonce_cookie() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(43000), "alice", "alice-pw");
    let txid = c.txid();
    let out = h.send(c.ft, &c.request(Method::ALLOCATE, txid, udp));
    let r = common::parse_response(&out[0].contents);
    assert_eq!(r.code, Some(401));
    assert!(r.nonce.as_deref().unwrap().starts_with("obMatJos2gAAA"));
    let packet = StunPacket::new_checked(&out[0].contents[..]).unwrap();
    let offered = packet
        .attributes()
        .find(|a| a.kind == attr::PASSWORD_ALGORITHMS)
        .map(|a| a.value.to_vec());
    // SHA-256 (2) first, then MD5 (1), neither with parameters.
    assert_eq!(offered.as_deref(), Some(&[0, 2, 0, 0, 0, 1, 0, 0][..]));
}

#[test]
fn a_key_derived_with_sha256_allocates() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(43001), "alice", "alice-pw");
    c.integrity = IntegrityKind::Sha256;
    c.password_algorithm = Some((2, PASSWORD_ALGORITHMS.to_vec()));
    let relayed = c.allocate(&mut h);
    assert!(relayed.port() > 0);
    // A wrong password under SHA-256 is still a 401.
    let mut wrong = Client::new(five_tuple(43002), "alice", "not-it");
    wrong.integrity = IntegrityKind::Sha256;
    wrong.password_algorithm = Some((2, PASSWORD_ALGORITHMS.to_vec()));
    let r = wrong.transact(&mut h, Method::ALLOCATE, udp);
    assert_eq!(r.code, Some(401));
}

#[test]
fn a_dropped_or_altered_algorithm_list_is_refused() {
    let mut h = Harness::new(config());
    for (port, choice) in [
        // PASSWORD-ALGORITHM with an empty list, not the one offered.
        (43003, (2, Vec::new())),
        // The list cut down to MD5 on the way (a bid-down attack).
        (43004, (1, vec![0, 1, 0, 0])),
        // An algorithm the server never offered.
        (43005, (3, PASSWORD_ALGORITHMS.to_vec())),
    ] {
        let mut c = Client::new(five_tuple(port), "alice", "alice-pw");
        c.password_algorithm = Some(choice.clone());
        let r = c.transact(&mut h, Method::ALLOCATE, udp);
        assert_eq!((r.class, r.code), (Class::Error, Some(400)), "{choice:?}");
    }
    // MD5 chosen from the full list is fine.
    let mut c = Client::new(five_tuple(43006), "alice", "alice-pw");
    c.password_algorithm = Some((1, PASSWORD_ALGORITHMS.to_vec()));
    c.allocate(&mut h);
}
