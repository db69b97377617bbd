//! Symbolize: raw instruction pointers → locations with function names, source lines and
//! mappings, with blazesym.
//!
//! In: [`Drained`] samples and the [`ProcessTable`]. Out: a [`Profile`] with one
//! [`EventProfile`] per event. Each stack belongs to its process's labels (pid and comm) and
//! lists user locations outermost first, then kernel locations; a location holds its
//! inlined functions as extra lines.
//!
//! User addresses are turned into (file, file offset) through the process table rather than
//! through `/proc/<pid>/maps`, so processes that exited before the end of the recording are
//! symbolized too. Every unique (file, offset) and kernel address is symbolized once, in one
//! batch per file. What cannot be resolved becomes an `[unknown]` location (no lines), and
//! its reason is counted.

use rustc_hash::FxHashMap as HashMap;
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{CodeInfo, Input, Symbolized};

use crate::binaries::{self, DebugFile};
use crate::drain::{Drained, RawSample, RawStack};
use crate::events::{Event, Unit};
use crate::jit;
use crate::procs::{self, Backing, ProcessTable};
use crate::profile::{
    EventProfile, KERNEL_MAPPING, Labels, Line, Location, Mapping, Profile, Stack, UnknownReason,
};

/// What one symbolized address becomes: a location id, and why it is unresolved if it is.
type Resolution = (u32, Option<UnknownReason>);

/// The functions at one address, outermost first, or why there are none.
type Lines = Result<Vec<Line>, UnknownReason>;

/// A mapping's id in the profile, and the file batch its addresses go to (or why none).
type MappingLookup = (u32, Result<usize, UnknownReason>);

/// Where a user address points.
#[derive(Clone, Copy, Debug)]
enum UserLocation {
    File {
        file: usize,
        offset: u64,
        mapping: u32,
    },
    /// Possibly JIT code, named by the process's perf map if it has one; else unknown for
    /// `otherwise`.
    Jit {
        mapping: Option<u32>,
        otherwise: UnknownReason,
    },
    Unknown {
        reason: UnknownReason,
        mapping: Option<u32>,
    },
}

/// The addresses to look up in one file.
#[derive(Debug)]
struct FileBatch {
    /// Where it opens from here.
    opened: Arc<Path>,
    /// The path the process mapped.
    path: Arc<Path>,
    /// The process's root, when it is not prof's: its debug files are looked for there too.
    root: Option<PathBuf>,
    offsets: BTreeSet<u64>,
}

/// A reusable symbolizer: blazesym caches parsed files between calls.
#[derive(Debug)]
pub struct Symbolizer {
    blazesym: blazesym::symbolize::Symbolizer,
    /// Read DWARF (and separate debug files) besides the symbol tables.
    debug_info: bool,
    /// Calls to [`Symbolizer::symbolize`] so far, and the call that last used each file: a
    /// long-running caller [evicts](Symbolizer::evict_idle) the files it stopped needing.
    calls: Cell<u64>,
    last_used: RefCell<HashMap<Arc<Path>, u64>>,
    /// Each binary's separate debug file, by the path the binary opens from (`None`: it
    /// has none), found once and forgotten with the binary.
    debug_files: RefCell<HashMap<Arc<Path>, Option<Arc<DebugFile>>>>,
    /// Perf maps of JIT processes, by tgid, kept while the process table knows them.
    perf_maps: RefCell<HashMap<u32, Arc<jit::PerfMap>>>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer::new()
    }
}

/// Describes one recorded event for [`Symbolizer::symbolize`].
#[derive(Clone, Debug)]
pub struct EventInfo {
    /// The event's name.
    pub name: String,
    /// What its periods count.
    pub unit: Unit,
}

impl From<&Event> for EventInfo {
    fn from(event: &Event) -> EventInfo {
        EventInfo {
            name: event.name(),
            unit: event.unit(),
        }
    }
}

impl Symbolizer {
    /// A symbolizer that reads DWARF (for inlined functions and lines) and demangles Rust
    /// and C++.
    pub fn new() -> Symbolizer {
        Symbolizer::with_debug_info(true)
    }

