//! The ABI shared with the BPF side: the compiled object, the `#[repr(C)]` twins of the
//! structs in `ebpf/profile.h`, and its constants. The test at the bottom reads the sizes,
//! offsets and constants that clang actually produced for the BPF target (the `abi_*`
//! globals of `ebpf/profile.bpf.c`) and compares them with Rust's.

use crate::events::{Event, MAX_EVENTS};

/// The compiled `ebpf/profile.bpf.c`, built by `build.rs`: every program and map of prof.
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profile.bpf.o"));

/// Deepest stack the kernel hands over (`PROF_MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: usize = 127;
/// Cookie bits 0..15: the event's index (`PROF_COOKIE_EVENT_MASK`).
pub const COOKIE_EVENT_MASK: u64 = 0xffff;
/// Cookie bit: take the user stack (`PROF_COOKIE_USER_STACK`).
pub const COOKIE_USER_STACK: u64 = 1 << 32;
/// Cookie bit: take the kernel stack (`PROF_COOKIE_KERNEL_STACK`).
pub const COOKIE_KERNEL_STACK: u64 = 1 << 33;
/// Stack id of a stack that was not asked for (`PROF_STACK_NOT_TAKEN`).
pub const STACK_NOT_TAKEN: u64 = 0;
/// Stack ids below this are errnos, not stacks (`PROF_STACK_ID_MIN`).
pub const STACK_ID_MIN: u64 = 4096;
/// Counters per event row in `stats` (`PROF_STAT_COUNT`).
pub(crate) const STAT_COUNT: u32 = 12;
pub(crate) const STAT_SAMPLES: u32 = 0;
pub(crate) const STAT_STACK_MAP_FULL: u32 = 1;
pub(crate) const STAT_NO_STACK: u32 = 2;
pub(crate) const STAT_MAP_FULL: u32 = 3;
pub(crate) const STAT_UNWIND_NOT_LOADED: u32 = 4;
pub(crate) const STAT_UNWIND_NO_TABLE: u32 = 5;
pub(crate) const STAT_UNWIND_UNSUPPORTED: u32 = 6;
pub(crate) const STAT_UNWIND_UNREADABLE: u32 = 7;
pub(crate) const STAT_UNWIND_FRAME_LIMIT: u32 = 8;
pub(crate) const STAT_UNWIND_TABLES_FULL: u32 = 9;
pub(crate) const STAT_BLOCKS_STARTED: u32 = 10;
pub(crate) const STAT_BLOCKS_SHORT: u32 = 11;
/// CPUs the tracepoint programs tell apart (`PROF_MAX_CPUS`), the bits of [`CpuMask`].
pub const MAX_CPUS: usize = 1024;
/// Row of `stats` for counters not tied to an event (`PROF_GLOBAL_ROW`).
pub(crate) const GLOBAL_ROW: u32 = MAX_EVENTS as u32;
pub(crate) const GLOBAL_FORKS_UNTRACKED: u32 = 0;

/// Key of the `counts` map (`struct sample_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SampleKey {
    /// The sampled process.
    pub tgid: u32,
    /// Index of the event in the recording.
    pub event: u32,
    /// Id in the stack map (a hash of the stack), or [`STACK_NOT_TAKEN`], or an errno
    /// below [`STACK_ID_MIN`].
    pub user_stack: u64,
    /// Likewise for the kernel stack.
    pub kernel_stack: u64,
}

/// Value of the `stacks` map (`struct stack_trace`): innermost frame first, zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackTrace {
    /// Instruction pointers.
    pub ips: [u64; MAX_STACK_DEPTH],
}

/// Value of the `counts` map (`struct sample_value`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SampleValue {
    /// Number of samples.
    pub samples: u64,
    /// Sum of the sample periods: the estimated number of events.
    pub period: u64,
}

/// Value of the `off_cpu_blocks` map (`struct off_cpu_block`): a thread blocked now.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OffCpuBlock {
    /// What its time off CPU will be counted under: the process, the off-cpu event and the
    /// stacks taken when it left the CPU.
    pub key: SampleKey,
    /// `bpf_ktime_get_ns()` when it left the CPU.
    pub start: u64,
    /// The generation of the stack maps that the key's stacks are in.
    pub generation: u32,
    /// Padding.
    pub pad: u32,
}

/// The CPUs the tracepoint and off-CPU programs count on (`sampled_cpus`), one bit each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMask(pub [u64; MAX_CPUS / 64]);

impl CpuMask {
    /// Every CPU.
    pub const ALL: CpuMask = CpuMask([u64::MAX; MAX_CPUS / 64]);

