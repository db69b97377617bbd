//! criterion benches of prof's userspace stages, at 10k, 100k and 150k unique stacks:
//! drain and aggregate (reading real, filled BPF maps), symbolization cold and warm, folded,
//! SVG and pprof export, and the whole path from the end of sampling to all outputs written.
//!
//! The stacks are synthetic but their addresses are real: user frames point into this bench
//! binary's own functions (symbolized through its ELF symbols and DWARF line tables, as a
//! profiled Rust program would be) and a third of the samples carry kernel frames from
//! `/proc/kallsyms`. Drain and the end-to-end bench load prof's BPF program and fill its maps,
//! so they need root; without it they are left out and say so.
//!
//! `cargo bench -p prof-benches --bench stages` (`PROF_BENCH_SMOKE=1 … -- --test` is the quick
//! one-pass run CI does).

use std::collections::HashSet;
use std::hint::black_box;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use blazesym::symbolize::Input;
use blazesym::symbolize::source::{Elf, Source};
use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use object::{Object, ObjectSegment, ObjectSymbol, SymbolFlags, SymbolKind};

use prof::bpf::{
    BpfConfig, BpfProfiler, MAX_STACK_DEPTH, STACK_ID_MIN, SampleKey, SampleValue, StackTrace,
};
use prof::drain::{self, Drained, RawSample, RawStack};
use prof::events::Unit;
use prof::export::{self, Format, OutputFile, flamegraph, folded, pprof};
use prof::procs::{Backing, Mapping, ProcessEvent, ProcessTable, TimedEvent};
use prof::profile::{Profile, Value};
use prof::symbolize::{EventInfo, Symbolizer};

/// The pretend process the synthetic samples belong to.
const TGID: u32 = 4_000_000;
/// Where the pretend process has this binary's executable segment.
const LOAD_BASE: u64 = 0x5555_0000_0000;
const SIZES: [usize; 3] = [10_000, 100_000, 150_000];
/// With PROF_BENCH_SMOKE set (CI), one small size only.
const SMOKE_SIZES: [usize; 1] = [1_000];

/// `n` unique stacks with their process table.
struct Fixture {
    drained: Drained,
    processes: ProcessTable,
    /// Distinct user and kernel addresses, the units of symbolization work.
    unique_addresses: u64,
    /// The binary the user addresses point into.
    binary: std::path::PathBuf,
    /// The distinct user addresses as file offsets, sorted, as prof hands them to blazesym.
    user_offsets: Vec<u64>,
}

fn user_addresses(count: usize) -> (Vec<u64>, Mapping) {
    let exe = std::env::current_exe().expect("this bench's path");
    let bytes = std::fs::read(&exe).expect("this bench binary is readable");
    let file = object::File::parse(&*bytes).expect("this bench is an ELF file");
    let text = file
        .segments()
        .find(|s| s.flags() == object::SegmentFlags::Elf { p_flags: 5 })
        .expect("an r-x segment");
    let (offset, size) = text.file_range();
    let mapping = Mapping {
        start: LOAD_BASE + text.address(),
        end: LOAD_BASE + text.address() + size,
        file_offset: offset,
        backing: Backing::File(Arc::from(exe.as_path())),
        build_id: None,
        file_id: None,
    };
    let functions: Vec<(u64, u64)> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() >= 16 && is_function(s))
        .map(|s| (s.address(), s.size()))
        .filter(|&(address, _)| address >= text.address() && address < text.address() + size)
        .collect();
    // Seeded: the same stacks every run.
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut addresses = HashSet::new();
    while addresses.len() < count {
        let (address, size) = functions[rng.usize(..functions.len())];
        // Never the first byte: a return address follows a call, and prof looks up the byte
        // before it.
        addresses.insert(LOAD_BASE + address + 1 + rng.u64(..size - 1));
    }
    (addresses.into_iter().collect(), mapping)
}

/// An ELF function symbol (STT_FUNC), the kind symbolizers resolve addresses to.
fn is_function(symbol: &object::Symbol<'_, '_>) -> bool {
    matches!(symbol.flags(), SymbolFlags::Elf { st_info, .. } if st_info & 0xf == object::elf::STT_FUNC)
}

fn kernel_addresses(count: usize) -> Vec<u64> {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let mut addresses: Vec<u64> = kallsyms
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            let kind = fields.next()?;
            (matches!(kind, "t" | "T") && address != 0 && fields.nth(1).is_none())
                .then_some(address + 4)
        })
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    let step = (addresses.len() / count.max(1)).max(1);
    addresses.into_iter().step_by(step).take(count).collect()
}

