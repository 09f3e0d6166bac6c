/* sockops.h: track established connections between local sockets, and their original destinations. */
#pragma once
#include "helpers.h"

/* The socket's own key: its namespace and its view of the 4-tuple. */
static __always_inline void pair_from_sockops(struct mb_pair *p, struct bpf_sock_ops *skops)
{
	union mb_ip l, r;

	MB_CTX_ADDRESSES(skops, &l, &r);
	/* local_port is host order; remote_port is network order in the upper 16 bits */
	pair_from_ips(p, bpf_get_netns_cookie(skops), &l, bpf_htons((__u16)skops->local_port), &r,
		      (__be16)(skops->remote_port >> 16));
}

/* Both ends on this node and in the mesh: a loopback leg inside a registered pod, or two pods,
 * this socket in the namespace of the pod whose address it uses. */
static __always_inline int peer_is_local(const struct mb_pair *p, struct bpf_sock_ops *skops)
{
	if (ip_is_loopback(&p->local_ip) || ip_is_loopback(&p->remote_ip))
		return bpf_map_lookup_elem(&netns_pod_ips, (void *)&p->netns) != NULL;
	return owner_netns(&p->local_ip, skops) == p->netns && owner_netns(&p->remote_ip, skops) != 0;
}

static __always_inline void on_established(struct bpf_sock_ops *skops, int active)
{
	struct mb_pair key;

	pair_from_sockops(&key, skops);
	if (active && skops->sk) {
		struct mb_origin *o = bpf_sk_storage_get(&origin_store, skops->sk, 0, 0);

		if (o && bpf_map_update_elem(&pair_original_dst, &key, o, BPF_ANY) == 0)
			/* ask for state changes so the entry goes when the connection closes */
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		else if (o)
			count(MB_CNT_ORIGIN_LOST, 1);
	}
	if (!active_settings() || !peer_is_local(&key, skops))
		return;
	if (bpf_sock_hash_update(skops, &sock_pair_map, &key, BPF_NOEXIST) != 0)
		count(MB_CNT_SOCKHASH_FULL, 1); /* that socket just stays on TCP */
}

SEC("sockops")
int mb_sockops(struct bpf_sock_ops *skops)
{
	struct mb_pair key;

	if (skops->family != MB_AF_INET && skops->family != MB_AF_INET6)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		on_established(skops, 1);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		on_established(skops, 0);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* only connecting ends with a stored origin asked for this callback */
		if (skops->args[1] == MB_TCP_CLOSE) {
			pair_from_sockops(&key, skops);
			bpf_map_delete_elem(&pair_original_dst, &key);
		}
		break;
	}
	return 1;
}
