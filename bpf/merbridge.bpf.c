// SPDX-License-Identifier: GPL-2.0
/* merbridge.bpf.c: the whole datapath in one object, so its programs share maps without
 * user space stitching them together. Each program lives in the header named for its concern. */
#include "headers/maps.h"
#include "headers/connect.h"
#include "headers/sockops.h"
#include "headers/msg.h"
#include "headers/sockopt.h"
#include "headers/inbound.h"

char LICENSE[] SEC("license") = "GPL";
