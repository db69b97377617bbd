/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The table-driven walk of a user stack, for code built without frame pointers.
 *
 * Userspace compiles each mapped file's DWARF call frame information into rows (profile.h,
 * struct unwind_row) and lists each process's executable mappings in `unwind_procs`. From the
 * user registers a sample interrupted (or those the task saved when it entered the kernel),
 * each step finds the pc's mapping, binary-searches the file's rows for the pc, computes the
 * CFA (the caller's stack pointer) from the row, and reads the return address below the CFA
 * and, where the row says so, the caller's rbp. A pc with no row (JIT code, code without
 * CFI) is followed by its frame pointer instead, so mixed stacks stay whole.
 *
 * The steps run under bpf_loop, so the verifier checks one step rather than 127 unrolled
 * ones, and any program type can walk: sampling, tracepoint and off-CPU programs alike.
 * A walk that stops before the outermost frame bumps one PROF_STAT_UNWIND_* counter.
 */
#ifndef PROF_UNWIND_H
#define PROF_UNWIND_H

/* Set by userspace before load: non-zero means user stacks are walked with the tables. */
const volatile __u8 unwind_tables = 0;

/* Every file's rows, one contiguous range per file; mmapped by userspace (--unwind-table-size). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct unwind_row);
	__uint(max_entries, 1);
} unwind_rows SEC(".maps");

/* Where each file's rows are, by slot. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct unwind_file);
	__uint(max_entries, 1);
} unwind_files SEC(".maps");

/* Each process's executable mappings, by tgid; written by userspace only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct unwind_proc);
	__uint(max_entries, 1);
} unwind_procs SEC(".maps");

/* Offsets in the ucontext a signal trampoline's rsp points at (x86-64 struct sigcontext). */
#define SIGCONTEXT_RBP 120
#define SIGCONTEXT_RSP 160
#define SIGCONTEXT_RIP 168

/* What a walk met on its way, so that an early stop can say why. */
#define WALK_MET_PENDING (1U << 0) /* a file whose table was not loaded yet */
#define WALK_MET_FULL (1U << 1)    /* a file whose table did not fit */

/*
 * The state of one walk. It lives in a per-CPU map, not on the BPF stack: the verifier knows
 * nothing of the values it loads from map memory, so it checks one step (and one halving of
 * each binary search) once, instead of once per frame depth and per search range, which for
 * 127 frames exceeds its budget.
 */
struct walk {
	__u64 ip;
	__u64 sp;
	__u64 bp;
	__u32 depth;
	__u32 exact_ip; /* ip is where execution stood, not a return address */
	__u32 stop;     /* PROF_STAT_UNWIND_* when the walk stopped early, else 0 */
	__u32 met;      /* WALK_MET_* */
	__u32 lo;       /* binary search bounds */
	__u32 hi;
	__u64 map_start; /* the last mapping found: the next frame is often in it too */
	__u64 map_end;
	__u32 map_index;
	__u32 row_file;  /* the last row found, for pcs from row_start to row_end of row_file */
	__u32 row_start; /* (loops and recursion walk the same rows again and again) */
	__u32 row_end;
	struct unwind_row row;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct walk);
	__uint(max_entries, 1);
} unwind_walk SEC(".maps");

/* What each step needs that is not plain data: pointers, which cannot live in a map. */
struct walk_ctx {
	struct walk *w;
	struct stack_trace *stack;
	struct unwind_proc *proc;
};

/* Reads a search bound from map memory, so the compiler cannot keep it in a register. */
#define BOUND(x) (*(volatile __u32 *)&(x))

/* The mapping of `proc` that contains `pc`, or NULL. */
static __always_inline struct unwind_mapping *find_mapping(struct walk *w,
							    struct unwind_proc *proc, __u64 pc)
{
	struct unwind_mapping *found;
	__u32 count = proc->count, lo;

	if (pc >= w->map_start && pc < w->map_end)
		return &proc->mappings[w->map_index & (PROF_UNWIND_MAX_MAPPINGS - 1)];

	BOUND(w->lo) = 0;
	BOUND(w->hi) = count < PROF_UNWIND_MAX_MAPPINGS ? count : PROF_UNWIND_MAX_MAPPINGS;
	/* First mapping that ends above pc; 9 halvings cover 256 mappings. */
	for (int i = 0; i < 9; i++) {
		__u32 lo = BOUND(w->lo), hi = BOUND(w->hi), mid;

		if (lo >= hi)
			break;
		mid = lo + (hi - lo) / 2;
		if (proc->mappings[mid & (PROF_UNWIND_MAX_MAPPINGS - 1)].end <= pc)
			BOUND(w->lo) = mid + 1;
		else
			BOUND(w->hi) = mid;
	}
	lo = BOUND(w->lo);
	if (lo >= count || lo >= PROF_UNWIND_MAX_MAPPINGS)
		return NULL;
	found = &proc->mappings[lo & (PROF_UNWIND_MAX_MAPPINGS - 1)];
	if (found->start > pc)
		return NULL;
	w->map_start = found->start;
	w->map_end = found->end;
	w->map_index = lo;
	return found;
}

