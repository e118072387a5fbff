package loader_test

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/xlb-dev/xlb/loader"
)

// FuzzDatapath feeds arbitrary frames, received on lb0, through the
// datapath. Its checksums are made valid first where the frame parses as
// IPv4/TCP, so the property is: never a verdict other than PASS, DROP or TX,
// and every TX frame is IPv4/TCP with valid IP and TCP checksums, or a
// translated ICMP error with valid outer, ICMP and quoted checksums.
func FuzzDatapath(f *testing.F) {
	fx := newFixture(f, snatPorts)
	if err := fx.dp.SetBackends(loader.RW, []netip.AddrPort{ap(pg1, 5432)}); err != nil {
		f.Fatal(err)
	}
	if err := fx.dp.SetBackends(loader.RO, []netip.AddrPort{ap(pg2, 5432), ap(pg3, 5432)}); err != nil {
		f.Fatal(err)
	}
	for _, p := range []pkt{
		clientPkt(40000, 3000, syn, nil),
		clientPkt(40000, 3000, ack|psh, []byte("SELECT 1")),
		clientPkt(40001, 3001, syn, nil),
		clientPkt(40002, 3001, fin|ack, nil),
		clientPkt(40003, 3000, rst, nil),
		replyOf(ap(pg1, 5432), 20000, syn|ack),
		func() pkt { p := clientPkt(40000, 3000, ack, nil); p.ipOpts = []byte{1, 1, 1, 0}; return p }(),
		func() pkt { p := clientPkt(40000, 3000, ack, nil); p.fragOff = 0x2000; return p }(),
		func() pkt { p := clientPkt(40000, 3001, 0, []byte("x")); p.proto = 17; return p }(),
		func() pkt { p := clientPkt(40000, 3000, syn, nil); p.tcpOpts = []byte{2, 4, 5, 0xb4}; return p }(),
	} {
		f.Add(p.build())
	}
	// ICMP errors about the first seed's flow, both ways.
	toClient := pkt{src: vip, sport: 3000, dst: client, dport: 40000, flags: ack, payload: make([]byte, 100)}
	toBackend := pkt{src: lbAddr, sport: 20000, dst: pg1, dport: 5432, flags: ack, payload: make([]byte, 100)}
	f.Add(icmpErr(mustMAC("02:00:00:00:00:01"), lbMAC, vip, 3, 4, 1280, toClient, 28))
	f.Add(icmpErr(mustMAC("02:00:00:00:00:01"), lbMAC, lbAddr, 3, 4, 1280, toBackend, 48))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 || len(in) > 1500 {
			return // BPF_PROG_TEST_RUN wants an Ethernet header; keep frames sane
		}
		in = append([]byte(nil), in...)
		fixChecksums(in)
		v, out, err := fx.runProg(fx.dp.Program(), in)
		if err != nil {
			t.Fatal(err)
		}
		switch v {
		case xdpPass, xdpDrop:
		case xdpTX:
			if len(out) > 23 && out[23] == 1 { // a translated ICMP error
				if _, err := parseICMP(out); err != nil {
					t.Fatalf("TX ICMP output invalid: %v\n in %x\nout %x", err, in, out)
				}
				break
			}
			if _, err := parseTCP(out); err != nil {
				t.Fatalf("TX output invalid: %v\n in %x\nout %x", err, in, out)
			}
		default:
			t.Fatalf("verdict %d (%s) for %x", v, verdictName[v], in)
		}
	})
}

// fixChecksums makes the IPv4 and TCP (or ICMP and quoted IPv4) checksums
// of an Ethernet frame valid where its headers parse, so outputs can be
// held to valid checksums.
func fixChecksums(b []byte) {
	if len(b) < 34 || b[12] != 0x08 || b[13] != 0x00 {
		return
	}
	ip := b[14:]
	ihl := int(ip[0]&0xf) * 4
	if ihl < 20 || len(ip) < ihl {
		return
	}
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], checksum(ip[:ihl], 0))
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if ip[9] == 1 && tot <= len(ip) && tot >= ihl+8 {
		icmp := ip[ihl:tot]
		if q := icmp[8:]; len(q) >= 20 && int(q[0]&0xf)*4 == 20 {
			q[10], q[11] = 0, 0
			binary.BigEndian.PutUint16(q[10:], checksum(q[:20], 0))
		}
		icmp[2], icmp[3] = 0, 0
		binary.BigEndian.PutUint16(icmp[2:], checksum(icmp, 0))
		return
	}
	if ip[9] != 6 || tot > len(ip) || tot < ihl+20 {
		return
	}
	tcp := ip[ihl:tot]
	tcp[16], tcp[17] = 0, 0
	binary.BigEndian.PutUint16(tcp[16:], checksum(tcp, pseudoSum([4]byte(ip[12:16]), [4]byte(ip[16:20]), 6, len(tcp))))
}
