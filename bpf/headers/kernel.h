/* kernel.h: the few kernel-internal fields read through BTF pointers, declared as far as they are
 * used. preserve_access_index makes each access a CO-RE relocation: libbpf finds the field's real
 * offset in the running kernel's BTF when the object is loaded. */
#pragma once
#include <linux/types.h>

struct net {
	__u64 net_cookie;
} __attribute__((preserve_access_index));

struct sock_common {
	struct {
		struct net *net;
	} skc_net;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	struct {
		__u32 val;
	} sk_uid; /* kuid_t: the socket's owner, from the process that made it */
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 snd_nxt;    /* next sequence number to send */
	__u32 write_seq;  /* past the last byte the app handed to TCP */
	__u64 bytes_sent; /* data bytes transmitted, retransmissions included */
} __attribute__((preserve_access_index));