/* The row of `file` that covers table pc `pc`, or NULL if pc is below its first row. */
static __always_inline struct unwind_row *find_row(struct walk *w, struct unwind_file *file,
						   __u32 pc)
{
	__u32 first = file->first_row, index;
	struct unwind_row *found;

	BOUND(w->lo) = first;
	BOUND(w->hi) = first + file->rows;
	/* First row above pc; 24 halvings cover 16M rows, far more than any file has. */
	for (int i = 0; i < 24; i++) {
		__u32 lo = BOUND(w->lo), hi = BOUND(w->hi), mid;
		struct unwind_row *row;

		if (lo >= hi)
			break;
		mid = lo + (hi - lo) / 2;
		row = bpf_map_lookup_elem(&unwind_rows, &mid);
		if (!row)
			return NULL;
		if (row->pc <= pc)
			BOUND(w->lo) = mid + 1;
		else
			BOUND(w->hi) = mid;
	}
	index = BOUND(w->lo);
	if (index == first)
		return NULL;
	/* The row after the one found bounds the range it covers. */
	if (index < first + file->rows) {
		struct unwind_row *next = bpf_map_lookup_elem(&unwind_rows, &index);

		w->row_end = next ? next->pc : 0;
	} else {
		w->row_end = 0xffffffff;
	}
	index -= 1;
	found = bpf_map_lookup_elem(&unwind_rows, &index);
	if (!found)
		return NULL;
	w->row_start = found->pc;
	w->row = *found;
	return found;
}

/* Why an early stop happened where the frame pointer was the last resort. */
static __always_inline __u32 no_table_reason(struct walk *w)
{
	if (w->met & WALK_MET_FULL)
		return PROF_STAT_UNWIND_TABLES_FULL;
	if (w->met & WALK_MET_PENDING)
		return PROF_STAT_UNWIND_NOT_LOADED;
	return PROF_STAT_UNWIND_NO_TABLE;
}

/* One frame-pointer step. Returns 1 when the walk ends here. */
static __always_inline int frame_pointer_step(struct walk *w)
{
	__u64 frame[2];

	if (w->bp == 0)
		return 1; /* the outermost frame clears rbp */
	if (w->bp < w->sp || (w->bp & 7)) {
		w->stop = no_table_reason(w);
		return 1;
	}
	if (bpf_probe_read_user(frame, sizeof(frame), (void *)w->bp)) {
		w->stop = no_table_reason(w);
		return 1;
	}
	w->sp = w->bp + 16;
	w->bp = frame[0];
	w->ip = frame[1];
	w->exact_ip = 0;
	return 0;
}

/* A signal trampoline: the interrupted registers are in the ucontext at rsp. */
static __always_inline int signal_step(struct walk *w)
{
	__u64 sp = w->sp;

	if (bpf_probe_read_user(&w->bp, sizeof(w->bp), (void *)(sp + SIGCONTEXT_RBP)) ||
	    bpf_probe_read_user(&w->ip, sizeof(w->ip), (void *)(sp + SIGCONTEXT_RIP)) ||
	    bpf_probe_read_user(&w->sp, sizeof(w->sp), (void *)(sp + SIGCONTEXT_RSP))) {
		w->stop = PROF_STAT_UNWIND_UNREADABLE;
		return 1;
	}
	w->exact_ip = 1; /* the signal interrupted this instruction; it was not a call */
	return 0;
}

