//! The manifests-directory source: desired state from `*.yaml`, `*.yml` and
//! `*.json` files, as an alternative to the Kubernetes API.
//!
//! - [`load_dir`] reads a directory once and reports every bad object with the
//!   file, the document, the object and the field.
//! - [`ManifestSource`] turns successive loads into the served object set:
//!   an invalid object keeps its last good version, a file that cannot be read
//!   or parsed keeps all of its last good objects, and an object that
//!   disappears from a readable file is removed.
//! - [`ManifestSource::watch`] re-reads on change (inotify, debounced) and
//!   on a periodic rescan, publishing a [`Snapshot`] when the content changes.
//!
//! This module reads files and nothing else; applying the objects is
//! [`crate::ClusterState`]'s job.

mod parse;
mod validate;
mod watch;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;

pub use self::watch::{ManifestWatch, WatchOptions};
use crate::model::{Kind, Object, ObjectKey};

/// Files larger than this are refused: a manifests directory holds
/// configuration, and an accidental multi-gigabyte file must not stall the agent.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Subdirectory depth limit; also what stops symlink loops.
const MAX_DEPTH: usize = 16;

/// Where in a file an object was: 1-based document number, and 1-based item
/// number inside a `List`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub document: usize,
    pub item: Option<usize>,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        Ok(())
    }
}

/// One problem found in the manifests directory. File paths are relative to
/// the directory, except in [`ManifestError::Directory`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum ManifestError {
    /// The directory is missing, not a directory, or cannot be listed.
    #[error("manifests directory {}: {source}", dir.display())]
    Directory {
        dir: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// A file or subdirectory could not be read (or is too large); the last
    /// good objects from it are kept.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// A file is not valid YAML (or JSON); nothing in it is used and its
    /// last good objects are kept. `line` is 1-based, 0 when unknown. The
    /// parser's error is kept as text (no `source`): its own rendering adds
    /// source snippets that do not belong in a one-line log or API answer.
    #[error("{}: line {line}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: u64,
        message: String,
    },
    /// A document is not a mapping, so it cannot be an object.
    #[error(
        "{}: {position}: expected a Kubernetes object (a mapping with apiVersion and kind), found {found}",
        file.display()
    )]
    NotAnObject {
        file: PathBuf,
        position: Position,
        found: String,
    },
    /// An object breaks a rule (or duplicates an earlier one); it is skipped
    /// and its last good version, if any, is kept.
    #[error("{}: {position} ({object}): field {field}: {problem}", file.display())]
    Invalid {
        file: PathBuf,
        position: Position,
        /// `Pod ns/name`, `Namespace name`.
        object: String,
        /// Dotted path, e.g. `spec.containers[0].ports[1].protocol`.
        field: String,
        problem: String,
    },
}

impl ManifestError {
    /// The file the problem is in (relative), or the directory.
    pub fn file(&self) -> &Path {
        match self {
            ManifestError::Directory { dir, .. } => dir,
            ManifestError::Read { file, .. }
            | ManifestError::Syntax { file, .. }
            | ManifestError::NotAnObject { file, .. }
            | ManifestError::Invalid { file, .. } => file,
        }
    }
}

/// A valid object and where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedObject {
    /// Relative to the directory.
    pub file: PathBuf,
    pub position: Position,
    pub object: Object,
}

/// The outcome of reading a directory once.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Valid objects in file, document and item order, without duplicates.
    pub objects: Vec<LoadedObject>,
    /// Every problem, in the same order.
    pub errors: Vec<ManifestError>,
    /// Objects present but invalid: their last good version should stay.
    pub rejected: Vec<ObjectKey>,
    /// Files and subdirectories (relative) that could not be read or parsed
    /// at all: every last good object from them should stay.
    pub failed_paths: Vec<PathBuf>,
    /// Objects skipped because their kind is not handled, by `apiVersion kind`.
    pub skipped_kinds: BTreeMap<String, usize>,
    /// Manifest files read (or attempted).
    pub files: usize,
    /// False when the directory itself could not be listed: then nothing
    /// should be concluded about removed objects.
    pub complete: bool,
}