    /// A symbolizer that reads DWARF (inlined functions, source lines) only if `debug_info`;
    /// without it, names come from the symbol tables alone, which takes far less memory
    /// (the agent's default).
    pub fn with_debug_info(debug_info: bool) -> Symbolizer {
        let blazesym = blazesym::symbolize::Symbolizer::builder()
            .enable_code_info(debug_info)
            .enable_inlined_fns(debug_info)
            .enable_demangling(true)
            .build();
        Symbolizer {
            blazesym,
            debug_info,
            calls: Cell::new(0),
            last_used: RefCell::new(HashMap::default()),
            debug_files: RefCell::new(HashMap::default()),
            perf_maps: RefCell::new(HashMap::default()),
        }
    }

    /// Forgets what was cached for files that no symbolization used in the last `idle_calls`
    /// calls (their parsed symbols and mapped file), so a long run over a churning set of
    /// binaries stays bounded. Returns how many files were forgotten.
    pub fn evict_idle(&mut self, idle_calls: u64) -> usize {
        let now = self.calls.get();
        let idle: Vec<Arc<Path>> = self
            .last_used
            .borrow()
            .iter()
            .filter(|&(_, &last)| now.saturating_sub(last) > idle_calls)
            .map(|(path, _)| Arc::clone(path))
            .collect();
        for path in &idle {
            self.last_used.borrow_mut().remove(path);
            let debug = self.debug_files.borrow_mut().remove(path).flatten();
            for file in
                std::iter::once(path.as_ref()).chain(debug.as_ref().map(|d| d.path.as_path()))
            {
                let evict = blazesym::symbolize::evict::Elf::new(file);
                if let Err(err) = self.blazesym.evict(&evict.into()) {
                    tracing::debug!("cannot evict {}: {err}", file.display());
                }
            }
        }
        idle.len()
    }

    /// Symbolizes every sample into a profile with one [`EventProfile`] per event (the
    /// caller fills in the recording's times and process-level counters).
    pub fn symbolize(
        &self,
        drained: &Drained,
        processes: &ProcessTable,
        events: &[EventInfo],
    ) -> Profile {
        let mut profile = Profile {
            events: events
                .iter()
                .map(|e| EventProfile::new(e.name.clone(), e.unit))
                .collect(),
            ..Profile::default()
        };
        let mut strings = Strings::default();
        let images = images_of(&drained.samples, processes);
        let user = self.resolve_user(
            &drained.samples,
            &images,
            processes,
            &mut profile,
            &mut strings,
        );
        let kernel = self.resolve_kernel(&drained.samples, &mut profile, &mut strings);

        for (event, stats) in profile.events.iter_mut().zip(&drained.stats.events) {
            event.losses.kernel_samples = stats.samples;
            event.losses.stack_map_full = stats.stack_map_full;
            event.losses.no_stack = stats.no_stack;
            event.losses.map_full = stats.map_full;
            event.losses.blocks_short = stats.blocks_short;
            event.losses.blocks_dropped = stats.blocks_dropped;
            event.losses.unwind = stats.unwind;
        }
        let unknown = profile.locations.intern(Location::unknown());
        let mut labels_of: HashMap<(u32, usize), u32> = HashMap::default();
        for (sample, &image) in drained.samples.iter().zip(&images) {
            if sample.event >= profile.events.len() {
                continue;
            }
            let labels = *labels_of.entry((sample.tgid, image)).or_insert_with(|| {
                profile
                    .labels
                    .intern(labels(sample.tgid, image, processes, &mut strings))
            });
            let depth = sample.user.frames().len() + sample.kernel.frames().len();
            let mut locations = Vec::with_capacity(depth + 1);
            let mut unknowns: BTreeSet<UnknownReason> = BTreeSet::new();
            let mut push = |(location, reason): Resolution| {
                locations.push(location);
                unknowns.extend(reason);
            };
            if let Some(reason) = lost_stack_reason(sample) {
                push((unknown, Some(reason)));
            }
            for (depth, &ip) in sample.user.frames().iter().enumerate().rev() {
                push(user[&(sample.tgid, image, lookup_address(ip, depth))]);
            }
            for (depth, &ip) in sample.kernel.frames().iter().enumerate().rev() {
                push(kernel[&lookup_address(ip, depth)]);
            }
            let event = &mut profile.events[sample.event];
            for reason in unknowns {
                *event.unknown.entry(reason).or_default() += sample.value.samples;
            }
            let stack = Stack {
                labels,
                locations: locations.into(),
            };
            event.add(stack, sample.value);
        }
        profile
    }

