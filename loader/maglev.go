package loader

import (
	"hash/fnv"
	"net/netip"
	"slices"
)

// maglevSize is the Maglev table size of one service (MAGLEV_SIZE in bpf/maps.h).
const maglevSize = 65537

// maglevPerChunk and maglevChunks lay a table out in maglev_map
// (XLB_MAGLEV_PER_CHUNK and MAGLEV_CHUNKS in bpf/).
const (
	maglevPerChunk = 64
	maglevChunks   = (maglevSize + maglevPerChunk - 1) / maglevPerChunk
)

// The generated chunk must hold maglevPerChunk ids (a compile error if not).
var _ [maglevPerChunk]uint8 = xlbXlbMaglevChunk{}.Id

// maglevTable fills a table of size m (a prime) with the ids of backends,
// each getting an even share, as in Maglev (Eisenbud et al., NSDI 2016):
// every backend walks its own permutation of slots, taking turns, claiming
// the next free slot. The table depends only on the set of backends, so
// every LB node computes the same one, and removing a backend moves its
// slots and few others. An empty set gives an all-zero table.
func maglevTable(backends map[netip.AddrPort]uint32, m uint64) []uint32 {
	table := make([]uint32, m)
	if len(backends) == 0 {
		return table
	}
	names := make([]netip.AddrPort, 0, len(backends))
	for b := range backends {
		names = append(names, b)
	}
	slices.SortFunc(names, func(a, b netip.AddrPort) int { return a.Compare(b) })

	type perm struct{ offset, skip, next uint64 }
	perms := make([]perm, len(names))
	for i, b := range names {
		perms[i] = perm{offset: hashName(b, "offset") % m, skip: hashName(b, "skip")%(m-1) + 1}
	}
	filled := make([]bool, m)
	for n := uint64(0); ; {
		for i := range perms {
			p := &perms[i]
			slot := (p.offset + p.next*p.skip) % m
			for filled[slot] {
				p.next++
				slot = (p.offset + p.next*p.skip) % m
			}
			filled[slot] = true
			table[slot] = backends[names[i]]
			p.next++
			if n++; n == m {
				return table
			}
		}
	}
}

func hashName(b netip.AddrPort, salt string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(b.String()))
	h.Write([]byte{0})
	h.Write([]byte(salt))
	return h.Sum64()
}
