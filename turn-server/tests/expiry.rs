//! Expiry on an explicit clock, without sleeping: allocations (600 s default), permissions
//! (300 s), channel bindings (600 s, then 5 minutes of quarantine) and nonces (438).
mod common;

use std::time::Duration;

use common::{Client, Harness, config, five_tuple};
use turn_server::wire::{ChannelData, Class, Method};

const SEC: Duration = Duration::from_secs(1);

#[test]
fn allocation_expires_after_its_lifetime_unless_refreshed() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(41000), "alice", "alice-pw");
    let relay = c.allocate(&mut h);
    h.advance(599 * SEC);
    assert_eq!(h.server.gauges().allocations, 1);
    // Keep the nonce fresh enough: it lives 600 s too.
    assert_eq!(c.refresh(&mut h, 600).class, Class::Success);
    h.advance(599 * SEC);
    assert_eq!(h.server.gauges().allocations, 1);
    h.advance(2 * SEC);
    assert_eq!(h.server.gauges().allocations, 0);
    assert_eq!(h.closed_relays, vec![relay]);
    assert_eq!(h.server.counters().allocations_expired, 1);
    assert_eq!(h.server.poll_timeout(), None, "no timer once idle");
}

#[test]
fn permission_lapses_after_300_s_and_a_refresh_extends_it() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(41001), "alice", "alice-pw");
    let relay = c.allocate(&mut h);
    c.refresh(&mut h, 3600);
    let peer = "127.0.0.1:9100".parse().unwrap();
    c.permit(&mut h, peer);
    h.advance(299 * SEC);
    assert_eq!(h.peer_send(relay, peer, b"x").len(), 1);
    h.advance(2 * SEC);
    assert!(
        h.peer_send(relay, peer, b"x").is_empty(),
        "permission lapsed at 300 s"
    );
    assert_eq!(h.server.gauges().permissions, 0, "swept");
    c.permit(&mut h, peer);
    h.advance(200 * SEC);
    c.permit(&mut h, peer);
    h.advance(200 * SEC);
    assert_eq!(
        h.peer_send(relay, peer, b"x").len(),
        1,
        "refreshed permission holds"
    );
}

#[test]
fn channel_binding_lapses_after_600_s_and_is_quarantined() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(41002), "alice", "alice-pw");
    c.allocate(&mut h);
    let peer = "127.0.0.1:9200".parse().unwrap();
    let other = "127.0.0.1:9201".parse().unwrap();
    assert_eq!(c.bind(&mut h, 0x4001, peer).class, Class::Success);
    // Rebinding rules while bound.
    assert_eq!(c.bind(&mut h, 0x4001, other).code, Some(400));
    assert_eq!(c.bind(&mut h, 0x4002, peer).code, Some(400));
    assert_eq!(
        c.bind(&mut h, 0x4001, peer).class,
        Class::Success,
        "refresh"
    );
    c.refresh(&mut h, 3600);
    h.advance(599 * SEC);
    assert_eq!(
        h.send(c.ft, &ChannelData::<&[u8]>::emit(0x4001, b"x", false))
            .len(),
        0,
        "the permission (300 s) lapsed before the channel"
    );
    c.permit(&mut h, peer);
    assert_eq!(
        h.send(c.ft, &ChannelData::<&[u8]>::emit(0x4001, b"x", false))
            .len(),
        1
    );
    h.advance(2 * SEC);
    assert!(
        h.send(c.ft, &ChannelData::<&[u8]>::emit(0x4001, b"x", false))
            .is_empty()
    );
    assert_eq!(h.server.gauges().channels, 0);
    // Within 5 minutes the number cannot go to another peer, but may come back to its own.
    assert_eq!(c.bind(&mut h, 0x4001, other).code, Some(400));
    h.advance(300 * SEC);
    assert_eq!(c.bind(&mut h, 0x4001, other).class, Class::Success);
}

#[test]
fn nonce_goes_stale_after_its_lifetime() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(41003), "alice", "alice-pw");
    c.allocate(&mut h);
    c.refresh(&mut h, 3600);
    let old = c.nonce.clone();
    h.advance(601 * SEC);
    let txid = c.txid();
    let req = c.request(Method::REFRESH, txid, |_| {});
    let out = h.send(c.ft, &req);
    let r = common::parse_response(&out[0].contents);
    assert_eq!(r.code, Some(438));
    assert!(r.nonce.is_some() && r.nonce != old);
    // The client's helper retries with the new nonce and succeeds.
    assert_eq!(c.refresh(&mut h, 600).class, Class::Success);
}

#[test]
fn time_never_goes_backwards() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(41004), "alice", "alice-pw");
    c.allocate(&mut h);
    h.advance(590 * SEC);
    let latest = h.now;
    // A caller's stale instant, five minutes back, in a timeout and then in a Refresh: the
    // server keeps its clock at the latest instant it has seen.
    h.now = latest - 300 * SEC;
    h.server.handle_timeout(h.now);
    assert_eq!(h.server.gauges().allocations, 1);
    assert_eq!(c.refresh(&mut h, 600).class, Class::Success);
    h.now = latest;
    // So the refresh counts from `latest`: the allocation lives until latest + 600 s, not
    // 300 s less as it would on the stale clock.
    h.advance(599 * SEC);
    assert_eq!(h.server.gauges().allocations, 1);
    h.advance(2 * SEC);
    assert_eq!(h.server.gauges().allocations, 0);
}
