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
    /// The offsets its slots point at, in no order (processes sharing the file may repeat
    /// one); those not cached are sorted for blazesym.
    offsets: Vec<u64>,
}

/// Resolved addresses a symbolizer keeps from one call to the next, over all files and the
/// kernel together. Each takes about 100 bytes with symbol tables only (the agent's
/// default), about 200 with DWARF's inlined functions and lines: 13 MiB for the 61k
/// addresses of the stage bench's 150k unique stacks, 26 MiB at most. Past it, the files
/// least recently used are forgotten first.
pub const MAX_CACHED_ADDRESSES: usize = 1 << 17;

/// Where one slot's address comes from.
#[derive(Clone, Copy, Debug)]
enum SlotSource {
    /// A user address of owner `owner` (a process in one of its images).
    User {
        owner: u32,
        address: u64,
    },
    Kernel {
        address: u64,
    },
}

/// Every frame of a drain as a slot: one per unique address, so each is resolved once.
#[derive(Debug, Default)]
struct Slots {
    /// The (process, image) of each owner.
    owners: Vec<(u32, usize)>,
    /// Each sample's owner, for the samples of known events, in order.
    sample_owners: Vec<u32>,
    /// Each slot's address.
    sources: Vec<SlotSource>,
    /// Each of those samples' frames as slots: its user frames, then its kernel frames,
    /// innermost first as the kernel stores them.
    frames: Vec<u32>,
}

impl Slots {
    fn of(samples: &[RawSample], images: &[usize], events: usize) -> Slots {
        let mut slots = Slots::default();
        let mut owner_of: HashMap<(u32, usize), u32> = HashMap::default();
        let mut user: Vec<HashMap<u64, u32>> = Vec::new();
        let mut kernel: HashMap<u64, u32> = HashMap::default();
        let frames = samples
            .iter()
            .map(|s| s.user.frames().len() + s.kernel.frames().len())
            .sum();
        slots.frames.reserve_exact(frames);
        // A drain holds a process's samples next to each other: no lookup for those.
        let mut last: Option<((u32, usize), u32)> = None;
        for (sample, &image) in samples.iter().zip(images) {
            if sample.event >= events {
                continue;
            }
            let key = (sample.tgid, image);
            let owner = match last {
                Some((last_key, owner)) if last_key == key => owner,
                _ => {
                    let owner = *owner_of.entry(key).or_insert_with(|| {
                        slots.owners.push(key);
                        user.push(HashMap::default());
                        (slots.owners.len() - 1) as u32
                    });
                    last = Some((key, owner));
                    owner
                }
            };
            slots.sample_owners.push(owner);
            let addresses = &mut user[owner as usize];
            for (depth, &ip) in sample.user.frames().iter().enumerate() {
                let address = lookup_address(ip, depth);
                let slot = *addresses.entry(address).or_insert_with(|| {
                    slots.sources.push(SlotSource::User { owner, address });
                    (slots.sources.len() - 1) as u32
                });
                slots.frames.push(slot);
            }
            for (depth, &ip) in sample.kernel.frames().iter().enumerate() {
                let address = lookup_address(ip, depth);
                let slot = *kernel.entry(address).or_insert_with(|| {
                    slots.sources.push(SlotSource::Kernel { address });
                    (slots.sources.len() - 1) as u32
                });
                slots.frames.push(slot);
            }
        }
        slots
    }
}

/// A set of [`UnknownReason`]s, one bit each.
#[derive(Clone, Copy, Debug, Default)]
struct Reasons(u16);

const _: () = assert!(UnknownReason::ALL.len() <= 16);

impl Reasons {
    fn insert(&mut self, reason: UnknownReason) {
        self.0 |= 1 << reason as u16;
    }

    /// The reasons in the set, in order.
    fn iter(self) -> impl Iterator<Item = UnknownReason> {
        UnknownReason::ALL
            .into_iter()
            .filter(move |&reason| self.0 & (1 << reason as u16) != 0)
    }
}

/// A file as it is now: a rebuilt or replaced file has another inode or modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Identity {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
}

impl Identity {
    fn of(path: &Path) -> Option<Identity> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).ok()?;
        Some(Identity {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
        })
    }
}

