package vip

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// ipPacket is an IPv4 header (TTL 255, protocol 112, 172.20.0.22 >
// 224.0.0.18) followed by golden, as a raw socket delivers it.
func ipPacket() []byte {
	h := []byte{
		0x45, 0xc0, 0x00, 0x20, // version 4, IHL 5, TOS, total length 32
		0x12, 0x34, 0x00, 0x00, // ID, no flags, offset 0
		0xff, 0x70, 0x00, 0x00, // TTL 255, protocol 112, checksum
		172, 20, 0, 22,
		224, 0, 0, 18,
	}
	return append(h, golden...)
}

func TestParseIPv4(t *testing.T) {
	withOptions := ipPacket()
	withOptions[0] = 0x46 // IHL 6: one word of options
	withOptions = append(withOptions[:20:20], append([]byte{1, 1, 1, 0}, golden...)...)
	tests := []struct {
		name string
		edit func([]byte) []byte
		msg  []byte
		h    Header
		ok   bool
	}{
		{name: "advertisement", edit: func(b []byte) []byte { return b }, msg: golden, h: Header{Src: lb2Addr, Dst: MulticastGroup, TTL: 255}, ok: true},
		{name: "options skipped", edit: func([]byte) []byte { return withOptions }, msg: golden, h: Header{Src: lb2Addr, Dst: MulticastGroup, TTL: 255}, ok: true},
		{name: "ttl reported", edit: func(b []byte) []byte { b[8] = 64; return b }, msg: golden, h: Header{Src: lb2Addr, Dst: MulticastGroup, TTL: 64}, ok: true},
		{name: "more fragments", edit: func(b []byte) []byte { b[6] = 0x20; return b }},
		{name: "fragment offset", edit: func(b []byte) []byte { b[7] = 1; return b }},
		{name: "ipv6", edit: func(b []byte) []byte { b[0] = 0x65; return b }},
		{name: "IHL too small", edit: func(b []byte) []byte { b[0] = 0x44; return b }},
		{name: "IHL past the end", edit: func(b []byte) []byte { b[0] = 0x4f; return b[:40] }},
		{name: "short", edit: func(b []byte) []byte { return b[:19] }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, h, ok := parseIPv4(tt.edit(ipPacket()))
			if ok != tt.ok {
				t.Fatalf("parseIPv4 ok = %v, want %v", ok, tt.ok)
			}
			if diff := cmp.Diff(tt.msg, msg); diff != "" {
				t.Errorf("payload (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.h, h, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("header (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzParseIPv4 checks that parseIPv4 never panics and that a payload it
// returns lies within the packet, after a header of at least 20 bytes.
func FuzzParseIPv4(f *testing.F) {
	f.Add(ipPacket())
	f.Add([]byte{0x4f, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		msg, _, ok := parseIPv4(b)
		if !ok {
			return
		}
		if len(msg) > len(b)-ipv4HeaderLen {
			t.Fatalf("payload of %d bytes from a %d-byte packet", len(msg), len(b))
		}
	})
}
