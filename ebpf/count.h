/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Counting one sample, for any program type: take the stacks the cookie asks for, store each
 * by the hash of its frames (take_stacks), and add the sample and its period to counts[(tgid,
 * event, stacks)] (add_sample). count_sample does both at once; the off-CPU program takes the
 * stacks when a thread blocks and adds the time it was blocked when it runs again.
 */
#ifndef PROF_COUNT_H
#define PROF_COUNT_H

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
 * Stores the first `depth` frames of `stack` (this CPU's scratch buffer) in `stacks` unless
 * they are there already. Returns the stack's id, or E2BIG when the map is full.
 */
static __always_inline __u64 store_stack(void *stacks, struct stack_trace *stack, __u32 depth)
{
	__u64 id = stack_id(stack, depth);
	long err;

	if (bpf_map_lookup_elem(stacks, &id))
		return id;
	err = bpf_map_update_elem(stacks, &id, stack, BPF_NOEXIST);
	/* -EEXIST: another CPU stored the same stack first. Anything else: the map is full. */
	if (err && err != -EEXIST)
		return E2BIG;
	return id;
}

/*
 * Takes the user (BPF_F_USER_STACK) or kernel (0) stack with the kernel's walker into
 * `stack` and stores it. Returns its id, or an errno below PROF_STACK_ID_MIN.
 */
static __always_inline __u64 take_stack(void *ctx, void *stacks,
					    struct stack_trace *stack, __u64 flags)
{
	long bytes;

	/* bpf_get_stack zero-fills the rest of the buffer. */
	bytes = bpf_get_stack(ctx, stack->ips, sizeof(stack->ips), flags);
	if (bytes < 0)
		return -bytes < PROF_STACK_ID_MIN ? -bytes : EFAULT;
	if (bytes == 0)
		return EFAULT;
	return store_stack(stacks, stack, bytes / sizeof(__u64));
}

/* The user registers a stack walk starts from. */
struct user_regs {
	__u64 ip;
	__u64 sp;
	__u64 bp;
};

/*
 * The user registers the current task saved when it entered the kernel (a kernel-mode
 * sample, a tracepoint). Returns 0, or -1 when the task has no user context (a kernel thread).
 */
static __always_inline int task_user_regs(struct user_regs *regs)
{
	struct pt_regs *saved = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__u64 cs;

	if (bpf_probe_read_kernel(&cs, sizeof(cs), &saved->cs) || (cs & 3) != 3)
		return -1;
	if (bpf_probe_read_kernel(&regs->ip, sizeof(regs->ip), &saved->rip) ||
	    bpf_probe_read_kernel(&regs->sp, sizeof(regs->sp), &saved->rsp) ||
	    bpf_probe_read_kernel(&regs->bp, sizeof(regs->bp), &saved->rbp))
		return -1;
	return 0;
}

/*
 * Takes the user stack of `tgid`: walked with the unwind tables when the process has them
 * (unwind.h), from `at` (the interrupted user registers) or, when `at` is NULL, from the
 * registers the task saved on entering the kernel. Otherwise the kernel's frame-pointer walker
 * takes it, and when tables are in use that is counted as not loaded yet.
 */
static __always_inline __u64 take_user_stack(void *ctx, const struct user_regs *at, __u32 event,
					     __u32 tgid, void *stacks, struct stack_trace *stack)
{
	struct unwind_proc *proc;
	struct user_regs regs;
	__u32 depth, stop = 0;

	if (!unwind_tables)
		return take_stack(ctx, stacks, stack, BPF_F_USER_STACK);
	if (at)
		regs = *at;
	else if (task_user_regs(&regs))
		return EFAULT; /* a kernel thread: no user stack, and nothing to load */
	proc = bpf_map_lookup_elem(&unwind_procs, &tgid);
	if (!proc) {
		bump(event, PROF_STAT_UNWIND_NOT_LOADED);
		return take_stack(ctx, stacks, stack, BPF_F_USER_STACK);
	}
	depth = walk_user_stack(regs.ip, regs.sp, regs.bp, proc, stack, &stop);
	if (stop)
		bump(event, stop);
	if (depth == 0)
		return EFAULT;
	/* Readers stop at the first zero; what lies past it is an older stack's. */
	if (depth < PROF_MAX_STACK_DEPTH)
		stack->ips[depth] = 0;
	return store_stack(stacks, stack, depth);
}

/* No frames on this side: not asked for, or not taken (but not lost to a full map). */
static __always_inline int no_frames(__u64 id)
{
	return id < PROF_STACK_ID_MIN && id != E2BIG;
}

/*
 * Takes the stacks `cookie` asks for into key->user_stack and key->kernel_stack, storing each
 * in one generation's `stacks`, for the process and event of `key`. `ctx` is the program's
 * context, which bpf_get_stack takes. `user` holds the user registers when the sample
 * interrupted user code (so there is no kernel stack to take), and is NULL when it
 * interrupted the kernel: tracepoint and off-CPU programs always pass NULL, and the user
 * stack is walked from the registers the task saved. The off-CPU program takes the stacks at
 * switch-out and adds the time at switch-in.
 */
static __always_inline void take_stacks(void *ctx, __u64 cookie, const struct user_regs *user,
					void *stacks, struct sample_key *key)
{
	struct stack_trace *stack;
	__u32 zero = 0;

	key->user_stack = PROF_STACK_NOT_TAKEN;
	key->kernel_stack = PROF_STACK_NOT_TAKEN;
	stack = bpf_map_lookup_elem(&scratch, &zero);
	if (!stack)
		return;
	if (cookie & PROF_COOKIE_USER_STACK)
		key->user_stack =
			take_user_stack(ctx, user, key->event, key->tgid, stacks, stack);
	/* A sample that interrupted user code has no kernel frames: don't ask for them. */
	if (cookie & PROF_COOKIE_KERNEL_STACK)
		key->kernel_stack = user ? EFAULT : take_stack(ctx, stacks, stack, 0);
}

/*
 * Adds one sample of weight `period` to counts[key] in one generation's `counts`, and counts
 * what its stacks lost under key->event.
 */
static __always_inline int add_sample(void *counts, const struct sample_key *key, __u64 period)
{
	struct sample_value *value;
	__u32 event = key->event;

	bump(event, PROF_STAT_SAMPLES);
	if (key->user_stack == E2BIG || key->kernel_stack == E2BIG)
		bump(event, PROF_STAT_STACK_MAP_FULL);
	else if (no_frames(key->user_stack) && no_frames(key->kernel_stack))
		bump(event, PROF_STAT_NO_STACK);

	value = bpf_map_lookup_elem(counts, key);
	if (!value) {
		struct sample_value zero = {};
		long err = bpf_map_update_elem(counts, key, &zero, BPF_NOEXIST);

		/* -EEXIST: another CPU inserted the same key first; use theirs. */
		if (err && err != -EEXIST) {
			bump(event, PROF_STAT_MAP_FULL);
			return 0;
		}
		value = bpf_map_lookup_elem(counts, key);
		if (!value)
			return 0;
	}
	__sync_fetch_and_add(&value->samples, 1);
	__sync_fetch_and_add(&value->period, period);
	return 0;
}

/*
 * Counts one sample of `event` by `tgid`, of weight `period`, into one generation's `counts`
 * and `stacks` (take_stacks says what `user` is).
 */
static __always_inline int count_in(void *ctx, __u64 cookie, __u32 event, __u32 tgid,
				    __u64 period, const struct user_regs *user, void *counts,
				    void *stacks)
{
	struct sample_key key = {
		.tgid = tgid,
		.event = event,
	};

	take_stacks(ctx, cookie, user, stacks, &key);
	return add_sample(counts, &key, period);
}

/* The generation of the counts and stack maps that samples go to now: 0 or 1. */
static __always_inline __u32 current_generation(void)
{
	__u32 zero = 0;
	__u32 *current = bpf_map_lookup_elem(&generation, &zero);

	return current && *current ? 1 : 0;
}

/* Counts one sample into the generation that userspace currently has samples go to. */
static __always_inline int count_sample(void *ctx, __u64 cookie, __u32 tgid, __u64 period,
					const struct user_regs *user)
{
	__u32 event = cookie & PROF_COOKIE_EVENT_MASK;

	if (event >= PROF_MAX_EVENTS)
		return 0;
	/* Two calls rather than one with a chosen map: each call site sees one map. */
	if (current_generation())
		return count_in(ctx, cookie, event, tgid, period, user, &counts_1, &stacks_1);
	return count_in(ctx, cookie, event, tgid, period, user, &counts_0, &stacks_0);
}

#endif
