//! The sampler: what the agent does with each drain of the kernel's maps.
//!
//! In: a [`Taken`] from a [`Source`] (the raw samples of one generation, the side band's
//! process records, and when the generation was closed). Out: a [`Drain`], the symbolized
//! [`Profile`] of those samples, labelled with each process's executable, cgroup and
//! container. Between drains the sampler keeps the process table, the symbolizer's caches
//! and the label cache, and forgets what [`cleanup`](crate::agent::cleanup) says to.
//!
//! The [`Source`] is the seam to the kernel: the agent's command layer implements it with
//! the BPF maps and the side band; the tests implement it with samples of their own process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::agent::cleanup::{self, EVICT_AFTER_DRAINS, Forgetting, SymbolizerLifetime};
use crate::agent::labels::LabelCache;
use crate::agent::metrics;
use crate::agent::window;
use crate::bpf::KernelStats;
use crate::drain::{Drained, RawSample, RawStack};
use crate::procs::{self, ProcessTable};
use crate::profile::{EventProfile, Labels, Profile, UnwindTables, Value};
use crate::sideband::SideBandLog;
use crate::symbolize::{EventInfo, Symbolizer};

/// What a generation held when the source switched away from it.
#[derive(Debug, Default)]
pub struct Taken {
    /// Its samples; the counters in `stats` are cumulative since sampling started.
    pub drained: Drained,
    /// The process records the side band read up to the switch.
    pub side_band: SideBandLog,
    /// When samples stopped going to it.
    pub at: Option<SystemTime>,
    /// What the unwind tables hold, when user stacks are walked with them.
    pub unwind_tables: Option<UnwindTables>,
}

/// Where samples come from.
pub trait Source {
    /// Why a take failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Sends new samples elsewhere and returns what the generation they went to holds.
    fn take(&mut self) -> Result<Taken, Self::Error>;

    /// Stops sampling; a take after this returns what was left.
    fn stop(&mut self);
}

/// One drain, symbolized.
#[derive(Debug)]
pub struct Drain {
    /// What was sampled.
    pub profile: Profile,
    /// When the generation was closed: the end of the span the drain covers.
    pub at: SystemTime,
    /// How long symbolizing took.
    pub symbolize_time: Duration,
    /// What the unwind tables held at the drain.
    pub unwind_tables: Option<UnwindTables>,
}

/// The state kept across drains.
#[derive(Debug)]
pub struct Sampler {
    processes: ProcessTable,
    symbolizer: Symbolizer,
    symbolizer_born: Instant,
    debug_info: bool,
    symbolizer_resets: u64,
    lifetime: SymbolizerLifetime,
    labels: LabelCache,
    infos: Vec<EventInfo>,
    /// The kernel's cumulative counters at the last drain.
    previous_stats: KernelStats,
    forgetting: Forgetting,
}

impl Sampler {
    /// A sampler of `infos` (the events, in the source's order) over the processes in
    /// `processes` (a snapshot of `/proc` when sampling started). `debug_info` reads DWARF.
    pub fn new(processes: ProcessTable, infos: Vec<EventInfo>, debug_info: bool) -> Sampler {
        Sampler {
            processes,
            symbolizer: Symbolizer::with_debug_info(debug_info),
            symbolizer_born: Instant::now(),
            debug_info,
            symbolizer_resets: 0,
            lifetime: SymbolizerLifetime::default(),
            labels: LabelCache::default(),
            infos,
            previous_stats: KernelStats::default(),
            forgetting: Forgetting::default(),
        }
    }

    /// The sampled events, empty.
    pub fn events(&self) -> Vec<EventProfile> {
        self.infos
            .iter()
            .map(|e| EventProfile::new(e.name.clone(), e.unit))
            .collect()
    }

    /// Processes known now.
    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    /// Times the symbolizer was rebuilt.
    pub fn symbolizer_resets(&self) -> u64 {
        self.symbolizer_resets
    }

    /// Symbolizes one take and forgets what is no longer needed.
    pub fn drain(&mut self, taken: Taken) -> Drain {
        let at = taken.at.unwrap_or_else(SystemTime::now);
        self.processes.apply_batch(taken.side_band.events);
        let mut drained = taken.drained;
        for sample in &drained.samples {
            if !self.processes.knows(sample.tgid)
                && let Some(snapshot) = procs::snapshot(sample.tgid)
            {
                self.processes.apply(snapshot);
            }
        }
        let cumulative = drained.stats.clone();
        drained.stats = cumulative.since(&self.previous_stats);
        self.previous_stats = cumulative;

        let started = Instant::now();
        let mut profile = self.symbolize(&drained);
        let symbolize_time = started.elapsed();
        let evicted = self.symbolizer.evict_idle(EVICT_AFTER_DRAINS);
        if evicted > 0 {
            tracing::debug!(evicted, "evicted idle files from the symbolizer");
        }
        let resident = metrics::own_usage().resident_bytes;
        if self
            .lifetime
            .should_rebuild(self.symbolizer_born.elapsed(), resident)
        {
            tracing::debug!(resident, "rebuilding the symbolizer to release its caches");
            self.symbolizer = Symbolizer::with_debug_info(self.debug_info);
            self.symbolizer_born = Instant::now();
            self.symbolizer_resets += 1;
        }
        profile.side_band_lost = taken.side_band.lost_records;
        let live = self
            .forgetting
            .after_drain(&mut self.processes, cleanup::in_proc);
        self.labels.retain(|pid| live.contains(&pid));
        Drain {
            profile,
            at,
            symbolize_time,
            unwind_tables: taken.unwind_tables,
        }
    }

