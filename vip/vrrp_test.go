package vip

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var (
	lb2Addr   = netip.MustParseAddr("172.20.0.22")
	vipAddr   = netip.MustParseAddr("172.20.0.100")
	otherAddr = netip.MustParseAddr("172.20.0.101")
)

// golden is what keepalived (vrrp_version 3, virtual_router_id 51,
// priority 100, advert_int 0.05, one virtual_ipaddress) sends from
// 172.20.0.22 to 224.0.0.18, built by hand from RFC 5798 §5.2. The
// checksum is the one's complement of the one's complement sum of the
// pseudo-header words ac14 0016 e000 0012 0070 000c and the message words
// 3133 6401 0005 0000 ac14 0064: 0x2ce69 folds to 0xce6b, whose
// complement is 0x3194.
var golden = []byte{
	0x31,       // version 3, type 1 (advertisement)
	51,         // VRID
	100,        // priority
	1,          // count of IPv4 addresses
	0x00, 0x05, // reserved 0, max advert interval 5 cs
	0x31, 0x94, // checksum
	172, 20, 0, 100, // 172.20.0.100
}

var goldenAdvert = &Advertisement{VRID: 51, Priority: 100, Interval: 50 * time.Millisecond, Addresses: []netip.Addr{vipAddr}}

func TestMarshal(t *testing.T) {
	tests := []struct {
		name    string
		a       *Advertisement
		src     netip.Addr
		dst     netip.Addr
		want    []byte
		wantErr error
	}{
		{name: "golden", a: goldenAdvert, src: lb2Addr, dst: MulticastGroup, want: golden},
		{
			name: "resign two addresses unicast one second",
			a:    &Advertisement{VRID: 7, Priority: 0, Interval: time.Second, Addresses: []netip.Addr{vipAddr, otherAddr}},
			src:  lb2Addr, dst: lb1Addr,
			// Pseudo-header ac14 0016 ac14 0015 0070 0010, message 3107
			// 0002 0064 0000 ac14 0064 ac14 0065: 0x2e331 folds to 0xe333,
			// whose complement is 0x1ccc.
			want: []byte{0x31, 7, 0, 2, 0x00, 0x64, 0x1c, 0xcc, 172, 20, 0, 100, 172, 20, 0, 101},
		},
		{
			name: "interval rounds to centiseconds",
			a:    &Advertisement{VRID: 51, Priority: 100, Interval: 46 * time.Millisecond, Addresses: []netip.Addr{vipAddr}},
			src:  lb2Addr, dst: MulticastGroup, want: golden,
		},
		{name: "no addresses", a: &Advertisement{VRID: 1, Priority: 1, Interval: MaxAdvertInterval}, src: lb2Addr, dst: MulticastGroup,
			want: []byte{0x31, 1, 1, 0, 0x0f, 0xff, 0x31, 0x4a}},
		{name: "zero interval", a: &Advertisement{VRID: 1, Priority: 1}, src: lb2Addr, dst: MulticastGroup, wantErr: ErrInterval},
		{name: "interval too long", a: &Advertisement{VRID: 1, Priority: 1, Interval: MaxAdvertInterval + centisecond}, src: lb2Addr, dst: MulticastGroup, wantErr: ErrInterval},
		{name: "ipv6 address", a: &Advertisement{VRID: 1, Priority: 1, Interval: time.Second, Addresses: []netip.Addr{netip.MustParseAddr("::1")}}, src: lb2Addr, dst: MulticastGroup, wantErr: ErrAddress},
		{name: "no source", a: goldenAdvert, dst: MulticastGroup, wantErr: ErrAddress},
		{name: "too many addresses", a: &Advertisement{VRID: 1, Priority: 1, Interval: time.Second, Addresses: make([]netip.Addr, 256)}, src: lb2Addr, dst: MulticastGroup, wantErr: ErrAddress},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.a.Marshal(tt.src, tt.dst)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Marshal error = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Marshal (-want +got):\n%s", diff)
			}
		})
	}
}

