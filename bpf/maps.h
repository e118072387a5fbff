/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * maps.h — the BPF maps of the datapath and their sizes.
 *
 * Every map is pinned by name under the loader's pin path, so a restarted
 * daemon re-opens the same flows, backends and counters.
 */
#ifndef XLB_MAPS_H
#define XLB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "structs.h"

/* MAX_FLOWS is the default size of the forward conntrack table (one entry
 * a flow); the loader sets the real one (conntrack.max_flows, a power of
 * two, with cfg_flow_mask). Keep it well above the flows expected, as in
 * any hash table. */
#ifndef MAX_FLOWS
#define MAX_FLOWS (1 << 18)
#endif

/* MAX_BACKENDS bounds backend ids; id 0 means "no backend". */
#ifndef MAX_BACKENDS
#define MAX_BACKENDS 64
#endif

/* MAGLEV_SIZE is the Maglev lookup table size per service, a prime much
 * larger than MAX_BACKENDS so each backend's share is within 1 %. */
#ifndef MAGLEV_SIZE
#define MAGLEV_SIZE 65537
#endif

/* MAGLEV_CHUNKS is the maglev_map elements of one service's table. */
#define MAGLEV_CHUNKS ((MAGLEV_SIZE + XLB_MAGLEV_PER_CHUNK - 1) / XLB_MAGLEV_PER_CHUNK)

_Static_assert(MAX_BACKENDS <= 256, "maglev_map holds backend ids in a byte");

/* MAX_ALLOW bounds the allow_sources prefixes of all services. */
#ifndef MAX_ALLOW
#define MAX_ALLOW 1024
#endif

#define STATS_SLOTS (XLB_STATS_BACKEND + MAX_BACKENDS)

/* FLOW_PROBES bounds the entries a flow_map lookup or insert probes. */
#define FLOW_PROBES 16

/* flow_map is the forward conntrack: an open-addressed hash table (linear
 * probing from the tuple's hash, tombstones on delete) of xlb_flow, in an
 * array so that a new flow takes no lock: it claims an entry with a
 * compare-and-swap. Entries of dead or expired flows are taken back by
 * inserts; nothing is evicted behind a live flow's back. MAX_FLOWS must be
 * a power of two. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_FLOWS);
	__type(key, __u32);
	__type(value, struct xlb_flow);
	/* User space reads the table through mmap: a cut walks all of it,
	 * and a syscall per batch of elements took ~80 ms. */
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flow_map SEC(".maps");

/* snat_map is the reverse direction: one slot per (backend id, SNAT port),
 * index id * range + port - min. The loader sizes it to MAX_BACKENDS times
 * the SNAT range before load (1 here only so the object loads unsized). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xlb_snat);
	/* Read through mmap too: a walk reads one slot per live flow. */
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} snat_map SEC(".maps");

/* snat_cursor_map holds this CPU's port cursor of each backend id (see
 * struct xlb_snat_cursor). Not pinned: after a restart claims start
 * anywhere. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct xlb_snat_cursor);
} snat_cursor_map SEC(".maps");

/* backend_id_map maps a backend's address to its id, for replies. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, struct xlb_backend_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backend_id_map SEC(".maps");

/* nexthop_map holds each backend's next hop, by backend id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct xlb_nexthop);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nexthop_map SEC(".maps");

/* svc_map holds per-service runtime settings, by enum xlb_service. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_SVC__MAX);
	__type(key, __u32);
	__type(value, struct xlb_svc_conf);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} svc_map SEC(".maps");

/* allow_map holds the allow_sources prefixes of every service. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_ALLOW);
	__type(key, struct xlb_allow_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} allow_map SEC(".maps");

/* layout_map holds the hash of every pinned map's layout, written by the
 * loader: a daemon built with other layouts refuses to reuse the pins. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} layout_map SEC(".maps");

/* backend_map holds the backends by id: address, port and flags. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct xlb_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backend_map SEC(".maps");

/* maglev_map is each service's Maglev table, a byte per slot: slot s of
 * service svc is id[s % XLB_MAGLEV_PER_CHUNK] of element svc *
 * MAGLEV_CHUNKS + s / XLB_MAGLEV_PER_CHUNK, a backend id (0: the service
 * has no backend). Bytes, not words: a service's table is 64 KiB, so a
 * flood of new flows, each reading a random slot, finds it in cache. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_SVC__MAX * MAGLEV_CHUNKS);
	__type(key, __u32);
	__type(value, struct xlb_maglev_chunk);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} maglev_map SEC(".maps");

/* stats_map holds per-CPU counters, laid out by enum xlb_stats_slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STATS_SLOTS);
	__type(key, enum xlb_stats_slot);	/* XLB_STATS_BACKEND + id for backends */
	__type(value, struct xlb_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats_map SEC(".maps");

/* lease_map holds this node's VIP lease (one entry). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xlb_lease);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lease_map SEC(".maps");

#endif /* XLB_MAPS_H */
