//! A log file rotated by size with a bounded number of backups, named as
//! lumberjack (the library behind Hubble's file exporter) names them:
//!
//! - the live file is the configured path, e.g. `drops.log`, opened for
//!   appending (an existing file is continued, its parent directories are
//!   created);
//! - when the next line would take it past the size limit it is renamed to
//!   `drops-<UTC time>.log`, time as `2006-01-02T15-04-05.000` (Go layout),
//!   and a new `drops.log` is started; a path without extension gets
//!   `drops-<time>`;
//! - with compression the backup becomes `drops-<time>.log.gz` (written on a
//!   background thread; the plain backup is removed only once the `.gz` is
//!   complete);
//! - backups beyond the limit are deleted, oldest first (by the time in their
//!   names); a limit of 0 keeps every backup, as lumberjack does.
//!
//! Lines are never split across files. A line longer than the limit goes into
//! a file of its own. If renaming fails the lines go on into the current file
//! (past the limit) rather than being dropped. Two rotations within one
//! millisecond get names 1 ms apart, so a backup is never overwritten.
//!
//! Blocking I/O (`std::fs`): run it off the async runtime. Owns the files of
//! one exporter and nothing else.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// lumberjack's backup time layout, `2006-01-02T15-04-05.000`.
const TIME_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]-[minute]-[second].[subsecond digits:3]"
);
/// Length of a formatted backup time.
const TIME_LEN: usize = 23;

/// Errors of a rotating file.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The log file (or its directory) could not be created or opened.
    #[error("opening {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing to the live file failed.
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Renaming the live file to its backup name failed.
    #[error("renaming {from} to {to}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What one [`RotatingFile::write_lines`] call did.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Lines now in a file.
    pub lines: u64,
    /// Lines lost (an open or write failed).
    pub lines_lost: u64,
    /// Rotations done.
    pub rotations: u64,
    /// Errors met, in order (a failed rename is here but loses no line).
    pub errors: Vec<RotateError>,
}

/// One exporter's log file with its backups.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    /// Everything before the extension, plus `-`.
    prefix: String,
    /// The extension with its dot, or "".
    ext: String,
    max_bytes: u64,
    max_backups: usize,
    compress: bool,
    file: Option<File>,
    size: u64,
    last_backup: Option<SystemTime>,
}

