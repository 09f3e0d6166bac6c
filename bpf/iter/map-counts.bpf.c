// SPDX-License-Identifier: GPL-2.0
/* map-counts.bpf.c: one line per map on the node, "<map id> <entries>", from the counters the
 * kernel keeps for hash maps (6.6+). Pinned by enable beside the installation; status reads it. */
#include "iter.h"

extern __s64 bpf_map_sum_elem_count(const struct bpf_map *map) __ksym;

char LICENSE[] SEC("license") = "GPL";

SEC("iter/bpf_map")
int mb_map_counts(struct bpf_iter__bpf_map *ctx)
{
	struct bpf_map *map = ctx->map;

	if (map)
		mb_print_count(ctx->meta, map->id, bpf_map_sum_elem_count(map));
	return 0;
}
