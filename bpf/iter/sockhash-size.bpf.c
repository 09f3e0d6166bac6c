// SPDX-License-Identifier: GPL-2.0
/* sockhash-size.bpf.c: one line per sockhash on the node, "<map id> <sockets>", from the count
 * the kernel keeps in each (struct bpf_shtab, net/core/sock_map.c) to refuse a full map. The
 * kernel keeps no element count for socket maps that bpf_map_sum_elem_count could read, and the
 * socket map iterator walks every socket (and needs more than this one: some kernels refuse it).
 * Pinned by enable beside the installation; status reads sock_pair_map's line. */
#include <bpf/bpf_core_read.h>
#include "iter.h"

struct mb_atomic {
	int counter;
};

struct bpf_shtab {
	struct bpf_map map;
	struct mb_atomic count;
} __attribute__((preserve_access_index));

char LICENSE[] SEC("license") = "GPL";

SEC("iter/bpf_map")
int mb_sockhash_size(struct bpf_iter__bpf_map *ctx)
{
	struct bpf_map *map = ctx->map;
	int sockets;

	/* a kernel whose sockhash does not begin with its map prints nothing: status dumps instead */
	if (!map || map->map_type != BPF_MAP_TYPE_SOCKHASH || bpf_core_field_offset(struct bpf_shtab, map) != 0)
		return 0;
	if (bpf_core_read(&sockets, sizeof(sockets), &((struct bpf_shtab *)map)->count.counter))
		return 0;
	mb_print_count(ctx->meta, map->id, sockets);
	return 0;
}
