//! The directory seam: the spool names its files through this, as it
//! tells time through [`Clock`](crate::Clock).
//!
//! A segment's bytes reach the disk through the writer's sans-IO
//! operations, which the shard's ring (or the simulator's disk) carries
//! out. Its name does not: creating a file, renaming it (a spare into a
//! segment, a segment into a spare or into quarantine) and removing it
//! change the directory, and only a sync of the directory makes such a
//! change survive a power cut. Production does them with `std::fs`
//! ([`SystemDirectory`]); the simulator does them too and remembers each
//! until the directory is synced, so that its power cuts can take back
//! what was not.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The spool's changes to its directories.
pub trait Directory: Send + Sync + 'static {
    /// Creates `path`, which must not exist, for reading and writing, mode
    /// 0600.
    fn create_new(&self, path: &Path) -> io::Result<File>;
    /// Renames `from` to `to`, replacing what `to` named.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes every change to the names in `dir` so far durable.
    fn sync(&self, dir: &Path) -> io::Result<()>;
}

/// The directories of the filesystem.
#[derive(Debug, Default)]
pub struct SystemDirectory;

impl Directory for SystemDirectory {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}
