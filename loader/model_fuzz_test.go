package loader_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/loader"
)

// The differential fuzz target runs sequences of well-formed TCP packets,
// both directions, random flags, lengths, options and sequence numbers,
// through the datapath and through a reference model of its translation
// (flowModel below), and compares each verdict and each output byte for
// byte. The model does not pick backends or SNAT ports: it learns them
// from a flow's first forwarded SYN and holds the datapath to them after
// (a backend of the service's pool, a port in the range that no other
// live flow of that backend holds). Malformed packets are FuzzDatapath's.

// flowKey is a client's tuple towards a VIP port.
type flowKey struct {
	client netip.AddrPort
	port   uint16 // 3000 or 3001
}

// modelFlow is what the model knows of a flow.
type modelFlow struct {
	backend netip.AddrPort
	snat    uint16
	synack  bool // the backend answered the SYN
	closed  bool // FIN both ways or a RST
	finFwd  bool
	finRev  bool
}

// flowModel mirrors bpf/xlb.c for the packets the fuzz target sends: one
// fresh client address space per input, no expiry within an input.
type flowModel struct {
	pools map[uint16][]netip.AddrPort // service port -> pool
	flows map[flowKey]*modelFlow
	// lingering are SNAT ports of flows replaced by a SYN on their closed
	// tuple: their slot keeps its old owner until a backend packet on it
	// finds the forward entry gone (then a RST towards the backend frees
	// it) or it expires.
	lingering map[netip.AddrPort]bool // backend address with the port
}

func (m *flowModel) holder(b netip.AddrPort, port uint16) (flowKey, *modelFlow) {
	for k, f := range m.flows {
		if f.backend == b && f.snat == port {
			return k, f
		}
	}
	return flowKey{}, nil
}

// fuzzIteration gives every fuzz input its own client addresses (10.64.0.0/10),
// so flows of earlier inputs never meet the model of this one.
var fuzzIteration atomic.Uint32

func FuzzTranslation(f *testing.F) {
	fx := newFixtureWith(f, loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: snatPorts, SkipPortCheck: true,
		// Closed flows free their port soon after an input ends (every
		// input resets its flows at the end), so no input meets a full
		// range (pressure would take ports the model still counts on).
		ClosedTimeout: 300 * time.Millisecond})
	pools := map[uint16][]netip.AddrPort{
		3000: {ap(pg1, 5432)},
		3001: {ap(pg2, 5432), ap(pg3, 5432)},
	}
	if err := fx.dp.SetBackends(loader.RW, pools[3000]); err != nil {
		f.Fatal(err)
	}
	if err := fx.dp.SetBackends(loader.RO, pools[3001]); err != nil {
		f.Fatal(err)
	}
	// Seeds: a handshake, data both ways, FIN both ways; a RST; a SYN on a
	// closed tuple; packets without a flow; a read flow.
	op := func(kind, slot, flags, plen, opts byte) []byte {
		return []byte{kind, slot, flags, plen, opts, 1, 2, 3}
	}
	const c, b = 0, 2 // op kinds: client packet, backend packet
	f.Add(slices.Concat(op(c, 0, syn, 0, 1), op(b, 0, syn|ack, 0, 1), op(c, 0, ack, 0, 0), op(c, 0, ack|psh, 20, 0),
		op(b, 0, ack|psh, 40, 0), op(c, 0, fin|ack, 0, 0), op(b, 0, fin|ack, 0, 0), op(c, 0, ack, 0, 0)))
	f.Add(slices.Concat(op(c, 1, syn, 0, 0), op(b, 0, syn|ack, 0, 0), op(c, 1, rst, 0, 0), op(c, 1, syn, 0, 0), op(b, 0, ack, 0, 0),
		op(b, 1, ack, 0, 0)))
	f.Add(slices.Concat(op(c, 2, ack, 0, 0), op(c, 2, rst, 0, 0), op(c, 2, syn|ack, 0, 0), op(b, 3, ack, 5, 0)))
	f.Add(slices.Concat(op(c, 4, syn, 0, 2), op(c, 5, syn, 0, 0), op(b, 0, syn|ack, 0, 0), op(b, 1, rst, 0, 0),
		op(c, 4, ack|psh, 10, 0), op(c, 5, ack, 0, 0)))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 8*64 {
			return
		}
		it := fuzzIteration.Add(1)
		base := netip.AddrFrom4([4]byte{10, 64 | byte(it>>16&0x3f), byte(it >> 8), byte(it)})
		m := &flowModel{pools: pools, flows: map[flowKey]*modelFlow{}, lingering: map[netip.AddrPort]bool{}}
		for i := 0; i+8 <= len(in); i += 8 {
			o := in[i : i+8]
			p := pkt{seq: binary.BigEndian.Uint32(o[4:]), ack: binary.BigEndian.Uint32(o[4:]) ^ 0x5a5a5a5a,
				flags: o[2] & 0x3f, payload: bytes.Repeat([]byte{o[5]}, int(o[3]&63)), tcpOpts: bytes.Repeat([]byte{1}, int(o[4]&3)*4),
				window: uint16(o[6])<<8 | uint16(o[7])}
			if o[0]&2 == 0 {
				key := flowKey{client: netip.AddrPortFrom(base, 40000+uint16(o[1]&3)), port: 3000 + uint16(o[1]>>2&1)}
				m.client(t, fx, key, p)
			} else {
				m.backend(t, fx, o[1], p)
			}
		}
		// End of the input: every flow reset by its client, so its port
		// frees after the closed timeout.
		for k := range m.flows {
			m.client(t, fx, k, pkt{flags: rst, seq: 1})
		}
	})
}

