//! Reading one endpoints file, and deciding whether it changed since the last read.
//!
//! The namer polls, so most reads must be cheap: a file whose length and modification time
//! are what they were is not read again. Modification times are coarse on some file systems,
//! so a file modified in the last two seconds is read anyway (an edit within the same tick
//! of the clock would otherwise go unnoticed), and its content hash decides whether anything
//! changed. Reading is blocking; the caller runs it on a blocking thread.

use std::fs::File;
use std::hash::{DefaultHasher, Hasher};
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, SystemTime};

use mesh_core::target::Endpoint;

use crate::endpoint::parse_file;

/// The largest endpoints file read, in bytes.
pub(crate) const MAX_FILE_BYTES: u64 = 1 << 20;

/// Files modified this recently are read even when length and time look unchanged.
const RECENT: Duration = Duration::from_secs(2);

/// What the last read of a name's file found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not read yet.
    Nothing,
    /// There was no file.
    Missing,
    /// A file of this length, modification time and content hash.
    File {
        len: u64,
        modified: Option<SystemTime>,
        hash: u64,
    },
    /// The file could not be read (permissions, too large, not a file), why.
    Failed(String),
}

/// What a read found, compared with what was [`Seen`] before.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Nothing changed.
    Unchanged,
    /// Same content as before under a new length or time: only remember the new stamp.
    Restamped(Seen),
    /// There is no file.
    Missing,
    /// A valid set of endpoints.
    Good(Vec<Endpoint>, Seen),
    /// The file is invalid or unreadable: where (a line, when known) and why.
    Invalid {
        line: Option<usize>,
        why: String,
        seen: Seen,
    },
}

/// Reads `path` unless it is unchanged since `seen`.
pub(crate) fn read(path: &Path, seen: &Seen) -> Outcome {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return missing(seen),
        Err(e) => return failed(format!("cannot read the file: {e}")),
    };
    if !meta.is_file() {
        return failed("not a regular file".to_owned());
    }
    if meta.len() > MAX_FILE_BYTES {
        return failed(too_large(meta.len()));
    }
    let modified = meta.modified().ok();
    if let Seen::File {
        len,
        modified: before,
        ..
    } = seen
        && *len == meta.len()
        && *before == modified
        && !recent(modified)
    {
        return Outcome::Unchanged;
    }

    let mut bytes = Vec::new();
    let read = File::open(path).and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes));
    match read {
        Ok(_) => {}
        // Removed between the two calls.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return missing(seen),
        Err(e) => return failed(format!("cannot read the file: {e}")),
    }
    let len = bytes.len() as u64;
    if len > MAX_FILE_BYTES {
        return failed(too_large(len));
    }
    let mut hasher = DefaultHasher::new();
    hasher.write(&bytes);
    let hash = hasher.finish();
    let now = Seen::File {
        len: meta.len(),
        modified,
        hash,
    };
    if matches!(seen, Seen::File { hash: before, .. } if *before == hash) {
        return Outcome::Restamped(now);
    }

    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            return Outcome::Invalid {
                line: Some(line),
                why: "not UTF-8".to_owned(),
                seen: now,
            };
        }
    };
    match parse_file(text) {
        Ok(endpoints) => Outcome::Good(endpoints, now),
        Err(e) => Outcome::Invalid {
            line: Some(e.line()),
            why: e.reason().to_string(),
            seen: now,
        },
    }
}

fn missing(seen: &Seen) -> Outcome {
    if *seen == Seen::Missing {
        Outcome::Unchanged
    } else {
        Outcome::Missing
    }
}

fn failed(why: String) -> Outcome {
    Outcome::Invalid {
        line: None,
        seen: Seen::Failed(why.clone()),
        why,
    }
}

fn too_large(len: u64) -> String {
    format!("the file is {len} bytes, more than the limit of {MAX_FILE_BYTES}")
}

fn recent(modified: Option<SystemTime>) -> bool {
    modified.is_none_or(|m| {
        SystemTime::now()
            .duration_since(m)
            .map_or(true, |age| age < RECENT)
    })
}
