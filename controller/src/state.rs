//! Crash-safe persistence: every file is written to a temporary name, fsynced, renamed over the
//! old one and the directory fsynced, so a `kill -9` or a power cut leaves either the old or the
//! new version, never a torn one.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Serialize, de::DeserializeOwned};

/// A state file that could not be read or written: what it holds, where, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct StateError {
    /// What the file holds or what was being done ("reading the list snapshot").
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl StateError {
    /// An error-mapping closure for `map_err`.
    pub fn at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| Self { what, path: path.to_path_buf(), source }
    }
}

/// Write `value` as pretty JSON to `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_bytes(path, &serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)
}

/// Write `value` as compact JSON (large files: a million-entry block list).
pub fn write_json_compact<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_bytes(path, &serde_json::to_vec(value).map_err(std::io::Error::other)?)
}

fn write_bytes(path: &Path, text: &[u8]) -> std::io::Result<()> {
    stage_bytes(path, text)?.commit()
}

/// A new version of a file, written and fsynced under a temporary name but not yet in place:
/// the slow half of an atomic write, which can run while the change it records is applied.
#[derive(Debug)]
#[must_use = "a staged file is neither in place nor removed until commit or discard"]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
}

impl Staged {
    /// Put the new version in place (rename, then fsync the directory).
    pub fn commit(self) -> std::io::Result<()> {
        fs::rename(&self.tmp, &self.path)?;
        File::open(self.path.parent().unwrap_or(Path::new(".")))?.sync_all()
    }

    /// Drop the new version; the old file stays as it was.
    pub fn discard(self) {
        if let Err(e) = fs::remove_file(&self.tmp) {
            tracing::warn!(path = %self.tmp.display(), error = %e, "removing a staged file failed");
        }
    }

    /// Where the new version goes.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Serialize `value` as compact JSON into a staged new version of `path`.
pub fn stage_json_compact<T: Serialize>(path: &Path, value: &T) -> std::io::Result<Staged> {
    stage_bytes(path, &serde_json::to_vec(value).map_err(std::io::Error::other)?)
}

fn stage_bytes(path: &Path, text: &[u8]) -> std::io::Result<Staged> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = tmp_name(path);
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(text)?;
        f.write_all(b"\n")?;
        f.sync_all()
    })();
    match written {
        Ok(()) => Ok(Staged { tmp, path: path.to_path_buf() }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Read JSON from `path`; `Ok(None)` if it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What to say when a state file exists but cannot be used.
pub const BAD_FILE_HINT: &str = "the file is left as it is and the pinned program keeps filtering; `voipwall run --recover` moves it aside and rebuilds what it held from the pinned maps";

/// A state file read at start-up: its value, or where it was moved because it was unreadable.
#[derive(Debug)]
pub enum ReadState<T> {
    /// Read (`None`: there is no such file).
    Read(Option<T>),
    /// Unreadable and moved here (`--recover`).
    SetAside(PathBuf),
}

impl<T> ReadState<T> {
    /// The value, `None` if absent or set aside.
    pub fn into_value(self) -> Option<T> {
        match self {
            Self::Read(v) => v,
            Self::SetAside(_) => None,
        }
    }
}

/// Read a JSON state file at start-up. A file that does not parse is an error naming it and
/// saying what to do, unless `recover`: then it is moved aside (see [`set_aside`]).
pub fn read_state<T: DeserializeOwned>(
    what: &'static str,
    path: &Path,
    recover: bool,
) -> Result<ReadState<T>, StateError> {
    checked(what, path, recover, read_json(path))
}

/// [`read_state`] for any reader's result: an `InvalidData` error is a bad file.
pub fn checked<T>(
    what: &'static str,
    path: &Path,
    recover: bool,
    read: std::io::Result<Option<T>>,
) -> Result<ReadState<T>, StateError> {
    match read {
        Ok(v) => Ok(ReadState::Read(v)),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            if recover {
                let aside = set_aside(path).map_err(StateError::at("moving an unreadable state file aside", path))?;
                tracing::warn!(path = %path.display(), moved_to = %aside.display(), error = %e, "{what}: unreadable; moved aside, rebuilding from the pinned maps (--recover)");
                Ok(ReadState::SetAside(aside))
            } else {
                Err(StateError {
                    what,
                    path: path.to_path_buf(),
                    source: std::io::Error::new(e.kind(), format!("{e}; {BAD_FILE_HINT}")),
                })
            }
        }
        Err(e) => Err(StateError { what, path: path.to_path_buf(), source: e }),
    }
}

/// Move an unreadable file to `NAME.bad-UNIXTIME` (a number appended if that exists) in the
/// same folder, so it can be examined; returns the new path.
pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let base = format!("{name}.bad-{}", unix_now());
    let mut to = path.with_file_name(&base);
    let mut n = 1;
    while to.exists() {
        to = path.with_file_name(format!("{base}.{n}"));
        n += 1;
    }
    fs::rename(path, &to)?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
    Ok(to)
}