    fn resolve_user(
        &self,
        samples: &[RawSample],
        images: &[usize],
        processes: &ProcessTable,
        profile: &mut Profile,
        strings: &mut Strings,
    ) -> HashMap<(u32, usize, u64), Resolution> {
        // Pass 1: where does each unique (process, image, address) point?
        let mut files: Vec<FileBatch> = Vec::new();
        // By the path to open; and by (process, image, mapping start), so each is looked
        // up once.
        let mut file_index: HashMap<Arc<Path>, usize> = HashMap::default();
        let mut mapping_ids: HashMap<(u32, usize, u64), MappingLookup> = HashMap::default();
        let mut build_ids: HashMap<Arc<Path>, Option<Arc<str>>> = HashMap::default();
        let mut locator = binaries::Locator::default();
        let mut locations: HashMap<(u32, usize, u64), UserLocation> = HashMap::default();
        let mut jit_processes: BTreeSet<u32> = BTreeSet::new();
        for (sample, &image) in samples.iter().zip(images) {
            for (depth, &ip) in sample.user.frames().iter().enumerate() {
                let addr = lookup_address(ip, depth);
                let tgid = sample.tgid;
                locations.entry((tgid, image, addr)).or_insert_with(|| {
                    let Some(process) = processes.get(tgid).filter(|_| processes.knows(tgid))
                    else {
                        return UserLocation::Unknown {
                            reason: UnknownReason::ProcessUnknown,
                            mapping: None,
                        };
                    };
                    let Some(mapping) = process.mapping_in(image, addr) else {
                        // JIT code in memory the table never saw mapped may still be named
                        // by the process's perf map.
                        jit_processes.insert(tgid);
                        return UserLocation::Jit {
                            mapping: None,
                            otherwise: UnknownReason::Unmapped,
                        };
                    };
                    let (mapping_id, file) = *mapping_ids
                        .entry((tgid, image, mapping.start))
                        .or_insert_with(|| {
                            let mut described = profile_mapping(mapping, self.debug_info, strings);
                            let Backing::File(path) = &mapping.backing else {
                                let reason = match mapping.backing {
                                    Backing::Vdso => UnknownReason::Vdso,
                                    _ => UnknownReason::Anonymous,
                                };
                                return (profile.mappings.intern(described), Err(reason));
                            };
                            let opened = match locator.locate(tgid, process, mapping) {
                                Ok(opened) => Arc::<Path>::from(opened),
                                Err(reason) => {
                                    tracing::debug!(
                                        "{} of process {tgid}: {reason}",
                                        path.display()
                                    );
                                    return (profile.mappings.intern(described), Err(reason));
                                }
                            };
                            // Processes that predate the recording come from /proc, which
                            // tells no build id: read it from the file.
                            if described.build_id.is_none() {
                                described.build_id = build_ids
                                    .entry(Arc::clone(&opened))
                                    .or_insert_with(|| read_build_id(&opened, strings))
                                    .clone();
                            }
                            let file =
                                *file_index.entry(Arc::clone(&opened)).or_insert_with(|| {
                                    let root = locator.root(tgid);
                                    files.push(FileBatch {
                                        opened,
                                        path: Arc::clone(path),
                                        root,
                                        offsets: BTreeSet::new(),
                                    });
                                    files.len() - 1
                                });
                            (profile.mappings.intern(described), Ok(file))
                        });
                    match file {
                        Ok(file) => {
                            let offset = mapping.file_offset_of(addr);
                            files[file].offsets.insert(offset);
                            UserLocation::File {
                                file,
                                offset,
                                mapping: mapping_id,
                            }
                        }
                        Err(UnknownReason::Anonymous) => {
                            jit_processes.insert(tgid);
                            UserLocation::Jit {
                                mapping: Some(mapping_id),
                                otherwise: UnknownReason::Anonymous,
                            }
                        }
                        Err(reason) => UserLocation::Unknown {
                            reason,
                            mapping: Some(mapping_id),
                        },
                    }
                });
            }
        }

        // Pass 2: one batch per file.
        let call = self.calls.get() + 1;
        self.calls.set(call);
        let mut by_file: HashMap<(usize, u64), Lines> = HashMap::default();
        for (file, batch) in files.iter().enumerate() {
            self.last_used
                .borrow_mut()
                .insert(Arc::clone(&batch.opened), call);
            let offsets: Vec<u64> = batch.offsets.iter().copied().collect();
            let lines = self.lookup_file(batch, &offsets, strings);
            for (offset, lines) in offsets.into_iter().zip(lines) {
                by_file.insert((file, offset), lines);
            }
        }
        let perf_maps = self.perf_maps(&jit_processes, processes);

        locations
            .into_iter()
            .map(|((tgid, image, address), location)| {
                let (mapping, lines) = match location {
                    UserLocation::File {
                        file,
                        offset,
                        mapping,
                    } => (Some(mapping), by_file[&(file, offset)].clone()),
                    UserLocation::Jit { mapping, otherwise } => {
                        let lines = match perf_maps.get(&tgid) {
                            Some(map) => match map.lookup(address) {
                                Some(name) => Ok(vec![Line {
                                    function: strings.get(name),
                                    file: None,
                                    line: 0,
                                }]),
                                None if otherwise == UnknownReason::Anonymous => {
                                    Err(UnknownReason::JitUnnamed)
                                }
                                None => Err(otherwise),
                            },
                            None => Err(otherwise),
                        };
                        (mapping, lines)
                    }
                    UserLocation::Unknown { reason, mapping } => (mapping, Err(reason)),
                };
                let reason = lines.as_ref().err().copied();
                let location = Location {
                    address,
                    mapping,
                    lines: lines.unwrap_or_default(),
                    kernel: false,
                };
                (
                    (tgid, image, address),
                    (profile.locations.intern(location), reason),
                )
            })
            .collect()
    }

