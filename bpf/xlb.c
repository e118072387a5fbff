/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xlb.c — the XDP datapath: one-arm full NAT for VIP:port_rw and VIP:port_ro.
 *
 * client -> VIP:svc   becomes  snat_addr:snat_port -> backend:port
 * backend -> snat     becomes  VIP:svc -> client
 *
 * Everything else passes untouched. Malformed packets for the VIP are
 * dropped and counted by reason; a non-SYN packet without a flow gets a RST.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "config.h"
#include "csum.h"
#include "hash.h"
#include "lb.h"
#include "maps.h"
#include "nat.h"
#include "parse.h"
#include "stats.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* new_flow picks a backend for a SYN, claims a SNAT port, stores both
 * conntrack entries and forwards the SYN. */
static __always_inline int new_flow(struct xdp_md *ctx, struct eth_hdr *eth, struct ipv4_hdr *ip,
				    struct tcp_hdr *tcp, __u32 svc, struct xlb_flow_key *fk)
{
	__u32 ports = ((__u32)tcp->sport << 16) | tcp->dport;
	if (!vip_owned())
		return drop(svc_slot(svc), XLB_DROP_NOT_OWNER);

	__u32 id = maglev_pick(svc, hash_3words(ip->saddr, ip->daddr, ports, HASH_SEED_MAGLEV));
	struct xlb_backend *be = backend_alive(id);

	if (!be) {
		drop(svc_slot(svc), XLB_DROP_NO_BACKEND);
		return send_rst(ctx, svc_slot(svc));
	}

	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.l4_protocol = IPPROTO_TCP,
		.tot_len = bpf_ntohs(ip->tot_len),
		.ifindex = ctx->ingress_ifindex,
		.ipv4_src = cfg_snat_addr,
		.ipv4_dst = be->addr,
	};
	long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);

	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* Let the kernel resolve the neighbour; the client retries. */
		struct xlb_counters *c = counters(svc_slot(svc));

		if (c)
			c->neigh_pass++;
		return XDP_PASS;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return drop(svc_slot(svc), XLB_DROP_NO_ROUTE);

	__u64 now = bpf_ktime_get_coarse_ns();
	struct xlb_flow rev = {
		.nat_saddr = ip->daddr,
		.nat_daddr = ip->saddr,
		.nat_sport = tcp->dport,
		.nat_dport = tcp->sport,
		.ifindex = ctx->ingress_ifindex,
		.backend = id,
		.dir = XLB_DIR_REV,
		.svc = svc,
		.last_seen = now,
	};
	__builtin_memcpy(rev.smac, eth->dst, ETH_ALEN);
	__builtin_memcpy(rev.dmac, eth->src, ETH_ALEN);

	struct xlb_flow_key rk = {
		.saddr = be->addr,
		.daddr = cfg_snat_addr,
		.sport = be->port,
	};
	__be16 port = snat_alloc(&rk, &rev, hash_3words(ip->saddr, ip->daddr, ports, HASH_SEED_SNAT));

	if (!port)
		return drop(svc_slot(svc), XLB_DROP_SNAT_EXHAUSTED);

	struct xlb_flow fwd = {
		.nat_saddr = cfg_snat_addr,
		.nat_daddr = be->addr,
		.nat_sport = port,
		.nat_dport = be->port,
		.ifindex = fib.ifindex,
		.backend = id,
		.dir = XLB_DIR_FWD,
		.svc = svc,
		.last_seen = now,
	};
	__builtin_memcpy(fwd.smac, fib.smac, ETH_ALEN);
	__builtin_memcpy(fwd.dmac, fib.dmac, ETH_ALEN);

	if (bpf_map_update_elem(&flow_map, fk, &fwd, BPF_ANY)) {
		bpf_map_delete_elem(&flow_map, &rk);
		return drop(svc_slot(svc), XLB_DROP_SNAT_EXHAUSTED);
	}

	struct xlb_counters *c = counters(svc_slot(svc));

	if (c)
		c->new_flows++;
	c = counters(backend_slot(id));
	if (c)
		c->new_flows++;
	count_fwd(svc, id, ctx->data_end - ctx->data);
	rewrite(eth, ip, tcp, &fwd);
	return send(ctx, &fwd);
}

/* handle_service forwards a well-formed TCP packet for VIP:svc. */
static __always_inline int handle_service(struct xdp_md *ctx, struct eth_hdr *eth,
					  struct ipv4_hdr *ip, struct tcp_hdr *tcp, __u32 svc)
{
	struct xlb_flow_key fk = {
		.saddr = ip->saddr,
		.daddr = ip->daddr,
		.sport = tcp->sport,
		.dport = tcp->dport,
	};
	__u8 flags = tcp->flags;
	int syn = (flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN;
	struct xlb_flow *f = bpf_map_lookup_elem(&flow_map, &fk);

	if (f) {
		if (!backend_alive(f->backend) || (syn && flow_closed(f))) {
			/* Backend gone, or the client reuses a closed tuple. */
			flow_delete(&fk, f);
			f = 0;
		}
	}
	if (f) {
		flow_touch(f, flags);
		count_fwd(svc, f->backend, ctx->data_end - ctx->data);
		rewrite(eth, ip, tcp, f);
		return send(ctx, f);
	}
	if (syn)
		return new_flow(ctx, eth, ip, tcp, svc, &fk);
	if (flags & TCP_RST)
		return drop(svc_slot(svc), XLB_DROP_NO_FLOW);
	drop(svc_slot(svc), XLB_DROP_NO_FLOW);
	return send_rst(ctx, svc_slot(svc));
}

/* handle_vip validates a packet for the VIP and dispatches it by port. */
static __always_inline int handle_vip(struct xdp_md *ctx, void *data_end, struct eth_hdr *eth,
				      struct ipv4_hdr *ip)
{
	if (ip->version != 4 || ip->ihl < 5)
		return drop(XLB_STATS_GLOBAL, XLB_DROP_BAD_IHL);

