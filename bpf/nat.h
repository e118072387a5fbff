/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * nat.h — conntrack, SNAT port allocation, the rewrite, and RST replies.
 */
#ifndef XLB_NAT_H
#define XLB_NAT_H

#include "config.h"
#include "csum.h"
#include "hash.h"
#include "lb.h"
#include "maps.h"
#include "parse.h"
#include "stats.h"

/* MAX_SNAT_TRIES bounds the ports probed for a new flow. */
#define MAX_SNAT_TRIES 16

/* XLB_CLAIM_PRESSURE is bit 31 of a cookie: set when its slot was taken
 * from a half-open or closed flow under pressure, clear when it was free
 * or expired (new_flow learns from it that a flood goes on). */
#define XLB_CLAIM_PRESSURE (1U << 31)

#define SECOND_NS 1000000000ULL

#ifndef AF_INET
#define AF_INET 2
#endif

/* snat_range returns how many ports the SNAT range holds. */
static __always_inline __u32 snat_range(void)
{
	return (__u32)cfg_snat_port_max - cfg_snat_port_min + 1;
}

/* snat_slot returns snat_map's slot idx, or NULL past its end. */
static __always_inline struct xlb_snat *snat_slot(__u32 idx)
{
	return bpf_map_lookup_elem(&snat_map, &idx);
}

/* since returns now - then, 0 when another CPU stored a later then. */
static __always_inline __u64 since(__u64 now, __u64 then)
{
	return now > then ? now - then : 0;
}

/* ct_closed reports whether both sides finished or one reset. */
static __always_inline int ct_closed(__u32 st)
{
	return (st & XLB_CT_RST) || (st & (XLB_CT_FIN_FWD | XLB_CT_FIN_REV)) ==
					    (XLB_CT_FIN_FWD | XLB_CT_FIN_REV);
}

/* owner_cookie returns the cookie of the flow that owner word names. */
static __always_inline __u64 owner_cookie(__u64 owner)
{
	return owner & ~(__u64)XLB_OWNER_EST;
}

/* ct_established reports whether the flow whose owner word was owner (read
 * before s's state) is established: by the owner's bit, which the victim's
 * compare-and-swap checks, or by the state bit alone for a flow of a build
 * before that bit (it gets the owner's bit at its next packet). A flow
 * judged half-open here keeps its slot if it becomes established before
 * the compare-and-swap that expects owner. */
static __always_inline int ct_established(const struct xlb_snat *s, __u64 owner)
{
	return (owner & XLB_OWNER_EST) || (s->state & XLB_CT_EST);
}

/* ct_expired returns why s's flow, whose owner word was owner, has expired
 * at now, or -1 while it lives. */
static __always_inline int ct_expired(const struct xlb_snat *s, __u64 owner, __u64 now)
{
	__u32 st = s->state;
	__u64 idle = since(now, s->last_seen);

	if (ct_closed(st))
		return idle > cfg_closed_timeout_ns ? XLB_EXPIRE_CLOSED : -1;
	if (!(owner & XLB_OWNER_EST) && !(st & XLB_CT_EST))
		return idle > cfg_half_open_timeout_ns ? XLB_EXPIRE_HALF_OPEN : -1;
	return idle > cfg_idle_timeout_ns ? XLB_EXPIRE_IDLE : -1;
}

/* ct_establish marks s's flow cookie established in the owner word (after
 * refreshing last_seen, so a claim that reads the bit reads a fresh
 * stamp). It returns 0 when the slot went to another flow first: the
 * flow is over and its ACK must not pass. */
static __always_inline int ct_establish(struct xlb_snat *s, __u64 cookie, __u64 now)
{
	s->last_seen = now;
	__u64 o = __sync_val_compare_and_swap(&s->owner, cookie, cookie | XLB_OWNER_EST);

	return o == cookie || o == (cookie | XLB_OWNER_EST);
}

/* ct_touch records state bits (atomically: both directions' CPUs write)
 * and refreshes last_seen, at most every second unless the state changed. */
static __always_inline void ct_touch(struct xlb_snat *s, __u64 now, __u32 bits)
{
	if (bits && (s->state & bits) != bits) {
		__sync_fetch_and_or(&s->state, bits);
		s->last_seen = now;
		return;
	}
	if (since(now, s->last_seen) > SECOND_NS)
		s->last_seen = now;
}

