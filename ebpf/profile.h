/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Layouts and constants shared by profile.bpf.c and the Rust side (profiler/src/bpf/abi.rs).
 * Every struct here has a #[repr(C)] twin in Rust; the test `bpf::tests::abi_matches_the_bpf_object` reads the
 * sizes and offsets that clang actually produced for the BPF target (the abi_* globals in
 * profile.bpf.c) and compares them with Rust's.
 */
#ifndef PROF_PROFILE_H
#define PROF_PROFILE_H

/* Deepest stack the kernel will hand us; matches kernel.perf_event_max_stack's default. */
#define PROF_MAX_STACK_DEPTH 127

/* How many distinct events one recording can carry (the cookie's event index is below this). */
#define PROF_MAX_EVENTS 32

/* CPUs the tracepoint and off-CPU programs can tell apart (the `sampled_cpus` bit mask). */
#define PROF_MAX_CPUS 1024

/*
 * The bpf_cookie of each perf link:
 *   bits  0..15  the event's index in the recording,
 *   bit  32      take the user stack,
 *   bit  33      take the kernel stack.
 */
#define PROF_COOKIE_EVENT_MASK 0xffffULL
#define PROF_COOKIE_USER_STACK (1ULL << 32)
#define PROF_COOKIE_KERNEL_STACK (1ULL << 33)

/*
 * Stacks are stored by content: a stack's id is a 64-bit hash of its frames, so two
 * different stacks never share a slot the way they do in a BPF_MAP_TYPE_STACK_TRACE bucket.
 * Ids below PROF_STACK_ID_MIN are not hashes:
 *   0                      the stack was not asked for (e.g. the kernel stack of a `:u` event),
 *   1 .. PROF_STACK_ID_MIN an errno: the stack could not be taken (EFAULT: no stack on that
 *                          side, e.g. the user stack of a kernel thread) or stored (E2BIG:
 *                          the stack map is full).
 */
#define PROF_STACK_NOT_TAKEN 0ULL
#define PROF_STACK_ID_MIN 4096ULL

/*
 * Per-event loss and volume counters, in the `stats` per-CPU array at
 * [event * PROF_STAT_COUNT + stat]. The PROF_STAT_UNWIND_* counters say why a table-driven
 * walk of a user stack (unwind.h) stopped before the end of the stack, one per sample.
 */
enum prof_stat {
	PROF_STAT_SAMPLES = 0,        /* samples that passed the target filter */
	PROF_STAT_STACK_MAP_FULL = 1, /* a new stack found the stack map full and was not stored */
	PROF_STAT_NO_STACK = 2,       /* no requested stack could be taken */
	PROF_STAT_MAP_FULL = 3,       /* the counts map had no room for a new key */
	PROF_STAT_UNWIND_NOT_LOADED = 4,  /* the process's tables were not loaded yet: frame pointers */
	PROF_STAT_UNWIND_NO_TABLE = 5,    /* a pc had no row, and its frame pointer led nowhere */
	PROF_STAT_UNWIND_UNSUPPORTED = 6, /* a row's rule is one the walk cannot follow */
	PROF_STAT_UNWIND_UNREADABLE = 7,  /* user memory the rule pointed at could not be read */
	PROF_STAT_UNWIND_FRAME_LIMIT = 8, /* PROF_MAX_STACK_DEPTH frames and the stack went on */
	PROF_STAT_UNWIND_TABLES_FULL = 9, /* a file's table did not fit in the table maps */
	PROF_STAT_BLOCKS_STARTED = 10,    /* off-CPU: switch-outs recorded in `off_cpu_blocks` */
	PROF_STAT_BLOCKS_SHORT = 11,      /* off-CPU: blocks shorter than off_cpu_min_ns, not counted */
	PROF_STAT_COUNT = 12,
};

/* Row of `stats` that holds counters not tied to one event. */
#define PROF_GLOBAL_ROW PROF_MAX_EVENTS
enum prof_global_stat {
	PROF_GLOBAL_FORKS_UNTRACKED = 0, /* a child of a target could not join the target set */
};

/* Key of the `counts` hash map: one entry per (process, event, user stack, kernel stack). */
struct sample_key {
	__u32 tgid;
	__u32 event;
	__u64 user_stack;   /* stack id in `stacks`, or one of the reserved values above */
	__u64 kernel_stack; /* likewise */
};

/* Value of the `counts` hash map. */
struct sample_value {
	__u64 samples; /* how many samples hit this key */
	__u64 period;  /* sum of ctx->sample_period: the estimated number of events */
};

