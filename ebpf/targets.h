/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The target set, when prof records a command or a list of pids. Two small raw tracepoint
 * programs keep it current: children forked by a target join it, and a target's tgid leaves
 * it when the process exits, so that a reused pid is not profiled by mistake. And the CPUs
 * being sampled, for the programs that run on every CPU.
 */
#ifndef PROF_TARGETS_H
#define PROF_TARGETS_H

/* Set by userspace before load: non-zero means only tgids in `targets` are sampled. */
const volatile __u8 filter_tgids = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 16384); /* set by userspace: 1 when not filtering */
} targets SEC(".maps");

/* Whether samples of `tgid` are counted. */
static __always_inline int is_target(__u32 tgid)
{
	return !filter_tgids || bpf_map_lookup_elem(&targets, &tgid);
}

/*
 * The CPUs being sampled, one bit each, set by userspace before load (every CPU unless told
 * otherwise). Sampling events are opened on those CPUs only; a tracepoint's programs run on
 * whichever CPU it fires, so the tracepoint and off-CPU programs check the CPU themselves.
 */
const volatile __u64 sampled_cpus[PROF_MAX_CPUS / 64] = {
	[0 ... PROF_MAX_CPUS / 64 - 1] = ~0ULL,
};

/* Whether the CPU this runs on is being sampled. */
static __always_inline int is_sampled_cpu(void)
{
	__u32 cpu = bpf_get_smp_processor_id();

	if (cpu >= PROF_MAX_CPUS)
		return 0;
	return (sampled_cpus[cpu / 64] >> (cpu % 64)) & 1;
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

#endif
