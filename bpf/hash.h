/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * hash.h — a 3-word hash for flow tuples (Bob Jenkins' lookup3 final mix,
 * public domain). Go computes the same function in loader/hash.go.
 */
#ifndef XLB_HASH_H
#define XLB_HASH_H

#include <linux/types.h>

#define HASH_SEED_MAGLEV 0x9e3779b9
#define HASH_SEED_SNAT 0x85ebca6b

static __always_inline __u32 rol32(__u32 w, __u32 s)
{
	return (w << s) | (w >> (32 - s));
}

static __always_inline __u32 hash_3words(__u32 a, __u32 b, __u32 c, __u32 seed)
{
	a += 0xdeadbeef + 12 + seed;
	b += 0xdeadbeef + 12 + seed;
	c += 0xdeadbeef + 12 + seed;
	c ^= b; c -= rol32(b, 14);
	a ^= c; a -= rol32(c, 11);
	b ^= a; b -= rol32(a, 25);
	c ^= b; c -= rol32(b, 16);
	a ^= c; a -= rol32(c, 4);
	b ^= a; b -= rol32(a, 14);
	c ^= b; c -= rol32(b, 24);
	return c;
}

#endif /* XLB_HASH_H */
