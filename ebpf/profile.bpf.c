// SPDX-License-Identifier: GPL-2.0
/*
 * prof's BPF object: every program and map prof loads, in one file so that one loader
 * (profiler/src/bpf/mod.rs) creates the maps once and every program counts into the same ones.
 *
 *   on_sample        perf_event   attached to every (CPU, event) sampling event through a BPF
 *                                 perf link whose bpf_cookie says which event fired and which
 *                                 stacks to take (see profile.h)
 *   on_tracepoint    tracepoint   linked once to each tracepoint event (`-e sched:sched_switch`)
 *                                 through a BPF perf link with the same kind of cookie
 *                                 (tracepoint.h)
 *   on_sched_switch  tracepoint   off-CPU time, linked once to sched:sched_switch (offcpu.h)
 *   on_process_fork  raw_tp       keep the target set current (targets.h)
 *   on_process_exit  raw_tp
 *
 * Samples are counted in the kernel, keyed by process and stack ids, weighted by the sample
 * period (count.h). The maps are in maps.h.
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

/*
 * The ABI shared with Rust as clang produced it for the BPF target: struct sizes and offsets
 * and the constants of profile.h. The Rust test `bpf::abi::tests::abi_matches_the_bpf_object`
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
ABI(max_cpus, PROF_MAX_CPUS);
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
ABI(stat_blocks_started, PROF_STAT_BLOCKS_STARTED);
ABI(stat_blocks_short, PROF_STAT_BLOCKS_SHORT);
ABI(off_cpu_block_size, sizeof(struct off_cpu_block));
ABI(off_cpu_block_key, __builtin_offsetof(struct off_cpu_block, key));
ABI(off_cpu_block_start, __builtin_offsetof(struct off_cpu_block, start));
ABI(off_cpu_block_generation, __builtin_offsetof(struct off_cpu_block, generation));
ABI(global_forks_untracked, PROF_GLOBAL_FORKS_UNTRACKED);


#include "maps.h"
#include "targets.h"
#include "count.h"
#include "tracepoint.h"
#include "offcpu.h"

/* Whether the sample interrupted user code (the privilege level in the saved CS). */
static __always_inline int in_user_mode(struct bpf_perf_event_data *ctx)
{
	return (ctx->regs.cs & 3) == 3;
}

SEC("perf_event")
int on_sample(struct bpf_perf_event_data *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (!is_target(tgid))
		return 0;
	return count_sample(ctx, cookie, tgid, ctx->sample_period, in_user_mode(ctx));
}
