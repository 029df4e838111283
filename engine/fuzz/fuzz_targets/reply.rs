//! `parse_reply` on arbitrary bytes, with the default limits and with small
//! ones chosen by the first two bytes: never panics, never claims more bytes
//! than it was given, and a reply parses the same from exactly its bytes.

#![no_main]

use baton::smtp::reply::{parse_reply, ReplyLimits};
use libfuzzer_sys::fuzz_target;

fn check(input: &[u8], limits: &ReplyLimits) {
    let result = parse_reply(input, limits);
    if let Ok(Some((reply, used))) = &result {
        assert!(
            *used > 0 && *used <= input.len(),
            "used {used} of {}",
            input.len()
        );
        assert_eq!(
            parse_reply(&input[..*used], limits),
            Ok(Some((reply.clone(), *used))),
            "a reply must not depend on the bytes after it"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, &ReplyLimits::default());
    if let [line, lines, rest @ ..] = data {
        let bounded = ReplyLimits {
            line_bytes_max: usize::from(*line).max(1),
            lines_max: usize::from(*lines % 8).max(1),
        };
        check(rest, &bounded);
    }
});