impl RotatingFile {
    /// Opens (creating it and its directories if needed) `path` for
    /// appending.
    pub fn open(
        path: &Path,
        max_bytes: u64,
        max_backups: usize,
        compress: bool,
    ) -> Result<Self, RotateError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (stem, ext) = match name.rfind('.') {
            Some(i) if i > 0 => (name[..i].to_owned(), name[i..].to_owned()),
            _ => (name.clone(), String::new()),
        };
        let mut f = Self {
            path: path.to_owned(),
            prefix: format!("{stem}-"),
            ext,
            max_bytes: max_bytes.max(1),
            max_backups,
            compress,
            file: None,
            size: 0,
            last_backup: None,
        };
        f.reopen()?;
        Ok(f)
    }

    /// The live file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reopen(&mut self) -> Result<(), RotateError> {
        let open_err = |source| RotateError::Open {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(open_err)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(open_err)?;
        self.size = file.metadata().map_err(open_err)?.len();
        self.file = Some(file);
        Ok(())
    }

    /// Appends `buf`, which holds whole `\n`-terminated lines, rotating
    /// between lines whenever the next one would pass the size limit.
    pub fn write_lines(&mut self, mut buf: &[u8]) -> WriteOutcome {
        let mut out = WriteOutcome::default();
        // After a failed rename the rest of this batch goes into the current
        // file, so no line is lost to a rotation problem.
        let mut no_rotate = false;
        while !buf.is_empty() {
            if self.file.is_none()
                && let Err(e) = self.reopen()
            {
                out.lines_lost += count_lines(buf);
                out.errors.push(e);
                return out;
            }
            let room = self.max_bytes.saturating_sub(self.size);
            let take = if no_rotate || buf.len() as u64 <= room {
                buf.len()
            } else {
                let fit = &buf[..room as usize];
                match fit.iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    None if self.size == 0 => {
                        // One line longer than the limit: alone in its file.
                        buf.iter()
                            .position(|&b| b == b'\n')
                            .map_or(buf.len(), |i| i + 1)
                    }
                    None => 0,
                }
            };
            if take == 0 {
                match self.rotate() {
                    Ok(()) => out.rotations += 1,
                    Err(e) => {
                        no_rotate = true;
                        out.errors.push(e);
                    }
                }
                continue;
            }
            let chunk = &buf[..take];
            let file = self.file.as_mut().expect("opened above");
            match file.write_all(chunk) {
                Ok(()) => {
                    self.size += take as u64;
                    out.lines += count_lines(chunk);
                    buf = &buf[take..];
                }
                Err(source) => {
                    // Part of the chunk may be in the file; count the whole
                    // rest as lost, reopen next time (the file may be gone).
                    out.lines_lost += count_lines(buf);
                    out.errors.push(RotateError::Write {
                        path: self.path.clone(),
                        source,
                    });
                    self.file = None;
                    return out;
                }
            }
        }
        out
    }

    /// Renames the live file to a fresh backup name, opens a new one, then
    /// compresses and prunes backups.
    fn rotate(&mut self) -> Result<(), RotateError> {
        let mut when = SystemTime::now();
        if let Some(last) = self.last_backup
            && when <= last
        {
            when = last + Duration::from_millis(1);
        }
        let mut backup = self.backup_path(when);
        while backup.exists() || gz(&backup).exists() {
            when += Duration::from_millis(1);
            backup = self.backup_path(when);
        }
        // Flushes nothing (unbuffered) but releases the handle before the
        // rename, which matters on some filesystems.
        self.file = None;
        if let Err(source) = std::fs::rename(&self.path, &backup) {
            // Keep appending to the same file.
            self.reopen()?;
            return Err(RotateError::Rename {
                from: self.path.clone(),
                to: backup,
                source,
            });
        }
        self.last_backup = Some(when);
        self.reopen()?;
        if self.compress {
            std::thread::Builder::new()
                .name("weir-export-gzip".into())
                .spawn(move || compress(&backup))
                .map_err(|e| tracing::warn!(error = %e, "cannot start compression thread"))
                .ok();
        }
        self.prune();
        Ok(())
    }

    fn backup_path(&self, when: SystemTime) -> PathBuf {
        let t = time::OffsetDateTime::from(when)
            .format(TIME_FORMAT)
            .unwrap_or_default();
        self.path
            .with_file_name(format!("{}{}{}", self.prefix, t, self.ext))
    }

    /// Existing backup files (plain and `.gz`), newest first.
    pub fn backups(&self) -> Vec<PathBuf> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut found: Vec<(String, PathBuf)> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let rest = name.strip_prefix(&self.prefix)?;
                let rest = rest.strip_suffix(".gz").unwrap_or(rest);
                let t = rest.strip_suffix(self.ext.as_str())?;
                if t.len() != TIME_LEN || time::PrimitiveDateTime::parse(t, TIME_FORMAT).is_err() {
                    return None;
                }
                Some((t.to_owned(), e.path()))
            })
            .collect();
        // The time layout sorts as text; `.log` before `.log.gz` of one time.
        found.sort_by(|a, b| b.cmp(a));
        found.into_iter().map(|(_, p)| p).collect()
    }

    fn prune(&self) {
        if self.max_backups == 0 {
            return;
        }
        let mut times = Vec::new();
        for p in self.backups() {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let t = name[self.prefix.len()..self.prefix.len() + TIME_LEN].to_owned();
            if !times.contains(&t) {
                times.push(t.clone());
            }
            // A backup and its `.gz` (mid-compression) count as one.
            if times
                .iter()
                .position(|x| *x == t)
                .is_some_and(|i| i >= self.max_backups)
                && let Err(e) = std::fs::remove_file(&p)
            {
                tracing::warn!(file = %p.display(), error = %e, "cannot remove old flow log backup");
            }
        }
    }
}

fn gz(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".gz");
    PathBuf::from(s)
}

fn count_lines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

