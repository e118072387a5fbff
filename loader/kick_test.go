package loader

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// TestProbePacket checks the kick's probe field by field and both
// checksums from scratch (a packet with a bad one is dropped by the
// client's stack, and the client would never answer).
func TestProbePacket(t *testing.T) {
	src := netip.MustParseAddrPort("172.20.0.100:3000")
	dst := netip.MustParseAddrPort("172.20.0.50:51044")
	b := ProbePacket(src, dst, 0x80000001, 0x12345678)
	if len(b) != 40 || b[0] != 0x45 || b[9] != 6 || binary.BigEndian.Uint16(b[2:]) != 40 {
		t.Fatalf("not a 40-byte IPv4/TCP packet: % x", b)
	}
	if got := fold(sum(b[:20])); got != 0xffff {
		t.Errorf("IPv4 header checksum does not verify: folded sum %#x", got)
	}
	tcp := b[20:]
	pseudo := append(append(append([]byte{}, b[12:20]...), 0, 6), 0, byte(len(tcp)))
	if got := fold(sum(pseudo) + sum(tcp)); got != 0xffff {
		t.Errorf("TCP checksum does not verify: folded sum %#x", got)
	}
	if sp, dp := binary.BigEndian.Uint16(tcp[0:]), binary.BigEndian.Uint16(tcp[2:]); sp != 3000 || dp != 51044 {
		t.Errorf("ports %d -> %d, want 3000 -> 51044", sp, dp)
	}
	if seq, ack := binary.BigEndian.Uint32(tcp[4:]), binary.BigEndian.Uint32(tcp[8:]); seq != 0x80000001 || ack != 0x12345678 {
		t.Errorf("seq %#x ack %#x", seq, ack)
	}
	if tcp[13] != 0x10 || tcp[12]>>4 != 5 {
		t.Errorf("flags %#x data offset %d, want a bare ACK with a 20-byte header", tcp[13], tcp[12]>>4)
	}
}
