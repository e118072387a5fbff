/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb.h — service lookup: which service a port is, which backend a flow gets.
 *
 * Backends are chosen with Maglev hashing (Eisenbud et al., NSDI 2016):
 * user space fills a prime-sized table per service with backend ids, each
 * backend getting an even share, and a flow's tuple hash indexes it. Maglev
 * rather than a hash ring because the lookup is one array read (no search),
 * shares stay within about 1 % of even, and when a backend leaves only its
 * slots change owner (plus a tiny fraction), so other flows keep their
 * backend even without conntrack. Established flows never consult it.
 */
#ifndef XLB_LB_H
#define XLB_LB_H

#include "config.h"
#include "maps.h"

/* svc_of_port returns the service a destination port names, or -1. */
static __always_inline int svc_of_port(__be16 dport)
{
	if (dport == cfg_port_rw)
		return XLB_SVC_RW;
	if (dport == cfg_port_ro)
		return XLB_SVC_RO;
	return -1;
}

/* svc_port returns the VIP port of a service. */
static __always_inline __be16 svc_port(__u32 svc)
{
	return svc == XLB_SVC_RW ? cfg_port_rw : cfg_port_ro;
}

/* source_allowed reports whether saddr may open flows to svc: always when
 * the service has no allow_sources, else when a prefix of it holds saddr. */
static __always_inline int source_allowed(__u32 svc, __be32 saddr)
{
	struct xlb_svc_conf *c = bpf_map_lookup_elem(&svc_map, &svc);

	if (!c || !c->allow)
		return 1;
	struct xlb_allow_key k = {
		.prefixlen = 64,
		.svc = svc,
		.addr = saddr,
	};
	return bpf_map_lookup_elem(&allow_map, &k) != 0;
}

/* maglev_pick returns the backend id for a flow hash, 0 when none. */
static __always_inline __u32 maglev_pick(__u32 svc, __u32 hash)
{
	__u32 slot = hash % MAGLEV_SIZE;
	__u32 elem = svc * MAGLEV_CHUNKS + slot / XLB_MAGLEV_PER_CHUNK;
	struct xlb_maglev_chunk *c = bpf_map_lookup_elem(&maglev_map, &elem);

	return c ? c->id[slot % XLB_MAGLEV_PER_CHUNK] : 0;
}

/* backend_alive returns backend id when it exists and is alive, else NULL. */
static __always_inline struct xlb_backend *backend_alive(__u32 id)
{
	struct xlb_backend *be;

	if (id == 0 || id >= MAX_BACKENDS)
		return 0;
	be = bpf_map_lookup_elem(&backend_map, &id);
	if (!be || !(be->flags & XLB_BACKEND_ALIVE))
		return 0;
	return be;
}

/* backend_serves returns backend id when it is alive and its flows of svc
 * are not cut, else NULL. */
static __always_inline struct xlb_backend *backend_serves(__u32 id, __u32 svc)
{
	struct xlb_backend *be = backend_alive(id);

	if (!be || (be->flags & (XLB_BACKEND_CUT_RW << (svc & 1))))
		return 0;
	return be;
}

/* vip_owned reports whether this node may take new traffic for the VIP. */
static __always_inline int vip_owned(void)
{
	__u32 key = 0;
	struct xlb_lease *l;

	if (!cfg_lease)
		return 1;
	l = bpf_map_lookup_elem(&lease_map, &key);
	return l && l->expires_ns > bpf_ktime_get_coarse_ns();
}

#endif /* XLB_LB_H */