/* flow_key_of returns the forward key of the flow owning s. */
static __always_inline struct xlb_flow_key flow_key_of(const struct xlb_snat *s)
{
	struct xlb_flow_key k = {
		.saddr = s->client_addr,
		.daddr = cfg_vip,
		.sport = s->client_port,
		.dport = svc_port(s->svc),
	};
	return k;
}

/* flow_hash is the hash of a client tuple: flow_map's probe start, and
 * the Maglev hash of a new flow. */
static __always_inline __u32 flow_hash(const struct xlb_flow_key *k)
{
	return hash_3words(k->saddr, k->daddr, ((__u32)k->sport << 16) | k->dport, HASH_SEED_MAGLEV);
}

static __always_inline int key_eq(const struct xlb_flow_key *a, const struct xlb_flow_key *b)
{
	return a->saddr == b->saddr && a->daddr == b->daddr && a->sport == b->sport &&
	       a->dport == b->dport;
}

/* flow_find returns k's entry in flow_map (live or not: see flow_live),
 * or NULL. It probes only as far as the home entry's reach: in a table
 * long in service no window holds a never-used entry to stop at, and a
 * new tuple would otherwise read all FLOW_PROBES entries (12 cache lines)
 * where its home line is enough. */
static __always_inline struct xlb_flow *flow_find(const struct xlb_flow_key *k, __u32 h)
{
	__u32 home = h & cfg_flow_mask;
	struct xlb_flow *he = bpf_map_lookup_elem(&flow_map, &home);

	if (!he)
		return 0;
	__u32 reach = *(volatile __u32 *)&he->reach;

	for (__u32 i = 0; i < FLOW_PROBES; i++) {
		if (i >= reach)
			return 0;
		__u32 idx = (h + i) & cfg_flow_mask;
		struct xlb_flow *e = bpf_map_lookup_elem(&flow_map, &idx);

		if (!e)
			return 0;
		__u64 c = e->cookie;

		if (c == XLB_FLOW_EMPTY)
			return 0;
		if (c != XLB_FLOW_DELETED && key_eq(&e->key, k))
			return e;
	}
	return 0;
}

/* flow_reach_grow makes home's reach at least r. */
static __always_inline void flow_reach_grow(struct xlb_flow *home, __u32 r)
{
	for (int i = 0; i < FLOW_PROBES; i++) {
		__u32 old = *(volatile __u32 *)&home->reach;

		if (old >= r || __sync_val_compare_and_swap(&home->reach, old, r) == old)
			return;
	}
}

/* flow_live returns the SNAT slot of the flow whose entry has cookie and
 * key k, or NULL when the slot went to another flow. */
static __always_inline struct xlb_snat *flow_live(__u64 cookie, const struct xlb_flow_key *k)
{
	struct xlb_snat *s = snat_slot(cookie >> 32);

	if (!s || owner_cookie(s->owner) != cookie || s->client_addr != k->saddr || s->client_port != k->sport ||
	    svc_port(s->svc) != k->dport)
		return 0;
	return s;
}

/* flow_kill deletes entry e if it still has cookie. */
static __always_inline void flow_kill(struct xlb_flow *e, __u64 cookie)
{
	__sync_val_compare_and_swap(&e->cookie, cookie, XLB_FLOW_DELETED);
}

/* flow_insert claims an entry for k with cookie: an empty or deleted one,
 * or one whose flow is dead (its slot went elsewhere) or expired (its slot
 * is freed first). It returns NULL when all FLOW_PROBES entries from h
 * hold live flows. The caller fills the entry, key last. */
static __always_inline struct xlb_flow *flow_insert(__u32 h, __u64 cookie, __u64 now)
{
	__u32 hidx = h & cfg_flow_mask;
	struct xlb_flow *home = bpf_map_lookup_elem(&flow_map, &hidx);

	for (__u32 i = 0; i < FLOW_PROBES; i++) {
		__u32 idx = (h + i) & cfg_flow_mask;
		struct xlb_flow *e = bpf_map_lookup_elem(&flow_map, &idx);

		if (!e)
			return 0;
		__u64 c = e->cookie;

		if (c != XLB_FLOW_EMPTY && c != XLB_FLOW_DELETED) {
			struct xlb_snat *s = snat_slot(c >> 32);
			__u64 o = s ? s->owner : 0;

			if (s && owner_cookie(o) == c) {
				int why = ct_expired(s, o, now);

				if (why < 0)
					continue;
				__u32 vsvc = s->svc;

				if (__sync_val_compare_and_swap(&s->owner, o, 0) != o)
					continue;
				count_expired(vsvc, why);
			}
		}
		if (__sync_val_compare_and_swap(&e->cookie, c, cookie) == c) {
			/* Reachable from its home before its key is written. */
			if (home)
				flow_reach_grow(home, i + 1);
			return e;
		}
	}
	return 0;
}

