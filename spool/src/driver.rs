//! A simple driver for a [`Writer`], for tests, tools and benchmarks.
//!
//! Writes go through `pwrite` on the calling thread (they land in the page
//! cache and are quick); datasyncs run on a helper thread, so the caller
//! keeps appending while a commit is in flight, as the engine's shards do
//! with their rings. Group commit therefore batches here exactly as it does
//! in the engine.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::error::{Error, Result};
use crate::record::{NewMessage, Outcome};
use crate::segment::Segment;
use crate::writer::{Appended, Io, OpId, Writer};
use crate::Ticket;

/// A [`Writer`] with its I/O done by system calls.
pub struct BlockingWriter {
    writer: Writer,
    sync_requests: Option<Sender<(OpId, Arc<Segment>)>>,
    sync_done: Receiver<(OpId, io::Result<()>)>,
    syncer: Option<JoinHandle<()>>,
}

impl BlockingWriter {
    pub fn new(writer: Writer) -> BlockingWriter {
        let (sync_requests, requests) = unbounded::<(OpId, Arc<Segment>)>();
        let (done, sync_done) = unbounded();
        let syncer = thread::Builder::new()
            .name(format!("spool-sync-{}", writer.id()))
            .spawn(move || {
                for (id, segment) in requests {
                    let result = segment.file().sync_data();
                    if done.send((id, result)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the sync thread");
        BlockingWriter {
            writer,
            sync_requests: Some(sync_requests),
            sync_done,
            syncer: Some(syncer),
        }
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Appends a message and submits what can be submitted.
    pub fn append_message(&mut self, message: &NewMessage<'_>) -> Result<Appended> {
        let appended = self.writer.append_message(message)?;
        self.pump()?;
        Ok(appended)
    }

    /// Appends an outcome and submits what can be submitted.
    pub fn append_outcome(&mut self, outcome: &Outcome<'_>) -> Result<Appended> {
        let appended = self.writer.append_outcome(outcome)?;
        self.pump()?;
        Ok(appended)
    }

    pub(crate) fn writer_mut(&mut self) -> &mut Writer {
        &mut self.writer
    }

    /// Every ticket up to this one is durable.
    pub fn durable(&mut self) -> Result<Ticket> {
        self.pump()?;
        Ok(self.writer.durable())
    }

    /// Performs writes, hands syncs to the sync thread, and takes in the
    /// syncs that completed, without waiting.
    pub fn pump(&mut self) -> Result<()> {
        loop {
            while let Ok((id, result)) = self.sync_done.try_recv() {
                self.writer.complete_sync(id, result);
            }
            match self.writer.next_io() {
                Some(Io::Write(op)) => {
                    let result = op
                        .segment
                        .file()
                        .write_all_at(&op.buf, op.offset)
                        .map(|()| op.buf.len());
                    self.writer.complete_write(op.id, result, op.buf);
                }
                Some(Io::Sync(op)) => {
                    let requests = self.sync_requests.as_ref().expect("sync thread runs");
                    requests
                        .send((op.id, op.segment))
                        .expect("sync thread runs");
                }
                None => break,
            }
        }
        match self.writer.failure() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Blocks until `ticket` is durable.
    pub fn wait(&mut self, ticket: Ticket) -> Result<()> {
        loop {
            self.pump()?;
            if self.writer.durable() >= ticket {
                return Ok(());
            }
            assert!(
                self.writer.io_in_flight(),
                "ticket {ticket:?} is not durable and nothing is in flight"
            );
            let (id, result) = self
                .sync_done
                .recv()
                .map_err(|_| Error::Config("the sync thread has stopped".into()))?;
            self.writer.complete_sync(id, result);
        }
    }

    /// Blocks until everything appended so far is durable.
    pub fn flush(&mut self) -> Result<Ticket> {
        let last = self.writer.last_ticket();
        self.wait(last)?;
        Ok(last)
    }
}

impl Drop for BlockingWriter {
    fn drop(&mut self) {
        // Make everything appended durable, so the writer seals its segment
        // and reclamation can take it. A failed writer has nothing to add.
        let _ = self.flush();
        self.sync_requests = None;
        if let Some(handle) = self.syncer.take() {
            let _ = handle.join();
        }
    }
}