	__u32 hlen = ip->ihl * 4;
	__u32 tot = bpf_ntohs(ip->tot_len);
	__u32 avail = (__u8 *)data_end - (__u8 *)ip;

	if (tot < hlen || tot > avail)
		return drop(XLB_STATS_GLOBAL, XLB_DROP_BAD_LEN);

	void *l4 = (__u8 *)ip + hlen;

	if (ip->protocol == IPPROTO_UDP) {
		struct udp_hdr *udp = l4;
		int svc;

		if (!hdr_ok(udp, sizeof(*udp), data_end))
			return XDP_PASS;
		svc = svc_of_port(udp->dport);
		if (svc < 0)
			return XDP_PASS;
		return drop(svc_slot(svc), XLB_DROP_NOT_TCP);
	}
	if (ip->protocol != IPPROTO_TCP)
		return XDP_PASS;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return drop(XLB_STATS_GLOBAL, XLB_DROP_FRAGMENT);

	struct tcp_hdr *tcp = l4;

	if (!hdr_ok(l4, 2 * sizeof(__be16), data_end))
		return drop(XLB_STATS_GLOBAL, XLB_DROP_TRUNCATED);
	int svc = svc_of_port(tcp->dport);

	if (svc < 0)
		return XDP_PASS;
	if (hlen != sizeof(*ip))
		return drop(svc_slot(svc), XLB_DROP_IP_OPTIONS);

	tcp = (void *)(ip + 1);
	if (!hdr_ok(tcp, sizeof(*tcp), data_end) || tot < sizeof(*ip) + sizeof(*tcp))
		return drop(svc_slot(svc), XLB_DROP_TRUNCATED);
	__u32 doff = tcp_doff(tcp);

	if (doff < sizeof(*tcp) || sizeof(*ip) + doff > tot)
		return drop(svc_slot(svc), XLB_DROP_BAD_TCP_HDR);
	return handle_service(ctx, eth, ip, tcp, svc);
}

/* handle_reply translates a backend's packet to a SNAT port back to the
 * client. Anything without a flow is the host's own and passes. */
static __always_inline int handle_reply(struct xdp_md *ctx, void *data_end, struct eth_hdr *eth,
					struct ipv4_hdr *ip)
{
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_TCP ||
	    (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return XDP_PASS;

	struct tcp_hdr *tcp = (void *)(ip + 1);
	__u32 tot = bpf_ntohs(ip->tot_len);

	/* Malformed packets to our own address are the kernel's to drop. */
	if (!hdr_ok(tcp, sizeof(*tcp), data_end) || tot > (__u32)((__u8 *)data_end - (__u8 *)ip) ||
	    tot < sizeof(*ip) + tcp_doff(tcp) || tcp_doff(tcp) < sizeof(*tcp))
		return XDP_PASS;
	__u16 port = bpf_ntohs(tcp->dport);

	if (port < cfg_snat_port_min || port > cfg_snat_port_max)
		return XDP_PASS;

	struct xlb_flow_key rk = {
		.saddr = ip->saddr,
		.daddr = ip->daddr,
		.sport = tcp->sport,
		.dport = tcp->dport,
	};
	struct xlb_flow *f = bpf_map_lookup_elem(&flow_map, &rk);

	if (!f || f->dir != XLB_DIR_REV)
		return XDP_PASS;
	flow_touch(f, tcp->flags);
	count_fwd(f->svc, f->backend, ctx->data_end - ctx->data);
	rewrite(eth, ip, tcp, f);
	return send(ctx, f);
}

/* handle_arp drops ARP asking for the VIP while this node does not own it,
 * so clients and switches learn the owner's MAC only. */
static __always_inline int handle_arp(void *data_end, struct eth_hdr *eth)
{
	struct arp_ipv4 *arp = (void *)(eth + 1);

	if (!cfg_lease || !hdr_ok(arp, sizeof(*arp), data_end) || arp->tpa != cfg_vip)
		return XDP_PASS;
	if (vip_owned())
		return XDP_PASS;
	return drop(XLB_STATS_GLOBAL, XLB_DROP_NOT_OWNER);
}

SEC("xdp")
int xlb_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct eth_hdr *eth = data;
	struct ipv4_hdr *ip = (void *)(eth + 1);

	if (!hdr_ok(eth, sizeof(*eth), data_end))
		return XDP_PASS;
	if (eth->proto == bpf_htons(ETH_P_ARP))
		return handle_arp(data_end, eth);
	if (eth->proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if (!hdr_ok(ip, sizeof(*ip), data_end))
		return XDP_PASS;
	if (ip->daddr == cfg_vip)
		return handle_vip(ctx, data_end, eth, ip);
	if (ip->daddr == cfg_snat_addr)
		return handle_reply(ctx, data_end, eth, ip);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
