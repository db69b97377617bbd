//! Binaries: where to read a process's mapped file from, and its separate debug file.
//!
//! In: a process of the [`ProcessTable`](crate::procs::ProcessTable) and one of its
//! mappings. Out: a path that opens, from prof's own mount namespace, the very file the
//! process mapped ([`Locator::locate`]), or why there is none; and for a binary, the separate debug
//! file that holds its full symbol table ([`find_debug_file`]).
//!
//! A live process in prof's mount namespace maps files by the paths prof sees. One in
//! another mount namespace (a container) is read through `/proc/<pid>/map_files/` (the
//! mapped file itself, even if deleted) or `/proc/<pid>/root/`. After a process exits, only
//! the path is left: it is used when the file there still has the build id (or device and
//! inode) that the side band or `/proc` recorded, so that neither a rebuilt binary nor the
//! host's copy of a container's library is taken for the one that ran.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use object::read::ReadCache;

use crate::procs::{Backing, FileId, Mapping, Process};
use crate::profile::UnknownReason;

/// Finds where processes' mapped files can be read, remembering for one symbolization
/// what it looked up: which processes share prof's mount namespace, and build ids of files.
#[derive(Debug, Default)]
pub struct Locator {
    same_mounts: HashMap<u32, bool>,
    build_ids: HashMap<PathBuf, Option<Box<[u8]>>>,
}

impl Locator {
    /// Where `mapping` of process `tgid` can be read from here, or why it cannot.
    pub fn locate(
        &mut self,
        tgid: u32,
        process: &Process,
        mapping: &Mapping,
    ) -> Result<PathBuf, UnknownReason> {
        let Backing::File(path) = &mapping.backing else {
            return Err(UnknownReason::FileUnreadable);
        };
        let alive = !process.exited && Path::new(&format!("/proc/{tgid}")).exists();
        if alive {
            if self.shares_mounts(tgid) && path.exists() {
                return Ok(path.to_path_buf());
            }
            let mapped = PathBuf::from(format!(
                "/proc/{tgid}/map_files/{:x}-{:x}",
                mapping.start, mapping.end
            ));
            if mapped.exists() {
                return Ok(mapped);
            }
            let under_root = under(Path::new(&format!("/proc/{tgid}/root")), path);
            if under_root.exists() {
                return Ok(under_root);
            }
        }
        if !path.exists() {
            return Err(UnknownReason::FileUnreadable);
        }
        if self.is_the_mapped_file(path, mapping) {
            Ok(path.to_path_buf())
        } else {
            Err(UnknownReason::FileChanged)
        }
    }

    /// Forgets what was looked up of process `tgid` (it exited; its pid may come back).
    pub fn forget(&mut self, tgid: u32) {
        self.same_mounts.remove(&tgid);
    }

    /// The root of live process `tgid`, when it is not prof's (its files, and debug files,
    /// are found under it).
    pub fn root(&mut self, tgid: u32) -> Option<PathBuf> {
        (!self.shares_mounts(tgid)).then(|| PathBuf::from(format!("/proc/{tgid}/root")))
    }

    /// Whether live process `tgid` sees the same mounts as prof.
    fn shares_mounts(&mut self, tgid: u32) -> bool {
        *self.same_mounts.entry(tgid).or_insert_with(|| {
            let ours = std::fs::read_link("/proc/self/ns/mnt");
            let theirs = std::fs::read_link(format!("/proc/{tgid}/ns/mnt"));
            matches!((ours, theirs), (Ok(a), Ok(b)) if a == b)
        })
    }

    /// Whether the file at `path` is the one `mapping` recorded: the same build id, else the
    /// same device and inode; a mapping that recorded neither cannot be checked and is
    /// taken.
    fn is_the_mapped_file(&mut self, path: &Path, mapping: &Mapping) -> bool {
        if let Some(recorded) = &mapping.build_id {
            let found = self.build_ids.entry(path.to_path_buf()).or_insert_with(|| {
                blazesym::helper::read_elf_build_id(path)
                    .ok()
                    .flatten()
                    .map(|id| Box::from(&*id))
            });
            return found.as_deref() == Some(&**recorded);
        }
        if let Some(recorded) = mapping.file_id {
            return FileId::of(path).is_some_and(|id| id == recorded);
        }
        true
    }
}