    /// Just `cpus` (CPUs from [`MAX_CPUS`] on are left out: the programs cannot tell them).
    pub fn of(cpus: &[u32]) -> CpuMask {
        let mut mask = [0; MAX_CPUS / 64];
        for &cpu in cpus.iter().filter(|&&cpu| (cpu as usize) < MAX_CPUS) {
            mask[cpu as usize / 64] |= 1 << (cpu % 64);
        }
        CpuMask(mask)
    }

    /// Whether `cpu` is in the mask.
    pub fn contains(&self, cpu: u32) -> bool {
        (cpu as usize) < MAX_CPUS && self.0[cpu as usize / 64] >> (cpu % 64) & 1 == 1
    }
}

impl Default for CpuMask {
    fn default() -> CpuMask {
        CpuMask::ALL
    }
}

/// One row of an unwind table (`struct unwind_row`): how to find the caller's frame from
/// `pc`, relative to the file's table base, up to the next row's pc.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct UnwindRow {
    /// First address the row covers, relative to the table's base.
    pub pc: u32,
    /// The CFA's offset in units of 8 bytes; for [`CFA_PLT`], the threshold.
    pub cfa_offset: i16,
    /// A `CFA_*`/`ROW_*` kind in the low nibble, a `RBP_*` rule in the high one.
    pub kind: u8,
    /// Where rbp was saved, in units of 8 bytes from the CFA or rbp.
    pub rbp_offset: i8,
}

/// Where one file's rows are in `unwind_rows` (`struct unwind_file`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UnwindFile {
    /// Index of the first row.
    pub first_row: u32,
    /// Number of rows; 0 when the file has no usable table (see `state`).
    pub rows: u32,
    /// Bumped each time the slot is given to another file.
    pub generation: u32,
    /// One of the `FILE_*` states.
    pub state: u32,
}

impl UnwindFile {
    /// A slot of `generation` with no rows, for the reason `state` gives.
    pub fn without_rows(generation: u32, state: u32) -> UnwindFile {
        UnwindFile {
            first_row: 0,
            rows: 0,
            generation,
            state,
        }
    }
}

/// One executable mapping of a process (`struct unwind_mapping`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UnwindMapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// What to subtract from an address to get its table pc.
    pub bias: u64,
    /// Slot in `unwind_files`, or [`UNWIND_NO_FILE`].
    pub file: u32,
    /// The slot's generation when the mapping was written.
    pub generation: u32,
}

/// Executable mappings one process can have in `unwind_procs` (`PROF_UNWIND_MAX_MAPPINGS`).
pub const UNWIND_MAX_MAPPINGS: usize = 256;
/// No file backs the mapping: frame pointers only (`PROF_UNWIND_NO_FILE`).
pub const UNWIND_NO_FILE: u32 = u32::MAX;

/// One process's executable mappings, sorted by start (`struct unwind_proc`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwindProc {
    /// How many of `mappings` are used.
    pub count: u32,
    /// Padding, zero.
    pub pad: u32,
    /// The mappings.
    pub mappings: [UnwindMapping; UNWIND_MAX_MAPPINGS],
}

impl Default for UnwindProc {
    fn default() -> UnwindProc {
        UnwindProc {
            count: 0,
            pad: 0,
            mappings: [UnwindMapping::default(); UNWIND_MAX_MAPPINGS],
        }
    }
}

/// CFA = rsp + offset (`PROF_CFA_RSP`).
pub const CFA_RSP: u8 = 1;
/// CFA = rbp + offset (`PROF_CFA_RBP`).
pub const CFA_RBP: u8 = 2;
/// The PLT rule: CFA = rsp + 8, plus 8 when `(rip & 15) >= threshold` (`PROF_CFA_PLT`).
pub const CFA_PLT: u8 = 3;
/// CFA = *(rbp + offset), for realigned stacks (`PROF_CFA_DEREF_RBP`).
pub const CFA_DEREF_RBP: u8 = 4;
/// No CFI covers the pc: follow the frame pointer (`PROF_ROW_NO_CFI`).
pub const ROW_NO_CFI: u8 = 5;
/// The return address is undefined: the outermost frame (`PROF_ROW_END`).
pub const ROW_END: u8 = 6;
/// A signal trampoline (`PROF_ROW_SIGNAL`).
pub const ROW_SIGNAL: u8 = 7;
/// A rule the walk cannot follow (`PROF_ROW_UNSUPPORTED`).
pub const ROW_UNSUPPORTED: u8 = 8;
/// rbp unchanged (`PROF_RBP_SAME`).
pub const RBP_SAME: u8 = 0x00;
/// rbp saved at CFA + offset (`PROF_RBP_AT_CFA`).
pub const RBP_AT_CFA: u8 = 0x10;
/// rbp saved at rbp + offset (`PROF_RBP_AT_RBP`).
pub const RBP_AT_RBP: u8 = 0x20;
/// The file's rows are in place (`PROF_FILE_LOADED`).
pub const FILE_LOADED: u32 = 0;
/// The file's table is being built (`PROF_FILE_PENDING`).
pub const FILE_PENDING: u32 = 1;
/// The file's table did not fit (`PROF_FILE_FULL`).
pub const FILE_FULL: u32 = 2;
/// The file has no unwind information or could not be read (`PROF_FILE_NO_CFI`).
pub const FILE_NO_CFI: u32 = 3;

