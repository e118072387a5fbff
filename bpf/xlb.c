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
#include "icmp.h"
#include "lb.h"
#include "maps.h"
#include "nat.h"
#include "parse.h"
#include "stats.h"

/* refuse answers a packet that has no flow: silently while this node does
 * not own the VIP (only the owner sends RSTs) or when it is a RST itself,
 * else with a RST. */
static __always_inline int refuse(struct xdp_md *ctx, __u32 slot, enum xlb_drop reason, __u8 flags)
{
	if (!vip_owned())
		return drop(slot, XLB_DROP_NOT_OWNER);
	drop(slot, reason);
	if (flags & TCP_RST)
		return XDP_DROP;
	return send_rst(ctx, slot);
}

/* new_flow picks a backend for a SYN, claims a SNAT slot, stores the
 * forward entry and forwards the SYN. h is flow_hash(fk). */
static __always_inline int new_flow(struct xdp_md *ctx, struct eth_hdr *eth, struct ipv4_hdr *ip,
				    struct tcp_hdr *tcp, __u32 svc, const struct xlb_flow_key *fk,
				    __u32 h)
{
	if (!vip_owned())
		return drop(svc_slot(svc), XLB_DROP_NOT_OWNER);
	if (!source_allowed(svc, ip->saddr))
		return drop(svc_slot(svc), XLB_DROP_NOT_ALLOWED);

	__u32 id = maglev_pick(svc, h);
	struct xlb_backend *be = backend_alive(id);

	if (!be) {
		drop(svc_slot(svc), XLB_DROP_NO_BACKEND);
		return send_rst(ctx, svc_slot(svc));
	}

	__u64 now = bpf_ktime_get_coarse_ns();
	enum xlb_drop reason = XLB_DROP_NO_ROUTE;
	struct xlb_nexthop *nh = nexthop(ctx, id, be, now, bpf_ntohs(ip->tot_len), &reason);

	if (!nh)
		return drop(svc_slot(svc), reason);

	struct xlb_snat_cursor *cursor = bpf_map_lookup_elem(&snat_cursor_map, &id);
	__u32 rnd;
	__u64 stamp = now;

	if (cursor) {
		rnd = cursor->rng ? cursor->rng : bpf_get_prandom_u32() | 1;
		rnd ^= rnd << 13;
		rnd ^= rnd >> 17;
		rnd ^= rnd << 5;
		cursor->rng = rnd;
		stamp += cursor->seq++ & 0xfffff;
	} else {
		rnd = bpf_get_prandom_u32();
	}
	__u32 start = cursor && cursor->next ? cursor->next : rnd >> 8;
	int pressured = cursor && cursor->pressured;
	__u64 cookie = 0;

	if (!pressured)
		cookie = snat_claim_new(id | svc << 8, (__u64)start << 32 | rnd, stamp, fk->saddr,
					fk->sport);
	if (!cookie) {
		/* The ports after the cursor hold live flows (flows are
		 * claimed in runs, another CPU's too): probe from a random
		 * port, taking a half-open one if all there are taken. While
		 * that keeps happening (a flood), skip the first round. */
		cookie = snat_claim_new(id | svc << 8 | 1 << 16,
					(__u64)bpf_get_prandom_u32() << 32 | rnd, stamp, fk->saddr,
					fk->sport);
		if (cursor) {
			__u32 p = cookie && !(cookie & XLB_CLAIM_PRESSURE) ? 0 : 1;

			if (cursor->pressured != p)
				cursor->pressured = p;
		}
	}

	if (!cookie)
		return drop(svc_slot(svc), XLB_DROP_SNAT_EXHAUSTED);
	struct xlb_flow *e = flow_insert(h, cookie, now);

	if (!e) {
		struct xlb_snat *s = snat_slot(cookie >> 32);

		if (s)
			snat_release(s, cookie);
		return drop(svc_slot(svc), XLB_DROP_TABLE_FULL);
	}
	__u32 off = (__u32)(cookie >> 32) - id * snat_range();
	__be16 port = bpf_htons(cfg_snat_port_min + off);

	if (cursor)
		cursor->next = off + 1;

	e->backend = id;
	e->snat_port = port;
	e->svc = svc;
	e->ifindex = ctx->ingress_ifindex;
	__builtin_memcpy(e->cmac, eth->src, ETH_ALEN);
	__builtin_memcpy(e->lmac, eth->dst, ETH_ALEN);
	/* The key last: a reader matches on it. */
	asm volatile("" ::: "memory");
	e->key = *fk;

	count_fwd(svc, id, ctx->data_end - ctx->data, 1, 0);
	rewrite(eth, ip, tcp, cfg_snat_addr, be->addr, port, be->port, nh->smac, nh->dmac);
	return send(ctx, nh->ifindex);
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
	__u32 h = flow_hash(&fk);
	struct xlb_flow *f = flow_find(&fk, h);

	if (!f) {
		if (syn)
			return new_flow(ctx, eth, ip, tcp, svc, &fk, h);
		return refuse(ctx, svc_slot(svc), XLB_DROP_NO_FLOW, flags);
	}
	__u64 cookie = f->cookie;
	struct xlb_snat *s = flow_live(cookie, &fk);

	if (!s) {
		/* Its SNAT port went to another flow: this one is over. */
		flow_kill(f, cookie);
		if (syn)
			return new_flow(ctx, eth, ip, tcp, svc, &fk, h);
		return refuse(ctx, svc_slot(svc), XLB_DROP_FLOW_LOST, flags);
	}
	__u32 id = f->backend;
	struct xlb_backend *be = backend_serves(id, svc);

	if (!be) {
		/* Backend gone, or its flows of svc cut: the flow ends, its
		 * packets get a RST. */
		snat_release(s, cookie);
		flow_kill(f, cookie);
		if (syn)
			return new_flow(ctx, eth, ip, tcp, svc, &fk, h);
		return refuse(ctx, svc_slot(svc), XLB_DROP_NO_FLOW, flags);
	}
	__u32 st = s->state;

	if (syn && ct_closed(st)) {
		/* The client reuses a closed tuple: a new flow; the old port
		 * lingers with its slot. */
		flow_kill(f, cookie);
		return new_flow(ctx, eth, ip, tcp, svc, &fk, h);
	}

	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 bits = 0;

	if (flags & TCP_RST)
		bits |= XLB_CT_RST;
	if (flags & TCP_FIN)
		bits |= XLB_CT_FIN_FWD;
	if ((flags & (TCP_ACK | TCP_SYN)) == TCP_ACK && (st & XLB_CT_SYNACK)) {
		bits |= XLB_CT_EST;
		/* Established in the owner word first: from here no pressure
		 * round can take the slot; if one took it already, the flow is
		 * over and its ACK gets a RST. */
		if (!(s->owner & XLB_OWNER_EST) && !ct_establish(s, cookie, now)) {
			flow_kill(f, cookie);
			return refuse(ctx, svc_slot(svc), XLB_DROP_FLOW_LOST, flags);
		}
	}
	ct_touch(s, now, bits);

	enum xlb_drop reason = XLB_DROP_NO_ROUTE;
	struct xlb_nexthop *nh = nexthop(ctx, id, be, now, bpf_ntohs(ip->tot_len), &reason);

	if (!nh)
		return drop(svc_slot(svc), reason);
	count_fwd(svc, id, ctx->data_end - ctx->data, 0, 0);
	rewrite(eth, ip, tcp, cfg_snat_addr, be->addr, f->snat_port, be->port, nh->smac, nh->dmac);
	return send(ctx, nh->ifindex);
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
	if (ip->protocol == IPPROTO_ICMP)
		return icmp_to_vip(ctx, data_end, eth, ip);
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
 * client. Anything that is not a backend's, or to a free slot, is the
 * host's own and passes. */
static __always_inline int handle_reply(struct xdp_md *ctx, void *data_end, struct eth_hdr *eth,
					struct ipv4_hdr *ip)
{
	if (ip->version == 4 && ip->protocol == IPPROTO_ICMP)
		return icmp_to_snat(ctx, data_end, eth, ip);
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

	struct xlb_backend_key bk = {
		.addr = ip->saddr,
		.port = tcp->sport,
	};
	__u32 *id = bpf_map_lookup_elem(&backend_id_map, &bk);

	if (!id)
		return XDP_PASS;
	struct xlb_snat *s = snat_slot(*id * snat_range() + port - cfg_snat_port_min);

	if (!s)
		return XDP_PASS;
	__u64 owner = s->owner;

	/* Free, or changing hands (its old flow is over): not a flow's. */
	if (!owner || (owner & XLB_OWNER_BUSY))
		return XDP_PASS;

	struct xlb_flow_key fk = flow_key_of(s);
	struct xlb_flow *f = flow_find(&fk, flow_hash(&fk));
	__u32 svc = s->svc;

	if (!f || f->cookie != owner_cookie(owner)) {
		/* The forward entry is gone: end the backend's side too. */
		if (__sync_val_compare_and_swap(&s->owner, owner, 0) == owner)
			count_expired(svc, XLB_EXPIRE_ORPHAN);
		return refuse(ctx, svc_slot(svc), XLB_DROP_FLOW_LOST, tcp->flags);
	}

	__u8 flags = tcp->flags;
	__u32 bits = 0;

	if ((flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK))
		bits |= XLB_CT_SYNACK;
	if (flags & TCP_FIN)
		bits |= XLB_CT_FIN_REV;
	if (flags & TCP_RST)
		bits |= XLB_CT_RST;
	ct_touch(s, bpf_ktime_get_coarse_ns(), bits);
	count_fwd(svc, *id, ctx->data_end - ctx->data, 0, 1);
	rewrite(eth, ip, tcp, cfg_vip, fk.saddr, fk.dport, fk.sport, f->lmac, f->cmac);
	return send(ctx, f->ifindex);
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