/// What resolved addresses are kept under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum CacheKey {
    /// A binary and the separate debug file its symbols come from, as they are now. Keyed
    /// by the files rather than by their paths, so processes that map one library through
    /// different paths (`/proc/<pid>/map_files/...`) share it, and a binary rebuilt at the
    /// same path is looked up again.
    File {
        file: Identity,
        debug: Option<Identity>,
    },
    /// The kernel with the modules it has loaded now (a fingerprint of their names and
    /// addresses): loading or unloading one starts afresh.
    Kernel(u64),
}

impl CacheKey {
    /// The key of a binary opened at `opened`, or none if it cannot be stat'ed (then
    /// nothing of it is kept).
    fn of_file(opened: &Path, debug: Option<&DebugFile>) -> Option<CacheKey> {
        let debug = match debug {
            Some(debug) => Some(Identity::of(&debug.path)?),
            None => None,
        };
        Some(CacheKey::File {
            file: Identity::of(opened)?,
            debug,
        })
    }
}

/// A fingerprint of the kernel modules loaded now: their names and load addresses from
/// `/proc/modules` (not their use counts, which change all the time).
fn modules_fingerprint() -> u64 {
    use std::hash::{Hash, Hasher};
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let mut hasher = rustc_hash::FxHasher::default();
    for line in modules.lines() {
        let mut fields = line.split_whitespace();
        fields.next().hash(&mut hasher);
        fields.nth(4).hash(&mut hasher);
    }
    hasher.finish()
}

/// The resolved addresses of one file (or the kernel).
#[derive(Debug, Default)]
struct CachedFile {
    lines: HashMap<u64, Lines>,
    /// The call that last used it.
    last_used: u64,
}

/// Resolved addresses kept between calls, bounded by [`MAX_CACHED_ADDRESSES`].
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<CacheKey, CachedFile>,
    /// Addresses over all entries.
    addresses: usize,
}

impl Cache {
    /// What is kept of `key`, marked as used by `call`.
    fn touch(&mut self, key: &CacheKey, call: u64) -> Option<&HashMap<u64, Lines>> {
        let file = self.entries.get_mut(key)?;
        file.last_used = call;
        Some(&file.lines)
    }

    /// Keeps what `call` resolved in `key`, forgetting the least recently used other files
    /// to make room; what still does not fit is not kept. A file that could not be read is
    /// not kept either: the next call tries again.
    fn store(&mut self, key: CacheKey, call: u64, found: &HashMap<u64, Lines>) {
        if found.is_empty()
            || found
                .values()
                .any(|lines| matches!(lines, Err(UnknownReason::FileUnreadable)))
        {
            return;
        }
        while self.addresses + found.len() > MAX_CACHED_ADDRESSES {
            let oldest = self
                .entries
                .iter()
                .filter(|(k, file)| **k != key && file.last_used < call)
                .min_by_key(|(_, file)| file.last_used)
                .map(|(k, _)| *k);
            match oldest {
                Some(oldest) => self.forget(&oldest),
                None => break,
            }
        }
        let room = MAX_CACHED_ADDRESSES.saturating_sub(self.addresses);
        let file = self.entries.entry(key).or_default();
        file.last_used = call;
        let before = file.lines.len();
        let fits = found.iter().take(room);
        file.lines
            .extend(fits.map(|(&offset, lines)| (offset, lines.clone())));
        self.addresses += file.lines.len() - before;
    }

    fn forget(&mut self, key: &CacheKey) {
        if let Some(file) = self.entries.remove(key) {
            self.addresses -= file.lines.len();
        }
    }

    /// Forgets the entries no call used in the last `idle_calls` calls before `now`.
    fn evict_idle(&mut self, now: u64, idle_calls: u64) {
        let idle: Vec<CacheKey> = self
            .entries
            .iter()
            .filter(|(_, file)| now.saturating_sub(file.last_used) > idle_calls)
            .map(|(key, _)| *key)
            .collect();
        for key in &idle {
            self.forget(key);
        }
    }
}

