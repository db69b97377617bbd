//! Symbolize: raw instruction pointers → function names, with blazesym.
//!
//! In: [`Drained`] samples and the [`ProcessTable`]. Out: one [`EventProfile`] per event,
//! stacks written root first: the process name, user frames outermost first (inlined
//! functions as frames of their own), then kernel frames marked `_[k]`.
//!
//! User addresses are turned into (file, file offset) through the process table rather than
//! through `/proc/<pid>/maps`, so processes that exited before the end of the recording are
//! symbolized too. Every unique (file, offset) and kernel address is symbolized once, in one
//! batch per file. What cannot be resolved becomes `[unknown]`, and its reason is counted.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Symbolized};

use crate::drain::{Drained, RawSample, RawStack};
use crate::events::Unit;
use crate::procs::{Backing, ProcessTable, openable_path};
use crate::profile::{EventProfile, Frame, KERNEL_SUFFIX, UNKNOWN_FRAME, UnknownReason};

/// What one symbolized address becomes: its frames, outermost inlined caller first.
type Resolution = Result<Arc<[Frame]>, UnknownReason>;

/// Where a user address points.
#[derive(Clone, Copy, Debug)]
enum UserLocation {
    File { file: usize, offset: u64 },
    Unknown(UnknownReason),
}

/// A reusable symbolizer: blazesym caches parsed files between calls.
#[derive(Debug)]
pub struct Symbolizer {
    blazesym: blazesym::symbolize::Symbolizer,
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

impl Symbolizer {
    /// A symbolizer that reads DWARF (for inlined functions) and demangles Rust and C++.
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
        Symbolizer { blazesym }
    }

    /// Symbolizes every sample into per-event profiles.
    pub fn symbolize(
        &self,
        drained: &Drained,
        processes: &ProcessTable,
        events: &[EventInfo],
    ) -> Vec<EventProfile> {
        let mut names = Names::default();
        let user = self.resolve_user(&drained.samples, processes, &mut names);
        let kernel = self.resolve_kernel(&drained.samples, &mut names);

        let mut profiles: Vec<EventProfile> = events
            .iter()
            .map(|e| EventProfile::new(e.name.clone(), e.unit))
            .collect();
        for (index, profile) in profiles.iter_mut().enumerate() {
            if let Some(stats) = drained.stats.events.get(index) {
                profile.losses.kernel_samples = stats.samples;
                profile.losses.stack_map_full = stats.stack_map_full;
                profile.losses.no_stack = stats.no_stack;
                profile.losses.map_full = stats.map_full;
            }
        }
        let unknown = names.intern(UNKNOWN_FRAME);
        for sample in &drained.samples {
            let Some(profile) = profiles.get_mut(sample.event) else {
                continue;
            };
            let mut stack = vec![comm_frame(sample.tgid, processes, &mut names)];
            let mut unknowns: BTreeSet<UnknownReason> = BTreeSet::new();
            let mut push = |resolution: &Resolution, stack: &mut Vec<Frame>| match resolution {
                Ok(frames) => stack.extend(frames.iter().cloned()),
                Err(reason) => {
                    stack.push(Arc::clone(&unknown));
                    unknowns.insert(*reason);
                }
            };
            if let Some(reason) = lost_stack_reason(sample) {
                push(&Err(reason), &mut stack);
            }
            for (depth, &ip) in sample.user.frames().iter().enumerate().rev() {
                push(&user[&(sample.tgid, lookup_address(ip, depth))], &mut stack);
            }
            for (depth, &ip) in sample.kernel.frames().iter().enumerate().rev() {
                push(&kernel[&lookup_address(ip, depth)], &mut stack);
            }
            for reason in unknowns {
                *profile.unknown.entry(reason).or_default() += sample.value.samples;
            }
            profile.add(stack, sample.value);
        }
        profiles
    }

    fn resolve_user(
        &self,
        samples: &[RawSample],
        processes: &ProcessTable,
        names: &mut Names,
    ) -> HashMap<(u32, u64), Resolution> {
        // Pass 1: where does each unique (process, address) point?
        let mut files: Vec<(Arc<Path>, BTreeSet<u64>)> = Vec::new();
        // By the path to open; and by (process, mapped path), so each is looked up once.
        let mut file_index: HashMap<Arc<Path>, usize> = HashMap::new();
        let mut file_of_mapping: HashMap<(u32, Arc<Path>), usize> = HashMap::new();
        let mut locations: HashMap<(u32, u64), UserLocation> = HashMap::new();
        for sample in samples {
            for (depth, &ip) in sample.user.frames().iter().enumerate() {
                let addr = lookup_address(ip, depth);
                locations.entry((sample.tgid, addr)).or_insert_with(|| {
                    let Some(process) = processes
                        .get(sample.tgid)
                        .filter(|_| processes.knows(sample.tgid))
                    else {
                        return UserLocation::Unknown(UnknownReason::ProcessUnknown);
                    };
                    let Some(mapping) = process.mapping_of(addr) else {
                        return UserLocation::Unknown(UnknownReason::Unmapped);
                    };
                    let path = match &mapping.backing {
                        Backing::File(path) => path,
                        Backing::Vdso => return UserLocation::Unknown(UnknownReason::Vdso),
                        Backing::Anonymous => {
                            return UserLocation::Unknown(UnknownReason::Anonymous);
                        }
                    };
                    let file = *file_of_mapping
                        .entry((sample.tgid, Arc::clone(path)))
                        .or_insert_with(|| {
                            let opened: Arc<Path> = Arc::from(openable_path(sample.tgid, path));
                            *file_index.entry(Arc::clone(&opened)).or_insert_with(|| {
                                files.push((opened, BTreeSet::new()));
                                files.len() - 1
                            })
                        });
                    let offset = mapping.file_offset_of(addr);
                    files[file].1.insert(offset);
                    UserLocation::File { file, offset }
                });
            }
        }

        // Pass 2: one batch per file.
        let mut by_file: HashMap<(usize, u64), Resolution> = HashMap::new();
        for (file, (path, offsets)) in files.iter().enumerate() {
            let offsets: Vec<u64> = offsets.iter().copied().collect();
            let source = Source::Elf(Elf::new(path.as_ref()));
            match self
                .blazesym
                .symbolize(&source, Input::FileOffset(&offsets))
            {
                Ok(symbols) => {
                    for (offset, symbol) in offsets.iter().zip(symbols) {
                        let resolution = frames_of(symbol, "", names, UnknownReason::NoSymbol);
                        by_file.insert((file, *offset), resolution);
                    }
                }
                Err(err) => {
                    tracing::debug!("cannot symbolize {}: {err}", path.display());
                    for offset in offsets {
                        by_file.insert((file, offset), Err(UnknownReason::FileUnreadable));
                    }
                }
            }
        }

        locations
            .into_iter()
            .map(|(key, location)| {
                let resolution = match location {
                    UserLocation::File { file, offset } => by_file[&(file, offset)].clone(),
                    UserLocation::Unknown(reason) => Err(reason),
                };
                (key, resolution)
            })
            .collect()
    }

