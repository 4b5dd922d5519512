//! The wire parsers on arbitrary bytes: STUN header and attributes, integrity checks,
//! ChannelData and stream framing. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turn_server::wire::{ChannelData, StunPacket, StunRepr, frame_len};

fuzz_target!(|data: &[u8]| {
    let _ = frame_len(data);
    if let Ok(cd) = ChannelData::new_checked(data) {
        let _ = (cd.channel(), cd.data());
    }
    let Ok(packet) = StunPacket::new_checked(data) else {
        return;
    };
    let _ = (packet.method(), packet.class(), packet.transaction_id());
    for a in packet.attributes() {
        let _ = (a.kind, a.value.len(), a.offset);
    }
    if let Ok(repr) = StunRepr::parse(&packet) {
        let _ = repr.verify_integrity(packet.message(), b"key");
        let _ = repr.integrity_kind();
    }
});