    /// The lines of each of `offsets` in one file: from its separate debug file where it has
    /// one (full symbol table; DWARF too when reading debug info), else from the file itself.
    fn lookup_file(&self, batch: &FileBatch, offsets: &[u64], strings: &mut Strings) -> Vec<Lines> {
        let debug_file = self
            .debug_files
            .borrow_mut()
            .entry(Arc::clone(&batch.opened))
            .or_insert_with(|| {
                let found =
                    binaries::find_debug_file(&batch.opened, &batch.path, batch.root.as_deref());
                if let Some(separate) = &found {
                    tracing::debug!(
                        "{}: symbols from {}",
                        batch.path.display(),
                        separate.path.display()
                    );
                }
                found.map(Arc::new)
            })
            .clone();
        let mut lines: Vec<Option<Lines>> = vec![None; offsets.len()];
        if let Some(separate) = &debug_file {
            let (indices, addrs): (Vec<usize>, Vec<u64>) = offsets
                .iter()
                .enumerate()
                .filter_map(|(index, &offset)| Some((index, separate.address_of(offset)?)))
                .unzip();
            let mut elf = Elf::new(&separate.path);
            elf.debug_syms = self.debug_info;
            match self
                .blazesym
                .symbolize(&Source::Elf(elf), Input::VirtOffset(&addrs))
            {
                Ok(symbols) => {
                    for (index, symbol) in indices.into_iter().zip(symbols) {
                        if let Symbolized::Sym(_) = symbol {
                            lines[index] = Some(lines_of(symbol, strings, UnknownReason::NoSymbol));
                        }
                    }
                }
                Err(err) => {
                    tracing::debug!("cannot symbolize {}: {err}", separate.path.display())
                }
            }
        }
        // What the debug file did not name, the file itself may.
        let rest: Vec<u64> = offsets
            .iter()
            .zip(&lines)
            .filter(|(_, lines)| lines.is_none())
            .map(|(&offset, _)| offset)
            .collect();
        if !rest.is_empty() {
            let mut elf = Elf::new(batch.opened.as_ref());
            elf.debug_syms = self.debug_info;
            let mut found = match self
                .blazesym
                .symbolize(&Source::Elf(elf), Input::FileOffset(&rest))
            {
                Ok(symbols) => symbols
                    .into_iter()
                    .map(|symbol| lines_of(symbol, strings, UnknownReason::NoSymbol))
                    .collect(),
                Err(err) => {
                    tracing::debug!("cannot symbolize {}: {err}", batch.opened.display());
                    vec![Err(UnknownReason::FileUnreadable); rest.len()]
                }
            }
            .into_iter();
            for slot in lines.iter_mut().filter(|lines| lines.is_none()) {
                *slot = found.next();
            }
        }
        lines
            .into_iter()
            .map(|lines| lines.unwrap_or(Err(UnknownReason::NoSymbol)))
            .collect()
    }

