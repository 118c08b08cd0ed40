//! The file namer (`kind = "file"`): one file of endpoint lines per name, watched for edits.
//!
//! ```toml
//! [namers.fs]
//! kind = "file"
//! dir = "endpoints/"
//! ```
//!
//! `/#/fs/hello/...` binds the file `endpoints/hello` (the rest of the path is residual); each
//! line is an endpoint in the syntax of [`crate::endpoint`]. It is the simplest dynamic
//! discovery there is — anything that can write a file (a config-management run, a script, a
//! Kubernetes ConfigMap volume) feeds the balancer — so it is built to forgive the writer:
//!
//! - a missing file means the name does not exist ([`Resolution::DoesNotExist`], answered at
//!   once); creating the file later brings the name to life;
//! - an invalid edit (a typo, a half-written file, more than 1 MiB) is logged once with file,
//!   line and reason, and the last good set stays in force; with no good set yet, the name
//!   resolves to `DoesNotExist` carrying the reason;
//! - edits are applied within a second.
//!
//! Names are single, plain file names: `..`, hidden files, separators and NUL are refused
//! with a [`BindError`], so a path (which may come from a request) never reads outside `dir`.
//! Symbolic links inside `dir` are followed: they are the operator's choice (ConfigMap volumes
//! are made of them).
//!
//! # Watching
//!
//! The namer polls rather than using inotify-style notifications, which are platform-specific,
//! miss edits on network and container-mounted file systems, and need care around atomic
//! renames. One task per namer serves every name bound so far: every poll interval (default
//! 500 ms) it checks each file's length and modification time on a blocking thread and
//! re-reads only the changed ones. Binding the same name again shares its watch. A name
//! nobody holds a receiver for any more stops being polled and is forgotten, so the namer's
//! table only holds names in use — at most [`DEFAULT_MAX_NAMES`] (configurable) of them.
//!
//! The task is spawned on the first bind, which must therefore run inside a tokio runtime
//! (the namer itself can be built anywhere, e.g. while loading configuration); the first
//! bind of a name reads its file right away (a blocking read of at most 1 MiB, on the calling
//! thread), so the answer is there when `bind` returns.
//! Dropping the namer stops the task; receivers then keep their last value.

mod read;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use mesh_core::resolve::Resolution;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use self::read::{Outcome, Seen, read};
use crate::namer::{BindError, Bound, Namer, NamerName, path_text};

/// How often files are checked for changes by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How many names one file namer watches at most by default.
pub const DEFAULT_MAX_NAMES: usize = 10_000;

/// The longest file name bound, in bytes.
const MAX_FILE_NAME_BYTES: usize = 255;