/// Directories searched for separate debug files, as gdb and Debian (`*-dbg` packages)
/// place them.
const DEBUG_DIRS: [&str; 2] = ["/usr/lib/debug", "/lib/debug"];

/// A separate debug file, and how to find addresses of its binary in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugFile {
    /// The debug file.
    pub path: PathBuf,
    /// The binary's loadable segments: (file offset, file size, virtual address). A debug
    /// file keeps the binary's addresses but not its file layout, so file offsets are
    /// turned into addresses with the binary's own segments.
    segments: Vec<(u64, u64, u64)>,
}

impl DebugFile {
    /// The virtual address (as the debug file's symbols give them) of `file_offset` in the
    /// binary.
    pub fn address_of(&self, file_offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(offset, size, _)| offset <= file_offset && file_offset < offset + size)
            .map(|&(offset, _, address)| file_offset - offset + address)
    }
}

/// The separate debug file of the binary read at `opened` (mapped as `path` by a process
/// whose root is `root`, when it is not prof's): by build id in `.build-id/xx/….debug`, or
/// by the name and checksum in its `.gnu_debuglink`, where gdb would look for them. The
/// process's own debug directories are tried before this machine's; a build id match is
/// proof enough for either.
pub fn find_debug_file(opened: &Path, path: &Path, root: Option<&Path>) -> Option<DebugFile> {
    let (build_id, debuglink, segments) = debug_references(opened)?;
    if build_id.is_none() && debuglink.is_none() {
        return None;
    }
    let roots: Vec<PathBuf> = root
        .map(Path::to_path_buf)
        .into_iter()
        .chain([PathBuf::from("/")])
        .collect();
    let found = |candidate: PathBuf, crc: Option<u32>| {
        let matches = match (&build_id, crc) {
            (Some(id), _) => blazesym::helper::read_elf_build_id(&candidate)
                .ok()
                .flatten()
                .is_some_and(|found| *found == **id),
            (None, Some(crc)) => {
                std::fs::read(&candidate).is_ok_and(|bytes| crc32fast::hash(&bytes) == crc)
            }
            (None, None) => false,
        };
        matches.then(|| DebugFile {
            path: candidate,
            segments: segments.clone(),
        })
    };
    if let Some(id) = &build_id
        && id.len() >= 2
    {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        for root in &roots {
            for dir in DEBUG_DIRS {
                let candidate = under(root, dir)
                    .join(".build-id")
                    .join(&hex[..2])
                    .join(format!("{}.debug", &hex[2..]));
                if candidate.is_file()
                    && let Some(debug) = found(candidate, None)
                {
                    return Some(debug);
                }
            }
        }
    }
    let (name, crc) = debuglink?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    for root in &roots {
        let mut candidates = vec![
            under(root, dir).join(&name),
            under(root, dir).join(".debug").join(&name),
        ];
        for debug_dir in DEBUG_DIRS {
            candidates.push(under(&under(root, debug_dir), dir).join(&name));
        }
        for candidate in candidates {
            if candidate.is_file()
                && candidate != opened
                && let Some(debug) = found(candidate, Some(crc))
            {
                return Some(debug);
            }
        }
    }
    None
}

/// What a binary says of its debug file: its build id, its `.gnu_debuglink` (name and CRC),
/// and its loadable segments (file offset, file size, address). Only the headers and these
/// two sections are read, not the symbol tables, so this stays cheap for large binaries.
type DebugReferences = (Option<Vec<u8>>, Option<(String, u32)>, Vec<(u64, u64, u64)>);