// SAFETY: both are repr(C) structs of plain integers without padding (checked against the
// BPF object by `abi_matches_the_bpf_object`), so any bit pattern is a valid value.
unsafe impl aya::Pod for SampleKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SampleValue {}
// SAFETY: as above (an array of u64).
unsafe impl aya::Pod for StackTrace {}
// SAFETY: as above (a SampleKey, a u64 and two u32s: no padding).
unsafe impl aya::Pod for OffCpuBlock {}
// SAFETY: as above (checked by the same test).
unsafe impl aya::Pod for UnwindRow {}
// SAFETY: as above.
unsafe impl aya::Pod for UnwindFile {}
// SAFETY: as above.
unsafe impl aya::Pod for UnwindMapping {}
// SAFETY: as above (a count, padding that is part of the struct, and an array of mappings).
unsafe impl aya::Pod for UnwindProc {}

/// The cookie of the link for event `index`: the index plus which stacks to take.
pub fn cookie(index: usize, event: &Event) -> u64 {
    let mut cookie = index as u64 & COOKIE_EVENT_MASK;
    if event.modifiers.user {
        cookie |= COOKIE_USER_STACK;
    }
    if event.modifiers.kernel {
        cookie |= COOKIE_KERNEL_STACK;
    }
    cookie
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use object::{Object, ObjectSection, ObjectSymbol};

    use super::*;

    /// Reads `abi_<name>` from the compiled BPF object's .rodata.
    fn abi(name: &str) -> u64 {
        let file = object::File::parse(PROGRAM_OBJECT).expect("the BPF object is ELF");
        let symbol = file
            .symbols()
            .find(|s| s.name() == Ok(&format!("abi_{name}")))
            .unwrap_or_else(|| panic!("abi_{name} is in the object"));
        let section = file
            .section_by_index(symbol.section_index().unwrap())
            .unwrap();
        let data = section.data().unwrap();
        let at = symbol.address() as usize;
        u64::from_le_bytes(data[at..at + 8].try_into().unwrap())
    }

    /// The Rust twins of the BPF structs and constants match what clang built for the BPF
    /// target, field by field.
    #[test]
    fn abi_matches_the_bpf_object() {
        let expect = |name: &str, rust: u64| assert_eq!(abi(name), rust, "abi_{name}");
        expect("sample_key_size", size_of::<SampleKey>() as u64);
        expect("sample_key_tgid", offset_of!(SampleKey, tgid) as u64);
        expect("sample_key_event", offset_of!(SampleKey, event) as u64);
        expect(
            "sample_key_user_stack",
            offset_of!(SampleKey, user_stack) as u64,
        );
        expect(
            "sample_key_kernel_stack",
            offset_of!(SampleKey, kernel_stack) as u64,
        );
        expect("sample_value_size", size_of::<SampleValue>() as u64);
        expect(
            "sample_value_samples",
            offset_of!(SampleValue, samples) as u64,
        );
        expect(
            "sample_value_period",
            offset_of!(SampleValue, period) as u64,
        );
        expect("max_stack_depth", MAX_STACK_DEPTH as u64);
        expect("max_events", MAX_EVENTS as u64);
        expect("max_cpus", MAX_CPUS as u64);
        expect("cookie_event_mask", COOKIE_EVENT_MASK);
        expect("cookie_user_stack", COOKIE_USER_STACK);
        expect("cookie_kernel_stack", COOKIE_KERNEL_STACK);
        expect("stack_trace_size", size_of::<StackTrace>() as u64);
        expect("stack_not_taken", STACK_NOT_TAKEN);
        expect("stack_id_min", STACK_ID_MIN);
        expect("stat_count", u64::from(STAT_COUNT));
        expect("stat_stack_map_full", u64::from(STAT_STACK_MAP_FULL));
        expect("stat_no_stack", u64::from(STAT_NO_STACK));
        expect("stat_map_full", u64::from(STAT_MAP_FULL));
        expect("stat_blocks_started", u64::from(STAT_BLOCKS_STARTED));
        expect("stat_blocks_short", u64::from(STAT_BLOCKS_SHORT));
        expect("off_cpu_block_size", size_of::<OffCpuBlock>() as u64);
        expect("off_cpu_block_key", offset_of!(OffCpuBlock, key) as u64);
        expect("off_cpu_block_start", offset_of!(OffCpuBlock, start) as u64);
        expect(
            "off_cpu_block_generation",
            offset_of!(OffCpuBlock, generation) as u64,
        );
        expect("global_forks_untracked", u64::from(GLOBAL_FORKS_UNTRACKED));
        for (name, value) in [
            ("stat_unwind_not_loaded", STAT_UNWIND_NOT_LOADED),
            ("stat_unwind_no_table", STAT_UNWIND_NO_TABLE),
            ("stat_unwind_unsupported", STAT_UNWIND_UNSUPPORTED),
            ("stat_unwind_unreadable", STAT_UNWIND_UNREADABLE),
            ("stat_unwind_frame_limit", STAT_UNWIND_FRAME_LIMIT),
            ("stat_unwind_tables_full", STAT_UNWIND_TABLES_FULL),
            ("file_loaded", FILE_LOADED),
            ("file_pending", FILE_PENDING),
            ("file_full", FILE_FULL),
            ("file_no_cfi", FILE_NO_CFI),
            ("unwind_no_file", UNWIND_NO_FILE),
        ] {
            expect(name, u64::from(value));
        }
        for (name, value) in [
            ("cfa_rsp", CFA_RSP),
            ("cfa_rbp", CFA_RBP),
            ("cfa_plt", CFA_PLT),
            ("cfa_deref_rbp", CFA_DEREF_RBP),
            ("row_no_cfi", ROW_NO_CFI),
            ("row_end", ROW_END),
            ("row_signal", ROW_SIGNAL),
            ("row_unsupported", ROW_UNSUPPORTED),
            ("rbp_same", RBP_SAME),
            ("rbp_at_cfa", RBP_AT_CFA),
            ("rbp_at_rbp", RBP_AT_RBP),
        ] {
            expect(name, u64::from(value));
        }
        for (name, rust) in [
            ("unwind_row_size", size_of::<UnwindRow>()),
            ("unwind_row_pc", offset_of!(UnwindRow, pc)),
            ("unwind_row_cfa_offset", offset_of!(UnwindRow, cfa_offset)),
            ("unwind_row_kind", offset_of!(UnwindRow, kind)),
            ("unwind_row_rbp_offset", offset_of!(UnwindRow, rbp_offset)),
            ("unwind_file_size", size_of::<UnwindFile>()),
            ("unwind_file_first_row", offset_of!(UnwindFile, first_row)),
            ("unwind_file_rows", offset_of!(UnwindFile, rows)),
            ("unwind_file_generation", offset_of!(UnwindFile, generation)),
            ("unwind_file_state", offset_of!(UnwindFile, state)),
            ("unwind_mapping_size", size_of::<UnwindMapping>()),
            ("unwind_mapping_start", offset_of!(UnwindMapping, start)),
            ("unwind_mapping_end", offset_of!(UnwindMapping, end)),
            ("unwind_mapping_bias", offset_of!(UnwindMapping, bias)),
            ("unwind_mapping_file", offset_of!(UnwindMapping, file)),
            (
                "unwind_mapping_generation",
                offset_of!(UnwindMapping, generation),
            ),
            ("unwind_proc_size", size_of::<UnwindProc>()),
            ("unwind_proc_count", offset_of!(UnwindProc, count)),
            ("unwind_proc_mappings", offset_of!(UnwindProc, mappings)),
            ("unwind_max_mappings", UNWIND_MAX_MAPPINGS),
        ] {
            expect(name, rust as u64);
        }
    }

    /// A CPU mask holds exactly the CPUs it was made of, across words.
    #[test]
    fn cpu_masks() {
        let mask = CpuMask::of(&[0, 3, 64, 1023, 5000]);
        for cpu in [0, 3, 64, 1023] {
            assert!(mask.contains(cpu), "{cpu}");
        }
        for cpu in [1, 63, 65, 1022, 5000] {
            assert!(!mask.contains(cpu), "{cpu}");
        }
        assert!(CpuMask::ALL.contains(1023));
    }

    /// Cookies carry the event index and the stacks the modifiers ask for.
    #[test]
    fn cookies() {
        let both = Event::parse("cpu-clock").unwrap();
        let user = Event::parse("page-faults:u").unwrap();
        assert_eq!(
            cookie(3, &both),
            3 | COOKIE_USER_STACK | COOKIE_KERNEL_STACK
        );
        assert_eq!(cookie(1, &user), 1 | COOKIE_USER_STACK);
    }
}
