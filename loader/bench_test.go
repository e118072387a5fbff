package loader_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xlb-dev/xlb/loader"
)

// BenchmarkDatapath measures ns per packet of the datapath's paths with
// Program.Run and Repeat, through the harness that restores the input on
// every run. noop is the harness with a do-nothing program: the floor.
// Each case's verdict and output are checked before it is timed.
func BenchmarkDatapath(b *testing.B) {
	fx := newFixture(b, loader.PortRange{Min: 20000, Max: 29999})
	primary := ap(pg1, 5432)
	if err := fx.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		b.Fatal(err)
	}
	h, err := loader.NewBenchHarness()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	pass, err := loader.NewPassProgram()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pass.Close() })

	payload := []byte("0123456789abcdefghij") // 20 bytes: 74-byte frames
	est := clientPkt(50000, 3000, ack|psh, payload)
	synPkt := clientPkt(50001, 3000, syn, nil)
	synPkt.tcpOpts = []byte{2, 4, 5, 0xb4, 1, 1, 4, 2, 1, 3, 3, 7, 1, 1, 1, 1, 1, 1, 1, 1}
	other := clientPkt(50002, 3000, ack|psh, payload)
	other.dst = netip.MustParseAddr("172.20.0.99")

	// The established case's flow.
	v, out := fx.run(b, clientPkt(50000, 3000, syn, nil).build())
	if v != xdpTX {
		b.Fatalf("setting up the established flow: verdict %s", verdictName[v])
	}
	p, err := parseTCP(out)
	if err != nil {
		b.Fatal(err)
	}
	estOut := forwardOf(est, primary, p.src.Port()).build()

	cases := []struct {
		name    string
		target  *ebpf.Program
		in      []byte
		vary    bool
		verdict uint32
		check   func(out []byte) bool
	}{
		{"noop", pass, est.build(), false, xdpPass, func(out []byte) bool { return bytes.Equal(out, est.build()) }},
		{"pass", fx.dp.Program(), other.build(), false, xdpPass, func(out []byte) bool { return bytes.Equal(out, other.build()) }},
		{"established", fx.dp.Program(), est.build(), false, xdpTX, func(out []byte) bool { return bytes.Equal(out, estOut) }},
		{"syn", fx.dp.Program(), synPkt.build(), true, xdpTX, func(out []byte) bool {
			// The harness gave it a new client tuple without fixing the
			// checksums, so check the rewrite, not the sums.
			return len(out) == len(synPkt.build()) && bytes.Equal(out[26:30], lbAddr.AsSlice()) &&
				bytes.Equal(out[30:34], pg1.AsSlice()) && out[36] == 5432>>8 && out[37] == 5432&0xff && out[47] == syn
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if err := h.Set(c.target, c.in, c.vary); err != nil {
				b.Fatal(err)
			}
			// One checked run of exactly the path being timed.
			v, out, err := fx.runProg(h.Program(), c.in)
			if err != nil {
				b.Fatal(err)
			}
			if v != c.verdict || !c.check(out) {
				b.Fatalf("verdict %s (want %s), output %x", verdictName[v], verdictName[c.verdict], out)
			}
			chunk := b.N
			if c.vary {
				chunk = 4096 // new flows: flush conntrack between chunks (untimed), so most first probes find a free port
			}
			before, _ := fx.dp.Stats()
			var total time.Duration
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(chunk, b.N-done)
				var (
					v   uint32
					per time.Duration
				)
				err := fx.ns.Do(func() error {
					var err error
					v, per, err = h.Run(c.in, fx.ifindex, n)
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
				if v != c.verdict {
					b.Fatalf("verdict %s during the run, want %s", verdictName[v], verdictName[c.verdict])
				}
				total += per * time.Duration(n)
				done += n
				if c.vary {
					b.StopTimer()
					if _, err := fx.dp.FlushFlows(); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/pkt")
			after, _ := fx.dp.Stats()
			if c.vary {
				if d := after.Total.DropTotal() - before.Total.DropTotal(); d != 0 {
					b.Fatalf("%d drops during the syn run: %v", d, after.Total.Drops)
				}
			}
		})
	}
}

// BenchmarkFlowsWalk reads the whole flow table as a cut does (Flows walks
// every entry of flow_map; the table is empty, which costs the same).
func BenchmarkFlowsWalk(b *testing.B) {
	f := newFixture(b, snatPorts)
	for b.Loop() {
		if _, err := f.dp.Flows(); err != nil {
			b.Fatal(err)
		}
	}
}