fn is_manifest(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["yaml", "yml", "json"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    })
}

/// Collects manifest files below `dir` (relative paths). Names starting with
/// '.' are skipped: editors' swap files, and the `..data` / `..2024_...`
/// entries of a mounted ConfigMap, which would otherwise be read twice.
fn collect(
    root: &Path,
    rel: &Path,
    depth: usize,
    files: &mut Vec<(PathBuf, Fingerprint)>,
    out: &mut LoadResult,
) -> io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let rel_path = rel.join(&name);
        // Follows symlinks, which ConfigMap volumes are made of.
        let meta = match std::fs::metadata(root.join(&rel_path)) {
            Ok(m) => m,
            // A dangling symlink or a file removed while listing: not ours to report.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.errors.push(ManifestError::Read {
                    file: rel_path.clone(),
                    source: Arc::new(e),
                });
                out.failed_paths.push(rel_path);
                continue;
            }
        };
        if meta.is_dir() {
            if depth >= MAX_DEPTH {
                continue;
            }
            if let Err(e) = collect(root, &rel_path, depth + 1, files, out) {
                out.errors.push(ManifestError::Read {
                    file: rel_path.clone(),
                    source: Arc::new(e),
                });
                out.failed_paths.push(rel_path);
            }
        } else if meta.is_file() && is_manifest(&rel_path) {
            files.push((rel_path, Fingerprint::of(&meta)));
        }
    }
    Ok(())
}

/// Parses a file's text into documents; JSON files are parsed as JSON (a
/// stream of values), everything else as multi-document YAML.
fn parse_text(file: &Path, text: &str) -> Result<Vec<Value>, ManifestError> {
    let is_json = file
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ManifestError::Syntax {
                file: file.to_path_buf(),
                line: e.line() as u64,
                message: format!("invalid JSON: {e}"),
            })
    } else {
        // YAML 1.2 booleans only: `namespace: y` or `name: on` are strings,
        // as a manifest author means them (YAML 1.1 would make them booleans).
        let options = serde_saphyr::options! { strict_booleans: true };
        serde_saphyr::from_multiple_with_options::<Value>(text, options).map_err(|e| {
            let e = e.without_snippet();
            ManifestError::Syntax {
                file: file.to_path_buf(),
                line: e.location().map_or(0, |l| l.line()),
                message: format!("invalid YAML: {e}"),
            }
        })
    }
}

/// The file's text and the fingerprint of the version read (taken from the
/// open file before reading: a write during the read changes the file's
/// fingerprint again, so the next scan reads it again).
fn read_file(root: &Path, rel: &Path) -> io::Result<(String, Fingerprint)> {
    let path = root.join(rel);
    let file = std::fs::File::open(&path)?;
    let meta = file.metadata()?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is larger than {} MiB", MAX_FILE_BYTES >> 20),
        ));
    }
    let mut text = String::new();
    io::Read::read_to_string(&mut io::Read::take(file, MAX_FILE_BYTES), &mut text)?;
    Ok((text, Fingerprint::of(&meta)))
}

/// Identifies one version of a file's content without reading it: a file
/// rewritten in place changes its size or times, one replaced by a rename
/// (editors, ConfigMap volumes) its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// File times are coarse (a clock tick, or a second on some file
    /// systems): a file changed again within the same tick, to the same
    /// size, keeps its fingerprint. So a fingerprint is only trusted once the
    /// file's last change is `settle` older than the read that cached it;
    /// until then the file is read on every scan.
    fn settled_at(&self, read_at: SystemTime, settle: std::time::Duration) -> bool {
        let changed = self.mtime.max(self.ctime);
        let changed = SystemTime::UNIX_EPOCH
            .checked_add(std::time::Duration::new(
                changed.0.max(0) as u64,
                changed.1.clamp(0, 999_999_999) as u32,
            ))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        read_at
            .duration_since(changed)
            .is_ok_and(|age| age >= settle)
    }
}

