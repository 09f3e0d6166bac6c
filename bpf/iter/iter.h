/* SPDX-License-Identifier: GPL-2.0 */
/* iter.h: just enough of the kernel's iterator contexts for status to count map entries by
 * reading a pinned file instead of dumping whole maps, and for disable to see which sockets have
 * read what was moved to them. CO-RE fixes the offsets at load. */
#ifndef MB_ITER_H
#define MB_ITER_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct seq_file;
struct sock;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((preserve_access_index));

struct bpf_map {
	enum bpf_map_type map_type;
	__u32 id;
} __attribute__((preserve_access_index));

/* the context of iter/bpf_map programs: one map of the node at a time */
struct bpf_iter__bpf_map {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
} __attribute__((preserve_access_index));

/* the context of iter/sockmap programs: one socket of the map at a time */
struct bpf_iter__sockmap {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
	void *key;
	struct sock *sk;
} __attribute__((preserve_access_index));

/* The line both iter/bpf_map counters print, "<map id> <count>": status parses one format. */
static __always_inline void mb_print_count(struct bpf_iter_meta *meta, __u32 map_id, __s64 count)
{
	static const char fmt[] = "%u %lld\n";
	__u64 args[2] = {map_id, count};

	bpf_seq_printf(meta->seq, fmt, sizeof(fmt), args, sizeof(args));
}

#endif