/// Writes `path.gz` and removes `path` once the archive is complete.
fn compress(path: &Path) {
    let target = gz(path);
    let partial = {
        let mut s = target.as_os_str().to_owned();
        s.push(".tmp");
        PathBuf::from(s)
    };
    let res = (|| -> io::Result<()> {
        let mut src = File::open(path)?;
        let dst = File::create(&partial)?;
        let mut enc = flate2::write::GzEncoder::new(dst, flate2::Compression::fast());
        io::copy(&mut src, &mut enc)?;
        enc.finish()?.sync_all()?;
        std::fs::rename(&partial, &target)?;
        std::fs::remove_file(path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&partial);
        tracing::warn!(file = %path.display(), error = %e, "flow log backup not compressed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(from: usize, to: usize) -> Vec<u8> {
        (from..to)
            .flat_map(|i| format!("{{\"n\":{i:06}}}\n").into_bytes())
            .collect()
    }

    fn read_all(f: &RotatingFile) -> Vec<String> {
        let mut files = f.backups();
        files.reverse();
        files.push(f.path().to_owned());
        files
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn rotates_by_size_keeping_every_line_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/flows.log");
        // 13-byte lines, 100-byte files: 7 lines each.
        let mut f = RotatingFile::open(&path, 100, 0, false).unwrap();
        let mut rotations = 0;
        for chunk in 0..10 {
            let o = f.write_lines(&lines(chunk * 10, chunk * 10 + 10));
            assert!(o.errors.is_empty(), "{:?}", o.errors);
            assert_eq!((o.lines, o.lines_lost), (10, 0));
            rotations += o.rotations;
        }
        let backups = f.backups();
        assert_eq!(backups.len() as u64, rotations);
        assert_eq!(rotations, 14, "100 lines at 7 per file: 15 files");
        for b in &backups {
            let n = std::fs::metadata(b).unwrap().len();
            assert!(n <= 100 && n > 80, "{} is {n} bytes", b.display());
            let name = b.file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with("flows-") && name.ends_with(".log"),
                "{name}"
            );
        }
        let want: Vec<String> = (0..100).map(|i| format!("{{\"n\":{i:06}}}")).collect();
        assert_eq!(read_all(&f), want, "each line once, in order");
    }

    #[test]
    fn keeps_only_max_backups_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.log");
        let mut f = RotatingFile::open(&path, 100, 2, false).unwrap();
        for chunk in 0..10 {
            f.write_lines(&lines(chunk * 10, chunk * 10 + 10));
        }
        assert_eq!(f.backups().len(), 2);
        let all = read_all(&f);
        // The newest files: a contiguous tail of the stream ending at 99.
        let want: Vec<String> = (100 - all.len()..100)
            .map(|i| format!("{{\"n\":{i:06}}}"))
            .collect();
        assert_eq!(all, want);
        assert!(all.len() > 14 && all.len() <= 21);
    }

    #[test]
    fn continues_an_existing_file_and_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows");
        std::fs::write(&path, lines(0, 7)).unwrap();
        let mut f = RotatingFile::open(&path, 100, 0, false).unwrap();
        let o = f.write_lines(&lines(7, 8));
        assert_eq!(
            o.rotations, 1,
            "the 8th line does not fit the existing 91 bytes"
        );
        let name = f.backups()[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            name.starts_with("flows-") && name.len() == "flows-".len() + TIME_LEN,
            "{name}"
        );
        assert_eq!(read_all(&f).len(), 8);
    }

    #[test]
    fn long_line_gets_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.log");
        let mut f = RotatingFile::open(&path, 10, 0, false).unwrap();
        let o = f.write_lines(b"0123456789abcdef\nxy\n");
        assert_eq!((o.lines, o.lines_lost), (2, 0));
        assert_eq!(read_all(&f), vec!["0123456789abcdef", "xy"]);
    }

    #[test]
    fn compressed_backups() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.log");
        let mut f = RotatingFile::open(&path, 100, 0, true).unwrap();
        f.write_lines(&lines(0, 10));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let gz_path = loop {
            let b = f.backups();
            if let [one] = b.as_slice()
                && one.extension().is_some_and(|e| e == "gz")
            {
                break one.clone();
            }
            assert!(std::time::Instant::now() < deadline, "no .gz backup: {b:?}");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(gz_path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text.as_bytes(), &lines(0, 7)[..]);
    }

    #[test]
    fn unopenable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let e = RotatingFile::open(&blocker.join("x.log"), 100, 0, false).unwrap_err();
        assert!(matches!(e, RotateError::Open { .. }), "{e}");
    }
}