/// What one file yielded: its objects (before the directory-wide duplicate
/// check), problems, and skipped kinds.
#[derive(Clone, Debug, Default)]
struct FileLoad {
    objects: Vec<(Position, Object)>,
    errors: Vec<ManifestError>,
    rejected: Vec<ObjectKey>,
    skipped: Vec<String>,
    /// Not parseable at all: its last good objects stay.
    failed: bool,
}

fn load_file(rel: &Path, text: &str) -> FileLoad {
    let docs = match parse_text(rel, text) {
        Ok(d) => d,
        Err(e) => {
            return FileLoad {
                errors: vec![e],
                failed: true,
                ..FileLoad::default()
            };
        }
    };
    let mut out = FileLoad::default();
    for (i, doc) in docs.iter().enumerate() {
        let mut doc_out = parse::DocOutput::default();
        parse::parse_document(rel, i + 1, doc, &mut doc_out);
        out.errors.append(&mut doc_out.errors);
        out.rejected.append(&mut doc_out.rejected);
        out.skipped.append(&mut doc_out.skipped);
        out.objects.append(&mut doc_out.objects);
    }
    out
}

/// Parsed files by relative path, so a scan reads and parses only the files
/// that changed since the one before (a directory of a thousand policies is
/// re-read in a millisecond or two when one of them changes, not a hundred).
/// A file changed in the last couple of seconds is read on every scan (its
/// times may not show a further change yet) but parsed only if its text
/// differs.
#[derive(Debug)]
pub struct FileCache {
    files: std::collections::HashMap<PathBuf, CachedFile>,
    /// Files read (not served from the cache) by all scans so far.
    reads: u64,
    /// Files parsed (read, and their text differed from the cached one).
    parses: u64,
    /// See [`Fingerprint::settled_at`].
    settle: std::time::Duration,
}

impl Default for FileCache {
    fn default() -> Self {
        Self {
            files: Default::default(),
            reads: 0,
            parses: 0,
            // Well above any file system's timestamp granularity but FAT's.
            settle: std::time::Duration::from_secs(2),
        }
    }
}

#[derive(Debug)]
struct CachedFile {
    fingerprint: Fingerprint,
    /// The fingerprint may be trusted (see [`Fingerprint::settled_at`]).
    settled: bool,
    /// Of the text parsed: a file read again (not settled yet, or touched
    /// without a change) is only parsed again when its text differs.
    text_hash: u64,
    load: Arc<FileLoad>,
}

fn text_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl FileCache {
    /// Files read from disk (rather than taken from the cache) so far.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Files parsed so far (read with a text that differed from the cached).
    pub fn parses(&self) -> u64 {
        self.parses
    }

    /// The parsed content of `rel`, from the cache when the file is
    /// unchanged; `Err` when it cannot be read (never cached: retried on
    /// every scan).
    fn load(&mut self, root: &Path, rel: &Path, seen: Fingerprint) -> io::Result<Arc<FileLoad>> {
        if let Some(c) = self.files.get(rel)
            && c.settled
            && c.fingerprint == seen
        {
            return Ok(Arc::clone(&c.load));
        }
        let read_at = SystemTime::now();
        let (text, fingerprint) = read_file(root, rel)?;
        self.reads += 1;
        let hash = text_hash(&text);
        let load = match self.files.get(rel) {
            Some(c) if c.text_hash == hash => Arc::clone(&c.load),
            _ => {
                self.parses += 1;
                Arc::new(load_file(rel, &text))
            }
        };
        self.files.insert(
            rel.to_path_buf(),
            CachedFile {
                fingerprint,
                settled: fingerprint.settled_at(read_at, self.settle),
                text_hash: hash,
                load: Arc::clone(&load),
            },
        );
        Ok(load)
    }
}

