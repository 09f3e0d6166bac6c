// SPDX-License-Identifier: Apache-2.0
/* netns-cookie: print the kernel's cookie of each network namespace named on the command line
 * (/proc/PID/ns/net or /run/netns/NAME), one line per argument: the cookie, or "error: why".
 * The datapath keys pod identity by this cookie (bpf_get_netns_cookie); user space can only read
 * it from a socket created inside the namespace, which Node.js cannot do.
 *
 * With --addresses first, each cookie is followed by "addrs" and the namespace's addresses as
 * `ip addr` lists them: IPv4 and IPv6 but ::1, link-local IPv6 marked with a leading "~". A
 * namespace no process is in (a runtime's sandbox being set up) has no /proc files to read them
 * from: one process for all of them, where `ip -n` would be one each. */
#define _GNU_SOURCE
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

static void print_addresses(void)
{
	struct ifaddrs *all, *a;
	char text[INET6_ADDRSTRLEN];

	printf(" addrs");
	if (getifaddrs(&all) != 0)
		return;
	for (a = all; a; a = a->ifa_next) {
		if (!a->ifa_addr)
			continue;
		if (a->ifa_addr->sa_family == AF_INET) {
			inet_ntop(AF_INET, &((struct sockaddr_in *)a->ifa_addr)->sin_addr, text, sizeof(text));
			printf(" %s", text);
		} else if (a->ifa_addr->sa_family == AF_INET6) {
			const struct in6_addr *ip = &((struct sockaddr_in6 *)a->ifa_addr)->sin6_addr;

			if (IN6_IS_ADDR_LOOPBACK(ip))
				continue;
			inet_ntop(AF_INET6, ip, text, sizeof(text));
			printf(" %s%s", IN6_IS_ADDR_LINKLOCAL(ip) ? "~" : "", text);
		}
	}
	freeifaddrs(all);
}

int main(int argc, char **argv)
{
	int failed = 0, addresses = argc > 1 && strcmp(argv[1], "--addresses") == 0;

	for (int i = 1 + addresses; i < argc; i++) {
		uint64_t cookie = 0;
		socklen_t len = sizeof(cookie);
		int ns = open(argv[i], O_RDONLY | O_CLOEXEC);
		int s = -1;

		if (ns < 0 || setns(ns, CLONE_NEWNET) != 0 || (s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0 ||
		    getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) != 0) {
			printf("error: %s\n", strerror(errno));
			failed = 1;
		} else {
			printf("%llu", (unsigned long long)cookie);
			if (addresses)
				print_addresses();
			printf("\n");
		}
		if (s >= 0)
			close(s);
		if (ns >= 0)
			close(ns);
	}
	return failed;
}