fn debug_references(path: &Path) -> Option<DebugReferences> {
    use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
    let cache = ReadCache::new(File::open(path).ok()?);
    let header = object::elf::FileHeader64::<object::Endianness>::parse(&cache).ok()?;
    let endian = header.endian().ok()?;
    let segments = header
        .program_headers(endian, &cache)
        .ok()?
        .iter()
        .filter(|segment| segment.p_type(endian) == object::elf::PT_LOAD)
        .map(|segment| {
            (
                segment.p_offset(endian),
                segment.p_filesz(endian),
                segment.p_vaddr(endian),
            )
        })
        .filter(|&(_, size, _)| size > 0)
        .collect();
    let sections = header.sections(endian, &cache).ok()?;
    let mut build_id = None;
    for section in sections.iter() {
        let Ok(Some(mut notes)) = section.notes(endian, &cache) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == object::elf::ELF_NOTE_GNU
                && note.n_type(endian) == object::elf::NT_GNU_BUILD_ID
            {
                build_id = Some(note.desc().to_vec());
            }
        }
    }
    let debuglink = sections
        .section_by_name(endian, b".gnu_debuglink")
        .and_then(|(_, section)| section.data(endian, &cache).ok())
        .and_then(|data| {
            let end = data.iter().position(|&b| b == 0)?;
            let crc_at = (end + 1).next_multiple_of(4);
            let crc = data.get(crc_at..crc_at + 4)?;
            let crc = u32::from_le_bytes(crc.try_into().ok()?);
            Some((String::from_utf8_lossy(&data[..end]).into_owned(), crc))
        });
    Some((build_id, debuglink, segments))
}

/// `path`, an absolute path as a process sees it, under `root`.
fn under(root: &Path, path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    root.join(path.strip_prefix("/").unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs::snapshot;
    use std::sync::Arc;

    /// Debian's libc has its full symbol table in libc6-dbg's file under
    /// `/usr/lib/debug/.build-id/`, found by build id; its text segment's file offsets map to
    /// the same addresses.
    #[test]
    fn finds_libc_debug_file() {
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let debug = find_debug_file(libc, libc, None)
            .expect("libc6-dbg is installed (scripts/test.sh installs it)");
        assert!(
            debug.path.starts_with("/usr/lib/debug/.build-id"),
            "{debug:?}"
        );
        assert_eq!(debug.address_of(0x26010), Some(0x26010), "{debug:?}");
        // This test binary has a build id but no debug file.
        let me = std::env::current_exe().unwrap();
        assert_eq!(find_debug_file(&me, &me, None), None);
    }

    /// A live process of prof's namespace is read by its own path; after it exits, a path
    /// whose file no longer has the recorded build id is refused.
    #[test]
    fn exited_processes_need_the_same_file() {
        let me = std::process::id();
        let Some(crate::procs::ProcessEvent::Snapshot { mappings, .. }) = snapshot(me) else {
            panic!("own snapshot");
        };
        let exe = std::env::current_exe().unwrap();
        let mut mapping = mappings
            .into_iter()
            .find(|m| m.backing == Backing::File(Arc::from(exe.as_path())))
            .unwrap();
        let live = Process::default();
        let mut locator = Locator::default();
        assert_eq!(locator.locate(me, &live, &mapping), Ok(exe.clone()));
        let exited = Process {
            exited: true,
            ..Process::default()
        };
        assert!(mapping.file_id.is_some(), "/proc tells device and inode");
        assert_eq!(locator.locate(me, &exited, &mapping), Ok(exe.clone()));
        mapping.build_id = Some(Arc::from(&[1u8, 2, 3][..]));
        assert_eq!(
            locator.locate(me, &exited, &mapping),
            Err(UnknownReason::FileChanged)
        );
        // Alive but seen from another mount namespace: its map_files entry.
        locator.same_mounts.insert(me, false);
        let through = locator.locate(me, &live, &mapping).unwrap();
        assert!(
            through.starts_with(format!("/proc/{me}/map_files/")),
            "{through:?}"
        );
    }
}
