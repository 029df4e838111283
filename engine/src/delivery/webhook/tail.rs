//! [`Tail`]: the event log read like `tail -F`, one complete line at a
//! time, across rotations.
//!
//! - Only complete lines are returned: a line the writer has not finished
//!   (no `\n` yet) waits, and its bytes are read again with the rest.
//! - Rotation by rename (logrotate's default, with or without `create`):
//!   the file already open is read to its end, then the new file at the
//!   path from its start. The switch waits until the new file holds a
//!   line: the writer finishes the old file (flushes it) before it writes
//!   the new one, so nothing written late to the old file is missed.
//! - `copytruncate`: a file shorter than the position was truncated and is
//!   read again from its start. What the writer added between the copy and
//!   the truncation is not seen (copytruncate loses it for every reader).
//! - Resuming from a [`Cursor`] whose inode is no longer the path's (a
//!   rotation while baton was down), the rotated file is looked for by its
//!   inode in the log's directory and finished first; if it is gone, the
//!   current file is read from its start.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::cursor::Cursor;

/// The longest line kept whole. Event lines are a few hundred bytes; a
/// `received` line lists every recipient, up to some megabytes. A longer
/// "line" is damage (or not an event log) and is skipped, not buffered.
pub const LINE_BYTES_MAX: usize = 64 << 20;

/// The reader's buffer.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// What [`Tail::resume`] found, for the caller to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// No cursor: the current file from its start.
    Start,
    /// The cursor's file is the current one.
    AtCursor,
    /// The cursor's file was rotated away and found here; it is finished
    /// before the current file.
    Rotated(PathBuf),
    /// The cursor's file is gone: the current file from its start.
    FileGone,
    /// The cursor's file is shorter than the cursor (truncated): from
    /// its start.
    Truncated,
}

/// Follows the event log at a path.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    /// The file being read; `None` until the path exists.
    reader: Option<BufReader<File>>,
    /// Its inode.
    inode: u64,
    /// The end of the last complete line returned.
    offset: u64,
    /// Bytes read past `offset`: a line not yet complete.
    partial: Vec<u8>,
    /// Inside a line longer than [`LINE_BYTES_MAX`], skipped to its end.
    skipping: bool,
}

impl Tail {
    /// Follows `path` from `cursor`, or from the start of the current file
    /// without one.
    pub fn resume(path: &Path, cursor: Option<Cursor>) -> io::Result<(Tail, Resumed)> {
        let mut tail = Tail {
            path: path.to_owned(),
            reader: None,
            inode: 0,
            offset: 0,
            partial: Vec::new(),
            skipping: false,
        };
        let Some(cursor) = cursor else {
            tail.open_path()?;
            return Ok((tail, Resumed::Start));
        };
        let current = match fs::metadata(path) {
            Ok(meta) => Some(meta.ino()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(err),
        };
        let (file, resumed) = if current == Some(cursor.inode) {
            (File::open(path)?, Resumed::AtCursor)
        } else {
            match find_inode(path, cursor.inode)? {
                Some(rotated) => (File::open(&rotated)?, Resumed::Rotated(rotated)),
                None => {
                    tail.open_path()?;
                    return Ok((tail, Resumed::FileGone));
                }
            }
        };
        let meta = file.metadata()?;
        if meta.len() < cursor.offset {
            tail.reader = Some(BufReader::with_capacity(READ_BUFFER_BYTES, file));
            tail.inode = meta.ino();
            return Ok((tail, Resumed::Truncated));
        }
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
        reader.seek(SeekFrom::Start(cursor.offset))?;
        tail.reader = Some(reader);
        tail.inode = meta.ino();
        tail.offset = cursor.offset;
        Ok((tail, resumed))
    }

    /// Where the next line starts; `None` while there is no file.
    pub fn position(&self) -> Option<Cursor> {
        self.reader.as_ref().map(|_| Cursor {
            inode: self.inode,
            offset: self.offset,
        })
    }

    /// The next complete line, its `\n` included; `Ok(None)` when there is
    /// none yet.
    pub fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let Some(reader) = self.reader.as_mut() else {
                if !self.open_path()? {
                    return Ok(None);
                }
                continue;
            };
            reader.read_until(b'\n', &mut self.partial)?;
            if self.partial.ends_with(b"\n") {
                let line = std::mem::take(&mut self.partial);
                self.offset += line.len() as u64;
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                return Ok(Some(line));
            }
            // At the end of the file, inside a line or between lines.
            if self.partial.len() > LINE_BYTES_MAX {
                tracing::warn!(path = %self.path.display(), offset = self.offset, "webhook: a line longer than {LINE_BYTES_MAX} bytes in the event log is skipped");
                self.offset += self.partial.len() as u64;
                self.partial.clear();
                self.skipping = true;
            }
            let length = reader.get_ref().metadata()?.len();
            if length < self.offset + self.partial.len() as u64 {
                tracing::warn!(path = %self.path.display(), "webhook: the event log was truncated (copytruncate); reading it from its start");
                reader.seek(SeekFrom::Start(0))?;
                self.offset = 0;
                self.partial.clear();
                self.skipping = false;
                continue;
            }
            if self.rotated()? {
                if !self.partial.is_empty() {
                    tracing::warn!(path = %self.path.display(), bytes = self.partial.len(), "webhook: the rotated event log ends in a cut line; skipped");
                }
                self.open_path()?;
                continue;
            }
            return Ok(None);
        }
    }

    /// Bytes of the log not yet returned: the rest of the file being read,
    /// and the whole of the path's file when that is another (rotated).
    pub fn lag_bytes(&self) -> u64 {
        let Some(reader) = &self.reader else {
            return fs::metadata(&self.path).map_or(0, |m| m.len());
        };
        let here = reader
            .get_ref()
            .metadata()
            .map_or(0, |m| m.len().saturating_sub(self.offset));
        let next = match fs::metadata(&self.path) {
            Ok(meta) if meta.ino() != self.inode => meta.len(),
            _ => 0,
        };
        here + next
    }

    /// Whether the path names another file than the one read, and that
    /// file has been written to: the writer is done with ours.
    fn rotated(&self) -> io::Result<bool> {
        match fs::metadata(&self.path) {
            Ok(meta) => Ok(meta.ino() != self.inode && meta.len() > 0),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Opens the path from its start; `false` if it does not exist (yet).
    fn open_path(&mut self) -> io::Result<bool> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        };
        self.inode = file.metadata()?.ino();
        self.reader = Some(BufReader::with_capacity(READ_BUFFER_BYTES, file));
        self.offset = 0;
        self.partial.clear();
        self.skipping = false;
        Ok(true)
    }
}

