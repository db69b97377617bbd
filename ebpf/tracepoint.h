/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Tracepoint events (`-e sched:sched_switch`): one program, linked once to each tracepoint
 * through a BPF perf link whose cookie names the event and the stacks to take.
 *
 * The kernel keeps the programs linked to a tracepoint in the tracepoint's own run array
 * (tp_event->prog_array), shared by every perf event of that tracepoint, and runs the whole
 * array on each hit on any CPU. So each tracepoint event is linked once, not once per CPU,
 * and the program checks the CPU itself (is_sampled_cpu).
 */
#ifndef PROF_TRACEPOINT_H
#define PROF_TRACEPOINT_H

/* Set by userspace before load: count one hit in this many, with this weight (-c N). */
const volatile __u64 tracepoint_period = 1;

/* Hits of each tracepoint event on this CPU since it last counted one (with -c N > 1). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, PROF_MAX_EVENTS);
} tracepoint_hits SEC(".maps");

SEC("tracepoint")
int on_tracepoint(void *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 event = cookie & PROF_COOKIE_EVENT_MASK;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (!is_target(tgid) || !is_sampled_cpu())
		return 0;
	if (tracepoint_period > 1) {
		__u64 *hits = bpf_map_lookup_elem(&tracepoint_hits, &event);

		if (!hits)
			return 0;
		*hits += 1; /* per-CPU slot: no other writer */
		if (*hits < tracepoint_period)
			return 0;
		*hits = 0;
	}
	/* A tracepoint fires in the kernel: a kernel stack, and the user registers it saved. */
	count_sample(ctx, cookie, tgid, tracepoint_period, NULL);
	/* 0: nothing for perf's own ring buffer, which prof does not read. */
	return 0;
}

#endif
