//! SIGINT and SIGTERM, the ways a person or a test harness stops a run.

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Handlers for SIGINT and SIGTERM.
pub struct Termination {
    interrupt: Signal,
    terminate: Signal,
}

impl Termination {
    /// Installs the handlers now: from here on, the signals no longer kill
    /// the process. Install before telling anyone the process is ready, or
    /// an early signal kills it without its summary.
    pub fn install() -> io::Result<Termination> {
        Ok(Termination {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Completes at the next SIGINT or SIGTERM.
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
