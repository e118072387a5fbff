package loader_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xlb-dev/xlb/loader"
)

// TestHandshakesRacePressure completes handshakes on one CPU while the
// other floods spoofed SYNs on a SNAT range of 16 ports, so every flood
// SYN takes the oldest half-open port and a handshake's flow is often the
// victim the pressure round picks just as its ACK arrives. A half-open
// flow may lose its port (its SYN-ACK then reaches another client, or its
// ACK gets a RST); a flow whose ACK was forwarded is established and must
// keep it: its next packets both ways are still translated onto the same
// tuple. Before the established transition was part of the owner word the
// victim's compare-and-swap expects, an ACK landing between the victim's
// choice and that swap lost its flow (a reset client): 4 to 48 of 50000
// in each of 10 runs. With that alone, 1 to 3 of 50000 in most runs still
// lost theirs to a claim delayed between its swap and its writes of the
// slot's client, which landed on the next owner's (XLB_OWNER_BUSY).
func TestHandshakesRacePressure(t *testing.T) {
	onCPUs := twoCPUs(t)
	ports := loader.PortRange{Min: 20000, Max: 20015}
	f := newFixtureWith(t, loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: ports, SkipPortCheck: true})
	backend := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{backend}); err != nil {
		t.Fatal(err)
	}
	h, err := loader.NewBenchHarness()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	sp := clientPkt(1, 3000, syn, nil)
	sp.src = netip.AddrFrom4([4]byte{10, 90, 0, 1})
	floodIn := padTo(sp.build(), loader.BenchPacketLen)
	if err := h.Set(f.dp.Program(), floodIn, true); err != nil {
		t.Fatal(err)
	}
	flood := func(n int) error {
		_, _, err := h.Run(floodIn, f.ifindex, n)
		return err
	}
	if err := onCPU(f, onCPUs[1], func() error { return flood(4 * 16) }); err != nil {
		t.Fatal(err) // the range full of half-open flows
	}

	const (
		handshakes  = 200000
		established = 50000 // enough to stop early
	)
	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		floodErr error
		res      handshakeResults
	)
	res.slot = func(p uint16) string { d, _ := f.dp.SNATSlot(backend, p); return d }
	deadline := time.Now().Add(15 * time.Second)
	wg.Go(func() {
		floodErr = onCPU(f, onCPUs[1], func() error {
			for !stop.Load() && time.Now().Before(deadline.Add(5*time.Second)) {
				if err := flood(2000); err != nil {
					return err
				}
			}
			return nil
		})
	})
	runErr := onCPU(f, onCPUs[0], func() error {
		defer stop.Store(true)
		prog := f.dp.Program()
		for i := 0; i < handshakes && res.established < established && time.Now().Before(deadline); i++ {
			if err := handshake(prog, f.ifindex, backend, uint16(1024+i%60000), &res); err != nil {
				return err
			}
		}
		return nil
	})
	wg.Wait()
	if runErr != nil {
		t.Fatal(runErr)
	}
	if floodErr != nil {
		t.Fatal(floodErr)
	}
	st, err := f.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d handshakes: %d established, %d lost before (SYN refused %d, SYN-ACK elsewhere %d, ACK refused %d); ports taken back %v, drops %v",
		res.tried, res.established, res.synRefused+res.synackElsewhere+res.ackRefused, res.synRefused, res.synackElsewhere,
		res.ackRefused, st.Total.Expired, st.Total.Drops)
	for _, l := range res.lost {
		t.Error(l)
	}
	if len(res.lost) > 0 {
		t.Fatalf("%d of %d established flows lost their SNAT port to the pressure round (their clients get a RST)", len(res.lost), res.established)
	}
	if res.established < 100 || res.ackRefused+res.synackElsewhere == 0 {
		t.Fatalf("%d flows established, %d half-open ones taken: the race was not run", res.established, res.ackRefused+res.synackElsewhere)
	}
}

// handshakeResults counts what became of TestHandshakesRacePressure's
// handshakes.
type handshakeResults struct {
	tried, established                      int
	synRefused, synackElsewhere, ackRefused int
	lost                                    []string            // established flows that lost their port, how
	slot                                    func(uint16) string // describes a SNAT port's slot
}