/// A reusable symbolizer: blazesym caches parsed files between calls, and the symbolizer
/// keeps what each (file, offset) and kernel address resolved to, so a later call asks
/// blazesym only about addresses it has not seen.
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
    /// What addresses resolved to in earlier calls.
    cache: RefCell<Cache>,
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
            cache: RefCell::new(Cache::default()),
        }
    }

    /// Forgets what was cached for files that no symbolization used in the last `idle_calls`
    /// calls (their parsed symbols, mapped file and resolved addresses; the kernel's too),
    /// so a long run over a churning set of binaries stays bounded. Returns how many files
    /// were forgotten.
    pub fn evict_idle(&mut self, idle_calls: u64) -> usize {
        let now = self.calls.get();
        self.cache.get_mut().evict_idle(now, idle_calls);
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
    ///
    /// Each frame is looked up once in a map of its process's addresses, which gives it a
    /// slot: one per unique (process, image, address) and one per unique kernel address.
    /// Each slot is resolved once, from the results of earlier calls where they hold its
    /// file and offset, and the stacks are then built from the slots' location ids.
    pub fn symbolize(
        &self,
        drained: &Drained,
        processes: &ProcessTable,
        events: &[EventInfo],
    ) -> Profile {
        let call = self.calls.get() + 1;
        self.calls.set(call);
        let mut profile = Profile {
            events: events
                .iter()
                .map(|e| EventProfile::new(e.name.clone(), e.unit))
                .collect(),
            ..Profile::default()
        };
        let mut strings = Strings::default();
        let images = images_of(&drained.samples, processes);
        let slots = Slots::of(&drained.samples, &images, events.len());
        let mut resolved: Vec<Resolution> = vec![(0, None); slots.sources.len()];
        self.resolve_user(
            &slots,
            processes,
            &mut profile,
            &mut strings,
            &mut resolved,
            call,
        );
        self.resolve_kernel(&slots, &mut profile, &mut strings, &mut resolved, call);

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
        let labels_of: Vec<u32> = slots
            .owners
            .iter()
            .map(|&(tgid, image)| {
                let labels = labels(tgid, image, processes, &mut strings);
                profile.labels.intern(labels)
            })
            .collect();
        let mut per_event = vec![0usize; profile.events.len()];
        for sample in drained.samples.iter().filter(|s| s.event < events.len()) {
            per_event[sample.event] += 1;
        }
        for (event, stacks) in profile.events.iter_mut().zip(per_event) {
            event.stacks.reserve(stacks);
        }
        let mut frames: &[u32] = &slots.frames;
        let samples = drained.samples.iter().filter(|s| s.event < events.len());
        for (sample, &owner) in samples.zip(&slots.sample_owners) {
            let (user, rest) = frames.split_at(sample.user.frames().len());
            let (kernel, rest) = rest.split_at(sample.kernel.frames().len());
            frames = rest;
            let lost = lost_stack_reason(sample);
            let mut locations = Vec::with_capacity(user.len() + kernel.len() + 1);
            let mut unknowns = Reasons::default();
            if let Some(reason) = lost {
                locations.push(unknown);
                unknowns.insert(reason);
            }
            for &slot in user.iter().rev().chain(kernel.iter().rev()) {
                let (location, reason) = resolved[slot as usize];
                locations.push(location);
                if let Some(reason) = reason {
                    unknowns.insert(reason);
                }
            }
            let event = &mut profile.events[sample.event];
            for reason in unknowns.iter() {
                *event.unknown.entry(reason).or_default() += sample.value.samples;
            }
            let stack = Stack {
                labels: labels_of[owner as usize],
                locations: locations.into(),
            };
            event.add(stack, sample.value);
        }
        profile
    }

    /// How many resolved addresses the symbolizer keeps from earlier calls, over all files
    /// and the kernel (at most [`MAX_CACHED_ADDRESSES`]).
    pub fn cached_addresses(&self) -> usize {
        self.cache.borrow().addresses
    }

    fn resolve_user(
        &self,
        slots: &Slots,
        processes: &ProcessTable,
        profile: &mut Profile,
        strings: &mut Strings,
        resolved: &mut [Resolution],
        call: u64,
    ) {
        // Pass 1: where does each unique (process, image, address) point?
        let mut files: Vec<FileBatch> = Vec::new();
        // By the path to open; and by (process, image, mapping start), so each is looked
        // up once.
        let mut file_index: HashMap<Arc<Path>, usize> = HashMap::default();
        let mut mapping_ids: HashMap<(u32, usize, u64), MappingLookup> = HashMap::default();
        let mut build_ids: HashMap<Arc<Path>, Option<Arc<str>>> = HashMap::default();
        let mut locator = binaries::Locator::default();
        let mut locations: Vec<(u32, u32, u64, UserLocation)> = Vec::new();
        let mut jit_processes: BTreeSet<u32> = BTreeSet::new();
        for (slot, source) in slots.sources.iter().enumerate() {
            let SlotSource::User { owner, address } = *source else {
                continue;
            };
            let (tgid, image) = slots.owners[owner as usize];
            let addr = address;
            let location = 'location: {
                let Some(process) = processes.get(tgid).filter(|_| processes.knows(tgid)) else {
                    break 'location UserLocation::Unknown {
                        reason: UnknownReason::ProcessUnknown,
                        mapping: None,
                    };
                };
                let Some(mapping) = process.mapping_in(image, addr) else {
                    // JIT code in memory the table never saw mapped may still be named
                    // by the process's perf map.
                    jit_processes.insert(tgid);
                    break 'location UserLocation::Jit {
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
                                tracing::debug!("{} of process {tgid}: {reason}", path.display());
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
                        let file = *file_index.entry(Arc::clone(&opened)).or_insert_with(|| {
                            let root = locator.root(tgid);
                            files.push(FileBatch {
                                opened,
                                path: Arc::clone(path),
                                root,
                                offsets: Vec::new(),
                            });
                            files.len() - 1
                        });
                        (profile.mappings.intern(described), Ok(file))
                    });
                match file {
                    Ok(file) => {
                        let offset = mapping.file_offset_of(addr);
                        files[file].offsets.push(offset);
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
            };
            locations.push((slot as u32, tgid, addr, location));
        }

        // Pass 2: one batch per file, of the offsets earlier calls did not resolve.
        let mut keys: Vec<Option<CacheKey>> = Vec::with_capacity(files.len());
        let mut found: Vec<HashMap<u64, Lines>> = Vec::with_capacity(files.len());
        for batch in &files {
            self.last_used
                .borrow_mut()
                .insert(Arc::clone(&batch.opened), call);
            let debug_file = self.debug_file(batch);
            let key = CacheKey::of_file(&batch.opened, debug_file.as_deref());
            let mut missing: Vec<u64> = {
                let mut cache = self.cache.borrow_mut();
                let cached = key.and_then(|key| cache.touch(&key, call));
                batch
                    .offsets
                    .iter()
                    .copied()
                    .filter(|offset| cached.is_none_or(|c| !c.contains_key(offset)))
                    .collect()
            };
            // blazesym reads a file best in address order.
            missing.sort_unstable();
            missing.dedup();
            let lines = match missing.is_empty() {
                true => Vec::new(),
                false => self.lookup_file(batch, debug_file.as_deref(), &missing, strings),
            };
            let lines: HashMap<u64, Lines> = missing.into_iter().zip(lines).collect();
            if let Some(key) = key {
                self.cache.borrow_mut().store(key, call, &lines);
            }
            keys.push(key);
            found.push(lines);
        }
        let perf_maps = self.perf_maps(&jit_processes, processes);

        let cache = self.cache.borrow();
        for (slot, tgid, address, location) in locations {
            let (mapping, lines) = match location {
                UserLocation::File {
                    file,
                    offset,
                    mapping,
                } => {
                    let lines = found[file].get(&offset).or_else(|| {
                        let cached = cache.entries.get(keys[file].as_ref()?)?;
                        cached.lines.get(&offset)
                    });
                    let lines = lines.cloned().unwrap_or(Err(UnknownReason::NoSymbol));
                    (Some(mapping), lines)
                }
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
            resolved[slot as usize] = (profile.locations.intern(location), reason);
        }
    }

    /// The separate debug file of a batch's binary, found once and kept with the binary.
    fn debug_file(&self, batch: &FileBatch) -> Option<Arc<DebugFile>> {
        self.debug_files
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
            .clone()
    }

    /// The lines of each of `offsets` in one file: from its separate debug file where it has
    /// one (full symbol table; DWARF too when reading debug info), else from the file itself.
    fn lookup_file(
        &self,
        batch: &FileBatch,
        debug_file: Option<&DebugFile>,
        offsets: &[u64],
        strings: &mut Strings,
    ) -> Vec<Lines> {
        let mut lines: Vec<Option<Lines>> = vec![None; offsets.len()];
        if let Some(separate) = debug_file {
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
        slots: &Slots,
        profile: &mut Profile,
        strings: &mut Strings,
        resolved: &mut [Resolution],
        call: u64,
    ) {
        let mut addrs: Vec<(u64, u32)> = slots
            .sources
            .iter()
            .enumerate()
            .filter_map(|(slot, source)| match *source {
                SlotSource::Kernel { address } => Some((address, slot as u32)),
                SlotSource::User { .. } => None,
            })
            .collect();
        if addrs.is_empty() {
            return;
        }
        addrs.sort_unstable();
        let mapping = profile.mappings.intern(Mapping {
            file: strings.get(KERNEL_MAPPING),
            build_id: None,
            start: addrs[0].0,
            limit: u64::MAX,
            offset: 0,
            has_functions: true,
            has_lines: false,
        });
        let key = CacheKey::Kernel(modules_fingerprint());
        let missing: Vec<u64> = {
            let mut cache = self.cache.borrow_mut();
            let cached = cache.touch(&key, call);
            addrs
                .iter()
                .map(|&(address, _)| address)
                .filter(|address| cached.is_none_or(|c| !c.contains_key(address)))
                .collect()
        };
        let mut failed = false;
        let found: HashMap<u64, Lines> = if missing.is_empty() {
            HashMap::default()
        } else {
            let source = Source::Kernel(Kernel::default());
            let lines: Vec<Lines> = match self.blazesym.symbolize(&source, Input::AbsAddr(&missing))
            {
                Ok(symbols) => symbols
                    .into_iter()
                    .map(|symbol| lines_of(symbol, strings, UnknownReason::KernelNoSymbol))
                    .collect(),
                Err(err) => {
                    tracing::debug!("cannot symbolize kernel addresses: {err}");
                    failed = true;
                    vec![Err(UnknownReason::KernelNoSymbol); missing.len()]
                }
            };
            missing.into_iter().zip(lines).collect()
        };
        let mut cache = self.cache.borrow_mut();
        // Symbols that could not be read at all are asked for again next time.
        if !failed {
            cache.store(key, call, &found);
        }
        let cached = cache.entries.get(&key);
        for (address, slot) in addrs {
            let lines = found
                .get(&address)
                .or_else(|| cached?.lines.get(&address))
                .cloned()
                .unwrap_or(Err(UnknownReason::KernelNoSymbol));
            let reason = lines.as_ref().err().copied();
            let location = Location {
                address,
                mapping: Some(mapping),
                lines: lines.unwrap_or_default(),
                kernel: true,
            };
            resolved[slot as usize] = (profile.locations.intern(location), reason);
        }
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
        let drained = one_user_sample(me, ip);
        let events = cpu_clock();
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

    /// Every stack of a profile by its frame names, with its value, and the unknown counts:
    /// what two symbolizations of one drain must agree on.
    fn named_stacks(profile: &Profile) -> (Vec<(Vec<String>, Value)>, Vec<Location>) {
        let mut stacks: Vec<(Vec<String>, Value)> = profile.events[0]
            .stacks
            .iter()
            .map(|(stack, value)| (profile.frame_names(stack, true), *value))
            .collect();
        stacks.sort_by(|a, b| a.0.cmp(&b.0));
        let mut locations: Vec<Location> =
            profile.locations.iter().map(|(_, l)| l.clone()).collect();
        locations.sort_by_key(|l| (l.address, l.kernel, l.mapping));
        (stacks, locations)
    }

    /// The marker function's cached lines, replaced by a made-up name: a call that shows
    /// the made-up name was served from the cache.
    fn poison_marker(symbolizer: &Symbolizer, drained: &Drained, processes: &ProcessTable) {
        let ip = drained.samples[0].user.frames()[0];
        let mapping = processes
            .get(std::process::id())
            .unwrap()
            .mapping_of(ip)
            .unwrap();
        let offset = mapping.file_offset_of(ip);
        let mut cache = symbolizer.cache.borrow_mut();
        let poisoned = cache
            .entries
            .values_mut()
            .find_map(|file| file.lines.get_mut(&offset))
            .expect("the marker's offset is cached");
        *poisoned = Ok(vec![Line {
            function: Arc::from("served_from_the_cache"),
            file: None,
            line: 0,
        }]);
    }

    fn names_function(profile: &Profile, name: &str) -> bool {
        profile.events[0].stacks.keys().any(|stack| {
            profile
                .frame_names(stack, false)
                .iter()
                .any(|f| f.contains(name))
        })
    }

    /// A second symbolization of the same drain gives the same profile, from the addresses
    /// the first one resolved (user and kernel): it does not ask blazesym again.
    #[test]
    fn a_warm_symbolizer_serves_resolved_addresses_from_its_cache() {
        let (processes, mut drained, events) = own_marker_samples();
        let kernel = kernel_text_address();
        drained.samples[0].kernel = RawStack::Frames(vec![kernel].into());
        let symbolizer = Symbolizer::new();
        let first = symbolizer.symbolize(&drained, &processes, &events);
        assert!(names_function(&first, "marker_function_for_symbolize_test"));
        assert!(names_function(&first, "schedule_[k]"));
        let cached = symbolizer.cached_addresses();
        assert_eq!(cached, 2, "the marker and the kernel address");
        let second = symbolizer.symbolize(&drained, &processes, &events);
        assert_eq!(named_stacks(&first), named_stacks(&second));
        assert_eq!(first.events[0].unknown, second.events[0].unknown);
        assert_eq!(symbolizer.cached_addresses(), cached);
        poison_marker(&symbolizer, &drained, &processes);
        let third = symbolizer.symbolize(&drained, &processes, &events);
        assert!(names_function(&third, "served_from_the_cache"));
    }

    /// Eviction forgets the resolved addresses of idle files with the files: the next call
    /// resolves them again.
    #[test]
    fn eviction_forgets_resolved_addresses() {
        let (processes, drained, events) = own_marker_samples();
        let mut symbolizer = Symbolizer::with_debug_info(false);
        symbolizer.symbolize(&drained, &processes, &events);
        assert_eq!(symbolizer.cached_addresses(), 1);
        poison_marker(&symbolizer, &drained, &processes);
        let nothing = Drained {
            samples: Vec::new(),
            stats: KernelStats::default(),
        };
        symbolizer.symbolize(&nothing, &processes, &events);
        symbolizer.evict_idle(1);
        assert_eq!(symbolizer.cached_addresses(), 1, "idle for one call only");
        symbolizer.evict_idle(0);
        assert_eq!(symbolizer.cached_addresses(), 0);
        let profile = symbolizer.symbolize(&drained, &processes, &events);
        assert!(!names_function(&profile, "served_from_the_cache"));
        assert!(names_function(
            &profile,
            "marker_function_for_symbolize_test"
        ));
    }

    /// The cache never holds more than its bound: the least recently used file goes first.
    #[test]
    fn the_cache_is_bounded() {
        let mut cache = Cache::default();
        let key = |inode| CacheKey::File {
            file: Identity {
                device: 1,
                inode,
                size: 0,
                modified: (0, 0),
            },
            debug: None,
        };
        let lines = |from: u64, n: usize| -> HashMap<u64, Lines> {
            (from..from + n as u64)
                .map(|o| (o, Err(UnknownReason::NoSymbol)))
                .collect()
        };
        cache.store(key(1), 1, &lines(0, MAX_CACHED_ADDRESSES / 2));
        cache.store(key(2), 2, &lines(0, MAX_CACHED_ADDRESSES / 2));
        assert_eq!(cache.addresses, MAX_CACHED_ADDRESSES);
        cache.store(key(3), 3, &lines(0, 10));
        assert!(!cache.entries.contains_key(&key(1)), "the oldest file goes");
        assert_eq!(cache.addresses, MAX_CACHED_ADDRESSES / 2 + 10);
        // One call's own files are never forgotten for it: what does not fit is not kept.
        cache.store(key(3), 3, &lines(10, MAX_CACHED_ADDRESSES));
        assert!(
            cache.addresses <= MAX_CACHED_ADDRESSES,
            "{}",
            cache.addresses
        );
        assert_eq!(cache.entries.len(), 1, "only file 3, used by call 3");
        let total: usize = cache.entries.values().map(|f| f.lines.len()).sum();
        assert_eq!(total, cache.addresses);
    }

    /// A binary rebuilt at the same path (another inode and modification time) is looked up
    /// afresh, not served from what the old one resolved to.
    #[test]
    fn a_rebuilt_binary_is_not_served_from_the_cache() {
        use object::{Object, ObjectSegment, ObjectSymbol};
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("app");
        let build = |function: &str| {
            let source = dir.path().join(format!("{function}.c"));
            std::fs::write(
                &source,
                format!(
                    "int {function}(int x) {{ return x * 3 + 1; }}\n\
                     int main(void) {{ return {function}(2); }}\n"
                ),
            )
            .unwrap();
            let built = dir.path().join(format!("{function}.out"));
            let status = std::process::Command::new("clang")
                .args(["-O0", "-g", "-o"])
                .arg(&built)
                .arg(&source)
                .status()
                .expect("clang runs (prof's build needs it)");
            assert!(status.success());
            // A new inode at the same path, as a linker or package manager leaves it.
            std::fs::rename(&built, &binary).unwrap();
            let bytes = std::fs::read(&binary).unwrap();
            let file = object::File::parse(bytes.as_slice()).unwrap();
            let text = file
                .segments()
                .find(|s| s.flags() == object::SegmentFlags::Elf { p_flags: 5 })
                .expect("an r-x segment");
            let address = file
                .symbols()
                .find(|s| s.name() == Ok(function))
                .unwrap()
                .address();
            let (offset, size) = text.file_range();
            (text.address(), offset, size, address)
        };
        const BASE: u64 = 0x7000_0000_0000;
        const TGID: u32 = 4_100_000;
        let setup = |(segment, offset, size, address): (u64, u64, u64, u64)| {
            let processes =
                one_file_process(TGID, &binary, BASE + segment, BASE + segment + size, offset);
            let drained = one_user_sample(TGID, BASE + address + 1);
            (processes, drained)
        };
        let events = cpu_clock();
        let symbolizer = Symbolizer::new();
        let (processes, drained) = setup(build("first_build"));
        let profile = symbolizer.symbolize(&drained, &processes, &events);
        assert!(names_function(&profile, "first_build"));
        let (processes, drained) = setup(build("second_build"));
        let profile = symbolizer.symbolize(&drained, &processes, &events);
        assert!(names_function(&profile, "second_build"));
        assert!(!names_function(&profile, "first_build"));
    }

    /// A mapped file blazesym cannot read is reported unreadable and not kept: the next
    /// call tries it again.
    #[test]
    fn an_unreadable_file_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-elf");
        std::fs::write(&file, vec![b'x'; 8192]).unwrap();
        const TGID: u32 = 4_100_001;
        let processes = one_file_process(TGID, &file, 0x10_0000, 0x10_2000, 0);
        let drained = one_user_sample(TGID, 0x10_0100);
        let events = cpu_clock();
        let symbolizer = Symbolizer::new();
        for _ in 0..2 {
            let profile = symbolizer.symbolize(&drained, &processes, &events);
            assert_eq!(
                profile.events[0]
                    .unknown
                    .get(&UnknownReason::FileUnreadable),
                Some(&1),
                "{:?}",
                profile.events[0].unknown
            );
            assert_eq!(symbolizer.cached_addresses(), 0);
        }
    }

    /// An address in the kernel's text, from `/proc/kallsyms`.
    fn kernel_text_address() -> u64 {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
        kallsyms
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let name = fields.nth(1)?;
                (name == "schedule" && address != 0).then_some(address + 4)
            })
            .expect("kallsyms names schedule (run as root)")
    }

    /// One sample of process `tgid` with one user frame at `ip`.
    fn one_user_sample(tgid: u32, ip: u64) -> Drained {
        Drained {
            samples: vec![RawSample {
                tgid,
                event: 0,
                user: RawStack::Frames(vec![ip].into()),
                kernel: RawStack::Failed(libc::EFAULT),
                value: Value {
                    samples: 1,
                    period: 1,
                },
            }],
            stats: KernelStats::default(),
        }
    }

    /// A process `app` that maps `file` from `offset` at `start..end`.
    fn one_file_process(tgid: u32, file: &Path, start: u64, end: u64, offset: u64) -> ProcessTable {
        ProcessTable::build(vec![crate::procs::TimedEvent {
            time: 0,
            event: ProcessEvent::Snapshot {
                pid: tgid,
                comm: "app".into(),
                mappings: vec![crate::procs::Mapping {
                    start,
                    end,
                    file_offset: offset,
                    backing: Backing::File(Arc::from(file)),
                    build_id: None,
                    file_id: None,
                }],
            },
        }])
    }

    fn cpu_clock() -> [EventInfo; 1] {
        [EventInfo {
            name: "cpu-clock".into(),
            unit: Unit::Nanoseconds,
        }]
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
        let events = cpu_clock();
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
