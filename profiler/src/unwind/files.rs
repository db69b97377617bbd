//! Finding the files a process maps, naming them so each is compiled once, and the
//! libraries a command will load before it runs.
//!
//! In: a path to read a mapped file from (see [`crate::binaries::Locator`], which finds it
//! for a container's process too), or a program path. Out: an open [`MappedFile`] with its
//! [`FileKey`]s, or the list of files a program loads at start-up.
//!
//! A file is known by its GNU build id when it has one (the same library in two containers
//! is one table), and otherwise by device, inode, size and modification time.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use object::read::elf::{Dyn, FileHeader, SectionHeader};
use object::{Object, ObjectSection, elf};

/// A name for a file's contents.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileKey {
    /// The GNU build id.
    BuildId(Arc<[u8]>),
    /// Device, inode, size and modification time (ns), for files without a build id.
    Inode {
        /// `st_dev`.
        dev: u64,
        /// `st_ino`.
        ino: u64,
        /// `st_size`.
        size: u64,
        /// `st_mtime` in nanoseconds.
        mtime: i128,
    },
    /// The kernel's vDSO, the same image in every 64-bit process.
    Vdso,
}

/// A file opened for compiling, with the keys it is known by.
#[derive(Debug)]
pub struct MappedFile {
    /// What the user would call it, for messages.
    pub name: PathBuf,
    /// Its contents.
    pub bytes: FileBytes,
    /// Device and inode key, always known once the file is open.
    pub inode: FileKey,
}

/// The bytes of a file: mapped, or read (the vDSO).
#[derive(Debug)]
pub enum FileBytes {
    /// A read-only mapping of the file.
    Mapped(Mmap),
    /// Bytes read into memory.
    Owned(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(map) => map,
            FileBytes::Owned(bytes) => bytes,
        }
    }
}

/// Opens `path` and maps it.
pub fn open(path: &Path, name: &Path) -> io::Result<MappedFile> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    // SAFETY: the mapping is read-only and private to this process. A file that another
    // process truncates while mapped would fault on access; executables and libraries that
    // are mapped by running processes are not truncated in place (installers replace them
    // by rename), which is the same assumption every debugger and profiler makes.
    let map = unsafe { Mmap::map(&file)? };
    Ok(MappedFile {
        name: name.to_path_buf(),
        bytes: FileBytes::Mapped(map),
        inode: FileKey::Inode {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        },
    })
}

