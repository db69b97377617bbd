//! Render and export: profiles → files.
//!
//! In: a [`Profile`] and the `-o` paths. Out: files, each written atomically (a temporary
//! file in the same folder, renamed into place), so a reader never sees half a profile and a
//! failed run leaves no partial output behind.

pub mod diff;
pub mod flamegraph;
pub mod folded;
pub mod limits;
pub mod names;
pub mod pprof;
mod pprof_scan;
pub mod ratio;

use std::fs::{self, Permissions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::profile::Profile;
use limits::ReadLimits;

/// An output file format, chosen by the file's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An inferno flame graph (`.svg`).
    Svg,
    /// Collapsed stacks, one `frame;frame;frame count` line each (`.folded`).
    Folded,
    /// A gzipped pprof profile holding every event (`.pb.gz`, `.pprof`).
    Pprof,
}

impl Format {
    /// The extensions prof knows, with their formats.
    pub const EXTENSIONS: &'static [(&'static str, Format)] = &[
        ("svg", Format::Svg),
        ("folded", Format::Folded),
        ("pb.gz", Format::Pprof),
        ("pprof", Format::Pprof),
    ];

    /// The format for `path`, from its extension, and the extension.
    pub fn from_path(path: &Path) -> Result<(Format, &'static str), ExportError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        Format::EXTENSIONS
            .iter()
            .find(|(known, _)| {
                name.strip_suffix(known)
                    .is_some_and(|stem| stem.len() > 1 && stem.ends_with('.'))
            })
            .map(|&(known, format)| (format, known))
            .ok_or_else(|| ExportError::UnknownFormat(path.to_path_buf()))
    }

    /// Whether one file holds every event.
    pub fn holds_all_events(self) -> bool {
        self == Format::Pprof
    }
}

/// Why an output could not be written.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The extension names no format.
    #[error("cannot tell the format of `{}`: use a .svg (flame graph), .folded (collapsed stacks) or .pb.gz (pprof) file name", .0.display())]
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

/// Why a saved profile could not be read.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The file cannot be opened or read.
    #[error("cannot read `{}`", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// It is not a pprof profile.
    #[error("cannot read `{}` as pprof", path.display())]
    Pprof {
        /// The file.
        path: PathBuf,
        /// Why.
        source: pprof::PprofError,
    },
    /// It is not folded stacks.
    #[error("cannot read `{}` as folded stacks", path.display())]
    Folded {
        /// The file.
        path: PathBuf,
        /// Why.
        source: folded::FoldedError,
    },
    /// prof cannot render this file.
    #[error("`{}` is a flame graph, not a profile; give prof report a .pb.gz/.pprof or .folded file", .0.display())]
    NotAProfile(PathBuf),
}

/// Reads a saved profile within the default [`ReadLimits`] (see [`read_profile_within`]).
pub fn read_profile(path: &Path) -> Result<Profile, ReadError> {
    read_profile_within(path, &ReadLimits::default())
}

/// Reads a saved profile: folded stacks for `.folded` (one event, named after the part of
/// the file name before `.folded`, e.g. `cpu-clock` for `prof.cpu-clock.folded`), pprof
/// (gzipped or not) for anything else. A file larger than `limits` allows is refused with
/// the flag that raises the limit, before it takes the memory.
pub fn read_profile_within(path: &Path, limits: &ReadLimits) -> Result<Profile, ReadError> {
    let format = Format::from_path(path).ok().map(|(format, _)| format);
    if format == Some(Format::Svg) {
        return Err(ReadError::NotAProfile(path.to_path_buf()));
    }
    let io_error = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io_error)?;
    let bytes = limits::read_capped(file, limits.max_input_bytes, false).map_err(io_error)?;
    if format == Some(Format::Folded) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let stem = name[..name.len() - ".folded".len()].trim_end_matches('.');
        let event = stem
            .rsplit('.')
            .next()
            .filter(|e| !e.is_empty())
            .unwrap_or("samples");
        let unit = match event {
            "cpu-clock" | "task-clock" => crate::events::Unit::Nanoseconds,
            _ => crate::events::Unit::Events,
        };
        let text = String::from_utf8_lossy(&bytes);
        return folded::read_within(&text, event, unit, limits).map_err(|source| {
            ReadError::Folded {
                path: path.to_path_buf(),
                source,
            }
        });
    }
    pprof::decode_bytes_within(&bytes, limits).map_err(|source| ReadError::Pprof {
        path: path.to_path_buf(),
        source,
    })
}

/// One file to write: its path, format, and the event whose profile goes in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFile {
    /// Where.
    pub path: PathBuf,
    /// How.
    pub format: Format,
    /// Index of the event; `None` for a file that holds every event (pprof).
    pub event: Option<usize>,
}