    /// The perf maps of `tgids`, read now (drain time) and kept for as long as the process
    /// table knows the process: a live process's map is read through its root and re-read
    /// when it grew; one that exited keeps what was read while it lived, plus what its file
    /// on this machine's `/tmp` says, for processes that shared prof's namespaces.
    fn perf_maps(
        &self,
        tgids: &BTreeSet<u32>,
        processes: &ProcessTable,
    ) -> HashMap<u32, Arc<jit::PerfMap>> {
        let mut cache = self.perf_maps.borrow_mut();
        cache.retain(|&tgid, _| processes.knows(tgid));
        let mut maps = HashMap::default();
        for &tgid in tgids {
            let exited = processes.get(tgid).is_none_or(|p| p.exited);
            let path = match exited {
                false => jit::live_path(tgid),
                true => None,
            }
            .unwrap_or_else(|| jit::host_path(tgid));
            let map = cache.entry(tgid).or_default();
            match Arc::make_mut(map).refresh(&path) {
                Ok(true) => tracing::debug!(tgid, functions = map.len(), "read {}", path.display()),
                Ok(false) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => tracing::debug!("cannot read {}: {err}", path.display()),
            }
            if !map.is_empty() {
                maps.insert(tgid, Arc::clone(map));
            }
        }
        maps
    }

    fn resolve_kernel(
        &self,
        samples: &[RawSample],
        profile: &mut Profile,
        strings: &mut Strings,
    ) -> HashMap<u64, Resolution> {
        let addrs: BTreeSet<u64> = samples
            .iter()
            .flat_map(|s| {
                s.kernel
                    .frames()
                    .iter()
                    .enumerate()
                    .map(|(d, &ip)| lookup_address(ip, d))
            })
            .collect();
        let addrs: Vec<u64> = addrs.into_iter().collect();
        if addrs.is_empty() {
            return HashMap::default();
        }
        let mapping = profile.mappings.intern(Mapping {
            file: strings.get(KERNEL_MAPPING),
            build_id: None,
            start: addrs[0],
            limit: u64::MAX,
            offset: 0,
            has_functions: true,
            has_lines: false,
        });
        let source = Source::Kernel(Kernel::default());
        let lines: Vec<Lines> = match self.blazesym.symbolize(&source, Input::AbsAddr(&addrs)) {
            Ok(symbols) => symbols
                .into_iter()
                .map(|symbol| lines_of(symbol, strings, UnknownReason::KernelNoSymbol))
                .collect(),
            Err(err) => {
                tracing::debug!("cannot symbolize kernel addresses: {err}");
                vec![Err(UnknownReason::KernelNoSymbol); addrs.len()]
            }
        };
        addrs
            .into_iter()
            .zip(lines)
            .map(|(address, lines)| {
                let reason = lines.as_ref().err().copied();
                let location = Location {
                    address,
                    mapping: Some(mapping),
                    lines: lines.unwrap_or_default(),
                    kernel: true,
                };
                (address, (profile.locations.intern(location), reason))
            })
            .collect()
    }
}

/// The address to symbolize for a stack entry: every frame but the innermost holds a return
/// address, which points past the call; one byte back lies inside the call instruction, so
/// the caller's line and inlining are the call's, as in perf.
fn lookup_address(ip: u64, depth: usize) -> u64 {
    if depth == 0 { ip } else { ip.saturating_sub(1) }
}

/// Why a sample has no frames on the side that should have them.
fn lost_stack_reason(sample: &RawSample) -> Option<UnknownReason> {
    if sample.user.lost_to_full_map() || sample.kernel.lost_to_full_map() {
        return Some(UnknownReason::StackMapFull);
    }
    let missing = |stack: &RawStack| !matches!(stack, RawStack::Frames(_));
    (missing(&sample.user) && missing(&sample.kernel)).then_some(UnknownReason::NoStack)
}

/// The lines of a symbolized address: the function, then the functions inlined into it,
/// each with its own source line (blazesym reports each function's code location within
/// that function).
fn lines_of(symbol: Symbolized<'_>, strings: &mut Strings, unknown: UnknownReason) -> Lines {
    match symbol {
        Symbolized::Sym(sym) => {
            let mut lines = Vec::with_capacity(1 + sym.inlined.len());
            lines.push(line_of(&sym.name, sym.code_info.as_deref(), strings));
            for inlined in sym.inlined.iter() {
                lines.push(line_of(&inlined.name, inlined.code_info.as_ref(), strings));
            }
            Ok(lines)
        }
        Symbolized::Unknown(_) => Err(unknown),
    }
}

