//! The directory sink: one pprof file per window, named by its time span, the oldest
//! removed first once there are more than `max_files` or they take more than `max_bytes` in
//! all.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use crate::agent::config::DirConfig;
use crate::agent::engine::Shared;
use crate::agent::sinks::Sink;
use crate::agent::window::Span;
use crate::export::{self, ExportError};

/// Why `[dir] path` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// It does not exist.
    #[error("[dir] path `{}` does not exist; create it (mkdir -p {}) or point --dir / [dir] path at another folder", .0.display(), .0.display())]
    Missing(PathBuf),
    /// It is a file or something else.
    #[error("[dir] path `{}` is not a folder; point --dir / [dir] path at a folder", .0.display())]
    NotAFolder(PathBuf),
    /// Files cannot be created in it.
    #[error("[dir] path `{}` is not writable by the agent; fix its permissions (the agent runs as root or with the unit's capabilities) or point --dir / [dir] path at another folder", folder.display())]
    NotWritable {
        /// The folder.
        folder: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Checks, before anything is attached, that the agent can write windows into `dir`.
pub fn check(dir: &Path) -> Result<(), DirError> {
    match fs::metadata(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(DirError::Missing(dir.to_path_buf()));
        }
        Err(source) => {
            return Err(DirError::NotWritable {
                folder: dir.to_path_buf(),
                source,
            });
        }
        Ok(meta) if !meta.is_dir() => return Err(DirError::NotAFolder(dir.to_path_buf())),
        Ok(_) => {}
    }
    tempfile::Builder::new()
        .prefix(".prof-check-")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|source| DirError::NotWritable {
            folder: dir.to_path_buf(),
            source,
        })
}

/// The prefix and suffix of the files the agent writes (and the only ones it removes).
const PREFIX: &str = "prof-";
const SUFFIX: &str = ".pb.gz";

/// A directory that keeps the latest windows.
#[derive(Clone, Debug)]
pub struct Rotation {
    dir: PathBuf,
    max_files: usize,
    max_bytes: u64,
}

impl Rotation {
    /// Keeps at most `max_files` files and `max_bytes` bytes in `dir`.
    pub fn new(dir: PathBuf, max_files: usize, max_bytes: u64) -> Rotation {
        Rotation {
            dir,
            max_files: max_files.max(1),
            max_bytes,
        }
    }

    /// The file name for a window from `start` to `end`: Unix seconds, so names sort by time.
    pub fn file_name(start: SystemTime, end: SystemTime) -> String {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        format!("{PREFIX}{:013}-{:013}{SUFFIX}", secs(start), secs(end))
    }

    /// Writes one window's pprof bytes atomically, then removes the oldest files over the
    /// limits. Returns the path written and how many files were removed.
    pub fn write(
        &self,
        start: SystemTime,
        end: SystemTime,
        bytes: &[u8],
    ) -> Result<(PathBuf, usize), ExportError> {
        let path = self.dir.join(Rotation::file_name(start, end));
        export::write_atomic(&path, |w| w.write_all(bytes))?;
        let removed = self.rotate().map_err(|source| ExportError::Write {
            path: self.dir.clone(),
            source,
        })?;
        Ok((path, removed))
    }

    fn rotate(&self) -> io::Result<usize> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) && name.ends_with(SUFFIX) {
                files.push((name, entry.metadata()?.len()));
            }
        }
        let doomed = removals(files, self.max_files, self.max_bytes);
        for name in &doomed {
            match fs::remove_file(self.dir.join(name)) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        Ok(doomed.len())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Writes each window into a [`Rotation`].
#[derive(Debug)]
pub struct DirSink {
    rotation: Rotation,
}

impl DirSink {
    /// A sink into `[dir]`.
    pub fn new(config: &DirConfig) -> DirSink {
        DirSink {
            rotation: Rotation::new(config.path.clone(), config.max_files, config.max_bytes),
        }
    }
}

impl Sink for DirSink {
    fn export(&mut self, span: &Span, pprof: &Arc<[u8]>, shared: &Shared) {
        match self.rotation.write(span.start, span.end, pprof) {
            Ok((path, removed)) => {
                tracing::debug!(path = %path.display(), removed, "window written");
                shared.metrics().files_written += 1;
            }
            Err(err) => {
                tracing::warn!("[dir]: {}", crate::agent::error_chain(&err));
                shared.metrics().file_failures += 1;
            }
        }
    }
}

/// Which of `files` (name, size) to remove, oldest (smallest name) first, so that at most
/// `max_files` files and `max_bytes` bytes remain. The newest file always stays.
pub fn removals(mut files: Vec<(String, u64)>, max_files: usize, max_bytes: u64) -> Vec<String> {
    files.sort();
    let mut total: u64 = files.iter().map(|(_, size)| size).sum();
    let mut count = files.len();
    let mut doomed = Vec::new();
    for (name, size) in files {
        if count <= 1 || (count <= max_files && total <= max_bytes) {
            break;
        }
        total -= size;
        count -= 1;
        doomed.push(name);
    }
    doomed
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn files(sizes: &[u64]) -> Vec<(String, u64)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| (format!("prof-{i:03}.pb.gz"), size))
            .collect()
    }

    /// The oldest go first, until both the count and the size fit; the newest always stays.
    #[test]
    fn removes_oldest_over_limits() {
        assert_eq!(removals(files(&[1, 1, 1]), 2, 100), ["prof-000.pb.gz"]);
        assert_eq!(
            removals(files(&[50, 30, 30]), 10, 50),
            ["prof-000.pb.gz", "prof-001.pb.gz"]
        );
        assert_eq!(removals(files(&[10]), 1, 5), Vec::<String>::new());
        assert!(removals(files(&[1, 1]), 2, 2).is_empty());
    }

    /// A missing folder, a file and an unwritable folder are refused with what to do, in the
    /// agent's own words (no `-o`).
    #[test]
    fn check_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        check(dir.path()).unwrap();
        let missing = check(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("does not exist; create it"), "{missing}");
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        let not_a_folder = check(&file).unwrap_err().to_string();
        assert!(not_a_folder.contains("is not a folder"), "{not_a_folder}");
        // Root may write anywhere but in pseudo-filesystems.
        let unwritable = check(Path::new("/proc")).unwrap_err().to_string();
        assert!(unwritable.contains("is not writable"), "{unwritable}");
        for message in [missing, not_a_folder, unwritable] {
            assert!(
                message.starts_with("[dir] path `") && !message.contains("-o"),
                "{message}"
            );
        }
    }

    /// Written files rotate in a real directory, and other files are left alone.
    #[test]
    fn rotates_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let rotation = Rotation::new(dir.path().to_path_buf(), 2, 1 << 20);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for i in 0..4u64 {
            let start = t0 + Duration::from_secs(10 * i);
            rotation
                .write(start, start + Duration::from_secs(10), b"pprof")
                .unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "notes.txt",
                "prof-1700000020000-1700000030000.pb.gz",
                "prof-1700000030000-1700000040000.pb.gz"
            ]
        );
    }
}