/// The vDSO image of this process, which is that of every 64-bit process on this kernel.
pub fn vdso() -> io::Result<MappedFile> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let line = maps
        .lines()
        .find(|line| line.ends_with("[vdso]"))
        .ok_or_else(|| io::Error::other("no [vdso] in /proc/self/maps"))?;
    let range = line.split_whitespace().next().unwrap_or_default();
    let (start, end) = range
        .split_once('-')
        .and_then(|(a, b)| {
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .ok_or_else(|| io::Error::other("bad [vdso] line"))?;
    let mut bytes = vec![0u8; (end - start) as usize];
    let mem = File::open("/proc/self/mem")?;
    std::os::unix::fs::FileExt::read_exact_at(&mem, &mut bytes, start)?;
    Ok(MappedFile {
        name: PathBuf::from("[vdso]"),
        bytes: FileBytes::Owned(bytes),
        inode: FileKey::Vdso,
    })
}

/// The files `program` maps when it starts: itself, its ELF interpreter, and its
/// `DT_NEEDED` libraries and theirs, found the way the dynamic linker looks for them
/// (`DT_RPATH`/`DT_RUNPATH` with `$ORIGIN`, `LD_LIBRARY_PATH`, the directories of
/// `/etc/ld.so.conf`, the default ones). A library that cannot be found is left out: its
/// table is built when the side band reports it mapped.
pub fn startup_files(program: &Path) -> Vec<PathBuf> {
    let search = library_dirs();
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = vec![program.to_path_buf()];
    while let Some(path) = queue.pop() {
        let Ok(canonical) = path.canonicalize() else {
            continue;
        };
        if !seen.insert(canonical.clone()) {
            continue;
        }
        let Ok(file) = open(&canonical, &canonical) else {
            continue;
        };
        let Some(dynamic) = dynamic_info(&file.bytes) else {
            found.push(canonical);
            continue;
        };
        let origin = canonical.parent().unwrap_or(Path::new("/"));
        if let Some(interpreter) = dynamic.interpreter {
            queue.push(PathBuf::from(interpreter));
        }
        let own_dirs: Vec<PathBuf> = dynamic
            .run_paths
            .iter()
            .flat_map(|list| list.split(':'))
            .filter(|dir| !dir.is_empty())
            .map(|dir| PathBuf::from(dir.replace("$ORIGIN", &origin.to_string_lossy())))
            .collect();
        for needed in dynamic.needed {
            if needed.contains('/') {
                queue.push(origin.join(needed));
                continue;
            }
            if let Some(dir) = own_dirs
                .iter()
                .chain(search.iter())
                .find(|dir| dir.join(&needed).is_file())
            {
                queue.push(dir.join(&needed));
            }
        }
        found.push(canonical);
    }
    found
}

/// The interpreter and dynamic-section strings of an ELF file that matter for start-up.
struct DynamicInfo {
    interpreter: Option<String>,
    needed: Vec<String>,
    run_paths: Vec<String>,
}

fn dynamic_info(bytes: &[u8]) -> Option<DynamicInfo> {
    let file = object::read::elf::ElfFile64::<object::Endianness>::parse(bytes).ok()?;
    let interpreter = file
        .section_by_name(".interp")
        .and_then(|s| s.data().ok())
        .map(|data| {
            String::from_utf8_lossy(data.split(|&b| b == 0).next().unwrap_or(data)).into_owned()
        });
    let endian = file.endian();
    let header = file.elf_header();
    let sections = header.sections(endian, bytes).ok()?;
    let mut needed = Vec::new();
    let mut run_paths = Vec::new();
    for section in sections.iter() {
        let Ok(Some((entries, link))) = section.dynamic(endian, bytes) else {
            continue;
        };
        let strings = sections.strings(endian, bytes, link).ok()?;
        for entry in entries {
            let tag = entry.d_tag(endian);
            let name = || {
                entry
                    .string(endian, strings)
                    .ok()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
            };
            match tag {
                elf::DT_NEEDED => needed.extend(name()),
                elf::DT_RPATH | elf::DT_RUNPATH => run_paths.extend(name()),
                _ => {}
            }
        }
    }
    Some(DynamicInfo {
        interpreter,
        needed,
        run_paths,
    })
}

/// Where the dynamic linker looks for libraries after a file's own run paths.
fn library_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    read_ld_so_conf(Path::new("/etc/ld.so.conf"), &mut dirs, 0);
    for dir in [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
    ] {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}

/// Adds the directories `/etc/ld.so.conf` lists, following its `include` lines.
fn read_ld_so_conf(path: &Path, dirs: &mut Vec<PathBuf>, depth: u32) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(pattern) = line.strip_prefix("include") {
            let pattern = pattern.trim();
            if depth > 4 {
                continue;
            }
            // The patterns are `dir/*.conf`; read the folder and match the suffix.
            let (dir, suffix) = match pattern.rsplit_once("/*") {
                Some((dir, suffix)) => (PathBuf::from(dir), suffix.to_owned()),
                None => {
                    read_ld_so_conf(Path::new(pattern), dirs, depth + 1);
                    continue;
                }
            };
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(&suffix))
                .collect();
            files.sort();
            for file in files {
                read_ld_so_conf(&file, dirs, depth + 1);
            }
        } else if line.starts_with('/') {
            dirs.push(PathBuf::from(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dynamically linked system program starts with itself, the dynamic linker and libc.
    #[test]
    fn startup_files_of_a_system_program() {
        let files = startup_files(Path::new("/bin/ls"));
        let names: Vec<String> = files
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert!(names.iter().any(|n| n == "ls"), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{names:?}");
        assert!(names.iter().any(|n| n == "libc.so.6"), "{names:?}");
        // ls needs libselinux, which needs libpcre2: dependencies of dependencies count.
        assert!(names.iter().any(|n| n.starts_with("libpcre2")), "{names:?}");
    }

    /// The vDSO reads from memory and is an ELF image with unwind information.
    #[test]
    fn vdso_has_a_table() {
        let vdso = vdso().unwrap();
        let compiled = crate::unwind::table::compile(&vdso.bytes).unwrap();
        assert!(!compiled.rows.is_empty());
        assert_eq!(vdso.inode, FileKey::Vdso);
    }

    /// A file is the same key however it is opened.
    #[test]
    fn keys_do_not_depend_on_the_path() {
        let me = std::process::id();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let direct = open(&exe, &exe).unwrap();
        let via_proc = open(Path::new(&format!("/proc/{me}/exe")), &exe).unwrap();
        assert_eq!(direct.inode, via_proc.inode);
    }
}