/// A namer binding names to files of endpoints in one directory.
pub struct FileNamer {
    shared: Arc<Shared>,
    poll_interval: Duration,
    max_names: usize,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A file namer's configuration is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileNamerError {
    /// `dir` is not a directory that can be read.
    #[error("file namer {namer}: dir {dir:?} is not a directory: {reason}")]
    Dir {
        /// The namer.
        namer: NamerName,
        /// The configured directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What the namer and its polling task share.
struct Shared {
    namer: NamerName,
    dir: PathBuf,
    table: Mutex<Table>,
    updates: AtomicU64,
    errors: AtomicU64,
}

#[derive(Default)]
struct Table {
    names: BTreeMap<String, Watched>,
    /// Tells a replaced entry's late poll result from the current entry's.
    next_generation: u64,
}

/// One watched name.
struct Watched {
    tx: watch::Sender<Resolution>,
    generation: u64,
    seen: Seen,
}

/// One name for the polling task to check: its name, entry generation, file and last read.
type Work = (String, u64, PathBuf, Seen);

impl FileNamer {
    /// A namer mounted under `name` serving the files in `dir`, polling every
    /// [`DEFAULT_POLL_INTERVAL`] and watching at most [`DEFAULT_MAX_NAMES`] names.
    ///
    /// # Errors
    ///
    /// [`FileNamerError::Dir`] when `dir` is not an existing directory.
    pub fn new(name: NamerName, dir: impl Into<PathBuf>) -> Result<Self, FileNamerError> {
        let dir = dir.into();
        match std::fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(FileNamerError::Dir {
                    namer: name,
                    dir,
                    reason: "not a directory".to_owned(),
                });
            }
            Err(e) => {
                return Err(FileNamerError::Dir {
                    namer: name,
                    dir,
                    reason: e.to_string(),
                });
            }
        }
        Ok(Self {
            shared: Arc::new(Shared {
                namer: name,
                dir,
                table: Mutex::default(),
                updates: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_names: DEFAULT_MAX_NAMES,
            task: Mutex::new(None),
        })
    }

    /// Checks files for changes every `interval` (at least 10 ms) instead. Takes effect for
    /// a polling task started after this call, so set it before the first bind.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Watches at most `max` names instead; binding another is a
    /// [`BindError::TooManyNames`].
    pub fn with_max_names(mut self, max: usize) -> Self {
        self.max_names = max;
        self
    }

    /// The directory it serves.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// How many names it watches now (names whose receivers were all dropped are forgotten
    /// at the next poll).
    pub fn watched(&self) -> usize {
        lock(&self.shared.table).names.len()
    }

    /// How many times a name's resolution changed (first reads included).
    pub fn updates(&self) -> u64 {
        self.shared.updates.load(Ordering::Relaxed)
    }

    /// How many invalid or unreadable file versions it has seen (each logged once).
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    /// A receiver of `file`'s watch, adding it to the table (read once now) if it is not
    /// watched yet.
    fn watch(&self, file: &str, path: &str) -> Result<watch::Receiver<Resolution>, BindError> {
        if let Some(rx) = self.subscribe(&mut lock(&self.shared.table), file, path)? {
            return Ok(rx);
        }
        // Read outside the lock so the polling task is never held up by a large file.
        let outcome = read(&self.shared.dir.join(file), &Seen::Nothing);
        let mut table = lock(&self.shared.table);
        // Someone may have bound the same name meanwhile: share theirs.
        if let Some(rx) = self.subscribe(&mut table, file, path)? {
            return Ok(rx);
        }
        let generation = table.next_generation;
        table.next_generation += 1;
        let mut watched = Watched {
            tx: watch::Sender::new(Resolution::Pending),
            generation,
            seen: Seen::Nothing,
        };
        self.shared.apply(file, &mut watched, outcome);
        let rx = watched.tx.subscribe();
        table.names.insert(file.to_owned(), watched);
        Ok(rx)
    }

    /// A receiver of `file`'s live watch if there is one; `None` when there is room for a
    /// new one.
    fn subscribe(
        &self,
        table: &mut Table,
        file: &str,
        path: &str,
    ) -> Result<Option<watch::Receiver<Resolution>>, BindError> {
        if let Some(watched) = table.names.get(file)
            && !watched.tx.is_closed()
        {
            return Ok(Some(watched.tx.subscribe()));
        }
        if table.names.len() >= self.max_names {
            table.names.retain(|_, w| !w.tx.is_closed());
        }
        if table.names.len() >= self.max_names {
            return Err(BindError::TooManyNames {
                namer: self.shared.namer.clone(),
                path: path.to_owned(),
                limit: self.max_names,
            });
        }
        Ok(None)
    }

    /// Starts the polling task unless it runs.
    fn ensure_polling(&self, runtime: &Handle) {
        let mut task = lock(&self.task);
        if task.as_ref().is_none_or(JoinHandle::is_finished) {
            *task = Some(runtime.spawn(poll(Arc::downgrade(&self.shared), self.poll_interval)));
        }
    }
}

impl Namer for FileNamer {
    fn name(&self) -> &NamerName {
        &self.shared.namer
    }

    fn bind(&self, path: &[&str]) -> Result<Bound, BindError> {
        let namer = &self.shared.namer;
        let Some((file, residual)) = path.split_first() else {
            return Err(BindError::MissingName {
                namer: namer.clone(),
                path: path_text(namer, path),
            });
        };
        if let Some(reason) = file_name_problem(file) {
            return Err(BindError::InvalidName {
                path: path_text(namer, path),
                reason,
            });
        }
        let Ok(runtime) = Handle::try_current() else {
            return Err(BindError::NoRuntime {
                namer: namer.clone(),
                path: path_text(namer, path),
            });
        };
        let rx = self.watch(file, &path_text(namer, path))?;
        self.ensure_polling(&runtime);
        Ok(Bound {
            id: path_text(namer, &[file]),
            residual: residual.iter().map(|s| (*s).to_owned()).collect(),
            resolution: rx,
        })
    }
}

impl fmt::Debug for FileNamer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileNamer")
            .field("name", &self.shared.namer)
            .field("dir", &self.shared.dir)
            .field("poll_interval", &self.poll_interval)
            .field("watched", &self.watched())
            .finish()
    }
}

