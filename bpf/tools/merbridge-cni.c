// SPDX-License-Identifier: Apache-2.0
/* merbridge-cni: a chained CNI plugin (CNI 1.0: ADD, DEL, CHECK, VERSION) that hands each call to
 * the node agent (`merbridge enable --watch --cni-socket PATH`) over a unix socket and relays its
 * answer. The runtime runs it for every pod it starts, so it is a small program that starts in a
 * millisecond; everything the call means is decided by the agent.
 *
 * The socket is the network configuration's top-level "socket" (default /run/merbridge/cni.sock).
 * Request: one JSON object {"command", "containerId", "netns", "ifname", "args", "config"} (config:
 * the configuration read on stdin, as a string), then end of stream. Answer: the exit code on the
 * first line, then what to print on stdout. An agent that cannot be reached fails ADD and CHECK
 * (CNI error 11, try again later: the pod does not start uncaptured) and lets DEL succeed (the
 * agent releases pods that are gone at its next sync). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/merbridge/cni.sock"
#define MAX_CONFIG     (1 << 20)
#define ANSWER_SECONDS 120 /* the agent answers once the pod is captured, or says why not */

static const char *env(const char *name)
{
	const char *v = getenv(name);

	return v ? v : "";
}

/* A CNI error object on stdout, and the exit status that goes with it. */
static int fail(int code, const char *msg, const char *details)
{
	printf("{\"cniVersion\":\"1.0.0\",\"code\":%d,\"msg\":\"%s\",\"details\":\"", code, msg);
	for (const char *p = details; *p; p++)
		putchar(*p == '"' || *p == '\\' ? '\'' : (unsigned char)*p < 0x20 ? ' ' : *p);
	printf("\"}\n");
	return 1;
}

/* Appends s to buf as a JSON string. */
static size_t put_string(char *buf, size_t at, size_t cap, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";

	if (at < cap)
		buf[at] = '"';
	at++;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[7] = {0};

		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
		} else if (c < 0x20) {
			memcpy(esc, "\\u00", 4);
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 15];
		} else {
			esc[0] = (char)c;
		}
		for (char *e = esc; *e; e++, at++)
			if (at < cap)
				buf[at] = *e;
	}
	if (at < cap)
		buf[at] = '"';
	return at + 1;
}

/* The value of the configuration's top-level string field `key`, copied into out; 0 if absent. */
static int top_level_string(const char *json, size_t n, const char *key, char *out, size_t cap)
{
	size_t klen = strlen(key);
	int depth = 0;

	for (size_t i = 0; i < n; i++) {
		char c = json[i];

		if (c == '{' || c == '[') {
			depth++;
		} else if (c == '}' || c == ']') {
			depth--;
		} else if (c == '"') {
			size_t start = ++i;

			while (i < n && json[i] != '"')
				i += json[i] == '\\' ? 2 : 1;
			if (depth != 1 || i - start != klen || memcmp(json + start, key, klen) != 0)
				continue;
			/* a key at the top: skip to its value, which must be a plain string */
			for (i++; i < n && (json[i] == ' ' || json[i] == ':' || json[i] == '\n' || json[i] == '\t' || json[i] == '\r'); i++)
				;
			if (i >= n || json[i] != '"')
				return 0;
			start = ++i;
			while (i < n && json[i] != '"' && json[i] != '\\')
				i++;
			if (i >= n || json[i] != '"' || i - start >= cap)
				return 0;
			memcpy(out, json + start, i - start);
			out[i - start] = 0;
			return 1;
		}
	}
	return 0;
}

int main(void)
{
	static char config[MAX_CONFIG], request[6 * MAX_CONFIG + 65536], answer[1 << 20];
	const char *command = env("CNI_COMMAND");
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)] = DEFAULT_SOCKET;
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	struct timeval tv = {.tv_sec = ANSWER_SECONDS};
	size_t n = 0, at = 0, got = 0;
	ssize_t r;
	int s, code;
	char *body;

	if (strcmp(command, "VERSION") == 0) {
		printf("{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\"]}\n");
		return 0;
	}
	while ((r = read(0, config + n, sizeof(config) - n)) > 0)
		n += (size_t)r;
	if (r < 0 || n == sizeof(config))
		return fail(7, "cannot read the network configuration", n == sizeof(config) ? "over 1 MiB" : strerror(errno));
	top_level_string(config, n, "socket", path, sizeof(path));

	at += (size_t)snprintf(request, sizeof(request), "{\"command\":");
	at = put_string(request, at, sizeof(request), command, strlen(command));
	at += (size_t)snprintf(request + at, sizeof(request) - at, ",\"containerId\":");
	at = put_string(request, at, sizeof(request), env("CNI_CONTAINERID"), strlen(env("CNI_CONTAINERID")));
	at += (size_t)snprintf(request + at, sizeof(request) - at, ",\"netns\":");
	at = put_string(request, at, sizeof(request), env("CNI_NETNS"), strlen(env("CNI_NETNS")));
	at += (size_t)snprintf(request + at, sizeof(request) - at, ",\"ifname\":");
	at = put_string(request, at, sizeof(request), env("CNI_IFNAME"), strlen(env("CNI_IFNAME")));
	at += (size_t)snprintf(request + at, sizeof(request) - at, ",\"args\":");
	at = put_string(request, at, sizeof(request), env("CNI_ARGS"), strlen(env("CNI_ARGS")));
	at += (size_t)snprintf(request + at, sizeof(request) - at, ",\"config\":");
	at = put_string(request, at, sizeof(request), config, n);
	if (at + 2 > sizeof(request))
		return fail(7, "the call is too large", "");
	request[at++] = '}';

	memcpy(addr.sun_path, path, strlen(path) + 1);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
		char why[512];

		if (strcmp(command, "DEL") == 0)
			return 0;
		snprintf(why, sizeof(why), "%s: %s", path, strerror(errno));
		return fail(11,
		            "the merbridge agent is not running on this node (merbridge enable --watch --cni-socket): the pod is not "
		            "started uncaptured",
		            why);
	}
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	for (size_t sent = 0; sent < at; sent += (size_t)r) {
		r = write(s, request + sent, at - sent);
		if (r <= 0)
			return strcmp(command, "DEL") == 0 ? 0 : fail(11, "the merbridge agent closed the connection", strerror(errno));
	}
	shutdown(s, SHUT_WR);
	while (got < sizeof(answer) - 1 && (r = read(s, answer + got, sizeof(answer) - 1 - got)) > 0)
		got += (size_t)r;
	answer[got] = 0;
	body = strchr(answer, '\n');
	if (r < 0 || !body)
		return strcmp(command, "DEL") == 0 ? 0
		                                   : fail(11, "the merbridge agent did not answer", r < 0 ? strerror(errno) : "no answer");
	code = atoi(answer);
	fwrite(body + 1, 1, got - (size_t)(body + 1 - answer), stdout);
	return code;
}