func TestUnmarshal(t *testing.T) {
	// patch returns golden with b[i] = v.
	patch := func(i int, v byte) []byte {
		b := bytes.Clone(golden)
		b[i] = v
		return b
	}
	tests := []struct {
		name    string
		b       []byte
		src     netip.Addr
		dst     netip.Addr
		want    *Advertisement
		wantErr error
	}{
		{name: "golden", b: golden, src: lb2Addr, dst: MulticastGroup, want: goldenAdvert},
		{
			// Reserved bits set: ignored on receipt (§5.2.6), but covered
			// by the checksum: the sum grows by 0xf000 to 0x3be69, which
			// folds to 0xbe6c, whose complement is 0x4193.
			name: "reserved bits ignored", b: append([]byte{0x31, 51, 100, 1, 0xf0, 0x05, 0x41, 0x93}, 172, 20, 0, 100),
			src: lb2Addr, dst: MulticastGroup, want: goldenAdvert,
		},
		{name: "wrong source", b: golden, src: lb1Addr, dst: MulticastGroup, wantErr: ErrChecksum},
		{name: "wrong destination", b: golden, src: lb2Addr, dst: lb1Addr, wantErr: ErrChecksum},
		{name: "flipped priority", b: patch(2, 101), src: lb2Addr, dst: MulticastGroup, wantErr: ErrChecksum},
		{name: "version 2", b: patch(0, 0x21), src: lb2Addr, dst: MulticastGroup, wantErr: ErrVersion},
		{name: "type 2", b: patch(0, 0x32), src: lb2Addr, dst: MulticastGroup, wantErr: ErrType},
		{name: "count too high", b: patch(3, 2), src: lb2Addr, dst: MulticastGroup, wantErr: ErrTruncated},
		{name: "trailing bytes", b: append(bytes.Clone(golden), 0, 0, 0, 0), src: lb2Addr, dst: MulticastGroup, wantErr: ErrTruncated},
		{name: "short header", b: golden[:7], src: lb2Addr, dst: MulticastGroup, wantErr: ErrTruncated},
		{name: "empty", src: lb2Addr, dst: MulticastGroup, wantErr: ErrTruncated},
		{name: "zero interval", b: patch(5, 0), src: lb2Addr, dst: MulticastGroup, wantErr: ErrInterval},
		{name: "ipv6 pseudo-header", b: golden, src: netip.MustParseAddr("fe80::1"), dst: MulticastGroup, wantErr: ErrAddress},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Unmarshal(tt.b, tt.src, tt.dst)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Unmarshal error = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("Unmarshal (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzUnmarshal checks that Unmarshal never panics and that whatever it
// accepts marshals back to the same bytes, but for the reserved bits,
// which it ignores.
func FuzzUnmarshal(f *testing.F) {
	f.Add(golden, []byte{172, 20, 0, 22}, []byte{224, 0, 0, 18})
	f.Add([]byte{0x31, 7, 0, 2, 0x00, 0x64, 0x1c, 0xcc, 172, 20, 0, 100, 172, 20, 0, 101}, []byte{172, 20, 0, 22}, []byte{172, 20, 0, 21})
	f.Add([]byte{0x31, 1, 1, 0, 0x0f, 0xff, 0x31, 0x4a}, []byte{172, 20, 0, 22}, []byte{224, 0, 0, 18})
	f.Add([]byte{0x21, 1, 1, 0}, []byte{0, 0, 0, 0}, []byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b, src4, dst4 []byte) {
		src, _ := netip.AddrFromSlice(src4)
		dst, _ := netip.AddrFromSlice(dst4)
		a, err := Unmarshal(b, src, dst)
		if err != nil {
			if a != nil {
				t.Fatalf("Unmarshal returned %+v with error %v", a, err)
			}
			return
		}
		got, err := a.Marshal(src, dst)
		if err != nil {
			t.Fatalf("Marshal of accepted %+v: %v", a, err)
		}
		want := bytes.Clone(b)
		if want[4]&0xf0 != 0 { // reserved bits: dropped, so the checksum differs too
			want[4] &= 0x0f
			want[6], want[7] = 0, 0
			sum := checksum(want, src, dst)
			want[6], want[7] = byte(sum>>8), byte(sum)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("round trip (-want +got):\n%s", diff)
		}
	})
}
