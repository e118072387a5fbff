package loader_test

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/xlb-dev/xlb/loader"
)

// establish completes the handshake of the flow from cport whose SYN went
// to backend on SNAT port snat: the backend's SYN-ACK reaches the client,
// the client's ACK reaches the backend.
func establish(t *testing.T, f *fixture, backend netip.AddrPort, cport, snat uint16) {
	t.Helper()
	reply(t, f, backend, snat, syn|ack, cport)
	if _, p := forward(t, f, clientPkt(cport, 3000, ack, nil)); p != snat {
		t.Fatalf("flow from %d moved from SNAT port %d to %d", cport, snat, p)
	}
}

// reply sends the backend's packet on SNAT port snat and checks it reaches
// the client on port cport (VIP:3000 as its source), checksums valid.
func reply(t *testing.T, f *fixture, backend netip.AddrPort, snat uint16, flags uint8, cport uint16) {
	t.Helper()
	in := replyOf(backend, snat, flags)
	v, out := f.run(t, in.build())
	wantVerdict(t, v, xdpTX)
	r, err := parseTCP(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.src != ap(vip, 3000) || r.dst != ap(client, cport) || r.flags != flags {
		t.Fatalf("reply on port %d: %v -> %v flags %#x, want %v -> %v flags %#x", snat, r.src, r.dst, r.flags,
			ap(vip, 3000), ap(client, cport), flags)
	}
	if r.dstMAC != clientMAC.String() || r.srcMAC != lbMAC.String() {
		t.Fatalf("reply MACs %s -> %s, want %s -> %s", r.srcMAC, r.dstMAC, lbMAC, clientMAC)
	}
}

// expectRST runs in and wants a RST back out of the interface it came in on.
func expectRST(t *testing.T, f *fixture, in pkt) {
	t.Helper()
	v, out := f.run(t, in.build())
	wantVerdict(t, v, xdpTX)
	r, err := parseTCP(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.flags&rst == 0 || r.dst.Port() != in.sport {
		t.Fatalf("got %+v, want a RST to port %d", r, in.sport)
	}
}

func flowOf(t *testing.T, f *fixture, cport uint16) (loader.Flow, bool) {
	t.Helper()
	flows, err := f.dp.Flows()
	if err != nil {
		t.Fatal(err)
	}
	for _, fl := range flows {
		if fl.Client == ap(client, cport) {
			return fl, true
		}
	}
	return loader.Flow{}, false
}

type flowState struct{ Exists, Established, Closed bool }

func stateOf(t *testing.T, f *fixture, cport uint16) flowState {
	t.Helper()
	fl, ok := flowOf(t, f, cport)
	return flowState{ok, fl.Established, fl.Closed}
}

// TestConntrackTransitions walks flows through every state change, each
// step a packet in one direction and the state Flows reports after it.
func TestConntrackTransitions(t *testing.T) {
	f := newFixture(t, snatPorts)
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	type step struct {
		name  string
		rev   bool  // backend -> client
		flags uint8 // TCP flags
		want  flowState
	}
	open := []step{
		{"syn", false, syn, flowState{true, false, false}},
		{"syn retransmitted", false, syn, flowState{true, false, false}},
		{"ack before syn-ack", false, ack, flowState{true, false, false}},
		{"syn-ack", true, syn | ack, flowState{true, false, false}},
		{"ack", false, ack, flowState{true, true, false}},
		{"data", false, ack | psh, flowState{true, true, false}},
		{"reply data", true, ack | psh, flowState{true, true, false}},
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"client closes first", append(append([]step{}, open...),
			step{"client fin", false, fin | ack, flowState{true, true, false}},
			step{"backend fin", true, fin | ack, flowState{true, true, true}},
			step{"last ack", false, ack, flowState{true, true, true}},
		)},
		{"backend closes first", append(append([]step{}, open...),
			step{"backend fin", true, fin | ack, flowState{true, true, false}},
			step{"client fin", false, fin | ack, flowState{true, true, true}},
		)},
		{"client resets", append(append([]step{}, open...),
			step{"client rst", false, rst | ack, flowState{true, true, true}},
		)},
		{"backend resets", append(append([]step{}, open...),
			step{"backend rst", true, rst | ack, flowState{true, true, true}},
		)},
		{"backend refuses", []step{
			{"syn", false, syn, flowState{true, false, false}},
			{"rst", true, rst | ack, flowState{true, false, true}},
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cport := uint16(45000 + i)
			var snat uint16
			for _, s := range tt.steps {
				if s.rev {
					reply(t, f, primary, snat, s.flags, cport)
				} else {
					_, p := forward(t, f, clientPkt(cport, 3000, s.flags, nil))
					if snat != 0 && p != snat {
						t.Fatalf("%s: SNAT port moved from %d to %d", s.name, snat, p)
					}
					snat = p
				}
				if diff := cmp.Diff(s.want, stateOf(t, f, cport)); diff != "" {
					t.Fatalf("after %s (-want +got):\n%s", s.name, diff)
				}
			}
		})
	}
}

// TestPortReuseAfterClose gives the datapath one SNAT port: once a closed
// flow's linger passes, a new client gets its port, the old client's late
// packet gets a RST, and the expiry is counted as "closed".
func TestPortReuseAfterClose(t *testing.T) {
	f := newFixtureWith(t, loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: loader.PortRange{Min: 20000, Max: 20000},
		SkipPortCheck: true, ClosedTimeout: time.Second})
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	_, port := forward(t, f, clientPkt(46000, 3000, syn, nil))
	establish(t, f, primary, 46000, port)
	forward(t, f, clientPkt(46000, 3000, fin|ack, nil))
	reply(t, f, primary, port, fin|ack, 46000)

	// Past the linger the port is taken back as "closed".
	deadline := time.Now().Add(5 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatal("closed flow's port not taken back within 5 s")
		}
		st := stateOf(t, f, 46000)
		if !st.Exists {
			t.Fatal("closed flow vanished before a SYN took its port")
		}
		fl, _ := flowOf(t, f, 46000)
		if fl.Idle > 1100*time.Millisecond {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling the flow's idle time, bounded by deadline
	}
	_, p2 := forward(t, f, clientPkt(46001, 3000, syn, nil))
	if p2 != port {
		t.Fatalf("new flow got port %d, want the freed %d", p2, port)
	}
	if st := stateOf(t, f, 46000); st.Exists {
		t.Fatalf("old flow still listed after its port was taken: %+v", st)
	}
	expectRST(t, f, clientPkt(46000, 3000, ack, nil))
	st, err := f.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Services[loader.RW].Expired["closed"]; got != 1 {
		t.Fatalf("closed expiries %d, want 1 (%v)", got, st.Services[loader.RW].Expired)
	}
}

