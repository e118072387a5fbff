/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * pass.c — an XDP program that passes every packet.
 *
 * Native XDP_TX on a veth is dropped unless the peer veth also runs an XDP
 * program; the lab attaches this one there. It is also the benchmark floor.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xlb_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