/// The file in `path`'s directory whose inode is `inode`, if any: where a
/// rotation moved the log.
fn find_inode(path: &Path, inode: u64) -> io::Result<Option<PathBuf>> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let entries = match fs::read_dir(dir.unwrap_or(Path::new("."))) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        // `DirEntry::ino` is the directory's record, no `stat` per file.
        if std::os::unix::fs::DirEntryExt::ino(&entry) == inode && entry.file_type()?.is_file() {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn append(path: &Path, text: &str) {
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    /// Every line available now, as text.
    fn drain(tail: &mut Tail) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = tail.next_line().unwrap() {
            lines.push(String::from_utf8(line).unwrap());
        }
        lines
    }

    #[test]
    fn complete_lines_only_and_a_partial_line_once_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let (mut tail, resumed) = Tail::resume(&path, None).unwrap();
        assert_eq!(resumed, Resumed::Start);
        assert_eq!(tail.next_line().unwrap(), None, "no file yet");
        assert_eq!(tail.position(), None);
        append(&path, "{\"n\":1}\n{\"n\":");
        assert_eq!(drain(&mut tail), ["{\"n\":1}\n"]);
        assert_eq!(tail.position().unwrap().offset, 8);
        assert_eq!(tail.lag_bytes(), 5);
        append(&path, "2}\n");
        assert_eq!(drain(&mut tail), ["{\"n\":2}\n"]);
        assert_eq!(tail.position().unwrap().offset, 16);
        assert_eq!(tail.lag_bytes(), 0);
    }

    #[test]
    fn a_rename_finishes_the_old_file_then_reads_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        append(&path, "a\n");
        let (mut tail, _) = Tail::resume(&path, None).unwrap();
        assert_eq!(drain(&mut tail), ["a\n"]);
        // logrotate: mv, then `create` makes an empty file at the path;
        // the writer, not told yet, still appends to the old one.
        let rotated = dir.path().join("events.log.1");
        fs::rename(&path, &rotated).unwrap();
        fs::File::create(&path).unwrap();
        append(&rotated, "b\n");
        assert_eq!(drain(&mut tail), ["b\n"]);
        append(&rotated, "c\n");
        assert_eq!(drain(&mut tail), ["c\n"], "the new file is empty: stay");
        // The writer opened the new file.
        append(&path, "d\n");
        assert_eq!(tail.lag_bytes(), 2);
        assert_eq!(drain(&mut tail), ["d\n"]);
        let inode = fs::metadata(&path).unwrap().ino();
        assert_eq!(tail.position(), Some(Cursor { inode, offset: 2 }));
    }

    #[test]
    fn a_truncated_file_is_read_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        append(&path, "one\ntwo\n");
        let (mut tail, _) = Tail::resume(&path, None).unwrap();
        assert_eq!(drain(&mut tail), ["one\n", "two\n"]);
        // copytruncate: copied elsewhere, then cut to nothing in place.
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&path, "3\n");
        assert_eq!(drain(&mut tail), ["3\n"]);
        assert_eq!(tail.position().unwrap().offset, 2);
    }

    #[test]
    fn resumes_at_the_cursor_in_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        append(&path, "one\ntwo\n");
        let inode = fs::metadata(&path).unwrap().ino();
        let cursor = Cursor { inode, offset: 4 };
        let (mut tail, resumed) = Tail::resume(&path, Some(cursor)).unwrap();
        assert_eq!(resumed, Resumed::AtCursor);
        assert_eq!(drain(&mut tail), ["two\n"]);
        // A cursor past the end: the file was truncated while we were away.
        let cursor = Cursor { inode, offset: 100 };
        let (mut tail, resumed) = Tail::resume(&path, Some(cursor)).unwrap();
        assert_eq!(resumed, Resumed::Truncated);
        assert_eq!(drain(&mut tail), ["one\n", "two\n"]);
    }

    #[test]
    fn resumes_in_a_file_rotated_while_away_then_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        append(&path, "one\ntwo\n");
        let inode = fs::metadata(&path).unwrap().ino();
        let rotated = dir.path().join("events.log.1");
        fs::rename(&path, &rotated).unwrap();
        append(&path, "three\n");
        let cursor = Cursor { inode, offset: 4 };
        let (mut tail, resumed) = Tail::resume(&path, Some(cursor)).unwrap();
        assert_eq!(resumed, Resumed::Rotated(rotated.clone()));
        assert_eq!(drain(&mut tail), ["two\n", "three\n"]);
        // Rotated away and deleted: the current file from its start.
        fs::remove_file(&rotated).unwrap();
        let (mut tail, resumed) = Tail::resume(&path, Some(cursor)).unwrap();
        assert_eq!(resumed, Resumed::FileGone);
        assert_eq!(drain(&mut tail), ["three\n"]);
    }
}