// handshake runs one client's handshake from cport to VIP:3000 through
// prog (on the calling thread, in the fixture's namespace), then checks
// that the flow, if established, is still translated both ways, and ends
// it with a RST. Only a failed run is an error; what became of the flow
// goes into res.
func handshake(prog *ebpf.Program, ifindex uint32, backend netip.AddrPort, cport uint16, res *handshakeResults) error {
	run := func(p pkt) (uint32, []byte, error) {
		in := p.build()
		out := make([]byte, len(in)+256)
		opts := ebpf.RunOptions{Data: in, DataOut: out, Context: xdpMd{DataEnd: uint32(len(in)), IngressIfindex: ifindex}}
		v, err := prog.Run(&opts)
		if err != nil {
			return 0, nil, fmt.Errorf("running program: %w", err)
		}
		return v, opts.DataOut, nil
	}
	// forwarded reports whether p went to the backend on SNAT port snat
	// (0: any port), and the port.
	forwarded := func(p pkt, snat uint16) (bool, uint16, error) {
		v, out, err := run(p)
		if err != nil || v != xdpTX {
			return false, 0, err
		}
		r, err := parseTCP(out)
		if err != nil || r.src.Addr() != lbAddr || r.dst != backend || (snat != 0 && r.src.Port() != snat) {
			return false, 0, nil
		}
		return bytes.Equal(out, forwardOf(p, backend, r.src.Port()).build()), r.src.Port(), nil
	}
	// replied reports whether the backend's p on snat reached the client.
	replied := func(flags uint8, snat uint16) (bool, error) {
		v, out, err := run(replyOf(backend, snat, flags))
		if err != nil || v != xdpTX {
			return false, err
		}
		r, err := parseTCP(out)
		return err == nil && r.src == ap(vip, 3000) && r.dst == ap(client, cport) && r.flags == flags, nil
	}

	res.tried++
	ok, snat, err := forwarded(clientPkt(cport, 3000, syn, nil), 0)
	if err != nil {
		return err
	}
	if !ok {
		res.synRefused++
		return nil
	}
	if ok, err := replied(syn|ack, snat); err != nil || !ok {
		res.synackElsewhere++
		return err
	}
	if ok, _, err := forwarded(clientPkt(cport, 3000, ack, nil), snat); err != nil || !ok {
		res.ackRefused++
		return err
	}
	res.established++
	afterACK := res.slot(snat)
	lost := func(what string, round int) {
		res.lost = append(res.lost, fmt.Sprintf("client %d on SNAT port %d: %s %d after the ACK was not translated on its tuple (slot after the ACK: %s; now: %s)",
			cport, snat, what, round+1, afterACK, res.slot(snat)))
	}
	// Established: the pressure round must leave it alone. Check it twice
	// both ways, the flood running meanwhile.
	for round := range 2 {
		ok, _, err := forwarded(clientPkt(cport, 3000, ack|psh, []byte("select 1")), snat)
		if err != nil {
			return err
		}
		if !ok {
			lost("its packet", round)
			break
		}
		ok, err = replied(ack|psh, snat)
		if err != nil {
			return err
		}
		if !ok {
			lost("the backend's packet", round)
			break
		}
	}
	// Done: a RST closes it, so its port can go to the flood again.
	_, _, err = run(clientPkt(cport, 3000, rst|ack, nil))
	return err
}

// TestEstablishedOfOlderBuild: a flow established under a build before
// XLB_OWNER_EST (its state says established, its owner word does not)
// keeps its port through a flood, as it did then, and its next packet
// sets the owner's bit.
func TestEstablishedOfOlderBuild(t *testing.T) {
	f := newFixture(t, loader.PortRange{Min: 20000, Max: 20015})
	backend := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{backend}); err != nil {
		t.Fatal(err)
	}
	_, snat := forward(t, f, clientPkt(30000, 3000, syn, nil))
	establish(t, f, backend, 30000, snat)
	c, v := ap(client, 30000), ap(vip, 3000)
	had, err := f.dp.AsOlderBuild(c, v)
	if err != nil {
		t.Fatal(err)
	}
	if !had {
		t.Fatal("the ACK left the owner word without XLB_OWNER_EST")
	}
	for p := range uint16(64) { // four times the range: pressure
		forward(t, f, clientPkt(40000+p, 3000, syn, nil))
	}
	if _, p := forward(t, f, clientPkt(30000, 3000, ack|psh, []byte("select 1"))); p != snat {
		t.Fatalf("the established flow moved from SNAT port %d to %d", snat, p)
	}
	reply(t, f, backend, snat, ack|psh, 30000)
	if est, err := f.dp.OwnerEstablished(c, v); err != nil || !est {
		t.Fatalf("after its next packet: owner established %v (%v), want true", est, err)
	}
}