impl Drop for FileNamer {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

/// Why `file` cannot name a file in the directory, if it cannot.
fn file_name_problem(file: &str) -> Option<&'static str> {
    if file.is_empty() {
        return Some("empty file name");
    }
    if file.len() > MAX_FILE_NAME_BYTES {
        return Some("file name longer than 255 bytes");
    }
    if file.starts_with('.') {
        return Some("hidden files, '.' and '..' are not names");
    }
    if file.contains(['/', '\\', '\0']) || file.chars().any(char::is_control) {
        return Some("a file name is one segment, without separators or control characters");
    }
    let mut components = Path::new(file).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(name)), None) if name == file => None,
        _ => Some("not a plain file name"),
    }
}

impl Shared {
    /// Forgets names nobody watches and lists the others for a poll.
    fn work(&self) -> Vec<Work> {
        let mut table = lock(&self.table);
        table.names.retain(|_, w| !w.tx.is_closed());
        table
            .names
            .iter()
            .map(|(file, w)| {
                (
                    file.clone(),
                    w.generation,
                    self.dir.join(file),
                    w.seen.clone(),
                )
            })
            .collect()
    }

    /// Applies a poll's results to the entries they were read for.
    fn apply_all(&self, results: Vec<(String, u64, Outcome)>) {
        let mut table = lock(&self.table);
        for (file, generation, outcome) in results {
            if let Some(watched) = table.names.get_mut(&file)
                && watched.generation == generation
            {
                self.apply(&file, watched, outcome);
            }
        }
    }

    /// Applies what a read of `file` found to its entry: publishes a new set, or that the
    /// file is missing; logs an invalid version once and keeps the last good set.
    fn apply(&self, file: &str, watched: &mut Watched, outcome: Outcome) {
        let path = self.dir.join(file);
        let resolution = match outcome {
            Outcome::Unchanged => return,
            Outcome::Restamped(seen) => {
                watched.seen = seen;
                return;
            }
            Outcome::Missing => {
                watched.seen = Seen::Missing;
                Resolution::DoesNotExist(format!("no file {}", path.display()).into())
            }
            Outcome::Good(endpoints, seen) => {
                watched.seen = seen;
                Resolution::endpoints(endpoints)
            }
            Outcome::Invalid { line, why, seen } => {
                if watched.seen != seen {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        namer = %self.namer,
                        file = %path.display(),
                        line,
                        error = %why,
                        "invalid endpoints file; keeping the last good set",
                    );
                }
                watched.seen = seen;
                if matches!(*watched.tx.borrow(), Resolution::Endpoints(_)) {
                    return;
                }
                let at = line.map(|l| format!(" at line {l}")).unwrap_or_default();
                Resolution::DoesNotExist(
                    format!("file {} is invalid{at}: {why}", path.display()).into(),
                )
            }
        };
        let changed = watched.tx.send_if_modified(|current| {
            if *current == resolution {
                return false;
            }
            *current = resolution;
            true
        });
        if changed {
            self.updates.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The polling task: every `interval`, checks the files of every watched name on a blocking
/// thread and applies what changed. Ends when the namer is dropped.
async fn poll(shared: Weak<Shared>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is immediate, and bind has just read the file.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(work) = shared.upgrade().map(|s| s.work()) else {
            return;
        };
        if work.is_empty() {
            continue;
        }
        let scan = tokio::task::spawn_blocking(move || {
            work.into_iter()
                .map(|(file, generation, path, seen)| (file, generation, read(&path, &seen)))
                .collect::<Vec<_>>()
        });
        // A scan that panicked is retried at the next tick.
        let Ok(results) = scan.await else { continue };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.apply_all(results);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_single_safe_segments() {
        for good in ["hello", "hello.v2", "a-b_c", "x.y.z", "Ünïcode"] {
            assert_eq!(file_name_problem(good), None, "{good:?}");
        }
        for bad in [
            "", ".", "..", ".hidden", "a/b", "../x", "a\\b", "nul\0", "tab\t", "/abs",
        ] {
            assert!(file_name_problem(bad).is_some(), "{bad:?}");
        }
        assert!(file_name_problem(&"x".repeat(256)).is_some());
    }
}
