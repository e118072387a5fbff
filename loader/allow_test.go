package loader_test

import (
	"net/netip"
	"testing"

	"github.com/xlb-dev/xlb/loader"
)

// TestAllowSources limits each service to its prefixes: SYNs from outside
// are dropped and counted, established flows stay, and lifting the limit
// lets everyone in again.
func TestAllowSources(t *testing.T) {
	f := newFixture(t, snatPorts)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{ap(pg1, 5432)}); err != nil {
		t.Fatal(err)
	}
	if err := f.dp.SetBackends(loader.RO, []netip.AddrPort{ap(pg2, 5432)}); err != nil {
		t.Fatal(err)
	}
	from := func(src string, cport, port uint16) pkt {
		p := clientPkt(cport, port, syn, nil)
		p.src = netip.MustParseAddr(src)
		return p
	}
	_, estPort := forward(t, f, from("10.1.2.3", 51000, 3000)) // made before the limit
	if err := f.dp.SetAllowSources(loader.RW, []netip.Prefix{netip.MustParsePrefix("172.20.0.0/24"), netip.MustParsePrefix("10.8.0.7/32")}); err != nil {
		t.Fatal(err)
	}
	if err := f.dp.SetAllowSources(loader.RO, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		in    pkt
		allow bool
	}{
		{"rw, inside the /24", from("172.20.0.50", 51001, 3000), true},
		{"rw, the /32", from("10.8.0.7", 51002, 3000), true},
		{"rw, next to the /32", from("10.8.0.8", 51003, 3000), false},
		{"rw, outside", from("192.0.2.1", 51004, 3000), false},
		{"ro, inside the /8", from("10.8.0.8", 51005, 3001), true},
		{"ro, outside", from("172.20.0.50", 51006, 3001), false},
	}
	refused := uint64(0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.allow {
				v, _ := f.run(t, tt.in.build())
				wantVerdict(t, v, xdpTX)
				return
			}
			refused++
			v, _ := f.run(t, tt.in.build())
			wantVerdict(t, v, xdpDrop)
		})
	}
	st, _ := f.dp.Stats()
	if got := st.Services[loader.RW].Drops["not_allowed"] + st.Services[loader.RO].Drops["not_allowed"]; got != refused {
		t.Fatalf("not_allowed drops %d, want %d", got, refused)
	}
	// The flow from before the limit keeps going.
	est := clientPkt(51000, 3000, ack, []byte("x"))
	est.src = netip.MustParseAddr("10.1.2.3")
	v, out := f.run(t, est.build())
	wantVerdict(t, v, xdpTX)
	if p, err := parseTCP(out); err != nil || p.src.Port() != estPort {
		t.Fatalf("established flow: %+v %v, want SNAT port %d", p, err, estPort)
	}
	// Narrowing rw to the /32 drops the /24; lifting it opens everything.
	if err := f.dp.SetAllowSources(loader.RW, []netip.Prefix{netip.MustParsePrefix("10.8.0.7/32")}); err != nil {
		t.Fatal(err)
	}
	v, _ = f.run(t, from("172.20.0.50", 51007, 3000).build())
	wantVerdict(t, v, xdpDrop)
	if err := f.dp.SetAllowSources(loader.RW, nil); err != nil {
		t.Fatal(err)
	}
	v, _ = f.run(t, from("192.0.2.1", 51008, 3000).build())
	wantVerdict(t, v, xdpTX)
}
