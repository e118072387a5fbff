package loader_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/xlb-dev/xlb/loader"
)

var router = netip.MustParseAddr("172.20.0.1")

// icmpErr builds an ICMP error (type, code, MTU) from router to dst, sent
// with the given MACs, quoting the first quote bytes of the IP packet q.
func icmpErr(srcMAC, dstMAC net.HardwareAddr, dst netip.Addr, typ, code uint8, mtu uint16, q pkt, quote int) []byte {
	q.srcMAC, q.dstMAC = lbMAC, lbMAC // only the IP packet is quoted
	quoted := q.build()[14:]
	quoted = quoted[:min(quote, len(quoted))]
	icmp := make([]byte, 8+len(quoted))
	icmp[0], icmp[1] = typ, code
	binary.BigEndian.PutUint16(icmp[6:], mtu)
	copy(icmp[8:], quoted)
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp, 0))
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
	ip[8], ip[9] = 64, 1
	copy(ip[12:], router.AsSlice())
	copy(ip[16:], dst.AsSlice())
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))
	b := append(append(append([]byte{}, dstMAC...), srcMAC...), 0x08, 0x00)
	return append(append(b, ip...), icmp...)
}

// icmpView is what tests read back from a translated ICMP error.
type icmpView struct {
	SrcMAC, DstMAC       string
	Src, Dst             netip.Addr
	Type, Code           uint8
	MTU                  uint16
	QuotedSrc, QuotedDst netip.AddrPort
}

// parseICMP parses an ICMP error and checks the outer IP, ICMP and quoted
// IP checksums from scratch.
func parseICMP(b []byte) (icmpView, error) {
	var v icmpView
	if len(b) < 14+20+8+20+4 {
		return v, fmt.Errorf("short: %d bytes", len(b))
	}
	ip := b[14:]
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if c := checksum(ip[:20], 0); c != 0 {
		return v, fmt.Errorf("bad outer ip checksum")
	}
	icmp := ip[20:tot]
	if c := checksum(icmp, 0); c != 0 {
		return v, fmt.Errorf("bad icmp checksum")
	}
	q := icmp[8:]
	if c := checksum(q[:20], 0); c != 0 {
		return v, fmt.Errorf("bad quoted ip checksum")
	}
	v.DstMAC, v.SrcMAC = net.HardwareAddr(b[0:6]).String(), net.HardwareAddr(b[6:12]).String()
	v.Src, v.Dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	v.Type, v.Code, v.MTU = icmp[0], icmp[1], binary.BigEndian.Uint16(icmp[6:])
	v.QuotedSrc = netip.AddrPortFrom(netip.AddrFrom4([4]byte(q[12:16])), binary.BigEndian.Uint16(q[20:]))
	v.QuotedDst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(q[16:20])), binary.BigEndian.Uint16(q[22:]))
	return v, nil
}

// TestICMPTranslated: ICMP errors about a NATed flow reach the other side
// translated (PMTU discovery both ways); errors about no flow do not.
func TestICMPTranslated(t *testing.T) {
	f := newFixture(t, snatPorts)
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	_, port := forward(t, f, clientPkt(52000, 3000, syn, nil))
	establish(t, f, primary, 52000, port)
	routerMAC := mustMAC("02:00:00:00:00:01")

	// What the VIP sent the client, and what xlb sent the backend.
	toClient := pkt{src: vip, sport: 3000, dst: client, dport: 52000, seq: 7000, ack: 1001, flags: ack, payload: make([]byte, 1400)}
	toBackend := pkt{src: lbAddr, sport: port, dst: pg1, dport: 5432, seq: 1001, ack: 7000, flags: ack, payload: make([]byte, 1400)}
	tests := []struct {
		name    string
		in      []byte
		verdict uint32
		want    icmpView
	}{
		{"frag needed on the client's path, short quote", icmpErr(routerMAC, lbMAC, vip, 3, 4, 1280, toClient, 28), xdpTX, icmpView{
			SrcMAC: lbMAC.String(), DstMAC: macs[pg1].String(), Src: lbAddr, Dst: pg1, Type: 3, Code: 4, MTU: 1280,
			QuotedSrc: primary, QuotedDst: ap(lbAddr, port)}},
		{"frag needed on the client's path, long quote", icmpErr(routerMAC, lbMAC, vip, 3, 4, 1280, toClient, 576), xdpTX, icmpView{
			SrcMAC: lbMAC.String(), DstMAC: macs[pg1].String(), Src: lbAddr, Dst: pg1, Type: 3, Code: 4, MTU: 1280,
			QuotedSrc: primary, QuotedDst: ap(lbAddr, port)}},
		{"frag needed on the backend's path", icmpErr(routerMAC, lbMAC, lbAddr, 3, 4, 1400, toBackend, 28), xdpTX, icmpView{
			SrcMAC: lbMAC.String(), DstMAC: clientMAC.String(), Src: vip, Dst: client, Type: 3, Code: 4, MTU: 1400,
			QuotedSrc: ap(client, 52000), QuotedDst: ap(vip, 3000)}},
		{"time exceeded on the backend's path", icmpErr(routerMAC, lbMAC, lbAddr, 11, 0, 0, toBackend, 48), xdpTX, icmpView{
			SrcMAC: lbMAC.String(), DstMAC: clientMAC.String(), Src: vip, Dst: client, Type: 11,
			QuotedSrc: ap(client, 52000), QuotedDst: ap(vip, 3000)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, out := f.run(t, tt.in)
			wantVerdict(t, v, tt.verdict)
			got, err := parseICMP(out)
			if err != nil {
				t.Fatalf("output: %v\n%x", err, out)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
				cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Fatalf("translated error (-want +got):\n%s", diff)
			}
		})
	}

	noFlow := toClient
	noFlow.dport = 52999
	ownPort := toBackend
	ownPort.sport = 40000 // outside the SNAT range: the host's own connection
	passes := []struct {
		name    string
		in      []byte
		verdict uint32
	}{
		{"about a flow the vip does not have", icmpErr(routerMAC, lbMAC, vip, 3, 4, 1280, noFlow, 28), xdpDrop},
		{"about the host's own connection", icmpErr(routerMAC, lbMAC, lbAddr, 3, 4, 1280, ownPort, 28), xdpPass},
		{"quote too short for the ports", icmpErr(routerMAC, lbMAC, vip, 3, 4, 1280, toClient, 22), xdpPass},
	}
	for _, tt := range passes {
		t.Run(tt.name, func(t *testing.T) {
			v, out := f.run(t, tt.in)
			wantVerdict(t, v, tt.verdict)
			if tt.verdict == xdpPass && !bytes.Equal(out, tt.in) {
				t.Fatal("passed packet changed")
			}
		})
	}
}