/// Reads every manifest file below `dir` (sorted, recursive) once.
///
/// Never fails as a whole: problems are in [`LoadResult::errors`]. Skipped
/// kinds are counted, not logged ([`ManifestSource`] logs each kind once).
pub fn load_dir(dir: &Path) -> LoadResult {
    load_dir_cached(dir, &mut FileCache::default())
}

/// [`load_dir`], reading only the files that changed since `cache` last
/// saw them (the result is the same as a fresh [`load_dir`]'s).
pub fn load_dir_cached(dir: &Path, cache: &mut FileCache) -> LoadResult {
    let mut out = LoadResult {
        complete: true,
        ..LoadResult::default()
    };
    let mut files = Vec::new();
    if let Err(e) = collect(dir, Path::new(""), 0, &mut files, &mut out) {
        out.errors.push(ManifestError::Directory {
            dir: dir.to_path_buf(),
            source: Arc::new(e),
        });
        out.complete = false;
        return out;
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    out.files = files.len();
    // Forget files that are gone (a failed listing above keeps them all).
    let listed: HashSet<&Path> = files.iter().map(|(rel, _)| rel.as_path()).collect();
    cache.files.retain(|rel, _| listed.contains(rel.as_path()));
    // First definition of each key wins, in sorted file order.
    let mut seen: std::collections::HashMap<ObjectKey, (PathBuf, Position)> = Default::default();
    for (rel, fingerprint) in files {
        let load = match cache.load(dir, &rel, fingerprint) {
            Ok(l) => l,
            // Deleted between listing and reading: it is simply gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                cache.files.remove(&rel);
                continue;
            }
            Err(e) => {
                cache.files.remove(&rel);
                out.errors.push(ManifestError::Read {
                    file: rel.clone(),
                    source: Arc::new(e),
                });
                out.failed_paths.push(rel);
                continue;
            }
        };
        out.errors.extend(load.errors.iter().cloned());
        if load.failed {
            out.failed_paths.push(rel);
            continue;
        }
        out.rejected.extend(load.rejected.iter().cloned());
        for kind in &load.skipped {
            *out.skipped_kinds.entry(kind.clone()).or_default() += 1;
        }
        for (position, object) in &load.objects {
            let key = object.key();
            if let Some((first_file, first_pos)) = seen.get(&key) {
                out.errors.push(ManifestError::Invalid {
                    file: rel.clone(),
                    position: *position,
                    object: key.to_string(),
                    field: "metadata.name".into(),
                    problem: format!(
                        "duplicate: already defined in {}: {first_pos} (this one is ignored)",
                        first_file.display()
                    ),
                });
                continue;
            }
            seen.insert(key, (rel.clone(), *position));
            out.objects.push(LoadedObject {
                file: rel.clone(),
                position: *position,
                object: object.clone(),
            });
        }
    }
    out
}

/// Health of the manifests source, for metrics and `weir status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStatus {
    /// Objects served (including kept last good versions), by kind.
    pub objects: BTreeMap<Kind, usize>,
    /// Manifest files in the directory at the last scan.
    pub files: usize,
    /// Problems present at the last scan.
    pub errors: usize,
    /// Problems counted when they first appear (one that persists across
    /// rescans is counted once).
    pub errors_total: u64,
    /// Scans done.
    pub scans_total: u64,
    /// Last scan that could list the directory, i.e. the served objects
    /// reflect the files as of then (bad objects aside, see `errors`).
    pub last_success: Option<SystemTime>,
}

/// The served desired state at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases by one each time `objects` or `errors` change.
    pub generation: u64,
    /// Objects, sorted by kind, namespace and name.
    pub objects: Vec<Object>,
    pub errors: Vec<ManifestError>,
    pub status: SyncStatus,
}

impl Snapshot {
    /// The served object with this key (a linear search; for tools and tests).
    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects.iter().find(|o| &o.key() == key)
    }
}

#[derive(Clone, Debug)]
struct Served {
    file: PathBuf,
    object: Object,
}

