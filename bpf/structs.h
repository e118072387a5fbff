/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * structs.h — every layout shared between the XDP programs and Go.
 *
 * Go gets these types, enums and names from bpf2go -type; there is no
 * hand-written mirror. Addresses and ports are in network byte order
 * (__be32/__be16) exactly as they appear on the wire.
 */
#ifndef XLB_STRUCTS_H
#define XLB_STRUCTS_H

#include <linux/types.h>

/* xlb_service is a service index: one per VIP port. */
enum xlb_service : __u8 {
	XLB_SVC_RW = 0,	/* VIP:port_rw (3000), the primary */
	XLB_SVC_RO = 1,	/* VIP:port_ro (3001), the replicas */
	XLB_SVC__MAX = 2,
};

/* xlb_drop names why a packet for the VIP was dropped (or refused). */
enum xlb_drop {
	XLB_DROP_TRUNCATED = 0,	/* headers end before they should */
	XLB_DROP_BAD_IHL,		/* IPv4 version != 4 or IHL < 5 */
	XLB_DROP_IP_OPTIONS,	/* IHL > 5 on a VIP service port */
	XLB_DROP_FRAGMENT,		/* MF set or fragment offset != 0 */
	XLB_DROP_BAD_LEN,		/* IPv4 total length disagrees with the frame */
	XLB_DROP_NOT_TCP,		/* UDP to a VIP service port */
	XLB_DROP_BAD_TCP_HDR,	/* TCP data offset < 5 or past the packet */
	XLB_DROP_NO_BACKEND,	/* SYN for a service without backends (RST sent) */
	XLB_DROP_SNAT_EXHAUSTED,	/* no free SNAT port after bounded retries */
	XLB_DROP_NO_FLOW,		/* non-SYN without a flow (RST sent unless it was a RST) */
	XLB_DROP_NO_ROUTE,		/* bpf_fib_lookup failed: no route, or forwarding off on the interface */
	XLB_DROP_NOT_OWNER,		/* ARP for the VIP or a new flow while this node's VIP lease lapsed */
	XLB_DROP__MAX,
};

/* xlb_stats_slot lays out stats_map: one global slot, one per service,
 * then one per backend id. */
enum xlb_stats_slot {
	XLB_STATS_GLOBAL = 0,
	XLB_STATS_SERVICE = 1,
	XLB_STATS_BACKEND = 1 + XLB_SVC__MAX,
};

/* xlb_counters is one per-CPU stats slot. */
struct xlb_counters {
	__u64 packets;		/* packets forwarded (both directions) */
	__u64 bytes;		/* their bytes, as received */
	__u64 new_flows;	/* flows created by a SYN */
	__u64 rsts;		/* TCP RSTs built and sent to clients */
	__u64 neigh_pass;	/* SYNs passed to the kernel: next hop MAC unknown */
	__u64 drops[XLB_DROP__MAX];
};

/* xlb_backend_flags are the bits of xlb_backend.flags. */
enum xlb_backend_flags : __u16 {
	XLB_BACKEND_ALIVE = 1,	/* flows to it are forwarded; cleared = flows get RST */
};

/* xlb_backend is one entry of backend_map, indexed by backend id (0 = none). */
struct xlb_backend {
	__be32 addr;
	__be16 port;
	enum xlb_backend_flags flags;
};

/* xlb_flow_key is the 4-tuple of a TCP packet as received. */
struct xlb_flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

/* xlb_flow_dir says which way a conntrack entry translates. */
enum xlb_flow_dir : __u8 {
	XLB_DIR_FWD = 0,	/* client -> VIP becomes lb -> backend */
	XLB_DIR_REV = 1,	/* backend -> lb becomes VIP -> client */
};

/* xlb_flow_flags are the bits of xlb_flow.flags. */
enum xlb_flow_flags : __u8 {
	XLB_FLOW_FIN_FWD = 1,	/* client sent FIN */
	XLB_FLOW_FIN_REV = 2,	/* backend sent FIN */
	XLB_FLOW_RST = 4,	/* either side sent RST */
};

/* xlb_flow is a conntrack entry: what the first packet learned, so an
 * established packet needs this one lookup. */
struct xlb_flow {
	__be32 nat_saddr;	/* new source address */
	__be32 nat_daddr;	/* new destination address */
	__be16 nat_sport;
	__be16 nat_dport;
	__u8 smac[6];		/* egress MACs, from bpf_fib_lookup or the SYN */
	__u8 dmac[6];
	__u32 ifindex;		/* egress interface */
	__u32 backend;		/* backend id */
	enum xlb_flow_dir dir;
	enum xlb_service svc;
	enum xlb_flow_flags flags;
	__u8 pad[5];
	__u64 last_seen;	/* bpf_ktime_get_coarse_ns, refreshed at most every second */
};

/* xlb_lease is this node's claim on the VIP, renewed by the daemon while it
 * is the VRRP master. When it lapses (the daemon died, or lost mastership),
 * XDP stops answering ARP for the VIP and refuses new flows, so a host whose
 * daemon was killed cannot keep taking traffic after the peer took over. */
struct xlb_lease {
	__u64 expires_ns;	/* bpf_ktime_get_coarse_ns deadline; 0 = none */
};

#endif /* XLB_STRUCTS_H */
