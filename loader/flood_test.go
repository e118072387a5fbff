package loader_test

import (
	"net/netip"
	"testing"

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
