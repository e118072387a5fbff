/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * bench.c — the benchmark harness. BPF_PROG_TEST_RUN with Repeat runs a
 * program again on its own output, so this wrapper restores the input
 * packet from bench_pkt_map on every repeat (optionally giving each a new
 * client tuple) and tail-calls the program under test in bench_jmp_map.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* BENCH_PKT_LEN is the size of every benchmark packet. */
#define BENCH_PKT_LEN 74 /* 9 words and 2 bytes */

/* Offsets of the client address's low half and the client port. */
#define OFF_SADDR_LO (14 + 14)
#define OFF_SPORT (14 + 20)

/* bench_pkt is the packet to restore; vary != 0 gives each run a new tuple. */
struct bench_pkt {
	__u32 vary;
	__u32 seq;
	__u64 words[BENCH_PKT_LEN / 8];	/* the packet, 8 bytes at a time... */
	__u16 tail;			/* ...and its last 2 bytes */
};

/* bench_pkt_map holds the one input packet. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_pkt);
} bench_pkt_map SEC(".maps");

/* bench_jmp_map holds the program under test at index 0. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bench_jmp_map SEC(".maps");

SEC("xdp")
int xlb_bench(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 key = 0;
	struct bench_pkt *p;

	/* Reset the frame's length first: a program that grows or shrinks the
	 * frame would otherwise drift every repeat. A frame that shrank (a RST
	 * cut at the tail) is grown back at the tail; one that grew (an
	 * encapsulation prepends its header) is cut back at the front, so that
	 * its start returns to where the run began: cutting the tail instead
	 * would leave the start 20 bytes earlier every repeat until the
	 * headroom runs out. */
	int delta = BENCH_PKT_LEN - (int)(data_end - data);

	if (delta > 0 && bpf_xdp_adjust_tail(ctx, delta))
		return XDP_ABORTED;
	if (delta < 0 && bpf_xdp_adjust_head(ctx, -delta))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + BENCH_PKT_LEN > data_end)
		return XDP_ABORTED;
	p = bpf_map_lookup_elem(&bench_pkt_map, &key);
	if (!p)
		return XDP_ABORTED;
	/* Word copies: a byte-wise memcpy would dominate the floor. */
	__u64 *dst = data;
#pragma unroll
	for (int i = 0; i < BENCH_PKT_LEN / 8; i++)
		dst[i] = p->words[i];
	*(__u16 *)(data + BENCH_PKT_LEN - 2) = p->tail;
	if (p->vary) {
		__u32 seq = p->seq++;

		*(__be16 *)(data + OFF_SADDR_LO) = bpf_htons(seq >> 16);
		*(__be16 *)(data + OFF_SPORT) = bpf_htons((__u16)seq);
	}
	bpf_tail_call(ctx, &bench_jmp_map, 0);
	return XDP_ABORTED;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