// client sends p from key's client to the VIP and checks the datapath's
// answer against the model.
func (m *flowModel) client(t *testing.T, fx *fixture, key flowKey, p pkt) {
	t.Helper()
	p.srcMAC, p.dstMAC = clientMAC, lbMAC
	p.src, p.sport = key.client.Addr(), key.client.Port()
	p.dst, p.dport = vip, key.port
	in := p.build()
	v, out := fx.run(t, in)
	fl := m.flows[key]
	isSYN := p.flags&(syn|ack|rst) == syn
	if fl != nil && !(isSYN && fl.closed) {
		// A packet of a live flow: forwarded on its mapping.
		m.wantForward(t, v, out, p, fl, "a packet of a live flow")
		if p.flags&rst != 0 {
			fl.closed = true
		}
		if p.flags&fin != 0 {
			fl.finFwd = true
		}
		fl.closed = fl.closed || (fl.finFwd && fl.finRev)
		return
	}
	if !isSYN {
		if p.flags&rst != 0 {
			if v != xdpDrop {
				t.Fatalf("client RST without a flow: verdict %s, want DROP\n in %x", verdictName[v], in)
			}
			return
		}
		if v != xdpTX {
			t.Fatalf("client packet (flags %#x) without a flow: verdict %s, want a RST (TX)\n in %x", p.flags, verdictName[v], in)
		}
		r, err := parseTCP(out)
		if err != nil || r.flags&rst == 0 || r.src != netip.AddrPortFrom(vip, key.port) || r.dst != key.client ||
			r.dstMAC != clientMAC.String() {
			t.Fatalf("answer to a packet without a flow: %+v (%v), want a RST from %v:%d to %v", r, err, vip, key.port, key.client)
		}
		return
	}
	// A SYN: a new flow (a SYN on a closed tuple replaces the old one,
	// whose port lingers with its slot).
	if fl != nil {
		m.lingering[netip.AddrPortFrom(fl.backend.Addr(), fl.snat)] = true
		delete(m.flows, key)
	}
	if v != xdpTX {
		t.Fatalf("SYN of a new flow: verdict %s, want TX\n in %x", verdictName[v], in)
	}
	r, err := parseTCP(out)
	if err != nil {
		t.Fatalf("SYN of a new flow: %v\nout %x", err, out)
	}
	if !slices.Contains(m.pools[key.port], r.dst) {
		t.Fatalf("SYN to :%d went to %v, not in the pool %v", key.port, r.dst, m.pools[key.port])
	}
	if r.src.Port() < snatPorts.Min || r.src.Port() > snatPorts.Max {
		t.Fatalf("SNAT port %d outside %d-%d", r.src.Port(), snatPorts.Min, snatPorts.Max)
	}
	if k, other := m.holder(r.dst, r.src.Port()); other != nil {
		t.Fatalf("SNAT port %d of %v given to %v while %v holds it", r.src.Port(), r.dst, key, k)
	}
	if m.lingering[netip.AddrPortFrom(r.dst.Addr(), r.src.Port())] {
		t.Fatalf("SNAT port %d of %v given again while its old flow's slot lingers", r.src.Port(), r.dst)
	}
	fl = &modelFlow{backend: r.dst, snat: r.src.Port()}
	m.flows[key] = fl
	m.wantForward(t, v, out, p, fl, "the SYN of a new flow")
}

