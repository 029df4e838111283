//! `DataReader` on arbitrary bytes split at a fuzzer-chosen point: the
//! result equals feeding it whole. Plus the `dot_stuff`/`dot_unstuff`
//! round trip for content with only CRLF line ends.

#![no_main]

use baton::smtp::data::{dot_stuff, dot_unstuff, BareLineEndings, BodyLimits, DataReader};
use libfuzzer_sys::fuzz_target;

/// (bytes used, done, violation, body) after feeding `chunks` in order,
/// each chunk only while the reader still wants data.
fn read(limits: BodyLimits, chunks: &[&[u8]]) -> (usize, bool, baton::smtp::data::Body) {
    let mut reader = DataReader::new(limits, b"Received: prefix\r\n".to_vec());
    let mut used = 0;
    for chunk in chunks {
        if reader.is_done() {
            break;
        }
        used += reader.feed(chunk);
    }
    let done = reader.is_done();
    (used, done, reader.finish())
}

fuzz_target!(|data: &[u8]| {
    let [flags, cut, line, rest @ ..] = data else {
        return;
    };
    let limits = BodyLimits {
        text_line_bytes_max: if flags & 1 == 0 {
            usize::from(*line).max(3)
        } else {
            1000
        },
        message_bytes_max: if flags & 2 == 0 {
            u64::from(*cut) * 4
        } else {
            u64::MAX
        },
        bare_line_endings: if flags & 4 == 0 {
            BareLineEndings::Reject
        } else {
            BareLineEndings::Normalize
        },
    };
    let input = rest;
    let at = if input.is_empty() {
        0
    } else {
        usize::from(*cut) % (input.len() + 1)
    };
    let whole = read(limits, &[input]);
    let split = read(limits, &[&input[..at], &input[at..]]);
    assert_eq!(split, whole, "split at {at} differs from whole");
    let bytewise: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(
        read(limits, &bytewise),
        whole,
        "byte by byte differs from whole"
    );

    // Content with only CRLF line ends, ending in CRLF, round-trips through
    // stuffing, and DATA reads its stuffed form back as is.
    let clean: Vec<u8> = input
        .split(|&byte| byte == b'\r' || byte == b'\n')
        .flat_map(|line| [line, b"\r\n"].concat())
        .collect();
    let wire = dot_stuff(&clean);
    assert_eq!(dot_unstuff(&wire), clean, "dot_unstuff(dot_stuff(x)) != x");
    let framed = [wire.as_slice(), b".\r\n"].concat();
    let (used, done, body) = read(BodyLimits::UNLIMITED, &[&framed]);
    assert!(done, "stuffed content plus . CRLF must end the data");
    assert_eq!(used, framed.len());
    assert_eq!(body.violation, None);
    assert_eq!(&body.wire[b"Received: prefix\r\n".len()..], wire.as_slice());
});