/* One step by a CFI row. Returns 1 when the walk ends here. */
static __always_inline int row_step(struct walk *w, struct unwind_row *row)
{
	__u8 cfa_kind = row->kind & PROF_CFA_MASK;
	__u64 cfa, ra, bp = w->bp;

	switch (cfa_kind) {
	case PROF_CFA_RSP:
		cfa = w->sp + (__s64)row->cfa_offset * 8;
		break;
	case PROF_CFA_RBP:
		cfa = w->bp + (__s64)row->cfa_offset * 8;
		break;
	case PROF_CFA_PLT:
		cfa = w->sp + 8 + (((w->ip & 15) >= (__u64)row->cfa_offset) ? 8 : 0);
		break;
	case PROF_CFA_DEREF_RBP:
		if (bpf_probe_read_user(&cfa, sizeof(cfa),
					(void *)(w->bp + (__s64)row->cfa_offset * 8))) {
			w->stop = PROF_STAT_UNWIND_UNREADABLE;
			return 1;
		}
		break;
	case PROF_ROW_END:
		return 1;
	case PROF_ROW_SIGNAL:
		return signal_step(w);
	case PROF_ROW_NO_CFI:
		return frame_pointer_step(w);
	default:
		w->stop = PROF_STAT_UNWIND_UNSUPPORTED;
		return 1;
	}
	/* Most frames saved rbp just below the return address: one read takes both. */
	if ((row->kind & PROF_RBP_MASK) == PROF_RBP_AT_CFA && row->rbp_offset == -2) {
		__u64 saved[2];

		if (bpf_probe_read_user(saved, sizeof(saved), (void *)(cfa - 16))) {
			w->stop = PROF_STAT_UNWIND_UNREADABLE;
			return 1;
		}
		w->sp = cfa;
		w->bp = saved[0];
		w->ip = saved[1];
		w->exact_ip = 0;
		return 0;
	}
	if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(cfa - 8))) {
		w->stop = PROF_STAT_UNWIND_UNREADABLE;
		return 1;
	}
	switch (row->kind & PROF_RBP_MASK) {
	case PROF_RBP_AT_CFA:
		if (bpf_probe_read_user(&bp, sizeof(bp),
					(void *)(cfa + (__s64)row->rbp_offset * 8))) {
			w->stop = PROF_STAT_UNWIND_UNREADABLE;
			return 1;
		}
		break;
	case PROF_RBP_AT_RBP:
		if (bpf_probe_read_user(&bp, sizeof(bp),
					(void *)(w->bp + (__s64)row->rbp_offset * 8))) {
			w->stop = PROF_STAT_UNWIND_UNREADABLE;
			return 1;
		}
		break;
	}
	w->sp = cfa;
	w->bp = bp;
	w->ip = ra;
	w->exact_ip = 0;
	return 0;
}

/* bpf_loop callback: records the frame at w->ip, then steps to its caller. */
static long unwind_step(__u32 index, void *arg)
{
	struct walk_ctx *ctx = arg;
	struct walk *w = ctx->w;
	struct unwind_mapping *mapping;
	struct unwind_file *file;
	struct unwind_row *row;
	__u32 depth = w->depth, table_pc;
	__u64 pc;

	if (w->ip == 0)
		return 1;
	if (depth >= PROF_MAX_STACK_DEPTH) {
		w->stop = PROF_STAT_UNWIND_FRAME_LIMIT;
		return 1;
	}
	ctx->stack->ips[depth] = w->ip;
	w->depth = depth + 1;

	/* A return address is one past the call: look up the call itself. */
	pc = w->exact_ip ? w->ip : w->ip - 1;
	mapping = find_mapping(w, ctx->proc, pc);
	if (!mapping || mapping->file == PROF_UNWIND_NO_FILE)
		return frame_pointer_step(w);
	file = bpf_map_lookup_elem(&unwind_files, &mapping->file);
	if (!file || file->generation != mapping->generation) {
		/* The slot went to another file: this one was evicted to make room. */
		w->met |= WALK_MET_FULL;
		return frame_pointer_step(w);
	}
	if (file->rows == 0) {
		if (file->state == PROF_FILE_PENDING)
			w->met |= WALK_MET_PENDING;
		else if (file->state == PROF_FILE_FULL)
			w->met |= WALK_MET_FULL;
		return frame_pointer_step(w);
	}
	if (pc - mapping->bias > 0xffffffffULL)
		return frame_pointer_step(w);
	table_pc = pc - mapping->bias;
	if (w->row_file == mapping->file + 1 && table_pc >= w->row_start && table_pc < w->row_end)
		return row_step(w, &w->row);
	w->row_file = 0;
	row = find_row(w, file, table_pc);
	if (!row)
		return frame_pointer_step(w);
	w->row_file = mapping->file + 1;
	return row_step(w, row);
}

/*
 * Walks the user stack from the registers ip, sp and bp into `stack` with the tables of
 * `proc`. Returns the number of frames; sets *stop to the PROF_STAT_UNWIND_* reason of an
 * early stop, or 0.
 */
static __always_inline __u32 walk_user_stack(__u64 ip, __u64 sp, __u64 bp,
					     struct unwind_proc *proc, struct stack_trace *stack,
					     __u32 *stop)
{
	__u32 zero = 0;
	struct walk *w = bpf_map_lookup_elem(&unwind_walk, &zero);
	struct walk_ctx ctx = {
		.stack = stack,
		.proc = proc,
	};

	if (!w)
		return 0;
	w->ip = ip;
	w->sp = sp;
	w->bp = bp;
	w->depth = 0;
	w->exact_ip = 1;
	w->stop = 0;
	w->met = 0;
	w->map_start = 0;
	w->map_end = 0;
	w->row_file = 0;
	ctx.w = w;
	bpf_loop(PROF_MAX_STACK_DEPTH + 1, unwind_step, &ctx, 0);
	*stop = w->stop;
	return w->depth;
}

#endif
