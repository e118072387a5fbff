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
// Each case's verdict and output are checked before it is timed. syn gives
// every packet a new client tuple on a table emptied every 4096 SYNs (most
// first probes find a free port); syn-steady never empties it: before the
// timing 2^21 SYNs have gone through (eight times flow_map's entries, 200
// times the SNAT range), the range is full of half-open flows and every
// timed SYN takes the port of the oldest one it probes (pressure), as under
// a flood on a host long in service.
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

	synCheck := func(out []byte) bool {
		// The harness gave it a new client tuple without fixing the
		// checksums, so check the rewrite, not the sums.
		return len(out) == len(synPkt.build()) && bytes.Equal(out[26:30], lbAddr.AsSlice()) &&
			bytes.Equal(out[30:34], pg1.AsSlice()) && out[36] == 5432>>8 && out[37] == 5432&0xff && out[47] == syn
	}
	cases := []struct {
		name    string
		target  *ebpf.Program
		in      []byte
		vary    bool
		steady  bool // new flows on a table never emptied (see above)
		verdict uint32
		check   func(out []byte) bool
	}{
		{"noop", pass, est.build(), false, false, xdpPass, func(out []byte) bool { return bytes.Equal(out, est.build()) }},
		{"pass", fx.dp.Program(), other.build(), false, false, xdpPass, func(out []byte) bool { return bytes.Equal(out, other.build()) }},
		{"established", fx.dp.Program(), est.build(), false, false, xdpTX, func(out []byte) bool { return bytes.Equal(out, estOut) }},
		{"syn", fx.dp.Program(), synPkt.build(), true, false, xdpTX, synCheck},
		{"syn-steady", fx.dp.Program(), synPkt.build(), true, true, xdpTX, synCheck},
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
			flush := c.vary && !c.steady
			if flush {
				chunk = 4096 // new flows: flush conntrack between chunks (untimed), so most first probes find a free port
			}
			if c.steady {
				// Untimed: the table long in service, the range full.
				for range 1 << 5 {
					err := fx.ns.Do(func() error {
						_, _, err := h.Run(c.in, fx.ifindex, 1<<16)
						return err
					})
					if err != nil {
						b.Fatal(err)
					}
				}
				u, err := fx.dp.Usage()
				if err != nil {
					b.Fatal(err)
				}
				if u.Flows < 9990 {
					b.Fatalf("%d flows after the warm-up, want the SNAT range (10000) full", u.Flows)
				}
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
				if flush {
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
				if n := after.Total.NewFlows - before.Total.NewFlows; n != uint64(b.N) {
					b.Fatalf("%d new flows in %d SYNs", n, b.N)
				}
				pressure := func(st loader.Stats) uint64 { return st.Total.Expired["pressure"] }
				if c.steady {
					// Every SYN took a half-open flow's port.
					if p := pressure(after) - pressure(before); p < uint64(b.N)*99/100 {
						b.Fatalf("%d of %d SYNs took a port under pressure, want all (99%%)", p, b.N)
					}
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

// BenchmarkDatapathMillionFlows fills conntrack with over a million
// concurrent flows (63 backends, a 32768-port SNAT range, a table of 2^21
// entries) and reports, at that fill: a packet of a known flow, spread
// over all the million flows in the order they were made (every packet a
// different flow's: est-ns/pkt), and the same for one hot flow
// (est1-ns/pkt, its entry always in cache), a new flow's ns (through the
// harness), a pool change and the removal of a backend (a walk of the
// whole table) in ms, and the maps' memory per flow.
// One SNAT address gives each backend at most the range's ports, so a
// million flows need many backends (or more SNAT addresses).
func BenchmarkDatapathMillionFlows(b *testing.B) {
	const fill = 1 << 20
	fx, backends := millionFixture(b, 1<<21)
	h, err := loader.NewBenchHarness()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	run := func(in []byte, n int) time.Duration {
		b.Helper()
		var per time.Duration
		err := fx.ns.Do(func() error {
			var err error
			_, per, err = h.Run(in, fx.ifindex, n)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		return per
	}

	// The established packet's flow, then the fill: distinct tuples from
	// the harness, in chunks.
	payload := []byte("0123456789abcdefghij")
	est := clientPkt(50000, 3000, ack|psh, payload)
	est.src = netip.MustParseAddr("10.1.1.1")
	syn0 := clientPkt(50000, 3000, syn, nil)
	syn0.src = est.src
	if v, _ := fx.run(b, syn0.build()); v != xdpTX {
		b.Fatalf("the established flow's SYN: verdict %s", verdictName[v])
	}
	synPkt := clientPkt(1, 3000, syn, nil)
	synPkt.tcpOpts = []byte{2, 4, 5, 0xb4, 1, 1, 4, 2, 1, 3, 3, 7, 1, 1, 1, 1, 1, 1, 1, 1}
	if err := h.Set(fx.dp.Program(), synPkt.build(), true); err != nil {
		b.Fatal(err)
	}
	filled, err := fx.dp.Stats()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	for done := 0; done < fill; done += 1 << 16 {
		run(synPkt.build(), 1<<16)
	}
	fillTook := time.Since(start)
	u, err := fx.dp.Usage()
	if err != nil {
		b.Fatal(err)
	}
	if u.Flows < fill*99/100 {
		b.Fatalf("%d flows after %d SYNs, want at least 99%%", u.Flows, fill)
	}

	// At that fill: b.N packets of known flows, each a different one's.
	// The harness varies the tuple as in the fill, from its first, so
	// the packets walk the filled flows; it starts again from the first
	// after each fill's worth. Checked by the counters: no packet made a
	// new flow, and only the tuples whose SYN found no entry in the fill
	// (table_full, a few hundred) missed theirs (a RST, no_flow).
	was := filled.Total.NewFlows
	if filled, err = fx.dp.Stats(); err != nil {
		b.Fatal(err)
	}
	missing := uint64(fill) - (filled.Total.NewFlows - was)
	spread := synPkt
	spread.flags = ack | psh
	spread.payload = payload
	spread.tcpOpts = nil
	before, err := fx.dp.Stats()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var estTotal time.Duration
	passes := uint64(0)
	for done := 0; done < b.N; passes++ {
		n := min(fill*99/100, b.N-done)
		b.StopTimer()
		if err := h.Set(fx.dp.Program(), spread.build(), true); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		estTotal += run(spread.build(), n) * time.Duration(n)
		done += n
	}
	b.StopTimer()
	after, err := fx.dp.Stats()
	if err != nil {
		b.Fatal(err)
	}
	missed := after.Total.Drops["no_flow"] - before.Total.Drops["no_flow"]
	if d, nf := after.Total.DropTotal()-before.Total.DropTotal(), after.Total.NewFlows-before.Total.NewFlows; d != missed || nf != 0 || missed > missing*passes {
		b.Fatalf("packets of known flows: %d drops (now %v), %d of them no_flow (%d tuples made no flow in the fill, %d passes), %d new flows",
			d, after.Total.Drops, missed, missing, passes, nf)
	}
	if fwd := after.Total.Packets - before.Total.Packets; fwd+missed != uint64(b.N) {
		b.Fatalf("packets of known flows: %d forwarded and %d missed of %d", fwd, missed, b.N)
	}
	estNs := estTotal / time.Duration(b.N)

	// One hot flow, for comparison (its entry and slot stay in cache).
	if err := h.Set(fx.dp.Program(), est.build(), false); err != nil {
		b.Fatal(err)
	}
	est1Ns := run(est.build(), 1<<20)

	// New flows at that fill (the range still has free ports).
	more := synPkt
	more.src = netip.MustParseAddr("10.2.0.1")
	if err := h.Set(fx.dp.Program(), more.build(), true); err != nil {
		b.Fatal(err)
	}
	synNs := run(more.build(), 1<<14)

	// A pool change, and the removal of a backend with its flows.
	t0 := time.Now()
	if err := fx.dp.SetBackends(loader.RW, backends[:62]); err != nil {
		b.Fatal(err)
	}
	setPool := time.Since(t0)
	t0 = time.Now()
	cut, err := fx.dp.RemoveBackend(backends[62])
	if err != nil {
		b.Fatal(err)
	}
	remove := time.Since(t0)
	flowBytes, snatBytes := fx.dp.MapBytes()

	b.ReportMetric(float64(estNs.Nanoseconds()), "est-ns/pkt")
	b.ReportMetric(float64(est1Ns.Nanoseconds()), "est1-ns/pkt")
	b.ReportMetric(float64(synNs.Nanoseconds()), "syn-ns/pkt")
	b.ReportMetric(float64(u.Flows), "flows")
	b.ReportMetric(float64(setPool.Microseconds())/1000, "setpool-ms")
	b.ReportMetric(float64(remove.Microseconds())/1000, "remove-ms")
	b.ReportMetric(float64(flowBytes+snatBytes)/float64(u.Flows), "map-B/flow")
	b.Logf("%d flows (filled in %v), %d cut with one backend; flow_map %d MiB + snat_map %d MiB",
		u.Flows, fillTook.Round(time.Millisecond), len(cut), flowBytes>>20, snatBytes>>20)
}

// millionFixture returns a fixture for a million flows: a flow table of
// maxFlows entries, 32768 SNAT ports, half-open flows kept an hour, and 63
// backends in the rw pool on a second on-link subnet with permanent
// neighbours (one SNAT address gives each backend at most the range's
// ports).
func millionFixture(b *testing.B, maxFlows uint32) (*fixture, []netip.AddrPort) {
	b.Helper()
	ports := loader.PortRange{Min: 20000, Max: 20000 + 32767}
	fx := newFixtureWith(b, loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: ports, SkipPortCheck: true,
		MaxFlows: maxFlows, HalfOpenTimeout: time.Hour})
	script := "ip addr add 172.20.1.254/24 dev lb0 && for i in $(seq 1 63); do " +
		"ip neigh replace 172.20.1.$i lladdr 02:00:00:01:00:$(printf %02x $i) dev lb0 nud permanent || exit 1; done"
	if err := fx.ns.Run("sh", "-c", script); err != nil {
		b.Fatal(err)
	}
	var backends []netip.AddrPort
	for i := 1; i <= 63; i++ {
		backends = append(backends, ap(netip.AddrFrom4([4]byte{172, 20, 1, byte(i)}), 5432))
	}
	if err := fx.dp.SetBackends(loader.RW, backends); err != nil {
		b.Fatal(err)
	}
	return fx, backends
}
