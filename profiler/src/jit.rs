//! Perf maps: the names of JIT-compiled code.
//!
//! Node.js (`--perf-basic-prof`), the JVM (perf-map-agent), .NET (`DOTNET_PerfMapEnabled`),
//! LuaJIT and wasmtime write `/tmp/perf-<pid>.map`, one `START SIZE name` line (hexadecimal,
//! without `0x`) per piece of generated code, appending as they compile. The pid in the name
//! and the `/tmp` it lies in are the process's own: inside a container, that is its pid in
//! its pid namespace (`NSpid` in `/proc/<pid>/status`) and its root (`/proc/<pid>/root`).
//!
//! In: a process id. Out: a [`PerfMap`] to look addresses up in, which [`PerfMap::refresh`]
//! extends with what the process appended since it was last read.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One named piece of JIT code.
#[derive(Clone, Debug, PartialEq, Eq)]
struct JitFunction {
    start: u64,
    end: u64,
    /// Which line of the file named it: where code is reused, the later line wins.
    line: usize,
    name: Arc<str>,
}

/// A process's perf map, as far as it was read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PerfMap {
    /// Sorted by start address.
    functions: Vec<JitFunction>,
    /// Bytes of the file parsed so far (whole lines only).
    read: u64,
    /// Lines parsed so far.
    lines: usize,
}

impl PerfMap {
    /// Parses a whole perf map.
    pub fn parse(text: &[u8]) -> PerfMap {
        let mut map = PerfMap::default();
        map.append(text);
        map
    }

    /// Reads the perf map at `path`.
    pub fn read(path: &Path) -> io::Result<PerfMap> {
        let mut map = PerfMap::default();
        map.refresh(path)?;
        Ok(map)
    }

    /// Reads what was appended to the file at `path` since the last read; a file that
    /// shrank (the process exec'd and started over) is read again from the start. Returns
    /// whether anything new was read.
    pub fn refresh(&mut self, path: &Path) -> io::Result<bool> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        if len < self.read {
            *self = PerfMap::default();
        }
        if len == self.read {
            return Ok(false);
        }
        file.seek(SeekFrom::Start(self.read))?;
        let mut bytes = Vec::with_capacity((len - self.read) as usize);
        file.take(len - self.read).read_to_end(&mut bytes)?;
        Ok(self.append(&bytes))
    }

    /// Parses the complete lines of `text`, which follows what was read before.
    fn append(&mut self, text: &[u8]) -> bool {
        // A writer may be in the middle of a line: keep it for the next read.
        let Some(complete) = text.iter().rposition(|&b| b == b'\n').map(|i| i + 1) else {
            return false;
        };
        let before = self.functions.len();
        for line in text[..complete].split(|&b| b == b'\n') {
            self.lines += 1;
            if let Some((start, size, name)) = parse_line(line) {
                self.functions.push(JitFunction {
                    start,
                    end: start.saturating_add(size.max(1)),
                    line: self.lines,
                    name: Arc::from(name),
                });
            }
        }
        self.read += complete as u64;
        self.functions.sort_by_key(|f| (f.start, f.line));
        self.functions.len() > before
    }

    /// The name of the function that covers `addr`, from the latest line that covers it.
    pub fn lookup(&self, addr: u64) -> Option<&Arc<str>> {
        let after = self.functions.partition_point(|f| f.start <= addr);
        // Pieces of JIT code are small and rarely overlap: a short look back finds every
        // one that can still cover `addr`.
        self.functions[..after]
            .iter()
            .rev()
            .take(64)
            .filter(|f| addr < f.end)
            .max_by_key(|f| f.line)
            .map(|f| &f.name)
    }

    /// Whether no function is named.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// How many functions are named.
    pub fn len(&self) -> usize {
        self.functions.len()
    }
}

/// `START SIZE name`: two hex numbers (an optional `0x` is tolerated) and the rest of the
/// line as the name, which may hold spaces.
fn parse_line(line: &[u8]) -> Option<(u64, u64, String)> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.splitn(3, ' ');
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let start = hex(parts.next()?)?;
    let size = hex(parts.next()?)?;
    let name = parts.next()?.trim();
    (!name.is_empty()).then(|| (start, size, name.to_owned()))
}

/// Where the perf map of the live process `pid` is, seen from here: its own `/tmp` (through
/// `/proc/<pid>/root`), under its own pid (the last `NSpid`). `None` if the process is gone.
pub fn live_path(pid: u32) -> Option<PathBuf> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let own_pid = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .and_then(|pids| pids.split_whitespace().last())
        .and_then(|pid| pid.parse::<u32>().ok())
        .unwrap_or(pid);
    Some(PathBuf::from(format!(
        "/proc/{pid}/root/tmp/perf-{own_pid}.map"
    )))
}

/// Where the perf map of a process that exited would be on this machine's `/tmp`: right
/// for processes that shared prof's root and pid namespace (the file outlives the process).
pub fn host_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/perf-{pid}.map"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines name address ranges; malformed lines are skipped; where code was reused, the
    /// later line wins; names keep their spaces.
    #[test]
    fn parses_and_looks_up() {
        let map = PerfMap::parse(
            b"1000 10 JS:*hot /app/main.js:3:1\n\
              garbage line\n\
              2000 20 LazyCompile:~cold /app/main.js:9\n\
              1008 4 Builtin:Reused\n",
        );
        assert_eq!(map.len(), 3);
        assert_eq!(
            map.lookup(0x1000).map(|n| &**n),
            Some("JS:*hot /app/main.js:3:1")
        );
        assert_eq!(map.lookup(0x1009).map(|n| &**n), Some("Builtin:Reused"));
        assert_eq!(
            map.lookup(0x100c).map(|n| &**n),
            Some("JS:*hot /app/main.js:3:1")
        );
        assert_eq!(map.lookup(0x1010), None);
        assert_eq!(
            map.lookup(0x201f).map(|n| &**n),
            Some("LazyCompile:~cold /app/main.js:9")
        );
        assert_eq!(map.lookup(0xfff), None);
    }

    /// A refresh reads only what was appended, leaves a half-written line for later, and
    /// starts over when the file shrank.
    #[test]
    fn refresh_reads_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("perf-1.map");
        std::fs::write(&path, "1000 10 first\n2000 10 sec").unwrap();
        let mut map = PerfMap::read(&path).unwrap();
        assert_eq!(map.len(), 1);
        assert!(!map.refresh(&path).unwrap(), "nothing new");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"ond\n").unwrap();
        assert!(map.refresh(&path).unwrap());
        assert_eq!(map.lookup(0x2004).map(|n| &**n), Some("second"));
        std::fs::write(&path, "3000 10 after_exec\n").unwrap();
        map.refresh(&path).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(map.lookup(0x1000), None);
        assert_eq!(map.lookup(0x3000).map(|n| &**n), Some("after_exec"));
    }

    /// Our own process's perf map would be under our root, named with our pid.
    #[test]
    fn live_path_of_self() {
        let me = std::process::id();
        assert_eq!(
            live_path(me),
            Some(PathBuf::from(format!("/proc/{me}/root/tmp/perf-{me}.map")))
        );
        assert_eq!(live_path(u32::MAX - 1), None);
    }
}
