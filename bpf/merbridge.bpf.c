// SPDX-License-Identifier: GPL-2.0
/* merbridge.bpf.c: the whole datapath in one object, so that its programs share maps without
 * user space stitching them together. Each hook's programs are in the file named for it;
 * headers/ holds the maps, the layouts user space shares, and the helpers. */
#include "headers/maps.h"
#include "connect.c"
#include "getpeername.c"
#include "sockops.c"
#include "sk_msg.c"
#include "getsockopt.c"
#include "tc_inbound.c"
#include "inbound_guard.c"

char LICENSE[] SEC("license") = "GPL";