/* snat_take moves slot s from owner word old to cookie with a
 * compare-and-swap, XLB_OWNER_BUSY set while it deletes old's forward
 * entry (so floods of half-open flows do not fill the table), counts why,
 * and fills s for the new flow. It returns 0 when the swap fails. */
static __always_inline int snat_take(struct xlb_snat *s, __u64 old, __u64 cookie, int why,
				     const struct xlb_flow_key *fk, __u32 svc, __u64 now)
{
	struct xlb_flow_key vk = flow_key_of(s);
	__u32 vsvc = s->svc;

	if (__sync_val_compare_and_swap(&s->owner, old, cookie | XLB_OWNER_BUSY) != old)
		return 0;
	if (old) {
		struct xlb_flow *v = flow_find(&vk, flow_hash(&vk));

		if (v)
			flow_kill(v, owner_cookie(old));
		count_expired(vsvc, why);
	}
	s->state = 0;
	/* now is the claim's stamp: under a flood, "oldest half-open" must
	 * order flows claimed within one coarse tick. */
	s->last_seen = now;
	s->client_addr = fk->saddr;
	s->client_port = fk->sport;
	s->svc = svc;
	/* A swap (not a store) orders the writes above before it on any CPU;
	 * it fails only for a program of a build before XLB_OWNER_BUSY,
	 * during an upgrade. */
	return __sync_val_compare_and_swap(&s->owner, cookie | XLB_OWNER_BUSY, cookie) ==
	       (cookie | XLB_OWNER_BUSY);
}

/* snat_claim claims a (backend id, SNAT port) slot for a new flow: probing
 * up to MAX_SNAT_TRIES ports from offset start (mod the range), adjacent
 * ones, or with pressure spread over the range (established flows are
 * claimed in runs: a run must not hide the free ports around it), it takes
 * the first free or expired one, else, with pressure, the oldest half-open
 * or closed one probed: half-open by its owner word, which the
 * compare-and-swap that takes it expects (see XLB_OWNER_EST). The owner
 * word is the slot index << 32 | rnd, with XLB_CLAIM_PRESSURE set or
 * cleared by how the slot was taken; a slot that changes hands
 * (XLB_OWNER_BUSY) is skipped. It
 * returns that cookie, or 0 when every probed port holds a live flow (with
 * pressure: a live established flow). */
static __always_inline __u64 snat_claim(__u32 id, __u32 start, __u32 rnd, __u64 now,
					const struct xlb_flow_key *fk, __u32 svc, int pressure)
{
	__u32 range = snat_range();
	__u32 tries = range < MAX_SNAT_TRIES ? range : MAX_SNAT_TRIES;
	__u32 step = pressure && range >= MAX_SNAT_TRIES ? range / MAX_SNAT_TRIES : 1;
	__u32 base = id * range;
	__u32 off = start % range;
	__u32 victim = 0;
	__u64 victim_owner = 0, victim_seen = ~0ULL;

	for (__u32 i = 0; i < MAX_SNAT_TRIES; i++) {
		if (i >= tries)
			break;
		__u32 idx = base + off;
		struct xlb_snat *s = snat_slot(idx);
		__u64 cookie = ((__u64)idx << 32) | (rnd & ~XLB_CLAIM_PRESSURE);

		off += step;
		if (off >= range)
			off -= range;
		if (!s)
			return 0;
		__u64 owner = s->owner;

		if (!owner) {
			if (snat_take(s, 0, cookie, 0, fk, svc, now))
				return cookie;
			continue;
		}
		if (owner & XLB_OWNER_BUSY)
			continue;
		int why = ct_expired(s, owner, now);

		if (why >= 0) {
			if (snat_take(s, owner, cookie, why, fk, svc, now))
				return cookie;
			continue;
		}
		if (pressure && (!ct_established(s, owner) || ct_closed(s->state)) &&
		    s->last_seen < victim_seen) {
			victim = idx;
			victim_owner = owner;
			victim_seen = s->last_seen;
		}
	}
	if (!victim_owner)
		return 0;
	struct xlb_snat *s = snat_slot(victim);
	__u64 cookie = ((__u64)victim << 32) | rnd | XLB_CLAIM_PRESSURE;

	if (s && snat_take(s, victim_owner, cookie, XLB_EXPIRE_PRESSURE, fk, svc, now))
		return cookie;
	return 0;
}