impl Fixture {
    fn new(stacks: usize) -> Fixture {
        let (user_pool, mapping) = user_addresses((stacks / 5).max(2_000));
        let kernel_pool = kernel_addresses(2_000);
        let mut rng = fastrand::Rng::with_seed(stacks as u64);
        let kernel_stacks: Vec<Arc<[u64]>> = (0..500)
            .map(|_| {
                let depth = 3 + rng.usize(..8);
                (0..depth)
                    .map(|_| kernel_pool[rng.usize(..kernel_pool.len().max(1))])
                    .collect()
            })
            .collect();
        // Stacks grow like a call tree, as real ones do: each new stack is an earlier stack
        // (root first) less up to 6 innermost frames, plus 1 to 6 new callees. They share
        // prefixes, so a flame graph has far fewer boxes than stacks have frames.
        let pick = |rng: &mut fastrand::Rng| user_pool[rng.usize(..user_pool.len())];
        let mut grown: Vec<Vec<u64>> = vec![(0..15).map(|_| pick(&mut rng)).collect()];
        let mut seen = HashSet::new();
        let mut samples = Vec::with_capacity(stacks);
        while samples.len() < stacks {
            let parent = &grown[rng.usize(..grown.len())];
            let keep = parent.len().saturating_sub(rng.usize(..=6)).max(1);
            let mut root_first = parent[..keep].to_vec();
            for _ in 0..1 + rng.usize(..6) {
                root_first.push(pick(&mut rng));
            }
            root_first.truncate(MAX_STACK_DEPTH);
            if !seen.insert(root_first.clone()) {
                continue;
            }
            let user: Vec<u64> = root_first.iter().rev().copied().collect();
            grown.push(root_first);
            let kernel = if kernel_pool.is_empty() || rng.usize(..3) != 0 {
                RawStack::Failed(libc::EFAULT)
            } else {
                RawStack::Frames(Arc::clone(&kernel_stacks[rng.usize(..kernel_stacks.len())]))
            };
            let count = 1 + rng.usize(..20) as u64;
            samples.push(RawSample {
                tgid: TGID,
                event: 0,
                user: RawStack::Frames(user.into()),
                kernel,
                value: Value {
                    samples: count,
                    period: count * 1_001_001,
                },
            });
        }
        let mut unique = HashSet::new();
        let mut user_offsets = std::collections::BTreeSet::new();
        for sample in &samples {
            unique.extend(sample.user.frames().iter().copied());
            unique.extend(sample.kernel.frames().iter().copied());
            user_offsets.extend(
                sample
                    .user
                    .frames()
                    .iter()
                    .map(|&ip| mapping.file_offset_of(ip - 1)),
            );
        }
        let binary = match &mapping.backing {
            Backing::File(path) => path.to_path_buf(),
            _ => unreachable!("the fixture maps a file"),
        };
        let processes = ProcessTable::build(vec![TimedEvent {
            time: 0,
            event: ProcessEvent::Snapshot {
                pid: TGID,
                comm: "bench".into(),
                mappings: vec![mapping],
            },
        }]);
        Fixture {
            drained: Drained {
                samples,
                stats: Default::default(),
            },
            processes,
            unique_addresses: unique.len() as u64,
            binary,
            user_offsets: user_offsets.into_iter().collect(),
        }
    }

    fn symbolize(&self, symbolizer: &Symbolizer) -> Profile {
        symbolizer.symbolize(&self.drained, &self.processes, &events())
    }
}

fn events() -> [EventInfo; 1] {
    [EventInfo {
        name: "cpu-clock".into(),
        unit: Unit::Nanoseconds,
    }]
}

/// prof's BPF program, loaded, with the fixture's samples and stacks in its maps as if the
/// kernel had counted them.
struct FilledMaps {
    bpf: BpfProfiler,
}

