// SPDX-License-Identifier: GPL-2.0
/*
 * prof's one BPF program. It is attached to every (CPU, event) perf event through a BPF perf
 * link whose bpf_cookie says which event fired and which stacks to take (see profile.h). It
 * counts samples in the kernel, keyed by process and stack ids, weighted by the sample period.
 *
 * The counts and stacks live in two generations of maps (`counts_0`/`stacks_0` and
 * `counts_1`/`stacks_1`); the `generation` map says which one the program writes. `prof
 * record` only ever uses generation 0. `prof agent` flips the generation at the end of each
 * window, then drains and clears the generation it left, so no sample is lost across the
 * boundary and the maps never need to be cleared while the program writes them.
 *
 * Two small raw tracepoint programs keep the target set (`targets`) current when prof records
 * a command or a list of pids: children forked by a target join it, and a target's tgid leaves
 * it when the process exits, so that a reused pid is not profiled by mistake.
 */
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "profile.h"

#define EFAULT 14
#define EEXIST 17
#define E2BIG 7

char LICENSE[] SEC("license") = "GPL";

/* Set by userspace before load: non-zero means only tgids in `targets` are sampled. */
const volatile __u8 filter_tgids = 0;

/*
 * The ABI shared with Rust as clang produced it for the BPF target: struct sizes and offsets
 * and the constants of profile.h. The Rust test `bpf::tests::abi_matches_the_bpf_object`
 * reads these from the object file; the program never does.
 */
#define ABI(name, value) const volatile __u64 abi_##name = (value)
ABI(sample_key_size, sizeof(struct sample_key));
ABI(sample_key_tgid, __builtin_offsetof(struct sample_key, tgid));
ABI(sample_key_event, __builtin_offsetof(struct sample_key, event));
ABI(sample_key_user_stack, __builtin_offsetof(struct sample_key, user_stack));
ABI(sample_key_kernel_stack, __builtin_offsetof(struct sample_key, kernel_stack));
ABI(sample_value_size, sizeof(struct sample_value));
ABI(sample_value_samples, __builtin_offsetof(struct sample_value, samples));
ABI(sample_value_period, __builtin_offsetof(struct sample_value, period));
ABI(max_stack_depth, PROF_MAX_STACK_DEPTH);
ABI(max_events, PROF_MAX_EVENTS);
ABI(cookie_event_mask, PROF_COOKIE_EVENT_MASK);
ABI(cookie_user_stack, PROF_COOKIE_USER_STACK);
ABI(cookie_kernel_stack, PROF_COOKIE_KERNEL_STACK);
ABI(stack_trace_size, sizeof(struct stack_trace));
ABI(stack_not_taken, PROF_STACK_NOT_TAKEN);
ABI(stack_id_min, PROF_STACK_ID_MIN);
ABI(stat_count, PROF_STAT_COUNT);
ABI(stat_stack_map_full, PROF_STAT_STACK_MAP_FULL);
ABI(stat_no_stack, PROF_STAT_NO_STACK);
ABI(stat_map_full, PROF_STAT_MAP_FULL);
ABI(global_forks_untracked, PROF_GLOBAL_FORKS_UNTRACKED);

/*
 * Stacks by content hash. Preallocated: a map that allocates on insert can fail with
 * -ENOMEM whenever a CPU meets new stacks faster than the BPF allocator refills its
 * per-CPU cache (seen on 16 CPUs with 17 distinct stacks), so "full" would not mean full.
 */
#define STACKS_MAP(name)                                                     \
	struct {                                                             \
		__uint(type, BPF_MAP_TYPE_HASH);                             \
		__type(key, __u64);                                          \
		__type(value, struct stack_trace);                           \
		__uint(max_entries, 32768); /* --stack-storage-size */       \
	} name SEC(".maps")
STACKS_MAP(stacks_0);
STACKS_MAP(stacks_1);

/* Where bpf_get_stack writes: a stack is too large for the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct stack_trace);
	__uint(max_entries, 1);
} scratch SEC(".maps");

#define COUNTS_MAP(name)                                                     \
	struct {                                                             \
		__uint(type, BPF_MAP_TYPE_HASH);                             \
		__type(key, struct sample_key);                              \
		__type(value, struct sample_value);                          \
		__uint(max_entries, 65536); /* --counts-map-size */          \
	} name SEC(".maps")
COUNTS_MAP(counts_0);
COUNTS_MAP(counts_1);

/* [0]: the generation of `counts_N`/`stacks_N` that samples go to (0 or 1), set by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} generation SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 16384); /* set by userspace: 1 when not filtering */
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, (PROF_MAX_EVENTS + 1) * PROF_STAT_COUNT);
} stats SEC(".maps");

static __always_inline void bump(__u32 row, __u32 stat)
{
	__u32 index = row * PROF_STAT_COUNT + stat;
	__u64 *counter = bpf_map_lookup_elem(&stats, &index);

	if (counter)
		*counter += 1; /* per-CPU slot: no other writer */
}