    /// Names for user-space `addresses`, for `/debug/pprof/symbol`: each address is looked
    /// up in the process whose stacks hold it in `seen` (the profiles the agent served or is
    /// building; addresses there are already those to look up), and resolved again through
    /// the symbolizer and the process table. An address no profile holds, or that still
    /// resolves to nothing, is left out.
    pub fn names(&self, addresses: &[u64], seen: &[&Profile]) -> Vec<(u64, Arc<str>)> {
        let wanted: std::collections::HashSet<u64> = addresses.iter().copied().collect();
        let mut pid_of: HashMap<u64, u32> = HashMap::new();
        for profile in seen {
            for event in &profile.events {
                for stack in event.stacks.keys() {
                    let Some(pid) = profile.labels.get(stack.labels).pid else {
                        continue;
                    };
                    for &id in stack.locations.iter() {
                        let location = profile.locations.get(id);
                        if !location.kernel && wanted.contains(&location.address) {
                            pid_of.entry(location.address).or_insert(pid);
                        }
                    }
                }
            }
        }
        if pid_of.is_empty() {
            return Vec::new();
        }
        // One sample per address, innermost frame only, so the address is looked up as is.
        let drained = Drained {
            samples: pid_of
                .iter()
                .map(|(&address, &tgid)| RawSample {
                    tgid,
                    event: 0,
                    user: RawStack::Frames(Arc::from([address].as_slice())),
                    kernel: RawStack::NotTaken,
                    value: Value {
                        samples: 1,
                        period: 1,
                    },
                })
                .collect(),
            stats: KernelStats::default(),
        };
        let resolved = self
            .symbolizer
            .symbolize(&drained, &self.processes, &self.infos[..1]);
        let mut names: HashMap<u64, Arc<str>> = HashMap::new();
        for stack in resolved.events[0].stacks.keys() {
            let Some(&id) = stack.locations.last() else {
                continue;
            };
            let location = resolved.locations.get(id);
            // The innermost function, as Go's FuncForPC names an inlined call.
            if let Some(line) = location.lines.last() {
                names.insert(location.address, Arc::clone(&line.function));
            }
        }
        addresses
            .iter()
            .filter_map(|address| Some((*address, Arc::clone(names.get(address)?))))
            .collect()
    }

