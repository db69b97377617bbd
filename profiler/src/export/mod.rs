//! Render and export: profiles → files.
//!
//! In: [`EventProfile`]s and the `-o` paths. Out: files, each written atomically (a temporary
//! file in the same folder, renamed into place), so a reader never sees half a profile and a
//! failed run leaves no partial output behind.

pub mod flamegraph;
pub mod folded;

use std::fs::{self, Permissions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::profile::EventProfile;

/// An output file format, chosen by the file's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An inferno flame graph (`.svg`).
    Svg,
    /// Collapsed stacks, one `frame;frame;frame count` line each (`.folded`).
    Folded,
}

impl Format {
    /// The extensions prof knows, with their formats.
    pub const EXTENSIONS: &'static [(&'static str, Format)] =
        &[("svg", Format::Svg), ("folded", Format::Folded)];

    /// The format for `path`, from its extension.
    pub fn from_path(path: &Path) -> Result<(Format, &'static str), ExportError> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        Format::EXTENSIONS
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(ext))
            .map(|&(known, format)| (format, known))
            .ok_or_else(|| ExportError::UnknownFormat(path.to_path_buf()))
    }
}

/// Why an output could not be written.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The extension names no format.
    #[error("cannot tell the format of `{}`: use a .svg (flame graph) or .folded (collapsed stacks) file name", .0.display())]
    UnknownFormat(PathBuf),
    /// The folder does not exist.
    #[error("output folder `{}` does not exist; create it or choose another -o path", .0.display())]
    MissingFolder(PathBuf),
    /// The "folder" is something else.
    #[error("`{}` is not a folder; choose another -o path", .0.display())]
    NotAFolder(PathBuf),
    /// The path names a folder.
    #[error("`{}` is a folder; -o takes a file name such as prof.svg", .0.display())]
    IsAFolder(PathBuf),
    /// A file cannot be created in the folder.
    #[error("cannot write to output folder `{}`; choose a writable -o path", folder.display())]
    NotWritable {
        /// The folder.
        folder: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Writing the file failed.
    #[error("writing `{}` failed", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// One file to write: its path, format, and the event whose profile goes in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFile {
    /// Where.
    pub path: PathBuf,
    /// How.
    pub format: Format,
    /// Index of the event.
    pub event: usize,
}

/// The files for `outputs` (the `-o` paths) and events named `event_parts` (file-safe event
/// names). With one event, each path is used as given; with several, each path becomes one
/// file per event, `<stem>.<event>.<ext>`.
pub fn plan(outputs: &[PathBuf], event_parts: &[String]) -> Result<Vec<OutputFile>, ExportError> {
    let mut files = Vec::new();
    for path in outputs {
        let (format, ext) = Format::from_path(path)?;
        if event_parts.len() == 1 {
            files.push(OutputFile {
                path: path.clone(),
                format,
                event: 0,
            });
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("prof");
        for (event, part) in event_parts.iter().enumerate() {
            let path = path.with_file_name(format!("{stem}.{part}.{ext}"));
            files.push(OutputFile {
                path,
                format,
                event,
            });
        }
    }
    Ok(files)
}

/// Checks, before recording starts, that `path` can be written: its folder exists and
/// accepts a new file, and the path is not a folder itself.
pub fn check_writable(path: &Path) -> Result<(), ExportError> {
    if path.is_dir() {
        return Err(ExportError::IsAFolder(path.to_path_buf()));
    }
    let folder = folder_of(path);
    match fs::metadata(&folder) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(ExportError::MissingFolder(folder));
        }
        Err(source) => return Err(ExportError::NotWritable { folder, source }),
        Ok(meta) if !meta.is_dir() => return Err(ExportError::NotAFolder(folder)),
        Ok(_) => {}
    }
    tempfile::Builder::new()
        .prefix(".prof-check-")
        .tempfile_in(&folder)
        .map(drop)
        .map_err(|source| ExportError::NotWritable { folder, source })
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `path` atomically: `write` fills a temporary file in the same folder, which is
/// then renamed over `path`. On any error the temporary file is removed.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), ExportError> {
    let fail = |source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    };
    let folder = folder_of(path);
    let mut file = tempfile::Builder::new()
        .prefix(".prof-")
        .tempfile_in(&folder)
        .map_err(fail)?;
    {
        let mut writer = BufWriter::new(file.as_file_mut());
        write(&mut writer).map_err(fail)?;
        writer.flush().map_err(fail)?;
    }
    // Temporary files are private (0600); a profile is an ordinary file.
    file.as_file()
        .set_permissions(Permissions::from_mode(0o644))
        .map_err(fail)?;
    file.persist(path).map_err(|err| fail(err.error))?;
    Ok(())
}

/// Writes `profile` to `file` in its format.
pub fn write(file: &OutputFile, profile: &EventProfile) -> Result<(), ExportError> {
    write_atomic(&file.path, |w| match file.format {
        Format::Svg => flamegraph::write(profile, &flamegraph::Options::default(), w),
        Format::Folded => folded::write(profile, w),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event keeps the path; several get one file each, named after the event.
    #[test]
    fn plans_one_file_per_event() {
        let one = plan(&[PathBuf::from("out/prof.svg")], &["cpu-clock".into()]).unwrap();
        assert_eq!(
            one,
            vec![OutputFile {
                path: "out/prof.svg".into(),
                format: Format::Svg,
                event: 0
            }]
        );
        let events = ["cpu-clock".to_owned(), "page-faults".to_owned()];
        let two = plan(
            &[PathBuf::from("out.folded"), PathBuf::from("x/y.svg")],
            &events,
        )
        .unwrap();
        let paths: Vec<&Path> = two.iter().map(|f| f.path.as_path()).collect();
        assert_eq!(
            paths,
            [
                Path::new("out.cpu-clock.folded"),
                Path::new("out.page-faults.folded"),
                Path::new("x/y.cpu-clock.svg"),
                Path::new("x/y.page-faults.svg"),
            ]
        );
        assert_eq!(two[1].event, 1);
        assert!(matches!(
            plan(&[PathBuf::from("a.png")], &events),
            Err(ExportError::UnknownFormat(_))
        ));
    }

    /// Missing folders, files posing as folders and folders posing as files are refused.
    #[test]
    fn writability_checks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(&dir.path().join("ok.svg")).is_ok());
        assert!(matches!(
            check_writable(&dir.path().join("missing/ok.svg")),
            Err(ExportError::MissingFolder(_))
        ));
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        assert!(matches!(
            check_writable(&file.join("x.svg")),
            Err(ExportError::NotAFolder(_))
        ));
        assert!(matches!(
            check_writable(dir.path()),
            Err(ExportError::IsAFolder(_))
        ));
        // Nothing is left behind by the check.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A failed write leaves neither the target nor a temporary file.
    #[test]
    fn failed_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.folded");
        let err = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("interrupted"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomic(&path, |w| w.write_all(b"whole")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "whole");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}
