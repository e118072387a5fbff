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
	XLB_DROP_NOT_OWNER,		/* ARP for the VIP, a new flow or a no-flow packet while this node's VIP lease lapsed */
	XLB_DROP_NEIGH_MISS,	/* SYN while the backend's next hop MAC is unknown: the client retransmits */
	XLB_DROP_NOT_ALLOWED,	/* SYN from a source outside the service's allow_sources */
	XLB_DROP_FLOW_LOST,		/* packet of a flow whose SNAT port went to another flow (RST sent) */
	XLB_DROP_TABLE_FULL,	/* SYN while every probed conntrack entry holds a live flow */
	XLB_DROP__MAX,
};

/* xlb_expiry names why a flow's SNAT port was taken back. */
enum xlb_expiry {
	XLB_EXPIRE_CLOSED = 0,	/* FIN both ways or RST, and the linger passed */
	XLB_EXPIRE_HALF_OPEN,	/* never established within the half-open timeout */
	XLB_EXPIRE_IDLE,		/* established, idle past the idle timeout */
	XLB_EXPIRE_PRESSURE,	/* half-open or closed, taken early: no free port for a SYN */
	XLB_EXPIRE_ORPHAN,		/* its forward entry was gone (RST sent to the backend) */
	XLB_EXPIRE__MAX,
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
	__u64 bytes_out;	/* of bytes, those going out to clients (from backends) */
	__u64 new_flows;	/* flows created by a SYN */
	__u64 rsts;		/* TCP RSTs built and sent */
	__u64 drops[XLB_DROP__MAX];
	__u64 expired[XLB_EXPIRE__MAX];	/* SNAT ports taken back, by reason (counted on the service) */
};

/* xlb_backend_flags are the bits of xlb_backend.flags. */
enum xlb_backend_flags : __u16 {
	XLB_BACKEND_ALIVE = 1,	/* flows to it are forwarded; cleared = flows get RST */
	/* Its flows of one service are cut (it changed role: a replica
	 * promoted loses its readers): their packets get RST, at once, while
	 * user space still walks the table. Bit XLB_BACKEND_CUT_RW << svc. */
	XLB_BACKEND_CUT_RW = 2,
	XLB_BACKEND_CUT_RO = 4,
};

/* xlb_backend is one entry of backend_map, indexed by backend id (0 = none). */
struct xlb_backend {
	__be32 addr;
	__be16 port;
	enum xlb_backend_flags flags;
};

/* xlb_backend_key is a backend's address as its packets carry it: the key
 * of backend_id_map, which maps replies to a backend id. */
