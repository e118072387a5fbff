package loader_test

import (
	"bytes"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/xlb-dev/xlb/loader"
)

// TestMalformedDropped runs malformed packets for the VIP through the
// datapath: each is dropped and counted under its reason, exactly once.
func TestMalformedDropped(t *testing.T) {
	f := newFixture(t, snatPorts)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{ap(pg1, 5432)}); err != nil {
		t.Fatal(err)
	}
	base := clientPkt(40000, 3000, ack, []byte("0123456789"))
	tests := []struct {
		name   string
		in     pkt
		reason string
		svc    *loader.Service // nil: counted as global
	}{
		{"tcp header truncated", func() pkt { p := base; p.payload = nil; p.truncate = 10; p.totLenAdd = -10; return p }(), "truncated", svcp(loader.RW)},
		{"tcp ports truncated", func() pkt { p := base; p.payload = nil; p.truncate = 18; p.totLenAdd = -18; return p }(), "truncated", nil},
		{"ihl below 5", func() pkt { p := base; p.ihl = 4; return p }(), "bad_ihl", nil},
		{"ip options", func() pkt { p := base; p.ipOpts = []byte{1, 1, 1, 0}; return p }(), "ip_options", svcp(loader.RW)},
		{"more fragments", func() pkt { p := base; p.fragOff = 0x2000; return p }(), "fragment", nil},
		{"fragment offset", func() pkt { p := base; p.fragOff = 0x0010; return p }(), "fragment", nil},
		{"total length past frame", func() pkt { p := base; p.totLenAdd = 100; return p }(), "bad_len", nil},
		{"total length below header", func() pkt { p := base; p.totLenAdd = -60; return p }(), "bad_len", nil},
		{"frame cut short", func() pkt { p := base; p.truncate = 4; return p }(), "bad_len", nil},
		{"udp to rw port", func() pkt { p := base; p.proto = 17; return p }(), "not_tcp", svcp(loader.RW)},
		{"udp to ro port", func() pkt { p := base; p.proto = 17; p.dport = 3001; return p }(), "not_tcp", svcp(loader.RO)},
		{"tcp data offset below 5", func() pkt { p := base; p.doff = 4; return p }(), "bad_tcp_hdr", svcp(loader.RW)},
		{"tcp data offset past packet", func() pkt { p := base; p.doff = 15; return p }(), "bad_tcp_hdr", svcp(loader.RW)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dropCount(t, f, tt.svc, tt.reason)
			v, _ := f.run(t, tt.in.build())
			wantVerdict(t, v, xdpDrop)
			if got := dropCount(t, f, tt.svc, tt.reason) - before; got != 1 {
				t.Fatalf("%s drops grew by %d, want 1", tt.reason, got)
			}
		})
	}
	flows, err := f.dp.Flows()
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 0 {
		t.Fatalf("malformed packets created flows: %v", flows)
	}
	st, _ := f.dp.Stats()
	if st.Total.Packets != 0 {
		t.Fatalf("%d malformed packets were forwarded", st.Total.Packets)
	}
}

func svcp(s loader.Service) *loader.Service { return &s }

func dropCount(t *testing.T, f *fixture, svc *loader.Service, reason string) uint64 {
	t.Helper()
	st, err := f.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if svc == nil {
		return st.Global.Drops[reason]
	}
	return st.Services[*svc].Drops[reason]
}

// TestNotForUsPasses checks that traffic not for VIP:3000/3001 passes
// byte-identical and touches no counter.
func TestNotForUsPasses(t *testing.T) {
	f := newFixture(t, snatPorts)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{ap(pg1, 5432)}); err != nil {
		t.Fatal(err)
	}
	arp := append(append(append([]byte{}, lbMAC...), clientMAC...), 0x08, 0x06,
		0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 0x50, 172, 20, 0, 50, 0, 0, 0, 0, 0, 0, 172, 20, 0, 100)
	ipv6 := append(append(append([]byte{}, lbMAC...), clientMAC...), 0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, 6, 64)
	tests := []struct {
		name string
		in   []byte
	}{
		{"tcp to another address, port 3000", func() pkt { p := clientPkt(40000, 3000, syn, nil); p.dst = other; return p }().build()},
		{"ssh to the vip", clientPkt(40000, 22, syn, nil).build()},
		{"postgres port on the vip", clientPkt(40000, 5432, syn, nil).build()},
		{"ssh to the lb", func() pkt { p := clientPkt(40000, 22, ack, []byte("x")); p.dst = lbAddr; return p }().build()},
		{"lb's own connection, port outside snat range", replyOf(ap(pg1, 5432), 40000, ack).build()},
		{"backend reply without a flow", replyOf(ap(pg1, 5432), 20001, ack).build()},
		{"icmp echo to the vip", func() pkt { p := clientPkt(0, 0, 0, []byte{8, 0, 0xf7, 0xff, 0, 0, 0, 0}); p.proto = 1; return p }().build()},
		{"udp to the vip, other port", func() pkt { p := clientPkt(40000, 53, 0, []byte("q")); p.proto = 17; return p }().build()},
		{"arp request for the vip", arp},
		{"ipv6", ipv6},
		{"runt frame", []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}},
		{"ipv4 header cut short", clientPkt(40000, 3000, syn, nil).build()[:14+12]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, out := f.run(t, tt.in)
			wantVerdict(t, v, xdpPass)
			if !bytes.Equal(out, tt.in) {
				t.Fatalf("packet changed\n got %x\nwant %x", out, tt.in)
			}
		})
	}
	st, err := f.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Total.Packets != 0 || st.Total.DropTotal() != 0 {
		t.Fatalf("passed traffic was counted: %+v", st.Total)
	}
}

