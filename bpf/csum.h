/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * csum.h — Internet checksums for XDP.
 *
 * XDP has no bpf_l4_csum_replace: incremental updates add ~old and new
 * words inline and fold; full sums (RSTs) use bpf_csum_diff
 * (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
 */
#ifndef XLB_CSUM_H
#define XLB_CSUM_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "parse.h"

/* csum_fold folds a ones' complement sum (up to 64 bits) and complements it. */
static __always_inline __sum16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__sum16)~sum;
}

/* csum_start opens an incremental update of check (RFC 1624, eqn. 3):
 * add ~old and new for every changed word, then csum_fold. One's complement
 * sums do not care about byte order, so words are added as loaded. */
static __always_inline __u64 csum_start(__sum16 check)
{
	return (__u16)~check;
}

static __always_inline __u64 csum_swap32(__u64 sum, __u32 old, __u32 new)
{
	return sum + (__u32)~old + new;
}

static __always_inline __u64 csum_swap16(__u64 sum, __u16 old, __u16 new)
{
	return sum + (__u16)~old + new;
}

/* ipv4_csum computes the checksum of a 20-byte IPv4 header whose check
 * field is zero. */
static __always_inline __sum16 ipv4_csum(struct ipv4_hdr *ip)
{
	return csum_fold((__u64)bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
}

struct pseudo_hdr {
	__be32 saddr;
	__be32 daddr;
	__u8 zero;
	__u8 proto;
	__be16 len;
};

/* tcp_csum20 computes the checksum of a 20-byte TCP segment without
 * payload whose check field is zero. */
static __always_inline __sum16 tcp_csum20(struct ipv4_hdr *ip, struct tcp_hdr *tcp)
{
	struct pseudo_hdr ph = {
		.saddr = ip->saddr,
		.daddr = ip->daddr,
		.proto = IPPROTO_TCP,
		.len = bpf_htons(sizeof(*tcp)),
	};
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);

	sum = bpf_csum_diff(0, 0, (__be32 *)tcp, sizeof(*tcp), (__u32)sum);
	return csum_fold((__u64)sum);
}

#endif /* XLB_CSUM_H */