struct xlb_backend_key {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* xlb_nexthop is how to reach a backend: the egress interface and MACs
 * from bpf_fib_lookup, checked again at most every second by the packets
 * that use it, so a changed neighbour reaches every flow within a second. */
struct xlb_nexthop {
	__u8 smac[6];
	__u8 dmac[6];
	__u32 ifindex;		/* 0: never resolved */
	__u64 checked;		/* bpf_ktime_get_coarse_ns of the last lookup */
};

/* xlb_flow_key is the 4-tuple of a client's packet as received. */
struct xlb_flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

/* xlb_ct_state are the bits of xlb_snat.state, set with atomic or. */
enum xlb_ct_state : __u32 {
	XLB_CT_SYNACK = 1,	/* the backend answered the SYN */
	XLB_CT_EST = 2,		/* the client acknowledged the SYN-ACK (set after XLB_OWNER_EST) */
	XLB_CT_FIN_FWD = 4,	/* client sent FIN */
	XLB_CT_FIN_REV = 8,	/* backend sent FIN */
	XLB_CT_RST = 16,	/* either side sent RST */
};

/* xlb_snat_owner numbers the bits of xlb_snat.owner beside its flow's
 * cookie (bit numbers: BTF from clang 14 holds 32-bit enum values). They
 * are the top two, above any slot index (snat_map holds at most 2^24
 * slots, 256 backend ids times 2^16 ports), so no cookie has them, not
 * even one of a build before them (an upgrade keeps its flows). */
enum xlb_snat_owner : __u64 {
	/* The flow is established: set with a compare-and-swap of the owner
	 * word by the client's ACK before it is forwarded. The pressure
	 * round takes a half-open flow's slot with a compare-and-swap that
	 * expects the word it judged, without this bit, so a flow that
	 * becomes established meanwhile keeps its slot (its state bit
	 * alone, in another word, could not make that compare fail). */
	XLB_OWNER_EST_BIT = 62,
	/* The slot changes hands: the claim that took it writes its other
	 * words, then clears this. Nothing else swaps a word with this bit
	 * or reads the other words as the owner's: a claim delayed between
	 * its swap and its writes would otherwise write its client over the
	 * next owner's, whose packets then find a stranger's slot. */
	XLB_OWNER_BUSY_BIT = 63,
};

#define XLB_OWNER_EST (1ULL << XLB_OWNER_EST_BIT)
#define XLB_OWNER_BUSY (1ULL << XLB_OWNER_BUSY_BIT)

/* xlb_flow_cookie are the special values of xlb_flow.cookie. */
enum xlb_flow_cookie : __u64 {
	XLB_FLOW_EMPTY = 0,	/* never used: a lookup stops here */
	XLB_FLOW_DELETED = 1,	/* free again, but a lookup probes on */
};

/* xlb_flow is a forward conntrack entry, in flow_map's open-addressed
 * table. cookie is also the owner word of the flow's snat_map slot, whose
 * index is its high 32 bits: an entry is the flow's only while the slot's
 * owner is cookie (give or take XLB_OWNER_EST) and the slot names the same
 * client, which both directions check. Claimed with a compare-and-swap on
 * cookie, key written last. */
struct xlb_flow {
	enum xlb_flow_cookie cookie;	/* XLB_FLOW_EMPTY, XLB_FLOW_DELETED, or slot << 32 | random */
	struct xlb_flow_key key;	/* the client's tuple as received */
	__u32 backend;		/* backend id */
	__be16 snat_port;
	enum xlb_service svc;
	__u8 pad;
	__u32 ifindex;		/* client side: the interface the SYN came in on */
	__u8 cmac[6];		/* client side: the SYN's source MAC */
	__u8 lmac[6];		/* client side: the SYN's destination MAC (ours) */
	/* Not this entry's flow's: 1 + the farthest any flow whose hash
	 * starts at this entry was placed from it (0: none ever was). A
	 * lookup probes no farther. Only grows, by compare-and-swap. */
	__u32 reach;
};

/* xlb_snat is one slot of snat_map, a (backend, SNAT port) pair: the
 * reverse direction of the flow that owns it and that flow's state. A SYN
 * claims a free or expired slot with a compare-and-swap on owner. */
struct xlb_snat {
	enum xlb_snat_owner owner;	/* cookie of the owning flow, | XLB_OWNER_EST once established; 0 = free */
	__u64 last_seen;	/* bpf_ktime_get_coarse_ns, refreshed every second and on state changes; a claim adds its cursor's seq (see xlb_snat_cursor) */
	enum xlb_ct_state state;
	__be32 client_addr;	/* the owning flow's client */
	__be16 client_port;
	enum xlb_service svc;
	__u8 pad[5];
};

/* XLB_MAGLEV_PER_CHUNK is how many Maglev slots one maglev_map element
 * holds: a byte each (backend ids are below 256), a cache line an element. */
#define XLB_MAGLEV_PER_CHUNK 64

/* xlb_maglev_chunk is one maglev_map element: the backend ids of
 * XLB_MAGLEV_PER_CHUNK consecutive slots of a service's Maglev table. */
struct xlb_maglev_chunk {
	__u8 id[XLB_MAGLEV_PER_CHUNK];
};

/* xlb_snat_cursor is one CPU's port cursor of one backend. */
struct xlb_snat_cursor {
	/* The SNAT range offset after the last port this CPU claimed, plus
	 * one (0: none yet, start at random). The next claim probes on from
	 * there: consecutive new flows take adjacent slots, two to a cache
	 * line, instead of a cold random one each, and a port is reused as
	 * late as the range allows. */
	__u32 next;
	/* Counts this CPU's claims: a claim's last_seen is the coarse clock
	 * plus its low 20 bits (under 1.05 ms), which orders claims within
	 * one clock tick without reading the fine clock (~35 ns on a VM). */
	__u32 seq;
	/* xorshift32 state for the claim's cookie (0: unseeded): cheaper
	 * than a bpf_get_prandom_u32 call per new flow. */
	__u32 rng;
	/* Non-zero while this CPU's claims find no free port after the
	 * cursor (a flood: the range full of half-open flows): claims go
	 * straight to the pressure round, which takes a free port first
	 * when it probes one and then clears this. */
	__u32 pressured;
};

/* xlb_svc_conf is per-service runtime configuration. */
struct xlb_svc_conf {
	__u32 allow;		/* non-zero: new flows only from allow_map's prefixes */
};

/* xlb_allow_key is an allow_map (LPM trie) key: prefixlen counts the 32
 * bits of svc, then the address's. */
struct xlb_allow_key {
	__u32 prefixlen;
	__u32 svc;
	__be32 addr;
};

/* xlb_lease is this node's claim on the VIP, renewed by the daemon while it
 * is the VRRP master. When it lapses (the daemon died, or lost mastership),
 * XDP stops answering ARP for the VIP, refuses new flows and sends no RST,
 * so a host whose daemon was killed cannot keep taking traffic after the
 * peer took over. */
struct xlb_lease {
	__u64 expires_ns;	/* bpf_ktime_get_coarse_ns deadline; 0 = none */
};

#endif /* XLB_STRUCTS_H */
