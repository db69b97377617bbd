// SPDX-License-Identifier: GPL-2.0
/*
 * The run-array benchmark's programs (benches/src/bin/run_array.rs): three ways for K
 * attachments of one tracepoint to tell which configuration is theirs, the alternatives the
 * bpf_cookie merge message names. Each reads its configuration and counts one hit under it,
 * so that the reading cannot be optimized away; nothing else, so that the mechanism's cost
 * is not hidden under a stack walk.
 *
 *   with_cookie    one program, its configuration in each link's bpf_cookie
 *   with_constant  a clone per attachment, its configuration baked into a constant at load
 *   with_lookup    one program that looks its configuration up in a hash map by CPU
 *   nothing        reads nothing and counts nothing: what the run array itself costs per item
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* Hits by configuration. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 64);
} hits SEC(".maps");

/* The configuration by CPU, for with_lookup; filled by the harness. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1024);
} config_by_cpu SEC(".maps");

/* with_constant's configuration, set before load. */
const volatile __u64 baked = 0;

static __always_inline int count(__u64 config)
{
	__u32 slot = config & 63;
	__u64 *n = bpf_map_lookup_elem(&hits, &slot);

	if (n)
		*n += 1;
	return 0;
}

SEC("tracepoint")
int with_cookie(void *ctx)
{
	return count(bpf_get_attach_cookie(ctx));
}

SEC("tracepoint")
int with_constant(void *ctx)
{
	return count(baked);
}

SEC("tracepoint")
int with_lookup(void *ctx)
{
	__u32 cpu = bpf_get_smp_processor_id();
	__u64 *config = bpf_map_lookup_elem(&config_by_cpu, &cpu);

	return config ? count(*config) : 0;
}

SEC("tracepoint")
int nothing(void *ctx)
{
	return 0;
}