// TestHalfOpenExpiry checks both ways a half-open flow loses its port: at
// once to a SYN that finds no free port (pressure), and after the
// half-open timeout. An established flow is never taken.
func TestHalfOpenExpiry(t *testing.T) {
	f := newFixtureWith(t, loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: loader.PortRange{Min: 20000, Max: 20001},
		SkipPortCheck: true, HalfOpenTimeout: time.Second})
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	_, estPort := forward(t, f, clientPkt(47000, 3000, syn, nil))
	establish(t, f, primary, 47000, estPort)

	_, halfPort := forward(t, f, clientPkt(47001, 3000, syn, nil))
	// Pressure: the only other port is established, so the half-open one goes.
	_, p := forward(t, f, clientPkt(47002, 3000, syn, nil))
	if p != halfPort {
		t.Fatalf("SYN under pressure got port %d, want the half-open flow's %d", p, halfPort)
	}
	expectRST(t, f, clientPkt(47001, 3000, ack, nil)) // the evicted client's ACK
	// The evicted flow's late SYN-ACK now belongs to 47002's port: it goes
	// to 47002, whose stack answers it (a new SYN reuses the tuple).
	st, _ := f.dp.Stats()
	if got := st.Services[loader.RW].Expired["pressure"]; got != 1 {
		t.Fatalf("pressure expiries %d, want 1 (%v)", got, st.Services[loader.RW].Expired)
	}

	// Timeout: 47002 stays half-open past the timeout; its port is then
	// "half_open" expired, not "pressure", when a SYN needs it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		fl, ok := flowOf(t, f, 47002)
		if !ok {
			t.Fatal("half-open flow vanished")
		}
		if fl.Idle > 1100*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("half-open flow not idle past 1.1 s within 5 s")
		}
		time.Sleep(50 * time.Millisecond) // polling the flow's idle time, bounded by deadline
	}
	_, p = forward(t, f, clientPkt(47003, 3000, syn, nil))
	if p != halfPort {
		t.Fatalf("SYN got port %d, want the expired half-open flow's %d", p, halfPort)
	}
	st, _ = f.dp.Stats()
	if got := st.Services[loader.RW].Expired["half_open"]; got != 1 {
		t.Fatalf("half_open expiries %d, want 1 (%v)", got, st.Services[loader.RW].Expired)
	}
	// The established flow kept its port throughout.
	if _, p := forward(t, f, clientPkt(47000, 3000, ack|psh, []byte("x"))); p != estPort {
		t.Fatalf("established flow moved from port %d to %d", estPort, p)
	}
	// With both ports taken by an established flow and a fresh half-open
	// one, a SYN takes the half-open one; with both established, it drops.
	establish(t, f, primary, 47003, halfPort)
	v, _ := f.run(t, clientPkt(47004, 3000, syn, nil).build())
	wantVerdict(t, v, xdpDrop)
}