fn line_of(function: &str, code: Option<&CodeInfo<'_>>, strings: &mut Strings) -> Line {
    Line {
        function: strings.get(function),
        file: code.map(|code| strings.get(&code.to_path().to_string_lossy())),
        line: code.and_then(|code| code.line).unwrap_or(0),
    }
}

/// The profile's view of a process mapping: symbolized for functions (prof tries every
/// mapping: files, perf maps, the vDSO), and for source lines where DWARF is read.
fn profile_mapping(mapping: &procs::Mapping, debug_info: bool, strings: &mut Strings) -> Mapping {
    let file = match &mapping.backing {
        Backing::File(path) => strings.get(&path.to_string_lossy()),
        Backing::Vdso => strings.get("[vdso]"),
        Backing::Anonymous => strings.get("[anon]"),
    };
    let build_id = mapping.build_id.as_ref().map(|id| hex(id, strings));
    Mapping {
        file,
        build_id,
        start: mapping.start,
        limit: mapping.end,
        offset: mapping.file_offset,
        has_functions: true,
        has_lines: debug_info && matches!(mapping.backing, Backing::File(_)),
    }
}

fn hex(bytes: &[u8], strings: &mut Strings) -> Arc<str> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    strings.get(&hex)
}

/// The GNU build id of an ELF file, if it has one and can be read.
fn read_build_id(path: &Path, strings: &mut Strings) -> Option<Arc<str>> {
    match blazesym::helper::read_elf_build_id(path) {
        Ok(id) => id.map(|id| hex(&id, strings)),
        Err(err) => {
            tracing::debug!("no build id for {}: {err}", path.display());
            None
        }
    }
}

/// Which image of its process each sample was taken in (see [`procs::Process::image_for`]):
/// 0, the current one, unless the process exec'd and an earlier image maps more of the
/// sample's user frames.
fn images_of(samples: &[RawSample], processes: &ProcessTable) -> Vec<usize> {
    samples
        .iter()
        .map(|sample| match processes.get(sample.tgid) {
            Some(process) if process.image_count() > 1 => {
                let addrs: Vec<u64> = sample
                    .user
                    .frames()
                    .iter()
                    .enumerate()
                    .map(|(depth, &ip)| lookup_address(ip, depth))
                    .collect();
                process.image_for(&addrs)
            }
            _ => 0,
        })
        .collect()
}

/// The labels of a process in one of its images: its pid and the name it had then
/// (`swapper` for the idle task).
fn labels(tgid: u32, image: usize, processes: &ProcessTable, strings: &mut Strings) -> Labels {
    let comm = match processes.get(tgid).and_then(|p| p.comm_in(image)) {
        Some(comm) => Some(strings.get(comm)),
        None if tgid == 0 => Some(strings.get("swapper")),
        None => None,
    };
    Labels {
        pid: Some(tgid),
        comm,
        extra: Vec::new(),
    }
}

/// Interns strings, so each distinct name or path is allocated once.
#[derive(Default)]
struct Strings {
    strings: HashMap<String, Arc<str>>,
}

impl Strings {
    fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(interned) = self.strings.get(text) {
            return Arc::clone(interned);
        }
        let interned: Arc<str> = Arc::from(text);
        self.strings.insert(text.to_owned(), Arc::clone(&interned));
        interned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::KernelStats;
    use crate::procs::{ProcessEvent, snapshot};
    use crate::profile::{UNKNOWN_FRAME, Value};

    #[inline(never)]
    fn marker_function_for_symbolize_test() -> u64 {
        std::hint::black_box(42)
    }

    /// An address in this test binary resolves to its function, source file and line
    /// through the process table, in a mapping of this binary, under the process's labels;
    /// unmapped and unknown-process addresses become `[unknown]` with their reasons counted.
    #[test]
    fn resolves_own_function_and_counts_unknowns() {
        let (processes, drained, events) = own_marker_samples();
        let profile = Symbolizer::new().symbolize(&drained, &processes, &events);
        check_own_marker(&profile, &drained);
    }

