/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * config.h — runtime settings, set from Go with spec.Variables[...].Set
 * before load (no recompilation). Addresses and ports in network order,
 * except the SNAT range bounds, which are host order.
 */
#ifndef XLB_CONFIG_H
#define XLB_CONFIG_H

#include <linux/types.h>

volatile const __be32 cfg_vip = 0;		/* the virtual IP */
volatile const __be16 cfg_port_rw = 0;		/* read/write port (3000) */
volatile const __be16 cfg_port_ro = 0;		/* read-only port (3001) */
volatile const __be32 cfg_snat_addr = 0;	/* this LB node's own address */
volatile const __u16 cfg_snat_port_min = 0;	/* SNAT range, inclusive */
volatile const __u16 cfg_snat_port_max = 0;
/* A closed flow's SNAT port is taken back after this linger. */
volatile const __u64 cfg_closed_timeout_ns = 10ULL * 1000000000ULL;
/* A flow never established (no client ACK after the backend's SYN-ACK)
 * gives its SNAT port back after this long; under pressure (no free port
 * for a SYN) the oldest half-open flow among the probed ports goes first. */
volatile const __u64 cfg_half_open_timeout_ns = 10ULL * 1000000000ULL;
/* An idle established flow's SNAT port is taken back after this long. */
volatile const __u64 cfg_idle_timeout_ns = 24ULL * 3600 * 1000000000ULL;

/* Non-zero: the VIP is owned only while lease_map holds a live lease. */
volatile const __u8 cfg_lease = 0;
/* flow_map's size minus one (its size is a power of two the loader sets). */
volatile const __u32 cfg_flow_mask = (1 << 18) - 1;

#endif /* XLB_CONFIG_H */