impl FilledMaps {
    fn new(fixture: &Fixture) -> Result<FilledMaps, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("loading prof's BPF program needs root".into());
        }
        let n = fixture.drained.samples.len() as u32;
        // Sizes no other recording uses, to find these maps among the machine's.
        let stack_storage_size = n + 997;
        let counts_map_size = n + 991;
        let bpf = BpfProfiler::load(&BpfConfig {
            filter_tgids: false,
            stack_storage_size,
            counts_map_size,
            ..BpfConfig::default()
        })
        .map_err(|err| format!("loading prof's BPF program: {err}"))?;
        let mut stacks: BpfHashMap<MapData, u64, StackTrace> =
            BpfHashMap::try_from(Map::HashMap(newest_map("stacks_0", stack_storage_size)?))
                .map_err(|err| err.to_string())?;
        let mut counts: BpfHashMap<MapData, SampleKey, SampleValue> =
            BpfHashMap::try_from(Map::HashMap(newest_map("counts_0", counts_map_size)?))
                .map_err(|err| err.to_string())?;
        let mut store = |frames: &[u64]| -> Result<u64, String> {
            let id = frames.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &ip| {
                (h ^ ip).wrapping_mul(0x100_0000_01b3)
            }) | STACK_ID_MIN
                | (1 << 63);
            let mut trace = StackTrace {
                ips: [0; MAX_STACK_DEPTH],
            };
            trace.ips[..frames.len()].copy_from_slice(frames);
            stacks.insert(id, trace, 0).map_err(|err| err.to_string())?;
            Ok(id)
        };
        for sample in &fixture.drained.samples {
            let user_stack = store(sample.user.frames())?;
            let kernel_stack = match &sample.kernel {
                RawStack::Frames(frames) => store(frames)?,
                _ => libc::EFAULT as u64,
            };
            let key = SampleKey {
                tgid: sample.tgid,
                event: 0,
                user_stack,
                kernel_stack,
            };
            let value = SampleValue {
                samples: sample.value.samples,
                period: sample.value.period,
            };
            counts
                .insert(key, value, 0)
                .map_err(|err| err.to_string())?;
        }
        Ok(FilledMaps { bpf })
    }
}

/// The most recently created map called `name` with `max_entries` entries.
fn newest_map(name: &str, max_entries: u32) -> Result<MapData, String> {
    let id = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter(|info| info.name_as_str() == Some(name) && info.max_entries() == max_entries)
        .map(|info| info.id())
        .max()
        .ok_or_else(|| format!("no BPF map `{name}` with {max_entries} entries"))?;
    MapData::from_id(id).map_err(|err| err.to_string())
}

/// This process's resident memory now, from `/proc/self/statm`.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse().ok())
        .unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

/// Writes a folded, an SVG and a pprof file for `profile` into `dir`, as
/// `prof record -o out.folded -o out.svg -o out.pb.gz` does.
fn write_outputs(dir: &Path, profile: &Profile) {
    let files = [
        (dir.join("out.folded"), Format::Folded, Some(0)),
        (dir.join("out.svg"), Format::Svg, Some(0)),
        (dir.join("out.pb.gz"), Format::Pprof, None),
    ]
    .map(|(path, format, event)| OutputFile {
        path,
        format,
        event,
    });
    // As `prof record` writes them: at once, one thread each.
    for result in export::write_all(&files, profile, &flamegraph::Options::default(), &|_| {}) {
        result.expect("writing an output");
    }
}

/// A group of 10 samples over `seconds`, with throughput in `elements` (stacks or addresses).
fn bench_group<'c>(
    c: &'c mut Criterion,
    name: &str,
    seconds: u64,
    elements: u64,
) -> BenchmarkGroup<'c, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(seconds))
        .throughput(Throughput::Elements(elements));
    group
}

