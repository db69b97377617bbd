/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Off-CPU time (`--off-cpu`): one program on the scheduler's switch (`sched:sched_switch`),
 * linked once through a BPF perf link whose cookie names the off-cpu event and the stacks to
 * take, as for any tracepoint event (tracepoint.h).
 *
 * At each switch, in the context of the thread that leaves the CPU:
 *   - the thread coming in (next) ran again: if it was blocked since a switch-out recorded in
 *     `off_cpu_blocks`, the nanoseconds since then are added to counts[(tgid, off-cpu,
 *     stacks)] (unless shorter than off_cpu_min_ns);
 *   - the thread going out (prev), if it blocks (sleeps interruptibly or uninterruptibly, not
 *     preempted), has its stacks taken now, while they are its own, and its block recorded.
 */
#ifndef PROF_OFFCPU_H
#define PROF_OFFCPU_H

/* prev_state as the sched_switch tracepoint reports it: the states of a blocked thread. */
#define PROF_TASK_INTERRUPTIBLE 0x1
#define PROF_TASK_UNINTERRUPTIBLE 0x2

/* Set by userspace before load: blocks shorter than this are not counted (--off-cpu-min-us). */
const volatile __u64 off_cpu_min_ns = 0;

/*
 * Threads blocked now, by thread id. An LRU map: on a machine with more blocked threads than
 * it holds, the oldest blocks are forgotten rather than new ones refused. Userspace counts
 * what was forgotten as started − ended − still pending (PROF_STAT_BLOCKS_STARTED).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u32);
	__type(value, struct off_cpu_block);
	__uint(max_entries, 16384); /* --off-cpu-tasks */
} off_cpu_blocks SEC(".maps");

/* Only the fields we read; CO-RE relocates their offsets against the running kernel's BTF. */
struct trace_event_raw_sched_switch {
	int prev_pid;
	long prev_state;
	int next_pid;
} __attribute__((preserve_access_index));

/*
 * Copies a stack of a block that started in the other generation into `to`, the generation
 * being written, so the count and its stacks stay in one generation. Userspace carries the
 * stacks of blocks still pending before it empties a generation, so `from` still has them.
 */
static __always_inline void carry_stack(void *from, void *to, __u64 *id)
{
	struct stack_trace *trace;
	long err;

	if (*id < PROF_STACK_ID_MIN)
		return;
	trace = bpf_map_lookup_elem(from, id);
	if (!trace)
		return; /* emptied already: drained as an unknown stack */
	err = bpf_map_update_elem(to, id, trace, BPF_NOEXIST);
	if (err && err != -EEXIST)
		*id = E2BIG;
}

/* Thread `tid` runs again at `now`: counts its block, if one was recorded. */
static __always_inline void end_block(__u32 tid, __u64 now)
{
	struct off_cpu_block *found = bpf_map_lookup_elem(&off_cpu_blocks, &tid);
	struct sample_key key;
	__u64 blocked;
	__u32 generation;

	if (!found)
		return;
	key = found->key;
	blocked = now - found->start;
	generation = found->generation;
	bpf_map_delete_elem(&off_cpu_blocks, &tid);
	if (blocked < off_cpu_min_ns) {
		bump(key.event, PROF_STAT_BLOCKS_SHORT);
		return;
	}
	if (current_generation()) {
		if (generation != 1) {
			carry_stack(&stacks_0, &stacks_1, &key.user_stack);
			carry_stack(&stacks_0, &stacks_1, &key.kernel_stack);
		}
		add_sample(&counts_1, &key, blocked);
		return;
	}
	if (generation != 0) {
		carry_stack(&stacks_1, &stacks_0, &key.user_stack);
		carry_stack(&stacks_1, &stacks_0, &key.kernel_stack);
	}
	add_sample(&counts_0, &key, blocked);
}

/* The current thread, `tid`, blocks at `now`: takes its stacks and records the block. */
static __always_inline void start_block(void *ctx, __u32 tid, __u64 now)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 event = cookie & PROF_COOKIE_EVENT_MASK;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct off_cpu_block block = {};

	if (event >= PROF_MAX_EVENTS || !is_target(tgid) || !is_sampled_cpu())
		return;
	block.key.tgid = tgid;
	block.key.event = event;
	block.start = now;
	block.generation = current_generation();
	/* At a tracepoint the thread is in the kernel: its user stack is in its saved registers. */
	if (block.generation)
		take_stacks(ctx, cookie, NULL, &stacks_1, &block.key);
	else
		take_stacks(ctx, cookie, NULL, &stacks_0, &block.key);
	bump(event, PROF_STAT_BLOCKS_STARTED);
	bpf_map_update_elem(&off_cpu_blocks, &tid, &block, BPF_ANY);
}

SEC("tracepoint")
int on_sched_switch(struct trace_event_raw_sched_switch *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 prev = ctx->prev_pid;
	__u32 next = ctx->next_pid;

	/* Thread 0 is a CPU's idle task: it never blocks. */
	if (next)
		end_block(next, now);
	if (prev && (ctx->prev_state & (PROF_TASK_INTERRUPTIBLE | PROF_TASK_UNINTERRUPTIBLE)))
		start_block(ctx, prev, now);
	return 0;
}

#endif
