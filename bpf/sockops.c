/* sockops.c: track established connections between local sockets, and their original destinations. */
#include "headers/helpers.h"

/* The socket's own key: its namespace and its view of the 4-tuple. */
static __always_inline void pair_from_sockops(struct mb_pair *p, struct bpf_sock_ops *skops)
{
	union mb_ip l, r;

	MB_CTX_ADDRESSES(skops, &l, &r);
	/* local_port is host order; remote_port is network order in the upper 16 bits */
	pair_from_ips(p, bpf_get_netns_cookie(skops), &l, bpf_htons((__u16)skops->local_port), &r, (__be16)(skops->remote_port >> 16));
}

/* Both ends on this node and in the mesh: a loopback leg inside a registered pod, or two pods,
 * this socket in the namespace of the pod whose address it uses. */
static __always_inline int peer_is_local(const struct mb_pair *p, struct bpf_sock_ops *skops)
{
	if (ip_is_loopback(&p->local_ip) || ip_is_loopback(&p->remote_ip))
		return bpf_map_lookup_elem(&netns_pod_ips, (void *)&p->netns) != NULL;
	return owner_netns(&p->local_ip, skops) == p->netns && owner_netns(&p->remote_ip, skops) != 0;
}

/* Fair shares of the connection maps. A pod may always hold pod_share entries of each (sync
 * divides a quarter of the capacity among the meshed pods); past that it takes more only while
 * the node holds fewer than MB_SHARED_CONNS. So no pod fills a map and leaves another's sockets on
 * TCP, or another's connections without their original destination. */
static __always_inline struct mb_usage *usage_of(__u64 netns)
{
	struct mb_usage zero = {};
	struct mb_usage *u = bpf_map_lookup_elem(&pod_usage, &netns);

	if (u)
		return u;
	bpf_map_update_elem(&pod_usage, &netns, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&pod_usage, &netns);
}

static __always_inline __s64 held(const struct mb_usage *u, int origins)
{
	__s64 n;

	if (!u)
		return 0;
	n = origins ? u->origins : u->sockets;
	return n > 0 ? n : 0;
}

/* An entry a pod could not be counted in (pod_usage full) is allowed: the map's own capacity still holds. */
static __always_inline int may_take(const struct mb_usage *node, const struct mb_usage *pod, int origins, __u32 share)
{
	return held(node, origins) < MB_SHARED_CONNS || held(pod, origins) < (__s64)share;
}

static __always_inline void charge(struct mb_usage *node, struct mb_usage *pod, int origins, __s64 n)
{
	if (node)
		__sync_fetch_and_add(origins ? &node->origins : &node->sockets, n);
	if (pod)
		__sync_fetch_and_add(origins ? &pod->origins : &pod->sockets, n);
}

static __always_inline __u32 share_of_pod(void)
{
	__u32 key = 0, *share = bpf_map_lookup_elem(&pod_share, &key);

	return share ? *share : 0;
}

/* An accepted socket of a connection tc sent to the inbound listener by rewriting its port is
 * keyed as its client sees it, at the port the client called: the peer's key for sk_msg, and the
 * one the client's socket looks up. */
static __always_inline void as_called(struct mb_pair *key)
{
	const struct mb_settings *cfg = active_settings();
	struct mb_origin *o;
	struct mb_pair nat;

	if (!cfg || key->local_port != bpf_htons(cfg->inbound_port))
		return;
	pair_from_ips(&nat, 0, &key->local_ip, 0, &key->remote_ip, key->remote_port);
	o = nat_find(&nat);
	if (o)
		key->local_port = o->port;
}

static __always_inline void on_established(struct bpf_sock_ops *skops, int active)
{
	struct mb_usage *node = NULL, *pod = NULL;
	struct mb_origin *o = NULL;
	struct mb_sock_state *st;
	struct mb_pair key;
	__u32 charged = 0, share;
	int track;

	pair_from_sockops(&key, skops);
	if (active && skops->sk)
		o = bpf_sk_storage_get(&origin_store, skops->sk, 0, 0);
	else
		as_called(&key);
	track = active_settings() && peer_is_local(&key, skops);
	if (!o && !track)
		return;
	node = usage_of(0);
	pod = usage_of(key.netns);
	share = share_of_pod();
	if (o) {
		if (!may_take(node, pod, 1, share)) {
			count(MB_CNT_ORIGIN_OVER_SHARE, 1); /* getsockopt fails: the proxy refuses it, closed */
		} else if (bpf_map_update_elem(&pair_original_dst, &key, o, BPF_ANY) == 0) {
			charge(node, pod, 1, 1);
			charged |= MB_CHARGE_ORIGIN;
		} else {
			count(MB_CNT_ORIGIN_LOST, 1);
		}
	}
	if (track) {
		if (!may_take(node, pod, 0, share)) {
			count(MB_CNT_SOCKET_OVER_SHARE, 1); /* that socket just stays on TCP */
		} else if (bpf_sock_hash_update(skops, &sock_pair_map, &key, BPF_NOEXIST) == 0) {
			charge(node, pod, 0, 1);
			charged |= MB_CHARGE_SOCKET;
		} else {
			count(MB_CNT_SOCKHASH_FULL, 1); /* that socket just stays on TCP */
		}
	}
	if (!charged || !skops->sk)
		return;
	st = bpf_sk_storage_get(&sock_charges, skops->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		/* nothing would give them back at close: count them out now (sk_msg works the peer out itself) */
		charge(node, pod, 1, -(__s64) !!(charged & MB_CHARGE_ORIGIN));
		charge(node, pod, 0, -(__s64) !!(charged & MB_CHARGE_SOCKET));
	} else {
		st->charged |= charged;
		if (charged & MB_CHARGE_SOCKET) {
			/* the peer's own key: its namespace, and our remote as its local (as sk_msg would) */
			pair_from_ips(&st->peer, owner_netns(&key.remote_ip, skops), &key.remote_ip, key.remote_port, &key.local_ip,
			              key.local_port);
			st->has_peer = MB_PEER_UNSEEN;
		}
	}
	/* ask for state changes: the entries go, and are given back, when the connection closes */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void on_close(struct bpf_sock_ops *skops)
{
	struct mb_sock_state *st;
	struct mb_pair key;

	pair_from_sockops(&key, skops);
	st = skops->sk ? bpf_sk_storage_get(&sock_charges, skops->sk, 0, 0) : NULL;
	/* most closing sockets stored no origin: skip the lookup, unless the record is missing */
	if (!st || (st->charged & MB_CHARGE_ORIGIN))
		bpf_map_delete_elem(&pair_original_dst, &key);
	if (st && st->charged) {
		__u64 zero = 0;
		struct mb_usage *node = bpf_map_lookup_elem(&pod_usage, &zero);
		struct mb_usage *pod = bpf_map_lookup_elem(&pod_usage, &key.netns);

		if (st->charged & MB_CHARGE_ORIGIN)
			charge(node, pod, 1, -1);
		if (st->charged & MB_CHARGE_SOCKET)
			charge(node, pod, 0, -1);
		st->charged = 0;
	}
}

SEC("sockops")
int mb_sockops(struct bpf_sock_ops *skops)
{
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
		/* only sockets charged for an entry asked for this callback */
		if (skops->args[1] == MB_TCP_CLOSE)
			on_close(skops);
		break;
	}
	return 1;
}