// wantForward checks that out is p translated onto fl, byte for byte.
func (m *flowModel) wantForward(t *testing.T, v uint32, out []byte, p pkt, fl *modelFlow, what string) {
	t.Helper()
	if v != xdpTX {
		t.Fatalf("%s: verdict %s, want TX", what, verdictName[v])
	}
	want := forwardOf(p, fl.backend, fl.snat).build()
	if !bytes.Equal(out, want) {
		t.Fatalf("%s: output differs from the model\n got %x\nwant %x", what, out, want)
	}
}

// backend sends p from a backend to the LB's SNAT address: on the port of
// a flow the model knows (sel picks it), else on a port no flow holds.
func (m *flowModel) backend(t *testing.T, fx *fixture, sel byte, p pkt) {
	t.Helper()
	keys := make([]flowKey, 0, len(m.flows))
	for k := range m.flows {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b flowKey) int {
		if c := a.client.Compare(b.client); c != 0 {
			return c
		}
		return int(a.port) - int(b.port)
	})
	var lingers []netip.AddrPort
	for l := range m.lingering {
		lingers = append(lingers, l)
	}
	slices.SortFunc(lingers, func(a, b netip.AddrPort) int { return a.Compare(b) })

	var (
		key    flowKey
		fl     *modelFlow
		be     = ap(pg1, 5432)
		port   = snatPorts.Max
		linger bool
	)
	switch n := int(sel); {
	case len(keys) > 0 && n%4 != 3:
		key = keys[n%len(keys)]
		fl = m.flows[key]
		be, port = fl.backend, fl.snat
	case len(lingers) > 0 && n%4 == 3:
		l := lingers[n%len(lingers)]
		be, port, linger = netip.AddrPortFrom(l.Addr(), 5432), l.Port(), true
	default:
		// A port no flow of the model holds (a flow of an earlier input
		// may: skip those — the model cannot know them).
		for q := snatPorts.Max; q > snatPorts.Max-64; q-- {
			if _, h := m.holder(be, q); h == nil && !m.lingering[netip.AddrPortFrom(be.Addr(), q)] {
				port = q
				break
			}
		}
	}
	p.srcMAC, p.dstMAC = macs[be.Addr()], lbMAC
	p.src, p.sport = be.Addr(), be.Port()
	p.dst, p.dport = lbAddr, port
	in := p.build()
	v, out := fx.run(t, in)
	switch {
	case fl != nil:
		if v != xdpTX {
			t.Fatalf("backend packet of a live flow: verdict %s, want TX\n in %x", verdictName[v], in)
		}
		want := p
		want.srcMAC, want.dstMAC = lbMAC, clientMAC
		want.src, want.sport = vip, key.port
		want.dst, want.dport = key.client.Addr(), key.client.Port()
		if w := want.build(); !bytes.Equal(out, w) {
			t.Fatalf("backend packet of a live flow: output differs from the model\n got %x\nwant %x", out, w)
		}
		if p.flags&(syn|ack) == syn|ack {
			fl.synack = true
		}
		if p.flags&rst != 0 {
			fl.closed = true
		}
		if p.flags&fin != 0 {
			fl.finRev = true
		}
		fl.closed = fl.closed || (fl.finFwd && fl.finRev)
	case linger:
		// The slot's owner has no forward entry: a RST towards the
		// backend frees it (unless the packet is a RST), or it expired
		// (then it passes).
		switch v {
		case xdpTX:
			r, err := parseTCP(out)
			if err != nil || r.flags&rst == 0 || r.dst != be || r.src != netip.AddrPortFrom(lbAddr, port) {
				t.Fatalf("backend packet on a lingering port: %+v (%v), want a RST to %v", r, err, be)
			}
		case xdpDrop, xdpPass:
		default:
			t.Fatalf("backend packet on a lingering port: verdict %s", verdictName[v])
		}
		delete(m.lingering, netip.AddrPortFrom(be.Addr(), port))
	default:
		// No flow of this input holds the port: not ours (PASS), or an
		// earlier input's flow (translated, or refused towards the
		// backend) — anything but a malformed output.
		if v == xdpTX {
			if _, err := parseTCP(out); err != nil {
				t.Fatalf("backend packet on a free port: invalid output: %v", err)
			}
		}
	}
}
