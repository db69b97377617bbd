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
 * period (count.h). User stacks are walked with unwind tables where userspace loaded them
 * (unwind.h), by frame pointer otherwise. The maps are in maps.h.
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
ABI(stat_unwind_not_loaded, PROF_STAT_UNWIND_NOT_LOADED);
ABI(stat_unwind_no_table, PROF_STAT_UNWIND_NO_TABLE);
ABI(stat_unwind_unsupported, PROF_STAT_UNWIND_UNSUPPORTED);
ABI(stat_unwind_unreadable, PROF_STAT_UNWIND_UNREADABLE);
ABI(stat_unwind_frame_limit, PROF_STAT_UNWIND_FRAME_LIMIT);
ABI(stat_unwind_tables_full, PROF_STAT_UNWIND_TABLES_FULL);
ABI(unwind_row_size, sizeof(struct unwind_row));
ABI(unwind_row_pc, __builtin_offsetof(struct unwind_row, pc));
ABI(unwind_row_cfa_offset, __builtin_offsetof(struct unwind_row, cfa_offset));
ABI(unwind_row_kind, __builtin_offsetof(struct unwind_row, kind));
ABI(unwind_row_rbp_offset, __builtin_offsetof(struct unwind_row, rbp_offset));
ABI(unwind_file_size, sizeof(struct unwind_file));
ABI(unwind_file_first_row, __builtin_offsetof(struct unwind_file, first_row));
ABI(unwind_file_rows, __builtin_offsetof(struct unwind_file, rows));
ABI(unwind_file_generation, __builtin_offsetof(struct unwind_file, generation));
ABI(unwind_file_state, __builtin_offsetof(struct unwind_file, state));
ABI(unwind_mapping_size, sizeof(struct unwind_mapping));
ABI(unwind_mapping_start, __builtin_offsetof(struct unwind_mapping, start));
ABI(unwind_mapping_end, __builtin_offsetof(struct unwind_mapping, end));
ABI(unwind_mapping_bias, __builtin_offsetof(struct unwind_mapping, bias));
ABI(unwind_mapping_file, __builtin_offsetof(struct unwind_mapping, file));
ABI(unwind_mapping_generation, __builtin_offsetof(struct unwind_mapping, generation));
ABI(unwind_proc_size, sizeof(struct unwind_proc));
ABI(unwind_proc_count, __builtin_offsetof(struct unwind_proc, count));
ABI(unwind_proc_mappings, __builtin_offsetof(struct unwind_proc, mappings));
ABI(unwind_max_mappings, PROF_UNWIND_MAX_MAPPINGS);
ABI(unwind_no_file, PROF_UNWIND_NO_FILE);
ABI(cfa_rsp, PROF_CFA_RSP);
ABI(cfa_rbp, PROF_CFA_RBP);
ABI(cfa_plt, PROF_CFA_PLT);
ABI(cfa_deref_rbp, PROF_CFA_DEREF_RBP);
ABI(row_no_cfi, PROF_ROW_NO_CFI);
ABI(row_end, PROF_ROW_END);
ABI(row_signal, PROF_ROW_SIGNAL);
ABI(row_unsupported, PROF_ROW_UNSUPPORTED);
ABI(rbp_same, PROF_RBP_SAME);
ABI(rbp_at_cfa, PROF_RBP_AT_CFA);
ABI(rbp_at_rbp, PROF_RBP_AT_RBP);
ABI(file_loaded, PROF_FILE_LOADED);
ABI(file_pending, PROF_FILE_PENDING);
ABI(file_full, PROF_FILE_FULL);
ABI(file_no_cfi, PROF_FILE_NO_CFI);


#include "maps.h"
#include "targets.h"
#include "unwind.h"
#include "count.h"
#include "tracepoint.h"
#include "offcpu.h"

SEC("perf_event")
int on_sample(struct bpf_perf_event_data *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct user_regs user;

	if (!is_target(tgid))
		return 0;
	/* A sample that interrupted user code (privilege level 3 in the saved CS) walks from
	 * the interrupted registers; one that interrupted the kernel from the saved ones. */
	if ((ctx->regs.cs & 3) != 3)
		return count_sample(ctx, cookie, tgid, ctx->sample_period, NULL);
	user.ip = ctx->regs.rip;
	user.sp = ctx->regs.rsp;
	user.bp = ctx->regs.rbp;
	return count_sample(ctx, cookie, tgid, ctx->sample_period, &user);
}
