//! What the BPF maps' sizes cost in kernel memory, so that `--stack-storage-size` and
//! `--counts-map-size` are checked against the machine before anything is loaded.
//!
//! The stack and counts maps are preallocated hash maps: the kernel reserves every entry
//! when the map is created, which for ten million stacks is about 10 GB and takes many
//! seconds. The entry sizes follow the layouts in `ebpf/profile.h` (a stack map value is
//! `PROF_MAX_STACK_DEPTH` = 127 instruction pointers of 8 bytes under a u64 key; a counts
//! entry is a 24-byte `sample_key` and a 16-byte `sample_value`; an unwind table row is an
//! 8-byte `unwind_row` in an array) plus what the kernel adds per entry and per bucket. The
//! unwinder's small file and process maps are left out. A test loads the real maps and compares these sizes and costs
//! with what the kernel reports for them.
//!
//! In: the requested entry counts. Out: their cost in bytes, and an error or a warning line
//! for sizes this machine cannot or should not reserve.

use thiserror::Error;

use crate::text::thousands;

/// Bytes of a stack map key: the stack's 64-bit content hash.
pub const STACK_KEY_BYTES: u64 = 8;
/// Bytes of a stack map value: `struct stack_trace`, 127 instruction pointers.
pub const STACK_VALUE_BYTES: u64 = 127 * 8;
/// Bytes of a counts map key: `struct sample_key` (tgid, event, two stack ids).
pub const COUNTS_KEY_BYTES: u64 = 24;
/// Bytes of a counts map value: `struct sample_value` (samples, period).
pub const COUNTS_VALUE_BYTES: u64 = 16;

/// Bytes of an unwind table row: `struct unwind_row` (pc, CFA offset, kind, rbp offset).
pub const UNWIND_ROW_BYTES: u64 = 8;

/// The kernel's header of each hash map element (`struct htab_elem` on 64-bit kernels).
const ELEMENT_HEADER_BYTES: u64 = 48;
/// One hash bucket (`struct bucket`: a list head and a lock); there are entries rounded up to
/// a power of two of them.
const BUCKET_BYTES: u64 = 16;

/// Above this, recording starts only after a noticeable pause while the kernel reserves the
/// maps, so prof says so.
pub const WARN_BYTES: u64 = 1 << 30;

/// What a preallocated BPF hash map of `entries` entries with these key and value sizes
/// reserves: every element (plus one spare per CPU, which the kernel keeps for updates) and
/// the buckets.
pub fn hash_map_bytes(entries: u64, key: u64, value: u64, cpus: u64) -> u64 {
    let element = ELEMENT_HEADER_BYTES + key.next_multiple_of(8) + value.next_multiple_of(8);
    let buckets = entries.checked_next_power_of_two().unwrap_or(u64::MAX);
    element
        .saturating_mul(entries.saturating_add(cpus))
        .saturating_add(buckets.saturating_mul(BUCKET_BYTES))
}

/// What a stack map of `entries` stacks reserves.
pub fn stack_map_bytes(entries: u64, cpus: u64) -> u64 {
    hash_map_bytes(entries, STACK_KEY_BYTES, STACK_VALUE_BYTES, cpus)
}

/// What a counts map of `entries` keys reserves.
pub fn counts_map_bytes(entries: u64, cpus: u64) -> u64 {
    hash_map_bytes(entries, COUNTS_KEY_BYTES, COUNTS_VALUE_BYTES, cpus)
}

/// The map sizes a command asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `--stack-storage-size`: distinct stacks per generation.
    pub stacks: u32,
    /// `--counts-map-size`: distinct (process, event, stack) keys per generation.
    pub counts: u32,
    /// How many generations are reserved at full size: 2 for `prof record` and the agent,
    /// which fill one while they drain the other (1 for callers that never flip).
    pub generations: u32,
    /// `--unwind-table-size`: rows of the unwind tables (0 with `--unwind fp`), one array
    /// shared by every generation.
    pub unwind_rows: u32,
}

/// Why the maps cannot be reserved.
#[derive(Debug, Error)]
pub enum MapSizeError {
    /// More than the machine can spare.
    #[error(
        "{what} would reserve {total} of kernel memory ({detail}), more than half of the \
         {available} this machine has available; lower {flags}"
    )]
    TooLarge {
        /// The flags and their values.
        what: String,
        /// The total, for people.
        total: String,
        /// What each map costs.
        detail: String,
        /// MemAvailable, for people.
        available: String,
        /// The flags to lower.
        flags: String,
    },
}

