// SPDX-License-Identifier: Apache-2.0
/* tc-inbound: attach or detach the pinned mb_tc_inbound program on the ingress and egress of every
 * interface but lo in each network namespace named on the command line, one line per namespace:
 *
 *   tc-inbound attach PROG_PIN [--replace=ID,ID] [--skip=IF,IF] NS...
 *                                                     ok IF[+|-] ... ("+": the clsact qdisc was created here; "-": taken off, skipped)
 *   tc-inbound check PROG_ID [--skip=IF,IF] NS...     ok IF ...      (the interfaces without that program in our slot)
 *   tc-inbound detach PROG_ID NS...                   ok IF ...      (the interfaces it was detached from)
 *   or "error: why" for a namespace it could not do. An emptied qdisc is left to the caller.
 *   attach replaces in our slot only the program it attaches and those --replace names: another
 *   program there ("error: IF: held by program ID") may be another installation's, and the caller
 *   decides (a pod's inbound capture belongs to one installation).
 *   --skip names interfaces of the namespace after it that Istio never captures on
 *   (excludeInterfaces): attach takes ours off them and never puts it on, check leaves them out.
 *
 * The filter has a fixed handle and priority, so only ours is ever replaced or removed, and a
 * detach removes it only when the program in that slot is the installation's (by id). Node.js cannot enter
 * another network namespace, and bpftool of this generation cannot attach tc programs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#define MB_TC_HANDLE   0x4d42 /* "MB" */
#define MB_TC_PRIORITY 0xc0de

static int enter(const char *path)
{
	int ns = open(path, O_RDONLY | O_CLOEXEC);
	int rc = ns < 0 ? -1 : setns(ns, CLONE_NEWNET);

	if (ns >= 0)
		close(ns);
	return rc;
}

/* Is the program in our slot of this hook the installation's? */
static int ours(struct bpf_tc_hook *hook, __u32 prog_id)
{
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = MB_TC_HANDLE, .priority = MB_TC_PRIORITY);

	return bpf_tc_query(hook, &opts) == 0 && opts.prog_id == prog_id;
}

/* Is name one of the comma-separated names in list (NULL: none)? */
static int listed(const char *list, const char *name)
{
	size_t n = strlen(name);

	for (const char *p = list; p && *p;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (len == n && strncmp(p, name, n) == 0)
			return 1;
		p = end ? end + 1 : NULL;
	}
	return 0;
}

/* What attach may replace in our slot, and the program it found there otherwise. */
static const char *replaceable;
static __u32 attaching_id, held_by;

static int may_replace(__u32 id)
{
	char text[16];

	snprintf(text, sizeof(text), "%u", id);
	return id == attaching_id || listed(replaceable, text);
}

typedef int (*hook_fn)(struct bpf_tc_hook *hook, const char *name, void *arg, char *note);

/* Call fn on the ingress and egress hooks of every interface but lo in the namespace at path, and skipped_fn
 * (when given) on those listed in skip; print "ok" and the interfaces either did something on, or
 * the first error. */
static void each_interface(const char *path, const char *skip, hook_fn fn, hook_fn skipped_fn, void *arg)
{
	struct if_nameindex *ifs;
	char out[4096] = "ok";

	held_by = 0;
	if (enter(path) != 0 || !(ifs = if_nameindex())) {
		printf("error: %s\n", strerror(errno));
		return;
	}
	for (struct if_nameindex *i = ifs; i->if_index; i++) {
		char note[8] = "";
		int rc = 0;

		if (strcmp(i->if_name, "lo") == 0)
			continue;
		if (listed(skip, i->if_name) && !skipped_fn)
			continue;
		/* both directions: the program undoes on the way out a rewrite it made on the way in */
		for (int d = 0; d < 2 && rc >= 0; d++) {
			LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = i->if_index, .attach_point = d ? BPF_TC_EGRESS : BPF_TC_INGRESS);
			char said[8] = "";
			int one = (listed(skip, i->if_name) ? skipped_fn : fn)(&hook, i->if_name, arg, said);

			rc = one < 0 ? one : rc || one;
			if (!note[0])
				strcpy(note, said);
		}
		if (rc == -EBUSY && held_by) {
			printf("error: %s: held by program %u\n", i->if_name, held_by);
			if_freenameindex(ifs);
			return;
		}
		if (rc < 0) {
			printf("error: %s: %s\n", i->if_name, strerror(-rc));
			if_freenameindex(ifs);
			return;
		}
		if (rc > 0)
			snprintf(out + strlen(out), sizeof(out) - strlen(out), " %s%s", i->if_name, note);
	}
	if_freenameindex(ifs);
	printf("%s\n", out);
}