    /// Files a symbolizer stopped using are evicted after the given number of calls, and
    /// symbolize as well as before once needed again; a symbol-table-only symbolizer still
    /// names the function.
    #[test]
    fn evicts_idle_files() {
        let (processes, drained, events) = own_marker_samples();
        let mut symbolizer = Symbolizer::with_debug_info(false);
        symbolizer.symbolize(&drained, &processes, &events);
        assert_eq!(symbolizer.evict_idle(0), 0, "used by the last call");
        let nothing = Drained {
            samples: Vec::new(),
            stats: KernelStats::default(),
        };
        symbolizer.symbolize(&nothing, &processes, &events);
        assert_eq!(symbolizer.evict_idle(1), 0, "idle for one call only");
        assert_eq!(symbolizer.evict_idle(0), 1, "the test binary, idle since");
        let profile = symbolizer.symbolize(&drained, &processes, &events);
        assert!(profile.events[0].stacks.keys().any(|stack| {
            profile
                .frame_names(stack, false)
                .iter()
                .any(|f| f.contains("marker_function_for_symbolize_test"))
        }));
    }

    /// In symbol-table-only mode (the agent's default), an address of libc's internal
    /// `__libc_start_call_main`, which only libc6-dbg's separate debug file names, is named;
    /// the mapping says it was symbolized for functions but not for lines.
    #[test]
    fn symbol_tables_of_debug_files() {
        use object::{Object, ObjectSymbol};
        let me = std::process::id();
        let Some(event @ ProcessEvent::Snapshot { .. }) = snapshot(me) else {
            panic!("own snapshot");
        };
        let processes = ProcessTable::build(vec![crate::procs::TimedEvent { time: 0, event }]);
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let debug = binaries::find_debug_file(libc, libc, None).expect("libc6-dbg is installed");
        let bytes = std::fs::read(&debug.path).unwrap();
        let file = object::File::parse(bytes.as_slice()).unwrap();
        let address = file
            .symbols()
            .find(|s| s.name() == Ok("__libc_start_call_main"))
            .expect("the debug file names it")
            .address();
        // Where that address is loaded in this process: the text mapping of libc.
        let process = processes.get(me).unwrap();
        let text = process
            .mappings
            .iter()
            .find(|m| {
                matches!(&m.backing, Backing::File(p) if p.ends_with("libc.so.6"))
                    && debug
                        .address_of(m.file_offset)
                        .is_some_and(|a| a <= address && address < a + (m.end - m.start))
            })
            .expect("libc's text is mapped");
        let ip = text.start + (address - debug.address_of(text.file_offset).unwrap()) + 4;
        let drained = Drained {
            samples: vec![RawSample {
                tgid: me,
                event: 0,
                user: RawStack::Frames(vec![ip].into()),
                kernel: RawStack::Failed(libc::EFAULT),
                value: Value {
                    samples: 1,
                    period: 1,
                },
            }],
            stats: KernelStats::default(),
        };
        let events = [EventInfo {
            name: "cpu-clock".into(),
            unit: Unit::Nanoseconds,
        }];
        let profile = Symbolizer::with_debug_info(false).symbolize(&drained, &processes, &events);
        let (stack, _) = profile.events[0].stacks.iter().next().unwrap();
        assert_eq!(
            profile.frame_names(stack, false)[1..],
            ["__libc_start_call_main"]
        );
        let location = profile.locations.get(stack.locations[0]);
        let mapping = profile.mappings.get(location.mapping.unwrap());
        assert!(mapping.has_functions && !mapping.has_lines, "{mapping:?}");
    }

    /// Samples of this process: the marker function, an unmapped address, and an unknown
    /// process.
    fn own_marker_samples() -> (ProcessTable, Drained, [EventInfo; 1]) {
        let me = std::process::id();
        let Some(event @ ProcessEvent::Snapshot { .. }) = snapshot(me) else {
            panic!("own snapshot");
        };
        let processes = ProcessTable::build(vec![crate::procs::TimedEvent { time: 0, event }]);
        let ip = marker_function_for_symbolize_test as *const () as u64 + 1;
        let sample = |tgid: u32, ip: u64| RawSample {
            tgid,
            event: 0,
            user: RawStack::Frames(vec![ip].into()),
            kernel: RawStack::Failed(libc::EFAULT),
            value: Value {
                samples: 2,
                period: 20,
            },
        };
        let drained = Drained {
            samples: vec![sample(me, ip), sample(me, 8), sample(u32::MAX - 1, ip)],
            stats: KernelStats::default(),
        };
        let events = [EventInfo {
            name: "cpu-clock".into(),
            unit: Unit::Nanoseconds,
        }];
        (processes, drained, events)
    }