// TestIdleExpiry checks an established flow idle past idle_timeout loses
// its port to a SYN that needs it (its forward entry goes with it), and
// its client then gets a RST.
func TestIdleExpiry(t *testing.T) {
	f := newFixtureWith(t, loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: loader.PortRange{Min: 20000, Max: 20000},
		SkipPortCheck: true, IdleTimeout: time.Second})
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	_, port := forward(t, f, clientPkt(48000, 3000, syn, nil))
	establish(t, f, primary, 48000, port)
	v, _ := f.run(t, clientPkt(48001, 3000, syn, nil).build())
	wantVerdict(t, v, xdpDrop) // established and fresh: not taken
	deadline := time.Now().Add(5 * time.Second)
	for {
		fl, _ := flowOf(t, f, 48000)
		if fl.Idle > 1100*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("flow not idle past 1.1 s within 5 s")
		}
		time.Sleep(50 * time.Millisecond) // polling the flow's idle time, bounded by deadline
	}
	if _, p := forward(t, f, clientPkt(48001, 3000, syn, nil)); p != port {
		t.Fatalf("SYN got port %d, want the idle flow's %d", p, port)
	}
	expectRST(t, f, clientPkt(48000, 3000, ack, nil))
	st, _ := f.dp.Stats()
	rw := st.Services[loader.RW]
	if rw.Expired["idle"] != 1 || rw.Drops["no_flow"] != 1 {
		t.Fatalf("idle expiries %d, no_flow drops %d, want 1 and 1", rw.Expired["idle"], rw.Drops["no_flow"])
	}
}

// TestEviction loses one direction of an established flow at a time: the
// other direction notices at its next packet, ends the flow and answers
// with a RST, so no port ends up shared by two flows.
func TestEviction(t *testing.T) {
	f := newFixture(t, snatPorts)
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	t.Run("forward entry evicted", func(t *testing.T) {
		_, port := forward(t, f, clientPkt(49000, 3000, syn, nil))
		establish(t, f, primary, 49000, port)
		if err := f.dp.EvictForward(ap(client, 49000), ap(vip, 3000)); err != nil {
			t.Fatal(err)
		}
		// The backend's next packet gets a RST from the SNAT port (its
		// session ends instead of leaking), and the slot is free again.
		in := replyOf(primary, port, ack|psh)
		v, out := f.run(t, in.build())
		wantVerdict(t, v, xdpTX)
		r, err := parseTCP(out)
		if err != nil {
			t.Fatal(err)
		}
		if r.flags&rst == 0 || r.src != ap(lbAddr, port) || r.dst != primary {
			t.Fatalf("backend got %+v, want a RST from %v", r, ap(lbAddr, port))
		}
		expectRST(t, f, clientPkt(49000, 3000, ack, nil))
		// A free slot: a later reply passes to the kernel (which has no
		// socket on the reserved port either).
		v, _ = f.run(t, in.build())
		wantVerdict(t, v, xdpPass)
		st, _ := f.dp.Stats()
		if got := st.Services[loader.RW].Expired["orphan"]; got != 1 {
			t.Fatalf("orphan expiries %d, want 1", got)
		}
	})
	t.Run("snat slot taken", func(t *testing.T) {
		_, port := forward(t, f, clientPkt(49001, 3000, syn, nil))
		establish(t, f, primary, 49001, port)
		if err := f.dp.StealSlot(ap(client, 49001), ap(vip, 3000)); err != nil {
			t.Fatal(err)
		}
		// The client's next packet finds the slot owned by another flow:
		// RST, and the forward entry is gone.
		before, _ := f.dp.Stats()
		expectRST(t, f, clientPkt(49001, 3000, ack|psh, []byte("x")))
		after, _ := f.dp.Stats()
		if got := after.Services[loader.RW].Drops["flow_lost"] - before.Services[loader.RW].Drops["flow_lost"]; got != 1 {
			t.Fatalf("flow_lost drops grew by %d, want 1", got)
		}
		if _, ok := flowOf(t, f, 49001); ok {
			t.Fatal("flow still listed after losing its slot")
		}
		// Its SYN makes a fresh flow on another port.
		if _, p := forward(t, f, clientPkt(49001, 3000, syn, nil)); p == port {
			t.Fatalf("new flow got the stolen port %d", p)
		}
	})
}

