//! The simulated directory under the spool's file names: every creation,
//! rename and removal happens at once, as in the kernel's cache, and is
//! remembered until a sync of the directories it changed; a power cut
//! then takes back the newest of those still unsynced. A process crash
//! keeps them all.
//!
//! A journaling filesystem commits changes to names in the order they
//! were made, so a power cut keeps a prefix of the unsynced ones and
//! loses the rest; a sync of a directory makes every change to it so far
//! durable. A removed file (or one a rename replaced) is kept under a
//! hard link in an attic beside the spool until its removal is durable,
//! so that a power cut can bring it back with its inode: the simulated
//! disk's unsynced writes, which it tracks by inode, still apply to it.
//!
//! The power may also go in the middle of a call into the spool (a
//! reclamation, a recovery): armed, the directory lets that many more
//! operations of the calling thread through and then fails every one,
//! on every thread (EIO), as a machine without power does nothing more;
//! the simulator then cuts the power.
//!
//! The preparer, a thread of the spool's own, changes names too, at times
//! the seed does not decide. So a sync retires only the changes its own
//! thread made (stricter than a filesystem, never looser): a change of the
//! simulator's thread made durable by one of the preparer's syncs would
//! replay differently. The preparer syncs after each of its changes, so a
//! power cut finds none of them unsynced; and a cut draws one random
//! number whatever it finds, so that a seed replays exactly.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::{self, ThreadId};

use baton_spool::{Directory, SystemDirectory};

use crate::rng::Rng;

/// A change to names not yet durable.
enum Change {
    Created(PathBuf),
    Renamed {
        from: PathBuf,
        to: PathBuf,
        /// Where the file `to` named before, if any, is kept.
        replaced: Option<PathBuf>,
    },
    Removed {
        path: PathBuf,
        kept: PathBuf,
    },
}

struct Unsynced {
    change: Change,
    /// The directories whose sync it waits for.
    dirs: Vec<PathBuf>,
    /// The thread that made it: only its syncs retire it.
    thread: ThreadId,
}

/// A power cut armed in the middle of a call.
struct Cut {
    thread: ThreadId,
    /// Operations of `thread` still let through.
    left: u64,
    fired: bool,
}

#[derive(Default)]
struct State {
    /// Oldest first.
    unsynced: Vec<Unsynced>,
    next_kept: u64,
    changes: u64,
    lost: u64,
    cut: Option<Cut>,
}

/// EIO: the machine lost its power.
fn powerless() -> io::Error {
    io::Error::from_raw_os_error(5)
}

impl State {
    /// Counts an operation against an armed cut: an error once the power
    /// is gone.
    fn step(&mut self) -> io::Result<()> {
        let Some(cut) = &mut self.cut else {
            return Ok(());
        };
        if cut.fired {
            return Err(powerless());
        }
        if cut.thread == thread::current().id() {
            if cut.left == 0 {
                cut.fired = true;
                return Err(powerless());
            }
            cut.left -= 1;
        }
        Ok(())
    }

    fn record(&mut self, change: Change, dirs: Vec<PathBuf>) {
        self.changes += 1;
        self.unsynced.push(Unsynced {
            change,
            dirs,
            thread: thread::current().id(),
        });
    }
}

pub struct SimDirectory {
    attic: PathBuf,
    state: Mutex<State>,
}

fn parent(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("/")).to_path_buf()
}

