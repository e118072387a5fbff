/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * nat.h — conntrack, SNAT port allocation, the rewrite, and RST replies.
 */
#ifndef XLB_NAT_H
#define XLB_NAT_H

#include "config.h"
#include "csum.h"
#include "hash.h"
#include "maps.h"
#include "parse.h"
#include "stats.h"

/* MAX_SNAT_TRIES bounds the ports probed for a new flow. */
#define MAX_SNAT_TRIES 16

#define SECOND_NS 1000000000ULL

/* peer_key returns the key of the other direction's entry of f's flow. */
static __always_inline struct xlb_flow_key peer_key(const struct xlb_flow *f)
{
	struct xlb_flow_key k = {
		.saddr = f->nat_daddr,
		.daddr = f->nat_saddr,
		.sport = f->nat_dport,
		.dport = f->nat_sport,
	};
	return k;
}

/* flow_closed reports whether both sides finished or one reset. */
static __always_inline int flow_closed(const struct xlb_flow *f)
{
	return (f->flags & XLB_FLOW_RST) ||
	       (f->flags & (XLB_FLOW_FIN_FWD | XLB_FLOW_FIN_REV)) ==
		       (XLB_FLOW_FIN_FWD | XLB_FLOW_FIN_REV);
}

/* flow_stale reports whether f's SNAT port may be given to a new flow. */
static __always_inline int flow_stale(const struct xlb_flow *f, __u64 now)
{
	__u64 idle = now - f->last_seen;

	if (flow_closed(f))
		return idle > cfg_closed_timeout_ns;
	return idle > cfg_idle_timeout_ns;
}

/* flow_delete removes both entries of the flow k belongs to. */
static __always_inline void flow_delete(struct xlb_flow_key *k, const struct xlb_flow *f)
{
	struct xlb_flow_key pk = peer_key(f);

	bpf_map_delete_elem(&flow_map, &pk);
	bpf_map_delete_elem(&flow_map, k);
}

/* flow_touch refreshes last_seen and records FIN/RST on both entries. */
static __always_inline void flow_touch(struct xlb_flow *f, __u8 tcp_flags)
{
	__u64 now = bpf_ktime_get_coarse_ns();
	__u8 bits;

	if (now - f->last_seen > SECOND_NS)
		f->last_seen = now;
	if (!(tcp_flags & (TCP_FIN | TCP_RST)))
		return;
	if (tcp_flags & TCP_RST)
		bits = XLB_FLOW_RST;
	else
		bits = f->dir == XLB_DIR_FWD ? XLB_FLOW_FIN_FWD : XLB_FLOW_FIN_REV;
	f->flags |= bits;
	f->last_seen = now;

	struct xlb_flow_key pk = peer_key(f);
	struct xlb_flow *peer = bpf_map_lookup_elem(&flow_map, &pk);

	if (peer) {
		peer->flags |= bits;
		peer->last_seen = now;
	}
}

/* snat_alloc claims a SNAT port for rev's flow by inserting its reverse
 * entry with BPF_NOEXIST, probing up to MAX_SNAT_TRIES ports from a hash
 * of the client tuple. A stale occupant (closed or idle past its timeout)
 * is evicted with its forward entry. It returns the port in network
 * order, or 0 when every probed port is taken. */
static __always_inline __be16 snat_alloc(struct xlb_flow_key *rk, struct xlb_flow *rev, __u32 hash)
{
	__u32 range = (__u32)cfg_snat_port_max - cfg_snat_port_min + 1;
	__u32 tries = range < MAX_SNAT_TRIES ? range : MAX_SNAT_TRIES;
	__u32 start = hash % range;
	__u64 now = rev->last_seen;

	for (__u32 i = 0; i < MAX_SNAT_TRIES; i++) {
		if (i >= tries)
			break;
		__u16 port = cfg_snat_port_min + (start + i) % range;

		rk->dport = bpf_htons(port);
		if (bpf_map_update_elem(&flow_map, rk, rev, BPF_NOEXIST) == 0)
			return rk->dport;

		struct xlb_flow *occ = bpf_map_lookup_elem(&flow_map, rk);

		if (!occ || !flow_stale(occ, now))
			continue;
		struct xlb_flow_key ok = peer_key(occ);

		bpf_map_delete_elem(&flow_map, &ok);
		if (bpf_map_update_elem(&flow_map, rk, rev, BPF_ANY) == 0)
			return rk->dport;
	}
	return 0;
}