// TestReadPoolSpread runs 3000 flows to VIP:3001 over three replicas:
// each gets a fair share, a tuple always maps to the same replica, and
// removing a replica moves only its own flows.
func TestReadPoolSpread(t *testing.T) {
	f := newFixture(t, snatPorts)
	replicas := []netip.AddrPort{ap(pg1, 5432), ap(pg2, 5432), ap(pg3, 5432)}
	if err := f.dp.SetBackends(loader.RO, replicas); err != nil {
		t.Fatal(err)
	}
	const n = 3000
	tuple := func(i int) pkt {
		p := clientPkt(uint16(30000+i%30000), 3001, syn, nil)
		a := client.As4()
		a[2] = byte(i / 250)
		a[3] = byte(1 + i%250)
		p.src = netip.AddrFrom4(a)
		return p
	}
	first := make([]netip.AddrPort, n)
	count := map[netip.AddrPort]int{}
	for i := range n {
		be, _ := forward(t, f, tuple(i))
		first[i] = be
		count[be]++
	}
	for _, r := range replicas {
		if c := count[r]; c < n/3*8/10 || c > n/3*12/10 {
			t.Errorf("%v got %d of %d flows, want within ±20%% of %d", r, c, n, n/3)
		}
	}
	t.Logf("spread: %v", count)

	// Same tuple, same backend: after a flush, by hashing alone.
	if _, err := f.dp.FlushFlows(); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		if be, _ := forward(t, f, tuple(i)); be != first[i] {
			t.Fatalf("tuple %d went to %v, then %v", i, first[i], be)
		}
	}

	// Re-establish all flows, then remove pg3: established flows of pg1 and
	// pg2 keep their backend (conntrack), pg3's get a RST.
	for i := 300; i < n; i++ {
		forward(t, f, tuple(i))
	}
	if _, err := f.dp.RemoveBackend(ap(pg3, 5432)); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		p := tuple(i)
		p.flags, p.seq = ack, 1001
		if first[i] == ap(pg3, 5432) {
			v, out := f.run(t, p.build())
			wantVerdict(t, v, xdpTX)
			if r, err := parseTCP(out); err != nil || r.flags&rst == 0 {
				t.Fatalf("flow %d of the removed backend: got %+v (%v), want a RST", i, r, err)
			}
			continue
		}
		if be, _ := forward(t, f, p); be != first[i] {
			t.Fatalf("established flow %d moved from %v to %v", i, first[i], be)
		}
	}

	// By hashing alone (flows flushed), only pg3's tuples move.
	if _, err := f.dp.FlushFlows(); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for i := range n {
		be, _ := forward(t, f, tuple(i))
		if be == ap(pg3, 5432) {
			t.Fatalf("tuple %d went to the removed backend", i)
		}
		if first[i] != ap(pg3, 5432) && be != first[i] {
			moved++
		}
	}
	if moved > n/100 {
		t.Fatalf("%d flows of the remaining backends moved by hash, want at most 1%%", moved)
	}
	t.Logf("flows of remaining backends moved by hash: %d of %d", moved, n)
}

