//! The mail transaction (RFC 5321 §3.3): the envelope from MAIL to the end
//! of the data, and the BDAT body while its chunks arrive.

use baton_spool::QueueId;

use super::budget::Held;
use super::AcceptedRecipient;
use crate::smtp::data::DotStuffer;

/// Begun by MAIL; ended by the end of the data, RSET, EHLO/HELO or QUIT.
pub(super) struct Transaction {
    /// `local@domain`; empty for `<>`.
    pub reverse_path: Vec<u8>,
    /// Canonical MAIL parameters.
    pub mail_params: Vec<u8>,
    /// RFC 6531: UTF-8 allowed in paths and commands from here on.
    pub smtputf8: bool,
    pub recipients: Vec<AcceptedRecipient>,
    /// Recipients answered `250` but left out: suppressed, with
    /// `suppression.action = "drop"`. They count for DATA and the
    /// recipient limit as if accepted, so the client cannot tell.
    pub dropped: usize,
    /// The body once a first BDAT chunk was accepted (RFC 3030).
    pub chunks: Option<ChunkedBody>,
}

/// A BDAT message under construction.
pub(super) struct ChunkedBody {
    pub queue_id: QueueId,
    pub stuffer: DotStuffer,
    /// What the stuffer's buffer holds of the server's data budget.
    pub held: Held,
}

impl ChunkedBody {
    /// As `DataBody::account`: past the data budget the body is dropped
    /// and the message refused with `452 4.3.1` at the end of the chunk.
    pub fn account(&mut self) {
        let bytes = self.stuffer.held_bytes() as u64;
        if !self.stuffer.is_discarded() && !self.held.resize(bytes) {
            self.stuffer.discard();
        }
    }
}

impl Transaction {
    /// No recipient was answered `250`: nothing to send data for.
    pub fn has_no_recipients(&self) -> bool {
        self.recipients.is_empty() && self.dropped == 0
    }

    pub fn new(reverse_path: Vec<u8>, mail_params: Vec<u8>, smtputf8: bool) -> Transaction {
        Transaction {
            reverse_path,
            mail_params,
            smtputf8,
            recipients: Vec::new(),
            dropped: 0,
            chunks: None,
        }
    }
}