    fn check_own_marker(profile: &Profile, drained: &Drained) {
        let ip = drained.samples[0].user.frames()[0];
        let (stack, _) = profile.events[0]
            .stacks
            .iter()
            .find(|(stack, _)| {
                profile
                    .frame_names(stack, false)
                    .iter()
                    .any(|f| f.contains("marker_function_for_symbolize_test"))
            })
            .expect("the marker function is named");
        assert_eq!(stack.locations.len(), 1);
        let location = profile.locations.get(stack.locations[0]);
        assert_eq!(location.address, ip);
        let line = &location.lines[0];
        assert!(
            line.file
                .as_deref()
                .is_some_and(|f| f.ends_with("symbolize.rs")),
            "{line:?}"
        );
        assert!(line.line > 0, "{line:?}");
        let mapping = profile.mappings.get(location.mapping.expect("mapped"));
        let exe = std::env::current_exe().unwrap();
        assert_eq!(&*mapping.file, exe.to_str().unwrap());
        assert!(mapping.start <= ip && ip < mapping.limit, "{mapping:?}");
        // The snapshot from /proc has no build id; it is read from the file.
        let own = blazesym::helper::read_elf_build_id(&exe).unwrap().unwrap();
        let own: String = own.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(mapping.build_id.as_deref(), Some(own.as_str()));
        let labels = profile.labels.get(stack.labels);
        assert_eq!(labels.pid, Some(std::process::id()));
        assert!(labels.comm.is_some());
        assert_eq!(
            profile.events[0].unknown.get(&UnknownReason::Unmapped),
            Some(&2)
        );
        assert_eq!(
            profile.events[0]
                .unknown
                .get(&UnknownReason::ProcessUnknown),
            Some(&2)
        );
        assert_eq!(
            profile.events[0].total(),
            Value {
                samples: 6,
                period: 60
            }
        );
    }

    /// A process that exec'd during the recording is counted under one pid in the kernel:
    /// a stack from before its exec resolves in the image it had then, under the name it
    /// had then, and a stack of the new image under the new name.
    #[test]
    fn stacks_from_before_exec_resolve_in_the_old_image() {
        let (processes, drained, events) = own_marker_samples();
        let me = std::process::id();
        let mut processes = processes;
        processes.apply(ProcessEvent::Comm {
            pid: me,
            tid: me,
            comm: "after-exec".into(),
            exec: true,
        });
        processes.apply(ProcessEvent::Mmap {
            pid: me,
            mapping: crate::procs::Mapping {
                start: 0x10_0000,
                end: 0x20_0000,
                file_offset: 0,
                backing: Backing::File(Arc::from(Path::new("/bin/true"))),
                build_id: None,
                file_id: None,
            },
        });
        let profile = Symbolizer::new().symbolize(&drained, &processes, &events);
        let (stack, _) = profile.events[0]
            .stacks
            .iter()
            .find(|(stack, _)| {
                profile
                    .frame_names(stack, false)
                    .iter()
                    .any(|f| f.contains("marker_function_for_symbolize_test"))
            })
            .expect("the marker resolves in the image before exec");
        let before = profile.labels.get(stack.labels).comm.clone().unwrap();
        assert_ne!(&*before, "after-exec");
        // The address no image maps is unknown under the current name.
        let unmapped = profile.events[0]
            .stacks
            .keys()
            .find(|stack| {
                profile.labels.get(stack.labels).pid == Some(me)
                    && profile
                        .frame_names(stack, false)
                        .contains(&UNKNOWN_FRAME.to_owned())
            })
            .unwrap();
        assert_eq!(
            profile.labels.get(unmapped.labels).comm.as_deref(),
            Some("after-exec")
        );
    }

    /// Lost stacks keep their samples under the comm as one `[unknown]` frame.
    #[test]
    fn lost_stacks_stay_visible() {
        let sample = RawSample {
            tgid: 0,
            event: 0,
            user: RawStack::Failed(libc::E2BIG),
            kernel: RawStack::Failed(libc::EFAULT),
            value: Value {
                samples: 1,
                period: 1,
            },
        };
        assert_eq!(
            lost_stack_reason(&sample),
            Some(UnknownReason::StackMapFull)
        );
        let drained = Drained {
            samples: vec![sample],
            stats: KernelStats::default(),
        };
        let events = [EventInfo {
            name: "page-faults".into(),
            unit: Unit::Events,
        }];
        let profile = Symbolizer::new().symbolize(&drained, &ProcessTable::default(), &events);
        let (stack, _) = profile.events[0].stacks.iter().next().unwrap();
        assert_eq!(
            profile.frame_names(stack, false),
            ["swapper", UNKNOWN_FRAME]
        );
    }
}
