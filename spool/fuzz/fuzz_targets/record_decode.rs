//! Spool record decoding on arbitrary bytes: `decode_frame`,
//! `MessageView::decode` (and walking its recipients) and `Outcome::decode`
//! never panic. A CRC guards every frame, so the bytes are also wrapped in a
//! valid frame with `encode_frame` to reach the payload decoders through
//! `decode_frame`, which must give the payload back exactly.

#![no_main]

use baton_spool::record::{
    decode_frame, encode_frame, frame_len, MessageView, Outcome, RecordType,
};
use baton_spool::SegmentId;
use libfuzzer_sys::fuzz_target;

fn decode_payload(payload: &[u8]) {
    if let Ok(message) = MessageView::decode_kind(RecordType::MessageV2, payload) {
        let _ = message.recipients().count();
    }
    if let Ok(message) = MessageView::decode(payload) {
        assert_eq!(
            message.recipients().count(),
            message.recipient_count() as usize
        );
    }
    let _ = Outcome::decode(payload);
}

fuzz_target!(|data: &[u8]| {
    // Raw bytes as a frame: with the segment id the header names (so the
    // checks reach the length and the CRC) and with another one.
    let named = data
        .get(8..16)
        .map_or(0, |id| u64::from_le_bytes(id.try_into().unwrap()));
    for segment in [SegmentId(named), SegmentId(named.wrapping_add(1))] {
        if let Ok(frame) = decode_frame(data, segment) {
            assert!(frame.len <= data.len());
            assert_eq!(frame.len, frame_len(frame.payload.len()));
            decode_payload(frame.payload);
        }
    }
    decode_payload(data);

    // The bytes as the payload of a valid frame.
    let kind = if data.first().is_some_and(|b| b & 1 == 0) {
        RecordType::Message
    } else {
        RecordType::Outcome
    };
    let mut out = Vec::new();
    let written = encode_frame(&mut out, SegmentId(7), 42, kind, |out| {
        out.extend_from_slice(data)
    });
    let frame = decode_frame(&out, SegmentId(7)).expect("an encoded frame decodes");
    assert_eq!(frame.len, written);
    assert_eq!((frame.seq, frame.kind, frame.payload), (42, kind, data));
});
