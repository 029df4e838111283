//! An inbound `Session` fed arbitrary bytes, in fuzzer-chosen chunk sizes
//! (STARTTLS offered or not, its handshake reported as the shard would),
//! with a tiny deterministic `SessionContext` (as `inbound/testing.rs`
//! builds for the unit tests): it must never panic, whatever the client
//! sends, the limits, or the spool's answers.

#![no_main]

use std::sync::Arc;

use baton::inbound::{
    BareLineEndings, Session, SessionConfig, SessionContext, SessionLimits, StoreError,
};
use baton::tls::TlsInfo;
use baton_spool::QueueId;
use libfuzzer_sys::fuzz_target;

/// A fixed clock and queue ids 1, 2, 3...
struct Context {
    last_id: u64,
}

impl SessionContext for Context {
    fn now_unix_secs(&self) -> u64 {
        1_795_370_400
    }

    fn next_queue_id(&mut self) -> QueueId {
        self.last_id += 1;
        QueueId(self.last_id)
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, chunk, rest @ ..] = data else {
        return;
    };
    let mut config = SessionConfig::new("mx.example.net");
    config.chunking = flags & 1 == 0;
    if flags & 2 != 0 {
        config.bare_line_endings = BareLineEndings::Normalize;
    }
    if flags & 4 != 0 {
        // Small limits, so that every "over the limit" path is reachable.
        config.limits = SessionLimits {
            command_line_bytes_max: 64,
            text_line_bytes_max: 40,
            message_bytes_max: 256,
            recipients_per_message_max: 2,
            commands_per_session_max: 24,
            errors_per_session_max: 4,
            received_headers_max: 3,
        };
    }
    // STARTTLS offered, and required before MAIL, by the chunk byte's top
    // bits; the rest is the chunk size.
    config.starttls = chunk & 0x80 != 0;
    config.tls_required = config.starttls && chunk & 0x40 != 0;
    let relay_allowed = flags & 8 == 0;
    let peer = "192.0.2.7:40000".parse().unwrap();
    let local = "192.0.2.1:25".parse().unwrap();
    let mut session = Session::new(Arc::new(config), peer, local, relay_allowed);
    let mut ctx = Context { last_id: 0 };
    let chunk = usize::from(*chunk & 0x3f).max(1);
    let mut stores = 0u32;
    let mut drain = |session: &mut Session, ctx: &mut Context| {
        loop {
            let n = session.output().len();
            session.consume_output(n);
            let Some(message) = session.take_message() else {
                return;
            };
            stores += 1;
            // Mostly success, sometimes a full or failing spool.
            let result = match (flags >> 4, stores % 3) {
                (0, _) | (_, 0) | (_, 1) => Ok(message.queue_id),
                (1, _) => Err(StoreError::Full),
                _ => Err(StoreError::Failed),
            };
            session.stored(result, ctx);
        }
    };
    for piece in rest.chunks(chunk) {
        session.receive(piece, &mut ctx);
        drain(&mut session, &mut ctx);
        if session.starttls_requested() {
            // The shard's part: the handshake succeeded.
            session.tls_established(TlsInfo::new(
                "TLSv1.3",
                "TLS_AES_128_GCM_SHA256",
                128,
                false,
            ));
        }
        if session.is_closing() {
            break;
        }
    }
    if flags & 0x80 != 0 {
        session.timed_out();
    } else if flags & 0x40 != 0 {
        session.shut_down();
    }
    drain(&mut session, &mut ctx);
    let _ = (session.phase(), session.wants_input(), session.helo_name());
});
