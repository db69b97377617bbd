/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The maps every program counts into.
 *
 * The counts and stacks live in two generations of maps (`counts_0`/`stacks_0` and
 * `counts_1`/`stacks_1`); the `generation` map says which one the programs write. `prof
 * agent` flips the generation at the end of each window, and `prof record` every second, then
 * drains and clears the generation it left, so no sample is lost across the
 * boundary and the maps never need to be cleared while the programs write them.
 */
#ifndef PROF_MAPS_H
#define PROF_MAPS_H

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

#endif