/// An append-only log of small changes: one JSON record per line, each fsynced before the
/// change is reported done, so a CLI change survives `kill -9` without rewriting a snapshot that
/// may hold a million entries. A torn last line (a crash mid-write) is ignored on replay.
pub struct Journal {
    path: PathBuf,
    file: File,
    pub lines: usize,
}

impl Journal {
    /// Open (creating) the journal at `path`, counting its records.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let lines = fs::read(path).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0);
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { path: path.to_path_buf(), file, lines })
    }

    /// Append one record and fsync it.
    pub fn append<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.lines += 1;
        Ok(())
    }

    /// Every complete record of the journal at `path`.
    pub fn replay<T: DeserializeOwned>(path: &Path) -> std::io::Result<Vec<T>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let complete = bytes.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
        bytes[..complete]
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice(l).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
                })
            })
            .collect()
    }

    /// Empty the journal (after a snapshot took its records in), atomically.
    pub fn reset(&mut self) -> std::io::Result<()> {
        write_bytes_raw(&self.path, b"")?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.lines = 0;
        Ok(())
    }
}

fn write_bytes_raw(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tmp_name(path);
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Unix time in microseconds.
pub fn unix_now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// RFC 3339 UTC timestamp of Unix seconds, for humans.
pub fn rfc3339(secs: u64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date crate for one function.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_round_trips_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("vw-state-{}", std::process::id()));
        let path = dir.join("x.json");
        write_json(&path, &vec![1, 2, 3]).unwrap();
        write_json(&path, &vec![4]).unwrap();
        assert_eq!(read_json::<Vec<i32>>(&path).unwrap(), Some(vec![4]));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "temp file left behind");
        assert_eq!(read_json::<Vec<i32>>(&dir.join("missing.json")).unwrap(), None);
        fs::write(&path, b"{torn").unwrap();
        assert!(read_json::<Vec<i32>>(&path).is_err());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn journal_replays_complete_lines_and_ignores_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("vw-journal-{}", std::process::id()));
        let path = dir.join("j.log");
        let mut j = Journal::open(&path).unwrap();
        j.append(&1).unwrap();
        j.append(&2).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"3").unwrap();
        assert_eq!(Journal::replay::<i32>(&path).unwrap(), vec![1, 2]);
        assert_eq!(Journal::open(&path).unwrap().lines, 2);
        j.reset().unwrap();
        assert!(Journal::replay::<i32>(&path).unwrap().is_empty());
        j.append(&4).unwrap();
        assert_eq!(Journal::replay::<i32>(&path).unwrap(), vec![4]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unreadable_file_is_an_error_or_is_set_aside() {
        let dir = std::env::temp_dir().join(format!("vw-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bans.json");
        fs::write(&path, b"[{\"torn").unwrap();
        let e = read_state::<Vec<i32>>("reading the bans", &path, false).unwrap_err().to_string();
        assert!(e.contains("bans.json") && e.contains("--recover"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"[{\"torn", "left as it is");
        let ReadState::SetAside(aside) = read_state::<Vec<i32>>("reading the bans", &path, true).unwrap() else {
            panic!("not set aside")
        };
        assert!(!path.exists());
        assert_eq!(fs::read(&aside).unwrap(), b"[{\"torn");
        assert!(aside.file_name().unwrap().to_string_lossy().starts_with("bans.json.bad-"));
        // A missing file is no error, with or without recovery.
        assert!(matches!(read_state::<Vec<i32>>("reading the bans", &path, false).unwrap(), ReadState::Read(None)));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_996_799), "2026-11-29T23:59:59Z");
    }
}
