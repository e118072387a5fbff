package loader_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/xlb-dev/xlb/loader"
)

const (
	xdpAborted = 0
	xdpDrop    = 1
	xdpPass    = 2
	xdpTX      = 3
)

var verdictName = map[uint32]string{xdpAborted: "ABORTED", xdpDrop: "DROP", xdpPass: "PASS", xdpTX: "TX", 4: "REDIRECT"}

// forwardOf is the packet the datapath should send for in (client ->
// VIP) on a flow to backend with SNAT port snat.
func forwardOf(in pkt, backend netip.AddrPort, snat uint16) pkt {
	out := in
	out.srcMAC, out.dstMAC = lbMAC, macs[backend.Addr()]
	out.src, out.sport = lbAddr, snat
	out.dst, out.dport = backend.Addr(), backend.Port()
	return out
}

// replyOf is a backend's packet on a flow, as the backend sends it.
func replyOf(backend netip.AddrPort, snat uint16, flags uint8) pkt {
	return pkt{srcMAC: macs[backend.Addr()], dstMAC: lbMAC, src: backend.Addr(), sport: backend.Port(),
		dst: lbAddr, dport: snat, seq: 7000, ack: 1001, flags: flags, payload: []byte("reply")}
}

func wantVerdict(t *testing.T, got, want uint32) {
	t.Helper()
	if got != want {
		t.Fatalf("verdict %s, want %s", verdictName[got], verdictName[want])
	}
}

// forward runs a client packet that must be forwarded and returns the
// backend and SNAT port it went to, after checking the output bytes
// against the reference packet with checksums computed from scratch.
func forward(t *testing.T, f *fixture, in pkt) (netip.AddrPort, uint16) {
	t.Helper()
	v, out := f.run(t, in.build())
	if v != xdpTX {
		st, _ := f.dp.Stats()
		t.Logf("stats: %+v", st)
	}
	wantVerdict(t, v, xdpTX)
	p, err := parseTCP(out)
	if err != nil {
		t.Fatalf("output: %v", err)
	}
	if p.src.Addr() != lbAddr || p.src.Port() < snatPorts.Min || p.src.Port() > snatPorts.Max {
		t.Fatalf("source %v, want %v with a port in %d-%d", p.src, lbAddr, snatPorts.Min, snatPorts.Max)
	}
	want := forwardOf(in, p.dst, p.src.Port()).build()
	if !bytes.Equal(out, want) {
		t.Fatalf("output differs from reference\n got %x\nwant %x", out, want)
	}
	return p.dst, p.src.Port()
}

func TestForwardFlow(t *testing.T) {
	f := newFixture(t, snatPorts)
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}

	synIn := clientPkt(40000, 3000, syn, nil)
	synIn.tcpOpts = []byte{2, 4, 0x05, 0xb4, 1, 1, 4, 2} // MSS, NOP, NOP, SACK-permitted
	be, port := forward(t, f, synIn)
	if be != primary {
		t.Fatalf("SYN went to %v, want the primary %v", be, primary)
	}

	// The flow's next packet: same backend, same SNAT port.
	be2, port2 := forward(t, f, clientPkt(40000, 3000, ack|psh, []byte("SELECT 1")))
	if be2 != be || port2 != port {
		t.Fatalf("next packet went to %v from port %d, want %v from %d", be2, port2, be, port)
	}

	// The backend's reply goes back as VIP:3000 -> client.
	reply := replyOf(primary, port, syn|ack)
	v, out := f.run(t, reply.build())
	wantVerdict(t, v, xdpTX)
	want := reply
	want.srcMAC, want.dstMAC = lbMAC, clientMAC
	want.src, want.sport = vip, 3000
	want.dst, want.dport = client, 40000
	if !bytes.Equal(out, want.build()) {
		t.Fatalf("reply differs from reference\n got %x\nwant %x", out, want.build())
	}
	if _, err := parseTCP(out); err != nil {
		t.Fatalf("reply: %v", err)
	}

	// A malformed reply on the live SNAT port is the kernel's to drop:
	// it passes untouched (found by FuzzDatapath: IP version 2).
	bad := replyOf(primary, port, ack).build()
	bad[14] = 0x25
	if v, out := f.run(t, bad); v != xdpPass || !bytes.Equal(out, bad) {
		t.Fatalf("malformed reply: verdict %s, changed %v; want PASS untouched", verdictName[v], !bytes.Equal(out, bad))
	}

	flows, err := f.dp.Flows()
	if err != nil {
		t.Fatal(err)
	}
	wantFlows := []loader.Flow{{Client: ap(client, 40000), VIP: ap(vip, 3000), Service: loader.RW,
		Backend: primary, SNAT: ap(lbAddr, port)}}
	if diff := cmp.Diff(wantFlows, flows, cmpIgnoreIdle); diff != "" {
		t.Fatalf("flows (-want +got):\n%s", diff)
	}
	st, err := f.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if c := st.Services[loader.RW]; c.Packets != 3 || c.NewFlows != 1 {
		t.Fatalf("rw counters %+v, want 3 packets and 1 new flow", c)
	}
	if c := st.Backends[primary]; c.Packets != 3 || c.NewFlows != 1 {
		t.Fatalf("primary counters %+v, want 3 packets and 1 new flow", c)
	}
	// Bytes as received, the reply's counted out (to the client).
	in := uint64(len(synIn.build()) + len(clientPkt(40000, 3000, ack|psh, []byte("SELECT 1")).build()))
	outBytes := uint64(len(reply.build()))
	for name, c := range map[string]loader.Counters{"rw": st.Services[loader.RW], "primary": st.Backends[primary]} {
		if c.Bytes != in+outBytes || c.BytesOut != outBytes {
			t.Errorf("%s bytes %d, out %d; want %d, of them %d out", name, c.Bytes, c.BytesOut, in+outBytes, outBytes)
		}
	}
}

var cmpIgnoreIdle = cmp.Comparer(func(a, b loader.Flow) bool {
	a.Idle, b.Idle = 0, 0
	return a == b
})

var _ = ebpf.XDP
