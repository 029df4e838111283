//! Test helpers: a deterministic context and a driver that plays the
//! shard's part (feed, collect output, store messages at once).

use std::sync::Arc;

use baton_spool::QueueId;

use super::{ReceivedMessage, Session, SessionConfig, SessionContext};
use crate::smtp::date::rfc5322_date;

pub(crate) const NOW: u64 = 1_795_370_400;
pub(crate) const HOSTNAME: &str = "mx.example.net";
pub(crate) const PEER: &str = "192.0.2.7:40000";

pub(crate) const EHLO_REPLY: &str = "250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n\
    250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n";
pub(crate) const ENVELOPE: &str =
    "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<d@e.example>\r\n";
pub(crate) const ENVELOPE_REPLIES: &str = "250-mx.example.net\r\n250-PIPELINING\r\n\
    250-SIZE 52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n\
    250 CHUNKING\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n";

/// A fixed clock and queue ids 1, 2, 3...
pub(crate) struct TestContext {
    pub last_id: u64,
}

impl SessionContext for TestContext {
    fn now_unix_secs(&self) -> u64 {
        NOW
    }

    fn next_queue_id(&mut self) -> QueueId {
        self.last_id += 1;
        QueueId(self.last_id)
    }

    fn take_user_message(&mut self, identity: &crate::auth::verify::Identity) -> bool {
        identity.policy.messages_per_hour != Some(0)
    }

    /// `rejected@…` and `dropped@…` are on the list, for every sender;
    /// `shop-only@…` for mail from `shop.example` alone.
    fn suppressed(
        &mut self,
        recipient: &[u8],
        sender_domain: &[u8],
        _user: Option<&str>,
    ) -> Option<super::Suppression> {
        if recipient.starts_with(b"rejected@")
            || (recipient.starts_with(b"shop-only@") && sender_domain == b"shop.example")
        {
            Some(super::Suppression::Reject)
        } else if recipient.starts_with(b"dropped@") {
            Some(super::Suppression::Drop)
        } else {
            None
        }
    }
}

/// The `Received:` header the driver's session writes for queue id `id`.
pub(crate) fn received(protocol: &str, id: u64) -> String {
    format!(
        "Received: from c.example ([192.0.2.7])\r\n\tby {HOSTNAME} (baton) with {protocol} id {};\r\n\t{}\r\n",
        QueueId(id),
        rfc5322_date(NOW)
    )
}

/// The `Date` and `Message-ID` fields the session adds, right after its
/// `Received:`, to a message from a trusted client that has none.
pub(crate) fn fixups(id: u64) -> String {
    format!(
        "Date: {}\r\nMessage-ID: <{}.{NOW}@{HOSTNAME}>\r\n",
        rfc5322_date(NOW),
        QueueId(id)
    )
}

pub(crate) struct Driver {
    pub session: Session,
    pub ctx: TestContext,
    /// Everything the session sent.
    pub out: Vec<u8>,
    pub messages: Vec<ReceivedMessage>,
    /// Take each message and answer `stored(Ok)` at once.
    pub auto_store: bool,
}

impl Driver {
    pub fn new(relay_allowed: bool) -> Driver {
        Driver::with_config(SessionConfig::new(HOSTNAME), relay_allowed)
    }

    pub fn with_config(config: SessionConfig, relay_allowed: bool) -> Driver {
        let peer = PEER.parse().unwrap();
        let local = "192.0.2.1:25".parse().unwrap();
        let session = Session::new(Arc::new(config), peer, local, relay_allowed);
        let mut driver = Driver {
            session,
            ctx: TestContext { last_id: 0 },
            out: Vec::new(),
            messages: Vec::new(),
            auto_store: true,
        };
        driver.collect();
        driver
    }

    pub fn feed(&mut self, input: &[u8]) {
        self.session.receive(input, &mut self.ctx);
        self.collect();
    }

    /// Moves output out of the session, and stores messages if asked.
    pub fn collect(&mut self) {
        loop {
            let n = self.session.output().len();
            self.out.extend_from_slice(self.session.output());
            self.session.consume_output(n);
            if !self.auto_store {
                return;
            }
            let Some(message) = self.session.take_message() else {
                return;
            };
            let queue_id = message.queue_id;
            self.messages.push(message);
            self.session.stored(Ok(queue_id), &mut self.ctx);
        }
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }

    /// Feeds `input`; returns what the session answered to it.
    pub fn send(&mut self, input: &[u8]) -> String {
        let before = self.out.len();
        self.feed(input);
        String::from_utf8_lossy(&self.out[before..]).into_owned()
    }

    /// Reports the verifier's verdict; returns what the session answered.
    pub fn verdict(&mut self, verdict: crate::auth::verify::Verdict) -> String {
        let before = self.out.len();
        self.session.auth_verdict(verdict, &mut self.ctx);
        self.collect();
        String::from_utf8_lossy(&self.out[before..]).into_owned()
    }
}

/// The replies to `input` fed at once, after the greeting, relaying
/// allowed.
pub(crate) fn transcript(input: &[u8]) -> String {
    transcript_with(SessionConfig::new(HOSTNAME), input)
}

pub(crate) fn transcript_with(config: SessionConfig, input: &[u8]) -> String {
    let mut driver = Driver::with_config(config, true);
    let greeting = driver.out.len();
    driver.feed(input);
    String::from_utf8_lossy(&driver.out[greeting..]).into_owned()
}
