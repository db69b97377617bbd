//! tracefs: the names and ids of the kernel's tracepoints, for `-e category:name`,
//! `--off-cpu` (which hooks `sched:sched_switch`) and `prof list`.
//!
//! In: tracepoint names. Out: the id `perf_event_open(PERF_TYPE_TRACEPOINT)` takes as its
//! config, the categories and the events of a category, or an error that suggests close
//! names.
//!
//! The ids are only published in tracefs. When tracefs is mounted somewhere, that mount is
//! read. When it is not (it is not on a fresh machine of many distributions), prof mounts a
//! private, read-only instance in a temporary folder for as long as it reads it, and detaches
//! it afterwards, so the machine is left as prof found it. A perf event opened by id needs no
//! mount once open.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};
use thiserror::Error;

/// Why a tracepoint could not be looked up.
#[derive(Debug, Error)]
pub enum TracefsError {
    /// tracefs is not mounted and prof may not mount it.
    #[error(
        "tracefs is not mounted, and prof cannot mount it without CAP_SYS_ADMIN (mount: {errno}); \
         mount it with `sudo mount -t tracefs nodev /sys/kernel/tracing`, or run prof as root"
    )]
    CannotMount {
        /// The errno name.
        errno: &'static str,
        /// The errno.
        source: io::Error,
    },
    /// This kernel has no tracefs.
    #[error("this kernel has no tracefs (CONFIG_TRACING is off), so it has no tracepoints")]
    NoTracefs,
    /// tracefs is mounted, but not readable by this user.
    #[error(
        "cannot read {} (tracefs): permission denied; tracefs is readable by root only unless \
         mounted with a `mode=` option, so run prof as root",
        path.display()
    )]
    NotReadable {
        /// The file or folder.
        path: PathBuf,
        /// The errno.
        source: io::Error,
    },
    /// Reading tracefs failed.
    #[error("cannot read {} (tracefs)", path.display())]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No such category.
    #[error(
        "unknown tracepoint `{category}:{name}`: no category `{category}`{}; `prof list` shows the tracepoint categories",
        crate::events::did_you_mean(.suggestions)
    )]
    UnknownCategory {
        /// The category typed.
        category: String,
        /// The event typed.
        name: String,
        /// Close categories.
        suggestions: Vec<String>,
    },
    /// No such category, when listing one.
    #[error(
        "no tracepoint category `{category}`{}; `prof list` shows the tracepoint categories",
        crate::events::did_you_mean(.suggestions)
    )]
    NoCategory {
        /// The category typed.
        category: String,
        /// Close categories.
        suggestions: Vec<String>,
    },
    /// No such event in an existing category.
    #[error(
        "unknown tracepoint `{category}:{name}`{}; `prof list {category}` shows its events",
        crate::events::did_you_mean(.suggestions)
    )]
    UnknownEvent {
        /// The category.
        category: String,
        /// The event typed.
        name: String,
        /// Close names, as `category:name`.
        suggestions: Vec<String>,
    },
}

impl TracefsError {
    /// The errno underneath, where there is one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            TracefsError::CannotMount { source, .. }
            | TracefsError::NotReadable { source, .. }
            | TracefsError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A readable tracefs: an existing mount, or a private one prof made.
#[derive(Debug)]
pub struct Tracefs {
    root: PathBuf,
    private: Option<PrivateMount>,
}

/// A tracefs instance prof mounted itself; detached and its folder removed on drop.
#[derive(Debug)]
struct PrivateMount {
    folder: tempfile::TempDir,
}

impl Drop for PrivateMount {
    fn drop(&mut self) {
        // Lazily: a reader still holding a file of it does not keep it attached.
        if let Err(err) = rustix::mount::unmount(self.folder.path(), UnmountFlags::DETACH) {
            tracing::warn!(
                "could not unmount the tracefs prof mounted at {}: {err}",
                self.folder.path().display()
            );
        }
    }
}

/// Where tracefs is mounted, from `/proc/self/mounts`, if anywhere.
pub fn mount_point() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
        // Octal escapes (`\040` for a space) only appear in unusual mount points.
        (kind == "tracefs" && !point.contains('\\')).then(|| PathBuf::from(point))
    })
}