// TestSYNFlood floods the read/write service with spoofed SYNs (a new
// source address and port each, through the bench harness in one
// BPF_PROG_TEST_RUN) on a 1000-port SNAT range, many times the range:
// established flows keep their ports in both directions, conntrack does
// not grow past the range, and real clients connecting between flood
// bursts get a port and complete their handshake.
func TestSYNFlood(t *testing.T) {
	ports := loader.PortRange{Min: 20000, Max: 20999}
	f := newFixtureWith(t, loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: ports, SkipPortCheck: true})
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	h, err := loader.NewBenchHarness()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	spoofed := clientPkt(1, 3000, syn, nil)
	spoofed.src = netip.MustParseAddr("10.99.0.1")
	// The harness gives every run the next source: distinct across bursts.
	if err := h.Set(f.dp.Program(), padTo(spoofed.build(), loader.BenchPacketLen), true); err != nil {
		t.Fatal(err)
	}
	flood := func(n int) {
		t.Helper()
		err := f.ns.Do(func() error {
			_, _, err := h.Run(padTo(spoofed.build(), loader.BenchPacketLen), f.ifindex, n)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	// 200 established flows before the flood.
	est := map[uint16]uint16{}
	for i := range uint16(200) {
		_, p := forward(t, f, clientPkt(30000+i, 3000, syn, nil))
		establish(t, f, primary, 30000+i, p)
		est[30000+i] = p
	}
	const bursts, burst = 50, 2000 // 100k spoofed SYNs, 100 times the range
	ok := 0
	for b := range bursts {
		flood(burst)
		// A real client between bursts: SYN, more flood, SYN-ACK, ACK.
		cport := uint16(40000 + b)
		v, out := f.run(t, clientPkt(cport, 3000, syn, nil).build())
		if v != xdpTX {
			t.Logf("real client %d: SYN verdict %s", b, verdictName[v])
			continue
		}
		p, err := parseTCP(out)
		if err != nil {
			t.Fatal(err)
		}
		flood(100)
		in := replyOf(primary, p.src.Port(), syn|ack)
		v, out = f.run(t, in.build())
		if r, err := parseTCP(out); v != xdpTX || err != nil || r.dst != ap(client, cport) {
			t.Logf("real client %d: SYN-ACK verdict %s, to %v (%v)", b, verdictName[v], r.dst, err)
			continue
		}
		if _, p2 := forward(t, f, clientPkt(cport, 3000, ack, nil)); p2 == p.src.Port() {
			ok++
		}
	}
	t.Logf("real clients that connected during the flood: %d of %d", ok, bursts)
	if ok < bursts*9/10 {
		t.Errorf("only %d of %d real clients connected during the flood, want at least 90%%", ok, bursts)
	}
	for cport, p := range est {
		if _, got := forward(t, f, clientPkt(cport, 3000, ack|psh, []byte("x"))); got != p {
			t.Fatalf("established flow %d moved from port %d to %d", cport, p, got)
		}
		reply(t, f, primary, p, ack|psh, cport)
	}
	n, err := f.dp.ForwardEntries()
	if err != nil {
		t.Fatal(err)
	}
	if n > int(ports.Max-ports.Min+1)+len(est)+bursts {
		t.Fatalf("%d forward entries after the flood, want at most the range plus live flows", n)
	}
	st, _ := f.dp.Stats()
	rw := st.Services[loader.RW]
	t.Logf("after the flood: %d forward entries, new flows %d, expired %v, drops %v", n, rw.NewFlows, rw.Expired, rw.Drops)
	// After the flood a real client connects at once.
	_, p := forward(t, f, clientPkt(41000, 3000, syn, nil))
	establish(t, f, primary, 41000, p)
}

// padTo pads a frame with zeros to n bytes (the IP length stays, so the
// padding is Ethernet trailer).
func padTo(b []byte, n int) []byte {
	for len(b) < n {
		b = append(b, 0)
	}
	return b
}

// flowHome returns the flow_map entry where the tuple c -> v's probe
// starts in a table of size entries: bpf/hash.h's hash_3words of the
// tuple's words as XDP loads them (network order read little-endian).
func flowHome(c, v netip.AddrPort, size uint32) uint32 {
	le32 := func(a netip.Addr) uint32 { b := a.As4(); return binary.LittleEndian.Uint32(b[:]) }
	le16 := func(p uint16) uint32 { return uint32(bits.ReverseBytes16(p)) }
	const init = (0xdeadbeef + 12 + 0x9e3779b9) & 0xffffffff // HASH_SEED_MAGLEV, wrapped as in C
	w := [3]uint32{le32(c.Addr()) + init, le32(v.Addr()) + init, (le16(c.Port())<<16 | le16(v.Port())) + init}
	// The final mix: c ^= b; c -= rol(b, 14); a ^= c; a -= rol(c, 11); b ^= a; ...
	for i, r := range []int{14, 11, 25, 16, 4, 14, 24} {
		d, s := &w[(2+i)%3], w[(1+i)%3]
		*d ^= s
		*d -= bits.RotateLeft32(s, r)
	}
	return w[2] & (size - 1)
}

// TestDisplacedFlows puts flows whose tuples share a home entry one after
// the other in the probe window: each is found from its home (the home's
// reach grows before a flow's key is written), in both directions, also
// after the flow at home is deleted and its entry taken by another.
func TestDisplacedFlows(t *testing.T) {
	f := newFixtureWith(t, loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: snatPorts, SkipPortCheck: true, MaxFlows: loader.MinMaxFlows})
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	// Five client ports whose tuples share one home.
	byHome := map[uint32][]uint16{}
	var ports []uint16
	var home uint32
	for p := uint16(30000); p < 60000 && len(ports) < 5; p++ {
		h := flowHome(ap(client, p), ap(vip, 3000), loader.MinMaxFlows)
		byHome[h] = append(byHome[h], p)
		if len(byHome[h]) == 5 {
			ports, home = byHome[h], h
		}
	}
	if len(ports) < 5 {
		t.Fatal("no five tuples with one home")
	}
	snat := map[uint16]uint16{}
	for i, cp := range ports[:4] {
		_, p := forward(t, f, clientPkt(cp, 3000, syn, nil))
		establish(t, f, primary, cp, p)
		snat[cp] = p
		idx, err := f.dp.FlowIndex(ap(client, cp), ap(vip, 3000))
		if err != nil {
			t.Fatal(err)
		}
		if want := (home + uint32(i)) % loader.MinMaxFlows; idx != want {
			t.Fatalf("flow %d (port %d) at entry %d, want %d (home %d + %d)", i, cp, idx, want, home, i)
		}
	}
	found := func(cports ...uint16) {
		t.Helper()
		for _, cp := range cports {
			if _, p := forward(t, f, clientPkt(cp, 3000, ack|psh, []byte("x"))); p != snat[cp] {
				t.Fatalf("flow from port %d went out of SNAT port %d, want %d", cp, p, snat[cp])
			}
			reply(t, f, primary, snat[cp], ack|psh, cp)
		}
	}
	found(ports[:4]...)

	// The flow at home goes; those placed after it stay found.
	if err := f.dp.EvictForward(ap(client, ports[0]), ap(vip, 3000)); err != nil {
		t.Fatal(err)
	}
	expectRST(t, f, clientPkt(ports[0], 3000, ack, nil))
	found(ports[1:4]...)

	// A fifth flow of that home takes the freed entry at home.
	_, p := forward(t, f, clientPkt(ports[4], 3000, syn, nil))
	establish(t, f, primary, ports[4], p)
	snat[ports[4]] = p
	if idx, err := f.dp.FlowIndex(ap(client, ports[4]), ap(vip, 3000)); err != nil || idx != home {
		t.Fatalf("fifth flow at entry %d (%v), want its home %d", idx, err, home)
	}
	found(ports[1:]...)
}