/// The files for `outputs` (the `-o` paths) and events named `event_parts` (file-safe event
/// names). With one event, each path is used as given; with several, each flame graph or
/// folded path becomes one file per event, `<stem>.<event>.<ext>`, while a pprof file holds
/// them all.
pub fn plan(outputs: &[PathBuf], event_parts: &[String]) -> Result<Vec<OutputFile>, ExportError> {
    let mut files = Vec::new();
    for path in outputs {
        let (format, ext) = Format::from_path(path)?;
        if format.holds_all_events() {
            files.push(OutputFile {
                path: path.clone(),
                format,
                event: None,
            });
            continue;
        }
        if event_parts.len() == 1 {
            files.push(OutputFile {
                path: path.clone(),
                format,
                event: Some(0),
            });
            continue;
        }
        let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("prof");
        let stem = &name[..name.len().saturating_sub(ext.len() + 1)];
        for (event, part) in event_parts.iter().enumerate() {
            let path = path.with_file_name(format!("{stem}.{part}.{ext}"));
            files.push(OutputFile {
                path,
                format,
                event: Some(event),
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
    // An unnamed file (O_TMPFILE) proves the folder takes new files and leaves no name
    // behind, whatever ends prof.
    tempfile::tempfile_in(&folder)
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
    let mut pending = tempfile::Builder::new()
        .prefix(".prof-")
        .make_in(&folder, |temporary| {
            // Listed before it exists, so no signal can end prof between its creation and
            // its listing. It leaves the list when dropped, after the temporary file has
            // been deleted (on error) or renamed.
            let listed = crate::interrupt::register(temporary);
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(temporary)?;
            Ok(PendingFile {
                file,
                _listed: listed,
            })
        })
        .map_err(fail)?;
    {
        let mut writer = BufWriter::new(&mut pending.as_file_mut().file);
        write(&mut writer).map_err(fail)?;
        writer.flush().map_err(fail)?;
    }
    // Temporary files are private (0600); a profile is an ordinary file.
    pending
        .as_file()
        .file
        .set_permissions(Permissions::from_mode(0o644))
        .map_err(fail)?;
    pending.persist(path).map_err(|err| fail(err.error))?;
    Ok(())
}

/// A temporary output file, listed for removal by a signal while it exists.
#[derive(Debug)]
struct PendingFile {
    file: fs::File,
    _listed: crate::interrupt::Listed,
}

/// Writes `profile` to `file` in its format; flame graphs are drawn with `options`.
pub fn write(
    file: &OutputFile,
    profile: &Profile,
    options: &flamegraph::Options,
) -> Result<(), ExportError> {
    write_atomic(&file.path, |w| match (file.format, file.event) {
        (Format::Pprof, _) => pprof::write(profile, w),
        (Format::Svg, Some(event)) => flamegraph::write(profile, event, options, w),
        (Format::Folded, Some(event)) => folded::write(profile, event, options.per_pid, w),
        (_, None) => Err(io::Error::other(
            "a flame graph or folded file needs an event",
        )),
    })
}

/// Writes every file of `files` as [`write`] does, at the same time, one thread each: a
/// flame graph and a pprof file of a big profile take about as long as each other, so on
/// two CPUs both are written in the time of the longer. `written` is told the index of each
/// file once it is in place. Returns each file's result, in order.
pub fn write_all(
    files: &[OutputFile],
    profile: &Profile,
    options: &flamegraph::Options,
    written: &(dyn Fn(usize) + Sync),
) -> Vec<Result<(), ExportError>> {
    let write_one = |index: usize, file: &OutputFile| {
        let result = write(file, profile, options);
        if result.is_ok() {
            written(index);
        }
        result
    };
    if files.len() < 2 {
        return files
            .iter()
            .enumerate()
            .map(|(i, f)| write_one(i, f))
            .collect();
    }
    std::thread::scope(|scope| {
        let writers: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(index, file)| scope.spawn(move || write_one(index, file)))
            .collect();
        writers
            .into_iter()
            .map(|writer| match writer.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
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
                event: Some(0)
            }]
        );
        let events = ["cpu-clock".to_owned(), "page-faults".to_owned()];
        let two = plan(
            &[
                PathBuf::from("out.folded"),
                PathBuf::from("x/y.svg"),
                PathBuf::from("all.pb.gz"),
            ],
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
                Path::new("all.pb.gz"),
            ]
        );
        assert_eq!(two[1].event, Some(1));
        assert_eq!(two[4].event, None);
        assert_eq!(
            Format::from_path(Path::new("x.PPROF")).unwrap().0,
            Format::Pprof
        );
        assert!(Format::from_path(Path::new(".pprof")).is_err());
        assert!(Format::from_path(Path::new("gz")).is_err());
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

    /// A pprof file of one sample type holding these (locations, value) samples, as another
    /// program could write it: no labels, no mappings, one `main` location.
    fn pprof_file(dir: &Path, samples: &[(Vec<u64>, i64)]) -> PathBuf {
        use pprof::proto;
        let message = proto::Profile {
            sample_type: vec![proto::ValueType { r#type: 1, unit: 2 }],
            sample: samples
                .iter()
                .map(|(locations, value)| proto::Sample {
                    location_id: locations.clone(),
                    value: vec![*value],
                    label: Vec::new(),
                })
                .collect(),
            location: vec![proto::Location {
                id: 1,
                line: vec![proto::Line {
                    function_id: 1,
                    ..proto::Line::default()
                }],
                ..proto::Location::default()
            }],
            function: vec![proto::Function {
                id: 1,
                name: 3,
                ..proto::Function::default()
            }],
            string_table: ["", "cpu", "nanoseconds", "main"]
                .map(String::from)
                .to_vec(),
            ..proto::Profile::default()
        };
        let path = dir.join("odd.pprof");
        fs::write(&path, prost::Message::encode_to_vec(&message)).unwrap();
        path
    }

    /// A sample with an empty stack is drawn and written as one `[unknown]` frame, which
    /// reads back; values whose sum passes what pprof's int64 holds are refused, not
    /// wrapped, and a sum of exactly that is read.
    #[test]
    fn empty_stacks_and_overflowing_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = pprof_file(dir.path(), &[(vec![], 1000), (vec![1], 500)]);
        let profile = read_profile(&path).unwrap();
        assert_eq!(
            folded::lines(&profile, 0, false),
            ["[unknown] 1000", "main 500"]
        );
        let out = dir.path().join("x.cpu.folded");
        let svg = dir.path().join("x.svg");
        let files = plan(&[out.clone(), svg.clone()], &["cpu".into()]).unwrap();
        for file in &files {
            write(file, &profile, &flamegraph::Options::default()).unwrap();
        }
        let back = read_profile(&out).unwrap();
        assert_eq!(back.events[0].total().period, 1500);
        assert!(fs::read_to_string(&svg).unwrap().contains("[unknown]"));

        let path = pprof_file(dir.path(), &vec![(vec![1], i64::MAX); 3]);
        let err = read_profile(&path).unwrap_err();
        let text = format!("{:#}", anyhow::Error::new(err));
        assert!(
            text.contains("event `cpu`'s values add up to more than"),
            "{text}"
        );
        let one = pprof_file(dir.path(), &[(vec![1], i64::MAX - 1), (vec![], 1)]);
        let profile = read_profile(&one).unwrap();
        assert_eq!(profile.events[0].total().period, i64::MAX as u64);
        let overflow = dir.path().join("big.folded");
        fs::write(&overflow, format!("a {}\nb {}\n", i64::MAX, 1)).unwrap();
        let text = format!(
            "{:#}",
            anyhow::Error::new(read_profile(&overflow).unwrap_err())
        );
        assert!(
            text.contains("line 2: the counts add up to more than"),
            "{text}"
        );
    }

    /// A gzip bomb, an endless file and a stack too deep are refused with the limit and
    /// the flag that raises it.
    #[test]
    fn limits_are_enforced() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let limits = ReadLimits {
            max_input_bytes: 1 << 20,
            max_stack_depth: 100,
            max_locations: 1000,
        };
        let bomb = dir.path().join("bomb.pb.gz");
        let mut gzip = flate2::write::GzEncoder::new(
            fs::File::create(&bomb).unwrap(),
            flate2::Compression::best(),
        );
        gzip.write_all(&vec![0; 4 << 20]).unwrap();
        gzip.finish().unwrap();
        let message = |path: &Path| {
            let err = read_profile_within(path, &limits).unwrap_err();
            format!("{:#}", anyhow::Error::new(err))
        };
        let text = message(&bomb);
        assert!(
            text.contains("larger than 1,048,576 bytes once decompressed"),
            "{text}"
        );
        assert!(text.contains("--max-input-size"), "{text}");
        let text = message(Path::new("/dev/zero"));
        assert!(
            text.contains("larger than 1,048,576 bytes (prof's"),
            "{text}"
        );
        let deep = pprof_file(dir.path(), &[(vec![1; 101], 1)]);
        let text = message(&deep);
        assert!(text.contains("more than 100 frames"), "{text}");
        assert!(text.contains("--max-stack-depth"), "{text}");
        let wide = pprof_file(dir.path(), &vec![(vec![1; 100], 1); 20]);
        let text = message(&wide);
        assert!(text.contains("more than 1,000 locations"), "{text}");
        assert!(text.contains("--max-locations"), "{text}");
        let folded = dir.path().join("deep.folded");
        fs::write(&folded, format!("{} 1\n", vec!["f"; 101].join(";"))).unwrap();
        let text = message(&folded);
        assert!(
            text.contains("line 1: a stack has more than 100 frames"),
            "{text}"
        );
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