// TestRSTWithoutFlow checks the fast failures: a non-SYN packet without a
// flow, a packet of a flow whose backend was removed, and a SYN for a
// service without backends each get a valid RST back to the client.
func TestRSTWithoutFlow(t *testing.T) {
	f := newFixture(t, snatPorts)
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	checkRST := func(t *testing.T, in pkt, wantSeq, wantAck uint32, wantFlags uint8) {
		t.Helper()
		v, out := f.run(t, in.build())
		wantVerdict(t, v, xdpTX)
		want := pkt{srcMAC: lbMAC, dstMAC: clientMAC, src: vip, sport: in.dport, dst: in.src, dport: in.sport,
			seq: wantSeq, ack: wantAck, flags: wantFlags, id: 0, fragOff: 0x4000, window: 0}
		got := want.build()
		got[14+20+14], got[14+20+15] = 0, 0 // window 0: build defaults it
		binWindowZero(got)
		if !bytes.Equal(out, got) {
			t.Fatalf("RST differs\n got %x\nwant %x", out, got)
		}
		if _, err := parseTCP(out); err != nil {
			t.Fatalf("RST: %v", err)
		}
	}

	t.Run("ack without flow", func(t *testing.T) {
		in := clientPkt(41000, 3000, ack|psh, []byte("hello"))
		checkRST(t, in, in.ack, 0, rst)
	})
	t.Run("fin without flow or ack", func(t *testing.T) {
		in := clientPkt(41001, 3000, fin, []byte("abc"))
		checkRST(t, in, 0, in.seq+3+1, rst|ack)
	})
	t.Run("rst without flow is dropped silently", func(t *testing.T) {
		v, _ := f.run(t, clientPkt(41002, 3000, rst, nil).build())
		wantVerdict(t, v, xdpDrop)
	})
	t.Run("backend removed", func(t *testing.T) {
		forward(t, f, clientPkt(41003, 3000, syn, nil))
		if _, err := f.dp.RemoveBackend(primary); err != nil {
			t.Fatal(err)
		}
		in := clientPkt(41003, 3000, ack, []byte("SELECT 1"))
		checkRST(t, in, in.ack, 0, rst)
	})
	t.Run("syn without backends", func(t *testing.T) {
		in := clientPkt(41004, 3001, syn, nil)
		checkRST(t, in, 0, in.seq+1, rst|ack)
	})
	st, err := f.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Services[loader.RW].RSTs + st.Services[loader.RO].RSTs; got != 4 {
		t.Fatalf("%d RSTs counted, want 4", got)
	}
	if got := st.Services[loader.RO].Drops["no_backend"]; got != 1 {
		t.Fatalf("no_backend drops %d, want 1", got)
	}
}

// binWindowZero recomputes the TCP checksum of a 54-byte RST whose window
// was zeroed after building.
func binWindowZero(b []byte) {
	tcp := b[34:54]
	tcp[16], tcp[17] = 0, 0
	c := checksum(tcp, pseudoSum([4]byte(b[26:30]), [4]byte(b[30:34]), 6, 20))
	tcp[16], tcp[17] = byte(c>>8), byte(c)
}

// TestSNATExhaustion gives the datapath four SNAT ports and five flows to
// one backend: with the four established, the fifth SYN is dropped and
// counted, and the four flows keep their ports.
func TestSNATExhaustion(t *testing.T) {
	f := newFixture(t, loader.PortRange{Min: 20000, Max: 20003})
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	ports := map[uint16]uint16{}
	used := map[uint16]bool{}
	for i := range uint16(4) {
		v, out := f.run(t, clientPkt(42000+i, 3000, syn, nil).build())
		wantVerdict(t, v, xdpTX)
		p, err := parseTCP(out)
		if err != nil {
			t.Fatal(err)
		}
		if used[p.src.Port()] {
			t.Fatalf("flow %d got SNAT port %d, already in use", i, p.src.Port())
		}
		used[p.src.Port()] = true
		ports[42000+i] = p.src.Port()
		establish(t, f, primary, 42000+i, p.src.Port())
	}
	v, _ := f.run(t, clientPkt(42004, 3000, syn, nil).build())
	wantVerdict(t, v, xdpDrop)
	st, err := f.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Services[loader.RW].Drops["snat_exhausted"]; got != 1 {
		t.Fatalf("snat_exhausted %d, want 1", got)
	}
	for cport, sport := range ports {
		p := clientPkt(cport, 3000, ack, []byte("x"))
		_, gotPort := forward(t, f, p)
		if gotPort != sport {
			t.Fatalf("flow from %d moved from SNAT port %d to %d", cport, sport, gotPort)
		}
		reply := replyOf(primary, sport, ack)
		v, out := f.run(t, reply.build())
		wantVerdict(t, v, xdpTX)
		r, err := parseTCP(out)
		if err != nil {
			t.Fatal(err)
		}
		if r.dst != ap(client, cport) || r.src != ap(vip, 3000) {
			t.Fatalf("reply on port %d went %v -> %v, want %v -> %v", sport, r.src, r.dst, ap(vip, 3000), ap(client, cport))
		}
	}
}

