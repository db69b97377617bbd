/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Layouts and constants shared by profile.bpf.c and the Rust side (profiler/src/bpf.rs).
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

/*
 * The bpf_cookie of each perf link:
 *   bits  0..15  the event's index in the recording,
 *   bit  32      take the user stack,
 *   bit  33      take the kernel stack.
 */
#define PROF_COOKIE_EVENT_MASK 0xffffULL
#define PROF_COOKIE_USER_STACK (1ULL << 32)
#define PROF_COOKIE_KERNEL_STACK (1ULL << 33)

/* Stack id stored when a stack was not asked for (e.g. the kernel stack of a `:u` event). */
#define PROF_STACK_NOT_TAKEN (-1000)

/* Per-event loss and volume counters, in the `stats` per-CPU array at [event * PROF_STAT_COUNT + stat]. */
enum prof_stat {
	PROF_STAT_SAMPLES = 0,      /* samples that passed the target filter */
	PROF_STAT_COLLISIONS = 1,   /* a stack hashed to a bucket holding another stack (-EEXIST) */
	PROF_STAT_NO_STACK = 2,     /* no requested stack could be taken */
	PROF_STAT_MAP_FULL = 3,     /* the counts map had no room for a new key */
	PROF_STAT_COUNT = 4,
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
	__s32 user_stack_id;   /* id in `stacks`, or a negative errno, or PROF_STACK_NOT_TAKEN */
	__s32 kernel_stack_id; /* likewise */
};

/* Value of the `counts` hash map. */
struct sample_value {
	__u64 samples; /* how many samples hit this key */
	__u64 period;  /* sum of ctx->sample_period: the estimated number of events */
};

#endif
