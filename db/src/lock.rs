//! One SQLite file belongs to one process. Two eso processes on one file
//! would both run a relay and timers on it and publish or fire the same
//! work twice; SQLite's own locking only serialises their writes. So a
//! process that opens a file for good first takes an exclusive advisory
//! lock on a lock file beside it (`eso.db` → `eso.db.lock`) and holds it
//! for as long as it uses the file. The kernel drops the lock when the
//! process dies, however it dies, so a crash leaves nothing to clean up.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock on one SQLite file, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the SQLite file `url` names for this process, or says which file
/// another process holds. `None` for anything but a file: a Postgres URL,
/// an in-memory SQLite database.
pub fn lock_sqlite(url: &str) -> anyhow::Result<Option<FileLock>> {
    let Some(file) = sqlite_file(url) else { return Ok(None) };
    let mut path = file.clone().into_os_string();
    path.push(".lock");
    let path = PathBuf::from(path);
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open the lock file {}: {e}", path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            // The holder wrote its pid; a holder still writing it shows none.
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            let holder = holder.trim().parse::<u32>().map_or_else(|_| String::new(), |pid| format!(" (pid {pid})"));
            anyhow::bail!("the SQLite file {} is in use by another eso process{holder}: one file belongs to one process", file.display());
        }
        Err(TryLockError::Error(e)) => anyhow::bail!("cannot lock {}: {e}", path.display()),
    }
    // Only for the message above: the lock, not the text, is what holds.
    let _ = lock.set_len(0).and_then(|()| lock.rewind()).and_then(|()| write!(lock, "{}", std::process::id())).and_then(|()| lock.flush());
    Ok(Some(FileLock { _file: lock, path }))
}

/// The file of a `sqlite:` URL (`sqlite:eso.db?mode=rwc`, `sqlite:///tmp/eso.db`).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let file = rest.split('?').next().unwrap_or_default();
    (!file.is_empty() && file != ":memory:").then(|| PathBuf::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_file_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("eso-lock-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let url = format!("sqlite:{}?mode=rwc", dir.join("eso.db").display());
        let first = lock_sqlite(&url).unwrap_or_else(|e| panic!("{e}"));
        assert!(first.as_ref().is_some_and(|l| l.path().ends_with("eso.db.lock")));
        let refused = lock_sqlite(&url).map(|_| ()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains(&format!("{} is in use by another eso process (pid {})", dir.join("eso.db").display(), std::process::id())), "{refused}");
        drop(first);
        assert!(lock_sqlite(&url).is_ok_and(|l| l.is_some()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_files_are_locked() {
        for url in ["postgres://eso@db/eso", "sqlite::memory:", "sqlite:"] {
            assert!(sqlite_file(url).is_none(), "{url}");
        }
        assert_eq!(sqlite_file("sqlite:///tmp/eso.db?mode=rwc"), Some(PathBuf::from("/tmp/eso.db")));
        assert_eq!(sqlite_file("sqlite:eso.db"), Some(PathBuf::from("eso.db")));
    }
}