// TestCutService promotes a replica in the datapath's eyes: pg2 serves
// both pools, then leaves the read pool with CutService. Its readers get a
// RST at their next packet, its writers and pg3's readers go on, new reads
// never reach pg2, and CutService returns exactly the cut flows.
func TestCutService(t *testing.T) {
	f := newFixture(t, snatPorts)
	pg2b, pg3b := ap(pg2, 5432), ap(pg3, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{pg2b}); err != nil {
		t.Fatal(err)
	}
	if err := f.dp.SetBackends(loader.RO, []netip.AddrPort{pg2b, pg3b}); err != nil {
		t.Fatal(err)
	}
	type open struct {
		p  pkt
		be netip.AddrPort
	}
	var flows []open
	for i := range 200 {
		port := uint16(3001)
		if i%4 == 0 {
			port = 3000
		}
		p := clientPkt(uint16(20000+i), port, syn, nil)
		be, _ := forward(t, f, p)
		flows = append(flows, open{p, be})
	}
	want := 0
	for _, o := range flows {
		if o.p.dport == 3001 && o.be == pg2b {
			want++
		}
	}
	if want == 0 {
		t.Fatal("no read went to pg2: the test would prove nothing")
	}
	cut, err := f.dp.CutService(loader.RO, pg2b)
	if err != nil {
		t.Fatal(err)
	}
	if len(cut) != want {
		t.Errorf("CutService returned %d flows, want the %d reads on pg2", len(cut), want)
	}
	for _, c := range cut {
		if c.Backend != pg2b || c.Service != loader.RO {
			t.Errorf("cut flow %+v: want only pg2's reads", c)
		}
	}
	for _, o := range flows {
		p := o.p
		p.flags, p.seq = ack, 1001
		if o.p.dport == 3001 && o.be == pg2b {
			v, out := f.run(t, p.build())
			wantVerdict(t, v, xdpTX)
			if r, err := parseTCP(out); err != nil || r.flags&rst == 0 {
				t.Fatalf("a cut read of pg2: got %+v (%v), want a RST", r, err)
			}
			continue
		}
		if be, _ := forward(t, f, p); be != o.be {
			t.Fatalf("flow to %v (port %d) moved to %v", o.be, o.p.dport, be)
		}
	}
	if got := f.dp.Pool(loader.RO); !slices.Equal(got, []netip.AddrPort{pg3b}) {
		t.Errorf("read pool after the cut: %v, want [%v]", got, pg3b)
	}
	for i := range 100 {
		if be, _ := forward(t, f, clientPkt(uint16(40000+i), 3001, syn, nil)); be != pg3b {
			t.Fatalf("a new read went to %v after pg2 left the read pool", be)
		}
	}
	if _, err := f.dp.CutService(loader.RO, ap(pg1, 5432)); !errors.Is(err, loader.ErrUnknownBackend) {
		t.Errorf("CutService of an unknown backend: %v, want ErrUnknownBackend", err)
	}
}

// TestCutBit: the cut bit alone (set before CutService walks the table)
// resets the marked service's flows of a backend at their next packet and
// leaves its other service's flows alone; the backend's return to the
// pool clears it, and SetBackends of the other service keeps it.
func TestCutBit(t *testing.T) {
	f := newFixture(t, snatPorts)
	pg2b := ap(pg2, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{pg2b}); err != nil {
		t.Fatal(err)
	}
	if err := f.dp.SetBackends(loader.RO, []netip.AddrPort{pg2b}); err != nil {
		t.Fatal(err)
	}
	rw, ro := clientPkt(21000, 3000, syn, nil), clientPkt(21001, 3001, syn, nil)
	forward(t, f, rw)
	forward(t, f, ro)
	if err := f.dp.MarkCut(loader.RO, pg2b); err != nil {
		t.Fatal(err)
	}
	// The RW pool written again (ensureID re-arms the backend): the bit stays.
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{pg2b}); err != nil {
		t.Fatal(err)
	}
	rw.flags, rw.seq = ack, 1001
	ro.flags, ro.seq = ack, 1001
	if be, _ := forward(t, f, rw); be != pg2b {
		t.Fatalf("the write flow went to %v", be)
	}
	v, out := f.run(t, ro.build())
	wantVerdict(t, v, xdpTX)
	if r, err := parseTCP(out); err != nil || r.flags&rst == 0 {
		t.Fatalf("the marked read flow: got %+v (%v), want a RST", r, err)
	}
	// Back in the read pool: new reads reach pg2 again.
	if err := f.dp.SetBackends(loader.RO, []netip.AddrPort{pg2b}); err != nil {
		t.Fatal(err)
	}
	again := clientPkt(21002, 3001, syn, nil)
	forward(t, f, again)
	again.flags, again.seq = ack, 1001
	if be, _ := forward(t, f, again); be != pg2b {
		t.Fatalf("a read after pg2 came back went to %v", be)
	}
}
