//! `Command::parse` on arbitrary bytes, with and without SMTPUTF8: never
//! panics, and a parsed command's canonical form parses back to itself.

#![no_main]

use baton::smtp::command::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    for smtputf8 in [false, true] {
        let Ok(command) = Command::parse(line, smtputf8) else {
            continue;
        };
        if matches!(command, Command::Unknown(_)) {
            continue;
        }
        let canonical = command.to_bytes();
        let canonical = canonical
            .strip_suffix(b"\r\n")
            .expect("to_bytes ends in CRLF");
        assert_eq!(
            Command::parse(canonical, smtputf8),
            Ok(command.clone()),
            "canonical form {:?} of {:?} does not parse back",
            String::from_utf8_lossy(canonical),
            String::from_utf8_lossy(line),
        );
    }
});
