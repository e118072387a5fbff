/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * stats.h — per-CPU counters: global, per service, per backend.
 */
#ifndef XLB_STATS_H
#define XLB_STATS_H

#include "maps.h"

static __always_inline struct xlb_counters *counters(__u32 slot)
{
	return bpf_map_lookup_elem(&stats_map, &slot);
}

static __always_inline __u32 svc_slot(__u32 svc)
{
	return XLB_STATS_SERVICE + svc;
}

static __always_inline __u32 backend_slot(__u32 id)
{
	return XLB_STATS_BACKEND + id;
}

/* drop counts a drop by reason in slot and returns XDP_DROP. Drops are the
 * slow path, so it is a real function (which also puts enum xlb_drop in BTF
 * for bpf2go). */
static __noinline int drop(__u32 slot, enum xlb_drop reason)
{
	struct xlb_counters *c = counters(slot);

	if (c && reason < XLB_DROP__MAX)
		c->drops[reason]++;
	return XDP_DROP;
}

/* count_expired counts a SNAT port taken back from a flow of svc. */
static __noinline void count_expired(__u32 svc, enum xlb_expiry why)
{
	struct xlb_counters *c = counters(svc_slot(svc));

	if (c && why < XLB_EXPIRE__MAX)
		c->expired[why]++;
}

/* count_fwd counts a forwarded packet of len bytes for a service and a
 * backend, and a new flow when is_new: one lookup per slot. out: the
 * packet goes to a client (it came from a backend). */
static __always_inline void count_fwd(__u32 svc, __u32 backend, __u64 len, int is_new, int out)
{
	struct xlb_counters *c = counters(svc_slot(svc));
	__u64 out_len = out ? len : 0;

	if (c) {
		c->packets++;
		c->bytes += len;
		c->bytes_out += out_len;
		c->new_flows += is_new;
	}
	c = counters(backend_slot(backend));
	if (c) {
		c->packets++;
		c->bytes += len;
		c->bytes_out += out_len;
		c->new_flows += is_new;
	}
}

#endif /* XLB_STATS_H */