impl SimDirectory {
    /// `attic`: a directory on the spool's filesystem, outside the spool.
    pub fn new(attic: PathBuf) -> io::Result<SimDirectory> {
        fs::create_dir_all(&attic)?;
        Ok(SimDirectory {
            attic,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("directory state")
    }

    /// Hard-links `path` into the attic, so that it can come back.
    fn keep(&self, state: &mut State, path: &Path) -> io::Result<PathBuf> {
        let kept = self.attic.join(format!("{}", state.next_kept));
        state.next_kept += 1;
        fs::hard_link(path, &kept)?;
        Ok(kept)
    }

    /// The power goes after `operations` more directory operations of
    /// this thread (creations, renames, removals, syncs).
    pub fn arm(&self, operations: u64) {
        self.state().cut = Some(Cut {
            thread: thread::current().id(),
            left: operations,
            fired: false,
        });
    }

    /// Takes the armed cut away; whether it fired.
    pub fn disarm(&self) -> bool {
        self.state().cut.take().is_some_and(|cut| cut.fired)
    }

    /// Changes to names made, and those a power cut took back.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state();
        (state.changes, state.lost)
    }

    /// The process died: the kernel keeps every change.
    pub fn crash(&self) {
        let mut state = self.state();
        state.cut = None;
        for entry in std::mem::take(&mut state.unsynced) {
            forget(entry.change);
        }
    }

    /// The power went: a prefix of the unsynced changes stays, the rest
    /// is undone, newest first.
    pub fn power_cut(&self, rng: &mut Rng) -> io::Result<()> {
        let draw = rng.next_u64();
        let mut state = self.state();
        state.cut = None;
        let unsynced = std::mem::take(&mut state.unsynced);
        let keep = (draw % (unsynced.len() as u64 + 1)) as usize;
        let mut entries = unsynced.into_iter();
        for entry in entries.by_ref().take(keep) {
            forget(entry.change);
        }
        let lost: Vec<_> = entries.collect();
        state.lost += lost.len() as u64;
        for entry in lost.into_iter().rev() {
            undo(entry.change)?;
        }
        Ok(())
    }
}

/// A durable change: what it replaced or removed is gone for good.
fn forget(change: Change) {
    match change {
        Change::Created(_) | Change::Renamed { replaced: None, .. } => {}
        Change::Renamed {
            replaced: Some(kept),
            ..
        }
        | Change::Removed { kept, .. } => {
            let _ = fs::remove_file(kept);
        }
    }
}

fn undo(change: Change) -> io::Result<()> {
    let gone = |r: io::Result<()>| match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    match change {
        Change::Created(path) => gone(fs::remove_file(path)),
        Change::Renamed { from, to, replaced } => {
            gone(fs::rename(&to, &from))?;
            if let Some(kept) = replaced {
                fs::hard_link(&kept, &to)?;
                fs::remove_file(kept)?;
            }
            Ok(())
        }
        Change::Removed { path, kept } => {
            fs::hard_link(&kept, &path)?;
            fs::remove_file(kept)
        }
    }
}

impl Directory for SimDirectory {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        let mut state = self.state();
        state.step()?;
        let file = SystemDirectory.create_new(path)?;
        state.record(Change::Created(path.to_path_buf()), vec![parent(path)]);
        Ok(file)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state();
        state.step()?;
        let replaced = match to.try_exists()? {
            true => Some(self.keep(&mut state, to)?),
            false => None,
        };
        if let Err(err) = fs::rename(from, to) {
            if let Some(kept) = replaced {
                let _ = fs::remove_file(kept);
            }
            return Err(err);
        }
        let mut dirs = vec![parent(from)];
        if parent(to) != dirs[0] {
            dirs.push(parent(to));
        }
        state.record(
            Change::Renamed {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
                replaced,
            },
            dirs,
        );
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state();
        state.step()?;
        let kept = self.keep(&mut state, path)?;
        if let Err(err) = fs::remove_file(path) {
            let _ = fs::remove_file(kept);
            return Err(err);
        }
        state.record(
            Change::Removed {
                path: path.to_path_buf(),
                kept,
            },
            vec![parent(path)],
        );
        Ok(())
    }

    /// No real sync: the simulated directory decides what survives.
    fn sync(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state();
        state.step()?;
        let me = thread::current().id();
        for entry in state.unsynced.iter_mut().filter(|e| e.thread == me) {
            entry.dirs.retain(|d| d != dir);
        }
        let durable: Vec<_> = state
            .unsynced
            .extract_if(.., |entry| entry.dirs.is_empty())
            .collect();
        for entry in durable {
            forget(entry.change);
        }
        Ok(())
    }
}