static __always_inline __u64 mix(__u64 x)
{
	/* The murmur3 64-bit finalizer: every input bit affects every output bit. */
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/* A 64-bit id for the `depth` frames in `stack`, never below PROF_STACK_ID_MIN. */
static __always_inline __u64 stack_id(const struct stack_trace *stack, __u32 depth)
{
	__u64 hash = 0x9e3779b97f4a7c15ULL ^ depth;

	for (__u32 i = 0; i < PROF_MAX_STACK_DEPTH; i++) {
		if (i >= depth)
			break;
		hash = (hash ^ mix(stack->ips[i])) * 0x100000001b3ULL;
	}
	hash = mix(hash);
	return hash < PROF_STACK_ID_MIN ? hash | (1ULL << 63) : hash;
}

/*
 * Takes the user (BPF_F_USER_STACK) or kernel (0) stack into `stack` (this CPU's scratch
 * buffer) and stores it in `stacks` unless it is there already. Returns its id, or an errno
 * below PROF_STACK_ID_MIN.
 */
static __always_inline __u64 take_stack(struct bpf_perf_event_data *ctx, void *stacks,
					    struct stack_trace *stack, __u64 flags)
{
	long bytes, err;
	__u64 id;

	/* bpf_get_stack zero-fills the rest of the buffer. */
	bytes = bpf_get_stack(ctx, stack->ips, sizeof(stack->ips), flags);
	if (bytes < 0)
		return -bytes < PROF_STACK_ID_MIN ? -bytes : EFAULT;
	if (bytes == 0)
		return EFAULT;
	id = stack_id(stack, bytes / sizeof(__u64));
	if (bpf_map_lookup_elem(stacks, &id))
		return id;
	err = bpf_map_update_elem(stacks, &id, stack, BPF_NOEXIST);
	/* -EEXIST: another CPU stored the same stack first. Anything else: the map is full. */
	if (err && err != -EEXIST)
		return E2BIG;
	return id;
}

/* Whether the sample interrupted user code (the privilege level in the saved CS). */
static __always_inline int in_user_mode(struct bpf_perf_event_data *ctx)
{
	return (ctx->regs.cs & 3) == 3;
}

/* No frames on this side: not asked for, or not taken (but not lost to a full map). */
static __always_inline int no_frames(__u64 id)
{
	return id < PROF_STACK_ID_MIN && id != E2BIG;
}

/* Counts one sample of `event` by `tgid` into one generation's `counts` and `stacks`. */
static __always_inline int count_sample(struct bpf_perf_event_data *ctx, __u64 cookie, __u32 event,
					__u32 tgid, void *counts, void *stacks)
{
	struct sample_value *value;
	struct stack_trace *stack;
	__u32 zero = 0;

	stack = bpf_map_lookup_elem(&scratch, &zero);
	if (!stack)
		return 0;

	struct sample_key key = {
		.tgid = tgid,
		.event = event,
		.user_stack = PROF_STACK_NOT_TAKEN,
		.kernel_stack = PROF_STACK_NOT_TAKEN,
	};
	if (cookie & PROF_COOKIE_USER_STACK)
		key.user_stack = take_stack(ctx, stacks, stack, BPF_F_USER_STACK);
	/* A sample that interrupted user code has no kernel frames: don't ask for them. */
	if (cookie & PROF_COOKIE_KERNEL_STACK)
		key.kernel_stack = in_user_mode(ctx) ? EFAULT : take_stack(ctx, stacks, stack, 0);

	bump(event, PROF_STAT_SAMPLES);
	if (key.user_stack == E2BIG || key.kernel_stack == E2BIG)
		bump(event, PROF_STAT_STACK_MAP_FULL);
	else if (no_frames(key.user_stack) && no_frames(key.kernel_stack))
		bump(event, PROF_STAT_NO_STACK);

	value = bpf_map_lookup_elem(counts, &key);
	if (!value) {
		struct sample_value zero = {};
		long err = bpf_map_update_elem(counts, &key, &zero, BPF_NOEXIST);

		/* -EEXIST: another CPU inserted the same key first; use theirs. */
		if (err && err != -EEXIST) {
			bump(event, PROF_STAT_MAP_FULL);
			return 0;
		}
		value = bpf_map_lookup_elem(counts, &key);
		if (!value)
			return 0;
	}
	__sync_fetch_and_add(&value->samples, 1);
	__sync_fetch_and_add(&value->period, ctx->sample_period);
	return 0;
}

SEC("perf_event")
int on_sample(struct bpf_perf_event_data *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 event = cookie & PROF_COOKIE_EVENT_MASK;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 zero = 0;
	__u32 *current;

	if (event >= PROF_MAX_EVENTS)
		return 0;
	if (filter_tgids && !bpf_map_lookup_elem(&targets, &tgid))
		return 0;
	current = bpf_map_lookup_elem(&generation, &zero);
	/* Two calls rather than one with a chosen map: each call site sees one map. */
	if (current && *current)
		return count_sample(ctx, cookie, event, tgid, &counts_1, &stacks_1);
	return count_sample(ctx, cookie, event, tgid, &counts_0, &stacks_0);
}

/* Only the fields we read; CO-RE relocates their offsets against the running kernel's BTF. */
struct task_struct {
	int pid;
	int tgid;
} __attribute__((preserve_access_index));

/* sched_process_fork(struct task_struct *parent, struct task_struct *child), in the parent. */
SEC("raw_tp/sched_process_fork")
int on_process_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 parent_tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 child_tgid;
	__u8 one = 1;

	if (!bpf_map_lookup_elem(&targets, &parent_tgid))
		return 0;
	child_tgid = BPF_CORE_READ(child, tgid);
	if (child_tgid == parent_tgid) /* a new thread, already covered */
		return 0;
	if (bpf_map_update_elem(&targets, &child_tgid, &one, BPF_ANY))
		bump(PROF_GLOBAL_ROW, PROF_GLOBAL_FORKS_UNTRACKED);
	return 0;
}

/* sched_process_exit(struct task_struct *p, ...), in the exiting task. */
SEC("raw_tp/sched_process_exit")
int on_process_exit(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;

	/* The group leader's exit ends the process as far as a later pid reuse is concerned. */
	if ((__u32)pid_tgid == tgid)
		bpf_map_delete_elem(&targets, &tgid);
	return 0;
}