fn benches(c: &mut Criterion) {
    let sizes: &[usize] = if std::env::var_os("PROF_BENCH_SMOKE").is_some() {
        &SMOKE_SIZES
    } else {
        &SIZES
    };
    for &n in sizes {
        let fixture = Fixture::new(n);
        let label = format!("{}k", n / 1000);
        let frames: usize = fixture
            .drained
            .samples
            .iter()
            .map(|s| s.user.frames().len() + s.kernel.frames().len())
            .sum();
        eprintln!(
            "{label}: {} unique stacks, {} unique addresses, {:.1} frames per stack",
            fixture.drained.samples.len(),
            fixture.unique_addresses,
            frames as f64 / n as f64
        );
        let filled = FilledMaps::new(&fixture);
        if let Err(why) = &filled {
            eprintln!("drain and end-to-end benches left out: {why}");
        }

        let mut group = bench_group(c, "drain_aggregate", 5, n as u64);
        if let Ok(filled) = &filled {
            group.bench_function(BenchmarkId::from_parameter(&label), |b| {
                b.iter(|| black_box(drain::drain(&filled.bpf, 1).expect("drain")))
            });
        }
        group.finish();

        // What one cold symbolization adds to resident memory, its profile and the
        // symbolizer's caches held (blazesym's parsed files, the resolved addresses).
        let resident = resident_bytes();
        let symbolizer = Symbolizer::new();
        let profile = fixture.symbolize(&symbolizer);
        eprintln!(
            "{label}: a cold symbolization adds {:.1} MiB resident ({} locations, {} addresses cached)",
            resident_bytes().saturating_sub(resident) as f64 / (1 << 20) as f64,
            profile.locations.len(),
            symbolizer.cached_addresses()
        );
        drop((profile, symbolizer));

        // Per unique address: criterion's throughput is in addresses.
        let mut group = bench_group(c, "symbolize_cold", 10, fixture.unique_addresses);
        group.bench_function(BenchmarkId::from_parameter(&label), |b| {
            b.iter(|| black_box(fixture.symbolize(&Symbolizer::new())))
        });
        group.finish();

        // Warm: the symbolizer has seen these addresses, so it serves them from its cache
        // and only builds the profile.
        let mut group = bench_group(c, "symbolize_warm", 10, fixture.unique_addresses);
        let symbolizer = Symbolizer::new();
        let warmed = fixture.symbolize(&symbolizer);
        let lines: usize = warmed.locations.iter().map(|(_, l)| l.lines.len()).sum();
        eprintln!(
            "{label}: {} locations, {:.1} functions per location (inlined ones included), \
             {} addresses cached",
            warmed.locations.len(),
            lines as f64 / warmed.locations.len().max(1) as f64,
            symbolizer.cached_addresses()
        );
        drop(warmed);
        group.bench_function(BenchmarkId::from_parameter(&label), |b| {
            b.iter(|| black_box(fixture.symbolize(&symbolizer)))
        });
        group.finish();

        // blazesym alone on the same unique user addresses (as file offsets, one batch, a
        // warm symbolizer): what address resolution costs without building the profile.
        let mut group = bench_group(c, "blazesym_warm", 5, fixture.user_offsets.len() as u64);
        let blazesym = blazesym::symbolize::Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        let source = Source::Elf(Elf::new(fixture.binary.as_path()));
        let resolve = || {
            blazesym
                .symbolize(&source, Input::FileOffset(&fixture.user_offsets))
                .expect("blazesym reads this bench binary")
        };
        resolve();
        group.bench_function(BenchmarkId::from_parameter(&label), |b| {
            b.iter(|| black_box(resolve().len()))
        });
        group.finish();

        let profile = fixture.symbolize(&symbolizer);
        let event = &profile.events[0];
        eprintln!(
            "{label}: {:.1}% of samples have an [unknown] frame ({:?})",
            event.unknown_total() as f64 * 100.0 / event.total().samples.max(1) as f64,
            event.unknown
        );
        let mut group = bench_group(c, "export", 5, n as u64);
        group.bench_function(BenchmarkId::new("folded", &label), |b| {
            b.iter(|| folded::write(&profile, 0, false, &mut io::sink()).expect("folded"))
        });
        group.bench_function(BenchmarkId::new("svg", &label), |b| {
            b.iter(|| {
                let options = flamegraph::Options::default();
                flamegraph::write(&profile, 0, &options, &mut io::sink()).expect("svg")
            })
        });
        group.bench_function(BenchmarkId::new("pprof", &label), |b| {
            b.iter(|| pprof::write(&profile, &mut io::sink()).expect("pprof"))
        });
        group.finish();

        // What `prof record` does after sampling stops: drain, build the process table,
        // symbolize with a new symbolizer, write every output.
        let mut group = bench_group(c, "end_of_sampling_to_outputs", 15, n as u64);
        if let Ok(filled) = &filled {
            let dir = tempfile::tempdir().expect("a temporary folder");
            let snapshot = match fixture.processes.get(TGID) {
                Some(process) => process.mappings.clone(),
                None => Vec::new(),
            };
            group.bench_function(BenchmarkId::from_parameter(&label), |b| {
                b.iter_batched(
                    || snapshot.clone(),
                    |mappings| {
                        let drained = drain::drain(&filled.bpf, 1).expect("drain");
                        let processes = ProcessTable::build(vec![TimedEvent {
                            time: 0,
                            event: ProcessEvent::Snapshot {
                                pid: TGID,
                                comm: "bench".into(),
                                mappings,
                            },
                        }]);
                        let profiles = Symbolizer::new().symbolize(&drained, &processes, &events());
                        write_outputs(dir.path(), &profiles);
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(stages, benches);
criterion_main!(stages);
