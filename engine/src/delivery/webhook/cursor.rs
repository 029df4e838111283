//! [`Cursor`]: how far into the event log a webhook's endpoint has
//! acknowledged, kept in a file of its own so that it survives restarts.
//!
//! The file is one line, `inode offset`, replaced whole (written beside,
//! synced, renamed over, the directory synced): after a crash it holds
//! the old position or the new one, never a mix. An inode names the file
//! rather than its path because rotation renames files.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// The longest cursor file read back: one line of two numbers.
const CURSOR_FILE_BYTES_MAX: u64 = 64;

/// A position in the event log: `offset` bytes into the file whose inode
/// is `inode`, at the start of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub inode: u64,
    pub offset: u64,
}

/// Where one webhook's cursor is kept.
#[derive(Debug)]
pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    /// `<dir>/<name>.cursor`; `dir` is created if missing.
    pub fn new(dir: &Path, name: &str) -> io::Result<CursorFile> {
        fs::create_dir_all(dir)?;
        Ok(CursorFile {
            path: dir.join(format!("{name}.cursor")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cursor last stored; `Ok(None)` if there is none yet. A file that
    /// does not read as a cursor is an error: the caller says so and starts
    /// over, rather than trusting a damaged position.
    pub fn load(&self) -> io::Result<Option<Cursor>> {
        let text = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let damaged = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a cursor (\"inode offset\")", self.path.display()),
            )
        };
        if text.len() as u64 > CURSOR_FILE_BYTES_MAX {
            return Err(damaged());
        }
        let text = std::str::from_utf8(&text).map_err(|_| damaged())?;
        let line = text.strip_suffix('\n').ok_or_else(damaged)?;
        let (inode, offset) = line.split_once(' ').ok_or_else(damaged)?;
        Ok(Some(Cursor {
            inode: inode.parse().map_err(|_| damaged())?,
            offset: offset.parse().map_err(|_| damaged())?,
        }))
    }

    /// Replaces the stored cursor with `cursor`, durably: when this
    /// returns `Ok`, a crash leaves `cursor` in the file.
    pub fn store(&self, cursor: Cursor) -> io::Result<()> {
        let line = format!("{} {}\n", cursor.inode, cursor.offset);
        let temporary = self.path.with_extension("cursor.new");
        let mut file = File::create(&temporary)?;
        file.write_all(line.as_bytes())?;
        file.sync_data()?;
        drop(file);
        fs::rename(&temporary, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_loads_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let file = CursorFile::new(&dir.path().join("webhooks"), "crm").unwrap();
        assert_eq!(file.load().unwrap(), None);
        let first = Cursor {
            inode: 42,
            offset: 1000,
        };
        file.store(first).unwrap();
        assert_eq!(file.load().unwrap(), Some(first));
        let second = Cursor {
            inode: u64::MAX,
            offset: 7,
        };
        file.store(second).unwrap();
        assert_eq!(file.load().unwrap(), Some(second));
        assert_eq!(
            fs::read_to_string(file.path()).unwrap(),
            format!("{} 7\n", u64::MAX)
        );
        // Nothing is left beside it.
        let names: Vec<_> = fs::read_dir(dir.path().join("webhooks"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["crm.cursor"]);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let file = CursorFile::new(dir.path(), "crm").unwrap();
        for damaged in ["", "42 10", "42\n", "x 10\n", "42 -1\n", "1 2 3\n"] {
            fs::write(file.path(), damaged).unwrap();
            let err = file.load().expect_err(damaged);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{damaged:?}");
        }
        fs::write(file.path(), vec![b'1'; 100]).unwrap();
        assert!(file.load().is_err());
    }
}
