// SPDX-License-Identifier: Apache-2.0
/* netns-cookie: print the kernel's cookie of each network namespace named on the command line
 * (/proc/PID/ns/net or /run/netns/NAME), one line per argument: the cookie, or "error: why".
 * The datapath keys pod identity by this cookie (bpf_get_netns_cookie); user space can only read
 * it from a socket created inside the namespace, which Node.js cannot do. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

int main(int argc, char **argv)
{
	int failed = 0;

	for (int i = 1; i < argc; i++) {
		uint64_t cookie = 0;
		socklen_t len = sizeof(cookie);
		int ns = open(argv[i], O_RDONLY | O_CLOEXEC);
		int s = -1;

		if (ns < 0 || setns(ns, CLONE_NEWNET) != 0 ||
		    (s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0 ||
		    getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) != 0) {
			printf("error: %s\n", strerror(errno));
			failed = 1;
		} else {
			printf("%llu\n", (unsigned long long)cookie);
		}
		if (s >= 0)
			close(s);
		if (ns >= 0)
			close(ns);
	}
	return failed;
}