impl MapSizes {
    /// The kernel memory the unwind table rows reserve, in bytes (an array: no per-entry
    /// header).
    pub fn unwind_bytes(&self) -> u64 {
        u64::from(self.unwind_rows) * UNWIND_ROW_BYTES
    }

    /// The kernel memory each map reserves, in bytes: (stacks, counts), every generation
    /// counted (an unused generation has one entry).
    pub fn bytes(&self, cpus: u64) -> (u64, u64) {
        let generations = u64::from(self.generations.max(1));
        let spare = 2 - generations.min(2);
        let stacks = stack_map_bytes(self.stacks.into(), cpus) * generations
            + spare * stack_map_bytes(1, cpus);
        let counts = counts_map_bytes(self.counts.into(), cpus) * generations
            + spare * counts_map_bytes(1, cpus);
        (stacks, counts)
    }

    /// Checks the sizes against `available` bytes of memory (MemAvailable): the maps may take
    /// at most half of it. Returns a warning line when they take long to reserve.
    pub fn check(&self, cpus: u64, available: u64) -> Result<Option<String>, MapSizeError> {
        let (stacks, counts) = self.bytes(cpus);
        let unwind = self.unwind_bytes();
        let total = stacks.saturating_add(counts).saturating_add(unwind);
        let mut detail = format!(
            "stacks {} at {} bytes each{}, counts {} at {} bytes each",
            bytes(stacks),
            thousands(stack_map_bytes(1, 0) - BUCKET_BYTES),
            if self.generations > 1 {
                format!(", twice for {} generations", self.generations)
            } else {
                String::new()
            },
            bytes(counts),
            thousands(counts_map_bytes(1, 0) - BUCKET_BYTES),
        );
        let mut what = format!(
            "--stack-storage-size {} and --counts-map-size {}",
            self.stacks, self.counts
        );
        if self.unwind_rows > 0 {
            what = format!(
                "--stack-storage-size {}, --counts-map-size {} and --unwind-table-size {}",
                self.stacks, self.counts, self.unwind_rows
            );
            detail.push_str(&format!(
                ", unwind rows {} at {UNWIND_ROW_BYTES} bytes each",
                bytes(unwind)
            ));
        }
        if total > available / 2 {
            // Name the flag that asks for most of it, or all of them when none dominates.
            let parts = [
                (stacks, "--stack-storage-size"),
                (counts, "--counts-map-size"),
                (unwind, "--unwind-table-size"),
            ];
            let (largest, flag) = parts.into_iter().max().unwrap_or((0, "them"));
            let flags = if largest > total / 5 * 4 {
                flag
            } else {
                "them"
            };
            return Err(MapSizeError::TooLarge {
                what,
                total: bytes(total),
                detail,
                available: bytes(available),
                flags: flags.to_owned(),
            });
        }
        Ok((total > WARN_BYTES).then(|| {
            format!(
                "{what} reserve {} of kernel memory ({detail}); the kernel takes a few seconds \
                 per GB before sampling starts",
                bytes(total)
            )
        }))
    }
}

/// The memory this machine has available for new work (MemAvailable), in bytes.
pub fn available_memory() -> Option<u64> {
    use procfs::Current;
    procfs::Meminfo::current().ok()?.mem_available
}

/// How many CPUs the kernel may ever bring up (`/sys/devices/system/cpu/possible`): the kernel
/// keeps a spare map element for each.
pub fn possible_cpus() -> u64 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|text| crate::cpus::parse_list(&text).ok())
        .map_or(1, |cpus| cpus.len() as u64)
}