    /// Symbolizes a drain and labels each process with its executable, cgroup and
    /// container.
    fn symbolize(&mut self, drained: &Drained) -> Profile {
        let mut profile = self
            .symbolizer
            .symbolize(drained, &self.processes, &self.infos);
        let (labels, processes) = (&mut self.labels, &self.processes);
        window::relabel(&mut profile, |labels_of| {
            let Some(pid) = labels_of.pid.filter(|&pid| pid != 0) else {
                return labels_of.clone();
            };
            let found = labels.get(pid, labels_of.comm.as_ref(), processes.get(pid));
            let mut extra = labels_of.extra.clone();
            for (key, value) in [
                ("executable", found.executable),
                ("cgroup", found.cgroup),
                ("container", found.container),
            ] {
                if let Some(value) = value {
                    extra.push((Arc::from(key), value));
                }
            }
            Labels {
                extra,
                ..labels_of.clone()
            }
        });
        profile
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bpf::EventStats;
    use crate::drain::{RawSample, RawStack};
    use crate::events::Unit;
    use crate::procs::{ProcessEvent, TimedEvent};
    use crate::profile::Value;

    /// A function of this test binary whose address the fake source samples.
    #[inline(never)]
    pub(crate) fn sampler_marker_function() -> u64 {
        std::hint::black_box(7)
    }

    /// The events the fake source samples.
    pub(crate) fn infos() -> Vec<EventInfo> {
        vec![EventInfo {
            name: "cpu-clock".into(),
            unit: Unit::Nanoseconds,
        }]
    }

    /// A source that samples the marker function in this very process: `samples` samples
    /// per take, with the kernel's counters growing as they would. Once stopped, one more
    /// take returns what was left; later ones are empty.
    #[derive(Debug, Default)]
    pub(crate) struct OwnProcess {
        pub samples: u64,
        pub takes: u64,
        /// Samples taken so far, as the kernel's cumulative counter.
        pub total: u64,
        pub stopped: bool,
        /// Whether a take after the stop has returned what was left.
        pub emptied: bool,
        /// Extra side-band records for the next take.
        pub records: Vec<ProcessEvent>,
    }

    impl Source for OwnProcess {
        type Error = std::io::Error;

        fn take(&mut self) -> Result<Taken, std::io::Error> {
            self.takes += 1;
            let samples = if self.emptied { 0 } else { self.samples };
            self.emptied = self.stopped;
            self.total += samples;
            let ip = sampler_marker_function as *const () as u64;
            let drained = Drained {
                samples: (samples > 0)
                    .then(|| RawSample {
                        tgid: std::process::id(),
                        event: 0,
                        user: RawStack::Frames(Arc::from([ip].as_slice())),
                        kernel: RawStack::NotTaken,
                        value: Value {
                            samples,
                            period: samples * 1000,
                        },
                    })
                    .into_iter()
                    .collect(),
                stats: KernelStats {
                    events: vec![EventStats {
                        samples: self.total,
                        ..EventStats::default()
                    }],
                    forks_untracked: 0,
                },
            };
            let side_band = SideBandLog {
                events: std::mem::take(&mut self.records)
                    .into_iter()
                    .map(|event| TimedEvent {
                        time: procs::monotonic_now(),
                        event,
                    })
                    .collect(),
                lost_records: 0,
            };
            Ok(Taken {
                drained,
                side_band,
                at: Some(SystemTime::now()),
                unwind_tables: None,
            })
        }

        fn stop(&mut self) {
            self.stopped = true;
        }
    }

    /// A sampler that knows only this process, as a snapshot of `/proc` would tell it.
    pub(crate) fn own_sampler() -> Sampler {
        let me = procs::snapshot(std::process::id()).expect("our own /proc entry");
        let processes = ProcessTable::build(vec![TimedEvent {
            time: procs::monotonic_now(),
            event: me,
        }]);
        Sampler::new(processes, infos(), false)
    }

    /// The samples in `profile` whose stacks name the marker function.
    pub(crate) fn marker_samples(profile: &Profile) -> u64 {
        profile.events[0]
            .stacks
            .iter()
            .filter(|(stack, _)| {
                profile
                    .frame_names(stack, false)
                    .iter()
                    .any(|f| f.contains("sampler_marker_function"))
            })
            .map(|(_, value)| value.samples)
            .sum()
    }

    /// A drain is symbolized with the process's labels, and the kernel's cumulative counters
    /// become per-drain counts.
    #[test]
    fn symbolizes_and_labels_a_drain() {
        let mut source = OwnProcess {
            samples: 3,
            ..OwnProcess::default()
        };
        let mut sampler = own_sampler();
        let first = sampler.drain(source.take().unwrap());
        assert_eq!(marker_samples(&first.profile), 3);
        assert_eq!(first.profile.events[0].losses.kernel_samples, 3);
        let labels = first.profile.labels.iter().next().unwrap().1;
        assert_eq!(labels.pid, Some(std::process::id()));
        let executable = labels
            .extra
            .iter()
            .find(|(k, _)| &**k == "executable")
            .map(|(_, v)| v.to_string());
        assert_eq!(
            executable.as_deref(),
            std::env::current_exe().unwrap().to_str()
        );
        let second = sampler.drain(source.take().unwrap());
        assert_eq!(
            second.profile.events[0].losses.kernel_samples, 3,
            "per drain, not cumulative"
        );
        assert!(sampler.processes() >= 1);
    }

    /// A process whose exit the side band reports is forgotten one drain later.
    #[test]
    fn forgets_an_exited_process() {
        let mut source = OwnProcess::default();
        let mut sampler = own_sampler();
        source.records.push(ProcessEvent::Snapshot {
            pid: 999_999_999,
            comm: "gone".into(),
            mappings: Vec::new(),
        });
        source.records.push(ProcessEvent::Exit {
            pid: 999_999_999,
            tid: 999_999_999,
        });
        sampler.drain(source.take().unwrap());
        assert_eq!(sampler.processes(), 2, "kept for its last samples");
        sampler.drain(source.take().unwrap());
        assert_eq!(sampler.processes(), 1);
    }

    /// Addresses that a profile holds are named again through the symbolizer; others are
    /// left out.
    #[test]
    fn names_addresses_seen_in_profiles() {
        let mut source = OwnProcess {
            samples: 1,
            ..OwnProcess::default()
        };
        let mut sampler = own_sampler();
        let drain = sampler.drain(source.take().unwrap());
        let ip = sampler_marker_function as *const () as u64;
        let names = sampler.names(&[ip, 0x1234], &[&drain.profile]);
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(names[0].0, ip);
        assert!(names[0].1.contains("sampler_marker_function"), "{names:?}");
        assert!(sampler.names(&[ip], &[]).is_empty(), "seen in no profile");
    }
}
