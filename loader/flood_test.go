package loader_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xlb-dev/xlb/loader"
)

// TestFloodWitness: a backend counts as answering through a flood only
// when, since the last call, both its replies reached the datapath and
// SYNs took ports under pressure.
func TestFloodWitness(t *testing.T) {
	f := newFixture(t, loader.PortRange{Min: 20000, Max: 20015})
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	// One established flow, whose backend keeps answering.
	_, snat := forward(t, f, clientPkt(30000, 3000, syn, nil))
	establish(t, f, primary, 30000, snat)
	next := uint16(40000)
	flood := func() { // more SYNs than the range has ports: pressure
		for range 32 {
			forward(t, f, clientPkt(next, 3000, syn, nil))
			next++
		}
	}
	answer := func() { reply(t, f, primary, snat, ack|psh, 30000) }

	w := f.dp.FloodWitness()
	for _, step := range []struct {
		name string
		do   []func()
		want bool
	}{
		{"first call: the baseline", []func(){flood, answer}, false},
		{"replies, no flood", []func(){answer}, false},
		{"flood, no replies", []func(){flood}, false},
		{"flood and replies", []func(){flood, answer}, true},
		{"nothing since", nil, false},
	} {
		for _, do := range step.do {
			do()
		}
		if got := w.Answering(primary); got != step.want {
			t.Errorf("%s: Answering = %v, want %v", step.name, got, step.want)
		}
	}
	if w.Answering(ap(pg2, 5432)) {
		t.Error("a backend the datapath does not know answers")
	}
}

// TestPressureRoundEnds: while a CPU's claims find the range full of
// half-open flows they go straight to the pressure round; once one probes
// a free (here: expired) port, the next claim probes after the cursor
// again, so consecutive new flows take adjacent ports as before the flood.
func TestPressureRoundEnds(t *testing.T) {
	f := newFixtureWith(t, loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: loader.PortRange{Min: 20000, Max: 20063},
		SkipPortCheck: true, HalfOpenTimeout: time.Second})
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	// All on one CPU: the cursor and its mode are per CPU.
	synOn := func(cport uint16) uint16 {
		t.Helper()
		in := clientPkt(cport, 3000, syn, nil).build()
		var v uint32
		out := make([]byte, len(in)+256)
		err := onCPU(f, 0, func() error {
			opts := ebpf.RunOptions{Data: in, DataOut: out, Context: xdpMd{DataEnd: uint32(len(in)), IngressIfindex: f.ifindex}}
			var err error
			v, err = f.dp.Program().Run(&opts)
			out = opts.DataOut
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		wantVerdict(t, v, xdpTX)
		p, err := parseTCP(out)
		if err != nil {
			t.Fatal(err)
		}
		return p.src.Port()
	}
	for i := range uint16(200) { // the flood: 64 ports, 200 SYNs
		synOn(41000 + i)
	}
	st, err := f.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Total.Expired["pressure"]; got < 100 {
		t.Fatalf("%d ports taken under pressure in the flood, want >= 100", got)
	}
	// The flood's flows expire (half-open past 1 s).
	deadline := time.Now().Add(5 * time.Second)
	for {
		fl, ok := flowOf(t, f, 41199)
		if !ok {
			t.Fatal("the flood's last flow vanished")
		}
		if fl.Idle > 1100*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the flood's last flow not idle past 1.1 s within 5 s")
		}
		time.Sleep(50 * time.Millisecond) // polling the flow's idle time, bounded by deadline
	}
	a := synOn(42000)
	b := synOn(42001)
	c := synOn(42002)
	if b != a+1 && !(a == 20063 && b == 20000) || c != b+1 && !(b == 20063 && c == 20000) {
		t.Fatalf("after the flood, consecutive SYNs got ports %d, %d, %d, want adjacent ones", a, b, c)
	}
}