    fn resolve_kernel(&self, samples: &[RawSample], names: &mut Names) -> HashMap<u64, Resolution> {
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
            return HashMap::new();
        }
        let source = Source::Kernel(Kernel::default());
        match self.blazesym.symbolize(&source, Input::AbsAddr(&addrs)) {
            Ok(symbols) => addrs
                .iter()
                .zip(symbols)
                .map(|(&addr, symbol)| {
                    (
                        addr,
                        frames_of(symbol, KERNEL_SUFFIX, names, UnknownReason::KernelNoSymbol),
                    )
                })
                .collect(),
            Err(err) => {
                tracing::debug!("cannot symbolize kernel addresses: {err}");
                addrs
                    .into_iter()
                    .map(|a| (a, Err(UnknownReason::KernelNoSymbol)))
                    .collect()
            }
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

fn frames_of(
    symbol: Symbolized<'_>,
    suffix: &str,
    names: &mut Names,
    unknown: UnknownReason,
) -> Resolution {
    match symbol {
        Symbolized::Sym(sym) => {
            let mut frames = Vec::with_capacity(1 + sym.inlined.len());
            frames.push(names.intern_with_suffix(&sym.name, suffix));
            for inlined in sym.inlined.iter() {
                frames.push(names.intern_with_suffix(&inlined.name, suffix));
            }
            Ok(frames.into())
        }
        Symbolized::Unknown(_) => Err(unknown),
    }
}

fn comm_frame(tgid: u32, processes: &ProcessTable, names: &mut Names) -> Frame {
    match processes.get(tgid).and_then(|p| p.comm.as_deref()) {
        Some(comm) => names.intern(comm),
        None if tgid == 0 => names.intern("swapper"),
        None => names.intern(&format!("[pid {tgid}]")),
    }
}

/// Interns frame names, so each distinct name is allocated once.
#[derive(Default)]
struct Names {
    frames: HashMap<String, Frame>,
}

impl Names {
    fn intern(&mut self, name: &str) -> Frame {
        self.intern_with_suffix(name, "")
    }

    fn intern_with_suffix(&mut self, name: &str, suffix: &str) -> Frame {
        // `;` separates frames in folded stacks; a name must not contain one.
        let mut text = name.replace(';', ":");
        text.push_str(suffix);
        if let Some(frame) = self.frames.get(&text) {
            return Arc::clone(frame);
        }
        let frame: Frame = Arc::from(text.as_str());
        self.frames.insert(text, Arc::clone(&frame));
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::KernelStats;
    use crate::procs::{ProcessEvent, snapshot};
    use crate::profile::Value;

    #[inline(never)]
    fn marker_function_for_symbolize_test() -> u64 {
        std::hint::black_box(42)
    }

    /// An address in this test binary resolves to its function through the process table,
    /// with the comm first; unmapped and unknown-process addresses become `[unknown]` with
    /// their reasons counted.
    #[test]
    fn resolves_own_function_and_counts_unknowns() {
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
        let profiles = Symbolizer::new().symbolize(&drained, &processes, &events);
        let stacks = profiles[0].sorted_stacks();
        let named = stacks
            .iter()
            .find(|(frames, _)| {
                frames
                    .iter()
                    .any(|f| f.contains("marker_function_for_symbolize_test"))
            })
            .unwrap_or_else(|| panic!("the marker function is named in {stacks:?}"));
        assert_eq!(named.0.len(), 2, "{:?}", named.0);
        assert_eq!(profiles[0].unknown.get(&UnknownReason::Unmapped), Some(&2));
        assert_eq!(
            profiles[0].unknown.get(&UnknownReason::ProcessUnknown),
            Some(&2)
        );
        assert_eq!(
            profiles[0].total(),
            Value {
                samples: 6,
                period: 60
            }
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
        let profiles = Symbolizer::new().symbolize(&drained, &ProcessTable::default(), &events);
        let stacks = profiles[0].sorted_stacks();
        assert_eq!(
            stacks[0].0,
            &[Frame::from("swapper"), Frame::from(UNKNOWN_FRAME)][..]
        );
    }
}