/// Successive loads of one directory, with last-good retention.
#[derive(Debug)]
pub struct ManifestSource {
    dir: PathBuf,
    served: BTreeMap<ObjectKey, Served>,
    warned_kinds: HashSet<String>,
    last_errors: Vec<String>,
    last_objects: Vec<Object>,
    status: SyncStatus,
    generation: u64,
    cache: FileCache,
}

impl ManifestSource {
    /// A source for `dir`; nothing is read until [`Self::reload`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            served: BTreeMap::new(),
            warned_kinds: HashSet::new(),
            last_errors: Vec::new(),
            last_objects: Vec::new(),
            status: SyncStatus::default(),
            generation: 0,
            cache: FileCache::default(),
        }
    }

    /// The directory read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Status as of the last reload.
    pub fn status(&self) -> &SyncStatus {
        &self.status
    }

    /// Reads the directory (the files that changed since the last reload)
    /// and returns the served state.
    pub fn reload(&mut self) -> Snapshot {
        let result = load_dir_cached(&self.dir, &mut self.cache);
        self.apply(result)
    }

    /// Files read from disk by all reloads so far (unchanged files are not
    /// read again).
    pub fn files_read(&self) -> u64 {
        self.cache.reads()
    }

    /// Files parsed by all reloads so far (a file read again with the same
    /// text is not parsed again).
    pub fn files_parsed(&self) -> u64 {
        self.cache.parses()
    }

    /// Applies one load: valid objects replace what was served; rejected
    /// objects and objects of failed files keep their last good version;
    /// everything else no longer in the files is removed.
    pub fn apply(&mut self, result: LoadResult) -> Snapshot {
        for (kind, count) in &result.skipped_kinds {
            if self.warned_kinds.insert(kind.clone()) {
                tracing::warn!(
                    dir = %self.dir.display(),
                    kind = %kind,
                    count,
                    "skipping manifests of a kind Weir does not handle (warned once per kind)"
                );
            }
        }
        let now = SystemTime::now();
        if result.complete {
            let mut served = BTreeMap::new();
            for lo in result.objects {
                served.insert(
                    lo.object.key(),
                    Served {
                        file: lo.file,
                        object: lo.object,
                    },
                );
            }
            for key in &result.rejected {
                if !served.contains_key(key)
                    && let Some(old) = self.served.get(key)
                {
                    served.insert(key.clone(), old.clone());
                }
            }
            for (key, old) in &self.served {
                if !served.contains_key(key)
                    && result.failed_paths.iter().any(|p| old.file.starts_with(p))
                {
                    served.insert(key.clone(), old.clone());
                }
            }
            self.served = served;
            self.status.last_success = Some(now);
        }
        // else: the directory could not be listed; keep serving everything.

        let error_texts: Vec<String> = result.errors.iter().map(ToString::to_string).collect();
        let previous: HashSet<&String> = self.last_errors.iter().collect();
        let new_errors = error_texts.iter().filter(|e| !previous.contains(e)).count();
        for e in &result.errors {
            if !previous.contains(&e.to_string()) {
                tracing::warn!(error = %e, "manifest problem");
            }
        }
        self.status.errors_total += new_errors as u64;
        self.status.errors = result.errors.len();
        self.status.scans_total += 1;
        if result.complete {
            self.status.files = result.files;
        }
        let mut objects = BTreeMap::new();
        for kind in Kind::ALL {
            objects.insert(kind, 0);
        }
        for key in self.served.keys() {
            *objects.entry(key.kind).or_default() += 1;
        }
        self.status.objects = objects;

        let objects: Vec<Object> = self.served.values().map(|s| s.object.clone()).collect();
        if self.generation == 0 || error_texts != self.last_errors || objects != self.last_objects {
            self.generation += 1;
            self.last_objects = objects.clone();
        }
        self.last_errors = error_texts;
        Snapshot {
            generation: self.generation,
            objects,
            errors: result.errors,
            status: self.status.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