/// Bytes for people: `35.1 MB`, `10.7 GB`, `4.4 TB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "kB", "MB", "GB", "TB", "PB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `prof record`'s default sizes (two generations) cost what the README says: about 35
    /// MB of stacks and 7 MB of counts; a size of 2^32 - 1 costs terabytes and is refused with both costs named.
    #[test]
    fn costs_and_refusals() {
        let record = MapSizes {
            stacks: 16384,
            counts: 32768,
            generations: 2,
            unwind_rows: 0,
        };
        let (stacks, counts) = record.bytes(2);
        assert!((35_000_000..36_500_000).contains(&stacks), "{stacks}");
        assert!((6_500_000..7_500_000).contains(&counts), "{counts}");
        assert_eq!(record.check(2, 20_000_000_000).unwrap(), None);
        let huge = MapSizes {
            stacks: u32::MAX,
            ..record
        };
        let err = huge.check(2, 20_000_000_000).unwrap_err().to_string();
        assert!(err.contains("--stack-storage-size 4294967295"), "{err}");
        assert!(err.contains("9.3 TB"), "{err}");
        assert!(err.contains("1,072 bytes each"), "{err}");
        assert!(err.contains("twice for 2 generations"), "{err}");
        assert!(err.contains("20.0 GB this machine has available"), "{err}");
        assert!(err.ends_with("lower --stack-storage-size"), "{err}");
        // Five million stacks a generation fit in 24 GB but take long to reserve: a warning.
        let big = MapSizes {
            stacks: 5_000_000,
            ..record
        };
        let warning = big.check(2, 24_000_000_000).unwrap().expect("a warning");
        assert!(warning.contains("11.0 GB of kernel memory"), "{warning}");
        // Two generations reserve twice what one does (whose other map has one entry).
        let one = MapSizes {
            generations: 1,
            ..record
        };
        assert!(stacks > 2 * one.bytes(2).0 - 1_000_000);
        // Unwind rows are 8 bytes each; 2^32 - 1 of them is 34 GB.
        let rows = MapSizes {
            unwind_rows: u32::MAX,
            ..record
        };
        let err = rows.check(2, 20_000_000_000).unwrap_err().to_string();
        assert!(err.contains("--unwind-table-size 4294967295"), "{err}");
        assert!(err.contains("unwind rows 34.4 GB at 8 bytes each"), "{err}");
        assert!(err.ends_with("lower --unwind-table-size"), "{err}");
        let default_rows = MapSizes {
            unwind_rows: 4 << 20,
            ..record
        };
        assert_eq!(default_rows.check(2, 20_000_000_000).unwrap(), None);
        assert_eq!(bytes(999), "999 bytes");
        assert_eq!(bytes(1_500), "1.5 kB");
    }

    /// The sizes above are the kernel's: loading the real maps with odd sizes, the kernel's
    /// own account of each map (`/proc/self/fdinfo`) shows the key and value sizes of
    /// `ebpf/profile.h` and reserves what [`MapSizes::bytes`] and
    /// [`MapSizes::unwind_bytes`] say, within 2%. (Root: it loads the BPF program.)
    #[test]
    fn costs_match_the_kernel() {
        let sizes = MapSizes {
            stacks: 3001,
            counts: 7001,
            generations: 1,
            unwind_rows: 1_000_003,
        };
        let bpf = crate::bpf::BpfProfiler::load(&crate::bpf::BpfConfig {
            filter_tgids: false,
            stack_storage_size: sizes.stacks,
            counts_map_size: sizes.counts,
            unwind: Some(crate::unwind::sizes(sizes.unwind_rows)),
            ..crate::bpf::BpfConfig::default()
        })
        .expect("loading the BPF program (run the tests as root)");
        let maps: Vec<std::collections::HashMap<String, u64>> =
            std::fs::read_dir("/proc/self/fdinfo")
                .unwrap()
                .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
                .map(|text| {
                    text.lines()
                        .filter_map(|line| {
                            let (key, value) = line.split_once(':')?;
                            Some((key.to_owned(), value.trim().parse().ok()?))
                        })
                        .collect()
                })
                .collect();
        let find = |entries: u32| {
            maps.iter()
                .find(|m| m.get("max_entries") == Some(&u64::from(entries)))
                .unwrap_or_else(|| panic!("a map of {entries} entries in {maps:?}"))
        };
        let cpus = possible_cpus();
        let (stacks, counts) = (find(sizes.stacks), find(sizes.counts));
        let rows = find(sizes.unwind_rows);
        assert_eq!(rows["value_size"], UNWIND_ROW_BYTES);
        assert_eq!(stacks["key_size"], STACK_KEY_BYTES);
        assert_eq!(stacks["value_size"], STACK_VALUE_BYTES);
        assert_eq!(counts["key_size"], COUNTS_KEY_BYTES);
        assert_eq!(counts["value_size"], COUNTS_VALUE_BYTES);
        for (map, expected) in [
            (stacks, stack_map_bytes(sizes.stacks.into(), cpus)),
            (counts, counts_map_bytes(sizes.counts.into(), cpus)),
            (rows, sizes.unwind_bytes()),
        ] {
            let memlock = map["memlock"] as f64;
            assert!(
                (memlock / expected as f64 - 1.0).abs() < 0.02,
                "the kernel reserves {memlock} bytes, prof says {expected}: {map:?}"
            );
        }
        drop(bpf);
    }
}