impl Tracefs {
    /// The mounted tracefs, or a private one mounted now.
    pub fn open() -> Result<Tracefs, TracefsError> {
        if let Some(root) = mount_point() {
            return Ok(Tracefs {
                root,
                private: None,
            });
        }
        let folder = tempfile::Builder::new()
            .prefix("prof-tracefs-")
            .tempdir()
            .map_err(|source| TracefsError::Read {
                path: std::env::temp_dir(),
                source,
            })?;
        let flags =
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        match rustix::mount::mount("nodev", folder.path(), "tracefs", flags, None) {
            Ok(()) => {}
            Err(errno) if errno == rustix::io::Errno::NODEV => return Err(TracefsError::NoTracefs),
            Err(errno) => {
                let source = io::Error::from(errno);
                return Err(TracefsError::CannotMount {
                    errno: crate::events::errno_name(&source),
                    source,
                });
            }
        }
        tracing::debug!(at = %folder.path().display(), "mounted a private tracefs");
        Ok(Tracefs {
            root: folder.path().to_path_buf(),
            private: Some(PrivateMount { folder }),
        })
    }

    /// Where it is mounted.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether prof mounted it itself (and will unmount it).
    pub fn is_private(&self) -> bool {
        self.private.is_some()
    }

    fn events_dir(&self) -> PathBuf {
        self.root.join("events")
    }

    /// The folders under `dir`, sorted.
    fn folders(dir: &Path) -> Result<Vec<String>, TracefsError> {
        let read = |source| read_error(dir, source);
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(read)? {
            let entry = entry.map_err(read)?;
            if entry.file_type().map_err(read)?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Every tracepoint category (`sched`, `syscalls`, ...), sorted.
    pub fn categories(&self) -> Result<Vec<String>, TracefsError> {
        Tracefs::folders(&self.events_dir())
    }

    /// The events of `category`, sorted; an error suggesting close categories if there is
    /// no such category.
    pub fn events(&self, category: &str) -> Result<Vec<String>, TracefsError> {
        let dir = self.events_dir().join(category);
        if !valid_name(category) || !dir.is_dir() {
            return Err(TracefsError::NoCategory {
                category: category.to_owned(),
                suggestions: close(category, self.categories()?.iter().map(String::as_str)),
            });
        }
        Tracefs::folders(&dir)
    }

    /// The id of tracepoint `category:name`, for `perf_event_open`.
    pub fn id(&self, category: &str, name: &str) -> Result<u64, TracefsError> {
        let events = self.events(category).map_err(|err| match err {
            TracefsError::NoCategory {
                category,
                suggestions,
            } => TracefsError::UnknownCategory {
                category,
                name: name.to_owned(),
                suggestions,
            },
            other => other,
        })?;
        if !valid_name(name) || !events.iter().any(|event| event == name) {
            return Err(TracefsError::UnknownEvent {
                category: category.to_owned(),
                name: name.to_owned(),
                suggestions: close(name, events.iter().map(String::as_str))
                    .into_iter()
                    .map(|event| format!("{category}:{event}"))
                    .collect(),
            });
        }
        let path = self.events_dir().join(category).join(name).join("id");
        let text = fs::read_to_string(&path).map_err(|source| read_error(&path, source))?;
        text.trim().parse().map_err(|_| TracefsError::Read {
            path,
            source: io::Error::new(io::ErrorKind::InvalidData, format!("not an id: {text:?}")),
        })
    }
}

/// A failed read of `path`, telling permission problems apart.
fn read_error(path: &Path, source: io::Error) -> TracefsError {
    let path = path.to_path_buf();
    if crate::events::is_permission_error(&source) {
        TracefsError::NotReadable { path, source }
    } else {
        TracefsError::Read { path, source }
    }
}

/// A tracefs name: letters, digits and underscores (no path tricks).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Up to three of `names` within a few edits of `typed`, closest first.
fn close<'a>(typed: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let budget = (typed.len() / 4).max(2);
    let mut found: Vec<(usize, &str)> = names
        .map(|name| (strsim::osa_distance(typed, name), name))
        .filter(|(distance, _)| *distance <= budget)
        .collect();
    found.sort();
    found
        .into_iter()
        .take(3)
        .map(|(_, name)| name.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Suggestions are the closest names within the edit budget, closest first.
    #[test]
    fn suggestions() {
        let names = [
            "sched_switch",
            "sched_wakeup",
            "sched_waking",
            "irq_handler_entry",
        ];
        assert_eq!(
            close("sched_swich", names.iter().copied()),
            ["sched_switch"]
        );
        assert_eq!(
            close("sched_wakeu", names.iter().copied()),
            ["sched_wakeup"]
        );
        let ties = ["abce", "xyz", "abcd"];
        assert_eq!(close("abcf", ties.iter().copied()), ["abcd", "abce"]);
        assert!(close("zzzz", names.iter().copied()).is_empty());
    }

    /// Names with path separators or dots never reach the file system.
    #[test]
    fn names_are_checked() {
        assert!(valid_name("sys_enter_write"));
        assert!(!valid_name("../sched"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
    }
}