/* Our filter on this hook (the clsact qdisc too, if missing: then "+" in the note). */
static int attach_one(struct bpf_tc_hook *hook, const char *name, void *arg, char *note)
{
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = MB_TC_HANDLE, .priority = MB_TC_PRIORITY, .prog_fd = *(int *)arg,
	            .flags = BPF_TC_F_REPLACE);
	LIBBPF_OPTS(bpf_tc_opts, slot, .handle = MB_TC_HANDLE, .priority = MB_TC_PRIORITY);
	int err = bpf_tc_hook_create(hook);

	(void)name;
	if (err && err != -EEXIST)
		return err;
	if (!err)
		strcpy(note, "+");
	else if (bpf_tc_query(hook, &slot) == 0 && !may_replace(slot.prog_id)) {
		held_by = slot.prog_id;
		return -EBUSY;
	}
	err = bpf_tc_attach(hook, &opts);
	return err ? err : 1;
}

/* Our slot emptied on an interface the pod excludes: our slot is ours whatever program is in it
 * (one attached before the pod said so). */
static int take_off(struct bpf_tc_hook *hook, const char *name, void *arg, char *note)
{
	/* query fills in the program: detach wants options without one */
	LIBBPF_OPTS(bpf_tc_opts, query, .handle = MB_TC_HANDLE, .priority = MB_TC_PRIORITY);
	LIBBPF_OPTS(bpf_tc_opts, slot, .handle = MB_TC_HANDLE, .priority = MB_TC_PRIORITY);

	(void)name;
	(void)arg;
	if (bpf_tc_query(hook, &query) != 0 || bpf_tc_detach(hook, &slot) != 0)
		return 0;
	strcpy(note, "-");
	return 1;
}

/* Listed when the installation's program is not in our slot of this hook. */
static int missing_one(struct bpf_tc_hook *hook, const char *name, void *arg, char *note)
{
	(void)name;
	(void)note;
	return !ours(hook, *(__u32 *)arg);
}

/* Our filter off this hook, when the program in our slot is the installation's. */
static int detach_one(struct bpf_tc_hook *hook, const char *name, void *arg, char *note)
{
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = MB_TC_HANDLE, .priority = MB_TC_PRIORITY);

	(void)name;
	(void)note;
	if (!ours(hook, *(__u32 *)arg))
		return 0;
	return bpf_tc_detach(hook, &opts) == 0 ? 1 : 0;
}

/* Each namespace argument from argv[3] on, a --skip= list applying to the namespace after it. */
static void each_namespace(int argc, char **argv, hook_fn fn, hook_fn skipped_fn, void *arg)
{
	int home = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	const char *skip = NULL;

	for (int i = 3; i < argc; i++) {
		if (strncmp(argv[i], "--skip=", 7) == 0) {
			skip = argv[i] + 7;
			continue;
		}
		each_interface(argv[i], skip, fn, skipped_fn, arg);
		setns(home, CLONE_NEWNET);
		skip = NULL;
	}
}

int main(int argc, char **argv)
{
	libbpf_set_print(NULL);
	if (argc >= 3 && strcmp(argv[1], "attach") == 0) {
		struct bpf_prog_info info = {};
		__u32 len = sizeof(info);
		int prog = bpf_obj_get(argv[2]);

		if (prog < 0 || bpf_obj_get_info_by_fd(prog, &info, &len) != 0) {
			fprintf(stderr, "tc-inbound: %s: %s\n", argv[2], strerror(errno));
			return 2;
		}
		attaching_id = info.id;
		if (argc >= 4 && strncmp(argv[3], "--replace=", 10) == 0) {
			replaceable = argv[3] + 10;
			argv++; /* consumed: the namespaces start at argv[3] again */
			argc--;
		}
		each_namespace(argc, argv, attach_one, take_off, &prog);
		return 0;
	}
	if (argc >= 3 && (strcmp(argv[1], "check") == 0 || strcmp(argv[1], "detach") == 0)) {
		__u32 id = strtoul(argv[2], NULL, 10);

		each_namespace(argc, argv, strcmp(argv[1], "check") == 0 ? missing_one : detach_one, NULL, &id);
		return 0;
	}
	fprintf(stderr, "usage: tc-inbound attach PROG_PIN [--replace=ID,ID] [--skip=IF,IF] NS... | check PROG_ID [--skip=IF,IF] NS... | "
	                "detach PROG_ID NS...\n");
	return 2;
}