/* rewrite applies f to the packet: MACs, addresses, ports, checksums. */
static __always_inline void rewrite(struct eth_hdr *eth, struct ipv4_hdr *ip,
				    struct tcp_hdr *tcp, const struct xlb_flow *f)
{
	__u64 sum = csum_start(ip->check);

	sum = csum_swap32(sum, ip->saddr, f->nat_saddr);
	sum = csum_swap32(sum, ip->daddr, f->nat_daddr);
	ip->check = csum_fold(sum);

	sum = csum_start(tcp->check);
	sum = csum_swap32(sum, ip->saddr, f->nat_saddr);
	sum = csum_swap32(sum, ip->daddr, f->nat_daddr);
	sum = csum_swap16(sum, tcp->sport, f->nat_sport);
	sum = csum_swap16(sum, tcp->dport, f->nat_dport);
	tcp->check = csum_fold(sum);

	ip->saddr = f->nat_saddr;
	ip->daddr = f->nat_daddr;
	tcp->sport = f->nat_sport;
	tcp->dport = f->nat_dport;
	__builtin_memcpy(eth->dst, f->dmac, ETH_ALEN);
	__builtin_memcpy(eth->src, f->smac, ETH_ALEN);
}

/* send transmits a rewritten packet out of f's interface. */
static __always_inline int send(struct xdp_md *ctx, const struct xlb_flow *f)
{
	if (f->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(f->ifindex, 0);
}

#define RST_LEN (sizeof(struct eth_hdr) + sizeof(struct ipv4_hdr) + sizeof(struct tcp_hdr))

/* send_rst turns a TCP packet (IHL 5, header validated) into the RST that
 * answers it, as RFC 793 says a closed port answers, and transmits it back
 * out of the interface it came in on. */
static __always_inline int send_rst(struct xdp_md *ctx, __u32 slot)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct eth_hdr *eth = data;
	struct ipv4_hdr *ip = (void *)(eth + 1);
	struct tcp_hdr *tcp = (void *)(ip + 1);

	if (!hdr_ok(tcp, sizeof(*tcp), data_end))
		return XDP_DROP;

	__u8 mac[ETH_ALEN];
	__be32 saddr = ip->saddr, daddr = ip->daddr;
	__be16 sport = tcp->sport, dport = tcp->dport;
	__u8 flags = tcp->flags;
	__be32 seq = tcp->seq, ack = tcp->ack_seq;
	__u32 payload = bpf_ntohs(ip->tot_len) - sizeof(*ip) - tcp_doff(tcp);
	int delta = (int)RST_LEN - (int)(data_end - data);

	__builtin_memcpy(mac, eth->src, ETH_ALEN);
	if (delta && bpf_xdp_adjust_tail(ctx, delta))
		return drop(slot, XLB_DROP_NO_FLOW);

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	tcp = (void *)(ip + 1);
	if (!hdr_ok(tcp, sizeof(*tcp), data_end))
		return XDP_DROP;

	__builtin_memcpy(eth->src, eth->dst, ETH_ALEN);
	__builtin_memcpy(eth->dst, mac, ETH_ALEN);

	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*tcp));
	ip->id = 0;
	ip->frag_off = bpf_htons(IP_DF);
	ip->ttl = 64;
	ip->protocol = IPPROTO_TCP;
	ip->check = 0;
	ip->saddr = daddr;
	ip->daddr = saddr;
	ip->check = ipv4_csum(ip);

	tcp->sport = dport;
	tcp->dport = sport;
	if (flags & TCP_ACK) {
		tcp->seq = ack;
		tcp->ack_seq = 0;
		tcp->flags = TCP_RST;
	} else {
		__u32 n = payload + !!(flags & TCP_SYN) + !!(flags & TCP_FIN);

		tcp->seq = 0;
		tcp->ack_seq = bpf_htonl(bpf_ntohl(seq) + n);
		tcp->flags = TCP_RST | TCP_ACK;
	}
	tcp->res_doff = 5 << 4;
	tcp->window = 0;
	tcp->urg_ptr = 0;
	tcp->check = 0;
	tcp->check = tcp_csum20(ip, tcp);

	struct xlb_counters *c = counters(slot);

	if (c)
		c->rsts++;
	return XDP_TX;
}

#endif /* XLB_NAT_H */
