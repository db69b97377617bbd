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

/* Per-event loss and volume counters, in the `stats` per-CPU array at [event * PROF_STAT_COUNT + stat]. */
enum prof_stat {
	PROF_STAT_SAMPLES = 0,        /* samples that passed the target filter */
	PROF_STAT_STACK_MAP_FULL = 1, /* a new stack found the stack map full and was not stored */
	PROF_STAT_NO_STACK = 2,       /* no requested stack could be taken */
	PROF_STAT_MAP_FULL = 3,       /* the counts map had no room for a new key */
	PROF_STAT_BLOCKS_STARTED = 4, /* off-CPU: switch-outs recorded in `off_cpu_blocks` */
	PROF_STAT_BLOCKS_SHORT = 5,   /* off-CPU: blocks shorter than off_cpu_min_ns, not counted */
	PROF_STAT_COUNT = 6,
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

#endif
