/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * icmp.h — ICMP errors about NATed flows (destination unreachable, with
 * fragmentation needed for PMTU discovery, and time exceeded), translated
 * like the flow they quote: outer addresses, the quoted IPv4 header and
 * ports, the quoted header's checksum and the ICMP checksum.
 */
#ifndef XLB_ICMP_H
#define XLB_ICMP_H

#include "csum.h"
#include "lb.h"
#include "maps.h"
#include "nat.h"
#include "parse.h"
#include "stats.h"

#define IPPROTO_ICMP 1
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11

struct icmp_hdr {
	__u8 type;
	__u8 code;
	__sum16 check;
	__be32 rest;		/* unused, or the next-hop MTU */
};

/* icmp_err is an ICMP error quoting a TCP packet: the outer headers, the
 * ICMP header, the quoted IPv4 header and the quoted ports. */
struct icmp_err {
	struct icmp_hdr icmp;
	struct ipv4_hdr ip;
	__be16 sport;
	__be16 dport;
} __attribute__((packed));

/* icmp_parse returns the ICMP error after ip when it is one xlb translates
 * (type 3 or 11, quoting an IHL-5 TCP header), else NULL. */
static __always_inline struct icmp_err *icmp_parse(struct ipv4_hdr *ip, void *data_end)
{
	struct icmp_err *e = (void *)(ip + 1);
	__u32 tot = bpf_ntohs(ip->tot_len);

	/* The quote must lie inside the IP packet, not in an Ethernet trailer:
	 * the ICMP checksum covers tot_len only. */
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) ||
	    !hdr_ok(e, sizeof(*e), data_end) || tot < sizeof(*ip) + sizeof(*e) ||
	    tot > (__u32)((__u8 *)data_end - (__u8 *)ip))
		return 0;
	if (e->icmp.type != ICMP_DEST_UNREACH && e->icmp.type != ICMP_TIME_EXCEEDED)
		return 0;
	if (e->ip.version != 4 || e->ip.ihl != 5 || e->ip.protocol != IPPROTO_TCP)
		return 0;
	return e;
}

/* icmp_rewrite sets the outer addresses and the quoted packet's addresses
 * and ports, and updates the three checksums incrementally. */
static __always_inline void icmp_rewrite(struct eth_hdr *eth, struct ipv4_hdr *ip, struct icmp_err *e,
					 __be32 saddr, __be32 daddr, __be32 in_saddr, __be16 in_sport,
					 __be32 in_daddr, __be16 in_dport, const __u8 *smac,
					 const __u8 *dmac)
{
	__u64 sum = csum_start(ip->check);

	sum = csum_swap32(sum, ip->saddr, saddr);
	sum = csum_swap32(sum, ip->daddr, daddr);
	ip->check = csum_fold(sum);
	ip->saddr = saddr;
	ip->daddr = daddr;

	__sum16 old_check = e->ip.check;

	sum = csum_start(e->ip.check);
	sum = csum_swap32(sum, e->ip.saddr, in_saddr);
	sum = csum_swap32(sum, e->ip.daddr, in_daddr);
	__sum16 new_check = csum_fold(sum);

	/* The ICMP checksum covers the quoted header, its checksum and ports. */
	sum = csum_start(e->icmp.check);
	sum = csum_swap32(sum, e->ip.saddr, in_saddr);
	sum = csum_swap32(sum, e->ip.daddr, in_daddr);
	sum = csum_swap16(sum, old_check, new_check);
	sum = csum_swap16(sum, e->sport, in_sport);
	sum = csum_swap16(sum, e->dport, in_dport);
	e->icmp.check = csum_fold(sum);

	e->ip.check = new_check;
	e->ip.saddr = in_saddr;
	e->ip.daddr = in_daddr;
	e->sport = in_sport;
	e->dport = in_dport;
	__builtin_memcpy(eth->dst, dmac, ETH_ALEN);
	__builtin_memcpy(eth->src, smac, ETH_ALEN);
}

/* icmp_to_vip forwards an ICMP error about a packet the VIP sent to a
 * client (VIP:svc -> client) to the flow's backend, as if about the
 * backend's own packet (backend -> lb:snat). Anything else passes. */
static __always_inline int icmp_to_vip(struct xdp_md *ctx, void *data_end, struct eth_hdr *eth,
				       struct ipv4_hdr *ip)
{
	struct icmp_err *e = icmp_parse(ip, data_end);

	if (!e || e->ip.saddr != cfg_vip)
		return XDP_PASS;
	int svc = svc_of_port(e->sport);

	if (svc < 0)
		return XDP_PASS;
	struct xlb_flow_key fk = {
		.saddr = e->ip.daddr,
		.daddr = e->ip.saddr,
		.sport = e->dport,
		.dport = e->sport,
	};
	struct xlb_flow *f = flow_find(&fk, flow_hash(&fk));

	if (!f)
		return drop(svc_slot(svc), XLB_DROP_NO_FLOW);
	struct xlb_snat *s = flow_live(f->cookie, &fk);
	struct xlb_backend *be = backend_alive(f->backend);

	if (!s || !be)
		return drop(svc_slot(svc), XLB_DROP_NO_FLOW);
	enum xlb_drop reason = XLB_DROP_NO_ROUTE;
	struct xlb_nexthop *nh = nexthop(ctx, f->backend, be, bpf_ktime_get_coarse_ns(),
					 bpf_ntohs(ip->tot_len), &reason);

	if (!nh)
		return drop(svc_slot(svc), reason);
	count_fwd(svc, f->backend, ctx->data_end - ctx->data, 0, 0);
	icmp_rewrite(eth, ip, e, cfg_snat_addr, be->addr, be->addr, be->port, cfg_snat_addr,
		     f->snat_port, nh->smac, nh->dmac);
	return send(ctx, nh->ifindex);
}

/* icmp_to_snat forwards an ICMP error about a packet xlb sent to a backend
 * (lb:snat -> backend) to the flow's client, as if about the client's own
 * packet (client -> VIP:svc). Anything else is the host's and passes. */
static __always_inline int icmp_to_snat(struct xdp_md *ctx, void *data_end, struct eth_hdr *eth,
					struct ipv4_hdr *ip)
{
	struct icmp_err *e = icmp_parse(ip, data_end);

	if (!e || e->ip.saddr != cfg_snat_addr)
		return XDP_PASS;
	__u16 port = bpf_ntohs(e->sport);

	if (port < cfg_snat_port_min || port > cfg_snat_port_max)
		return XDP_PASS;
	struct xlb_backend_key bk = {
		.addr = e->ip.daddr,
		.port = e->dport,
	};
	__u32 *id = bpf_map_lookup_elem(&backend_id_map, &bk);

	if (!id)
		return XDP_PASS;
	struct xlb_snat *s = snat_slot(*id * snat_range() + port - cfg_snat_port_min);

	if (!s || !s->owner)
		return XDP_PASS;
	struct xlb_flow_key fk = flow_key_of(s);
	struct xlb_flow *f = flow_find(&fk, flow_hash(&fk));

	if (!f || f->cookie != owner_cookie(s->owner))
		return XDP_PASS;
	count_fwd(f->svc, *id, ctx->data_end - ctx->data, 0, 1);
	icmp_rewrite(eth, ip, e, cfg_vip, fk.saddr, fk.saddr, fk.sport, cfg_vip, fk.dport, f->lmac,
		     f->cmac);
	return send(ctx, f->ifindex);
}

#endif /* XLB_ICMP_H */
