//! A corpus of malformed messages is dropped and counted by reason, never answered with more
//! than an error and never a panic; random bytes likewise (proptest).
mod common;

use common::{Client, Harness, config, five_tuple};
use proptest::prelude::*;
use turn_server::DropReason;
use turn_server::wire::{Class, MessageBuilder, Method, TransactionId, attr};

fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let txid = TransactionId([9; 12]);
    let good = {
        let mut b = MessageBuilder::new(Method::BINDING, Class::Request, txid);
        b.attribute(attr::SOFTWARE, b"corpus");
        b.finish_with_fingerprint()
    };
    let mut bad_cookie = good.clone();
    bad_cookie[4] ^= 0xFF;
    let mut bad_fingerprint = good.clone();
    *bad_fingerprint.last_mut().unwrap() ^= 1;
    let mut overrun = good.clone();
    overrun[HEADER_ATTR_LEN] = 0xFF;
    let mut odd_length = good.clone();
    odd_length[3] = 3;
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 4);
    let response = MessageBuilder::new(Method::BINDING, Class::Success, txid).finish();
    vec![
        ("empty", vec![]),
        ("one byte", vec![0]),
        ("short header", good[..19].to_vec()),
        ("bad cookie", bad_cookie),
        ("bad fingerprint", bad_fingerprint),
        ("attribute overrun", overrun),
        ("length not multiple of 4", odd_length),
        ("truncated body", truncated),
        ("top bits 10", vec![0x80; 24]),
        ("top bits 11", vec![0xC0; 24]),
        ("channel data short", vec![0x40, 0x00, 0x00]),
        ("channel data overlong", vec![0x40, 0x00, 0x00, 0x10, 1, 2]),
        (
            "channel data without allocation",
            vec![0x7F, 0xFF, 0x00, 0x00],
        ),
        ("unsolicited response", response),
        ("send indication without data", {
            let mut b = MessageBuilder::new(Method::SEND, Class::Indication, txid);
            b.xor_address(attr::XOR_PEER_ADDRESS, "127.0.0.1:1".parse().unwrap());
            b.finish()
        }),
    ]
}

/// Offset of the first attribute's length field.
const HEADER_ATTR_LEN: usize = 22;

#[test]
fn malformed_corpus_is_dropped_and_counted() {
    let mut h = Harness::new(config());
    let ft = five_tuple(47000);
    let corpus = corpus();
    for (name, bytes) in &corpus {
        let out = h.send(ft, bytes);
        assert!(out.is_empty(), "{name}: answered {out:?}");
    }
    let c = h.server.counters();
    let malformed = c.dropped(DropReason::Malformed);
    let unexpected = c.dropped(DropReason::Unexpected);
    let no_allocation = c.dropped(DropReason::NoAllocation);
    assert_eq!(
        malformed + unexpected + no_allocation,
        corpus.len() as u64,
        "{c:?}"
    );
    assert_eq!((unexpected, no_allocation), (1, 1));
}

#[test]
fn malformed_attribute_in_a_request_is_400() {
    let mut h = Harness::new(config());
    let mut c = Client::new(five_tuple(47001), "alice", "alice-pw");
    let r = c.transact(&mut h, Method::ALLOCATE, |b| {
        b.attribute(attr::LIFETIME, &[1, 2]);
    });
    assert_eq!(r.code, Some(400));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                stun_header in any::<bool>()) {
        let mut h = Harness::new(config());
        let mut bytes = bytes;
        if stun_header && bytes.len() >= 20 {
            // Make it look like STUN so the attribute parser runs.
            bytes[0] &= 0x3F;
            bytes[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
            let len = ((bytes.len() - 20) & !3) as u16;
            bytes[2..4].copy_from_slice(&len.to_be_bytes());
        }
        let ft = five_tuple(47002);
        let out = h.send(ft, &bytes);
        prop_assert!(out.len() <= 1);
        let relay = "127.0.0.1:50000".parse().unwrap();
        let _ = h.peer_send(relay, "127.0.0.1:1".parse().unwrap(), &bytes);
    }
}