/* snat_claim_new is snat_claim as a global function, which the verifier
 * checks once instead of at each call: who packs the flow's backend id,
 * service and pressure (id | svc << 8 | pressure << 16), start_rnd the
 * start (high half) and rnd, stamp is the claim's time (see
 * xlb_snat_cursor.seq), the client's address and port are the flow's. */
__noinline __u64 snat_claim_new(__u32 who, __u64 start_rnd, __u64 stamp, __u32 caddr, __u32 cport)
{
	struct xlb_flow_key fk = {
		.saddr = caddr,
		.sport = cport,
	};
	__u32 id = who & 0xff, svc = (who >> 8) & 1;

	if (who & (1 << 16))
		return snat_claim(id, start_rnd >> 32, start_rnd, stamp, &fk, svc, 1);
	return snat_claim(id, start_rnd >> 32, start_rnd, stamp, &fk, svc, 0);
}

/* snat_release frees slot s if cookie still owns it, established or not
 * (a second try when it became established meanwhile). */
static __always_inline void snat_release(struct xlb_snat *s, __u64 cookie)
{
	for (int i = 0; i < 2; i++) {
		__u64 o = s->owner;

		if (owner_cookie(o) != cookie || __sync_val_compare_and_swap(&s->owner, o, 0) == o)
			return;
	}
}

/* mac_eq reports whether two MACs are equal. */
static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

/* nexthop returns backend id's next hop, looking it up again with
 * bpf_fib_lookup when it is older than a second. A failed lookup keeps the
 * last good next hop; with none, it returns NULL and sets *reason. */
static __always_inline struct xlb_nexthop *nexthop(struct xdp_md *ctx, __u32 id,
						   const struct xlb_backend *be, __u64 now,
						   __u16 tot_len, enum xlb_drop *reason)
{
	struct xlb_nexthop *nh = bpf_map_lookup_elem(&nexthop_map, &id);

	if (!nh) {
		*reason = XLB_DROP_NO_ROUTE;
		return 0;
	}
	if (nh->ifindex && since(now, nh->checked) < SECOND_NS)
		return nh;

	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.l4_protocol = IPPROTO_TCP,
		.tot_len = tot_len,
		.ifindex = ctx->ingress_ifindex,
		.ipv4_src = cfg_snat_addr,
		.ipv4_dst = be->addr,
	};
	long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);

	nh->checked = now;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		/* Write only what changed: readers on other CPUs copy the MACs. */
		if (!mac_eq(nh->dmac, fib.dmac))
			__builtin_memcpy(nh->dmac, fib.dmac, ETH_ALEN);
		if (!mac_eq(nh->smac, fib.smac))
			__builtin_memcpy(nh->smac, fib.smac, ETH_ALEN);
		if (nh->ifindex != fib.ifindex)
			nh->ifindex = fib.ifindex;
		return nh;
	}
	if (nh->ifindex)
		return nh;
	*reason = rc == BPF_FIB_LKUP_RET_NO_NEIGH ? XLB_DROP_NEIGH_MISS : XLB_DROP_NO_ROUTE;
	return 0;
}

/* rewrite sets the packet's addresses, ports and MACs, updating both
 * checksums incrementally. */
static __always_inline void rewrite(struct eth_hdr *eth, struct ipv4_hdr *ip, struct tcp_hdr *tcp,
				    __be32 saddr, __be32 daddr, __be16 sport, __be16 dport,
				    const __u8 *smac, const __u8 *dmac)
{
	__u64 sum = csum_start(ip->check);

	sum = csum_swap32(sum, ip->saddr, saddr);
	sum = csum_swap32(sum, ip->daddr, daddr);
	ip->check = csum_fold(sum);

	sum = csum_start(tcp->check);
	sum = csum_swap32(sum, ip->saddr, saddr);
	sum = csum_swap32(sum, ip->daddr, daddr);
	sum = csum_swap16(sum, tcp->sport, sport);
	sum = csum_swap16(sum, tcp->dport, dport);
	tcp->check = csum_fold(sum);

	ip->saddr = saddr;
	ip->daddr = daddr;
	tcp->sport = sport;
	tcp->dport = dport;
	__builtin_memcpy(eth->dst, dmac, ETH_ALEN);
	__builtin_memcpy(eth->src, smac, ETH_ALEN);
}

/* send transmits a rewritten packet out of ifindex. */
static __always_inline int send(struct xdp_md *ctx, __u32 ifindex)
{
	if (ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(ifindex, 0);
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