/*
 * Value of the `off_cpu_blocks` map, by thread id: a thread that left the CPU to block, with
 * what its time off CPU will be counted under once it runs again.
 */
struct off_cpu_block {
	struct sample_key key; /* the process, the off-cpu event, the stacks taken at switch-out */
	__u64 start;           /* bpf_ktime_get_ns() at switch-out */
	__u32 generation;      /* the generation of `stacks_N` that key's stacks were stored in */
	__u32 pad;
};

/* Value of the `stacks` hash map: instruction pointers, innermost first, zero-padded. */
struct stack_trace {
	__u64 ips[PROF_MAX_STACK_DEPTH];
};

/*
 * Unwind tables (unwind.h). Userspace compiles each file's .eh_frame (or .debug_frame) into
 * rows sorted by pc, one row per address range with the same rules, and writes them into
 * the `unwind_rows` array, one contiguous range per file. `unwind_files` says where each
 * file's range is; `unwind_procs` lists each process's executable mappings, sorted by start.
 */

/* One row: from `pc` (relative to the file's table base) to the next row's pc. */
struct unwind_row {
	__u32 pc;
	__s16 cfa_offset; /* in units of 8 bytes; for PROF_CFA_PLT, the threshold (10 or 11) */
	__u8 kind;        /* PROF_CFA_* in the low nibble, PROF_RBP_* in the high one */
	__s8 rbp_offset;  /* in units of 8 bytes, from the CFA or from rbp (PROF_RBP_*) */
};

/* How the CFA (the caller's stack pointer) is found, or what the row means instead. */
enum prof_cfa {
	PROF_CFA_RSP = 1,         /* rsp + cfa_offset*8 */
	PROF_CFA_RBP = 2,         /* rbp + cfa_offset*8 */
	PROF_CFA_PLT = 3,         /* rsp + 8, + 8 more when (rip & 15) >= cfa_offset: the PLT rule */
	PROF_CFA_DEREF_RBP = 4,   /* *(rbp + cfa_offset*8): realigned stacks */
	PROF_ROW_NO_CFI = 5,      /* no FDE covers this pc: follow the frame pointer */
	PROF_ROW_END = 6,         /* the return address is undefined: the outermost frame */
	PROF_ROW_SIGNAL = 7,      /* a signal trampoline: the registers are in the ucontext at rsp */
	PROF_ROW_UNSUPPORTED = 8, /* a rule the walk cannot follow */
};
#define PROF_CFA_MASK 0x0f

/* Where the caller's rbp is. */
enum prof_rbp {
	PROF_RBP_SAME = 0x00,   /* unchanged (or undefined: callee-saved, not touched) */
	PROF_RBP_AT_CFA = 0x10, /* saved at CFA + rbp_offset*8 */
	PROF_RBP_AT_RBP = 0x20, /* saved at rbp + rbp_offset*8 (realigned stacks) */
};
#define PROF_RBP_MASK 0xf0

/* Where one file's rows are in `unwind_rows`. */
struct unwind_file {
	__u32 first_row;
	__u32 rows;       /* 0: no usable table (see state) */
	__u32 generation; /* bumped each time the slot is given to another file */
	__u32 state;      /* PROF_FILE_* */
};

enum prof_file_state {
	PROF_FILE_LOADED = 0,  /* the rows are in place */
	PROF_FILE_PENDING = 1, /* the table is being built: frame pointers meanwhile */
	PROF_FILE_FULL = 2,    /* the table did not fit */
	PROF_FILE_NO_CFI = 3,  /* the file has no unwind information, or could not be read */
};

/* No file backs the mapping (JIT code, anonymous memory): frame pointers only. */
#define PROF_UNWIND_NO_FILE 0xffffffffU

/* Executable mappings one process can have in `unwind_procs`. */
#define PROF_UNWIND_MAX_MAPPINGS 256

/* One executable mapping: a table pc is `address - bias`. */
struct unwind_mapping {
	__u64 start;
	__u64 end;
	__u64 bias;
	__u32 file;       /* slot in `unwind_files`, or PROF_UNWIND_NO_FILE */
	__u32 generation; /* the slot's generation when this mapping was written */
};

/* Value of `unwind_procs`: one process's executable mappings, sorted by start. */
struct unwind_proc {
	__u32 count;
	__u32 pad;
	struct unwind_mapping mappings[PROF_UNWIND_MAX_MAPPINGS];
};

#endif
