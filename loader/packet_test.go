package loader_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// pkt describes an Ethernet/IPv4/TCP (or UDP) packet; build serializes it
// with checksums computed from scratch, so it is also the reference that
// the datapath's incremental updates are compared against.
type pkt struct {
	srcMAC, dstMAC net.HardwareAddr
	src, dst       netip.Addr
	sport, dport   uint16
	seq, ack       uint32
	flags          uint8
	payload        []byte
	tcpOpts        []byte // multiple of 4

	proto     uint8  // default TCP
	ipOpts    []byte // multiple of 4; makes IHL > 5
	ihl       int    // overrides the computed IHL when non-zero
	fragOff   uint16 // flags and offset, host order
	totLenAdd int    // added to the correct total length
	doff      int    // overrides the TCP data offset (in 32-bit words)
	ttl       uint8
	id        uint16
	window    uint16
	truncate  int // bytes cut off the end after building
}

const (
	fin = 0x01
	syn = 0x02
	rst = 0x04
	psh = 0x08
	ack = 0x10
)

func (p pkt) build() []byte {
	proto := p.proto
	if proto == 0 {
		proto = 6
	}
	var l4 []byte
	if proto == 17 {
		l4 = make([]byte, 8+len(p.payload))
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		copy(l4[8:], p.payload)
	} else {
		hl := 20 + len(p.tcpOpts)
		l4 = make([]byte, hl+len(p.payload))
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
		binary.BigEndian.PutUint32(l4[4:], p.seq)
		binary.BigEndian.PutUint32(l4[8:], p.ack)
		doff := hl / 4
		if p.doff != 0 {
			doff = p.doff
		}
		l4[12] = byte(doff << 4)
		l4[13] = p.flags
		w := p.window
		if w == 0 {
			w = 64240
		}
		binary.BigEndian.PutUint16(l4[14:], w)
		copy(l4[20:], p.tcpOpts)
		copy(l4[hl:], p.payload)
	}
	ipl := 20 + len(p.ipOpts)
	ip := make([]byte, ipl)
	ihl := ipl / 4
	if p.ihl != 0 {
		ihl = p.ihl
	}
	ip[0] = byte(4<<4 | ihl)
	binary.BigEndian.PutUint16(ip[2:], uint16(ipl+len(l4)+p.totLenAdd))
	binary.BigEndian.PutUint16(ip[4:], p.id)
	binary.BigEndian.PutUint16(ip[6:], p.fragOff)
	ttl := p.ttl
	if ttl == 0 {
		ttl = 64
	}
	ip[8] = ttl
	ip[9] = proto
	s4, d4 := p.src.As4(), p.dst.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	copy(ip[20:], p.ipOpts)
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))
	if proto == 6 {
		binary.BigEndian.PutUint16(l4[16:], checksum(l4, pseudoSum(s4, d4, proto, len(l4))))
	} else if proto == 17 {
		binary.BigEndian.PutUint16(l4[6:], checksum(l4, pseudoSum(s4, d4, proto, len(l4))))
	}
	b := make([]byte, 0, 14+len(ip)+len(l4))
	b = append(b, p.dstMAC...)
	b = append(b, p.srcMAC...)
	b = append(b, 0x08, 0x00)
	b = append(b, ip...)
	b = append(b, l4...)
	return b[:len(b)-p.truncate]
}

func pseudoSum(src, dst [4]byte, proto uint8, n int) uint32 {
	var s uint32
	s += uint32(binary.BigEndian.Uint16(src[0:])) + uint32(binary.BigEndian.Uint16(src[2:]))
	s += uint32(binary.BigEndian.Uint16(dst[0:])) + uint32(binary.BigEndian.Uint16(dst[2:]))
	s += uint32(proto) + uint32(n)
	return s
}

// checksum returns the Internet checksum of b added to a partial sum.
func checksum(b []byte, sum uint32) uint16 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// parsed is what tests read back from an output packet.
type parsed struct {
	srcMAC, dstMAC string
	src, dst       netip.AddrPort
	seq, ack       uint32
	flags          uint8
	payloadLen     int
}

// parseTCP parses an Ethernet/IPv4/TCP packet and verifies its IP and TCP
// checksums from scratch.
func parseTCP(b []byte) (parsed, error) {
	var p parsed
	if len(b) < 14+20+20 {
		return p, fmt.Errorf("short packet: %d bytes", len(b))
	}
	if b[12] != 0x08 || b[13] != 0 {
		return p, fmt.Errorf("ethertype %x", b[12:14])
	}
	ip := b[14:]
	ihl := int(ip[0]&0xf) * 4
	if ip[0]>>4 != 4 || ihl < 20 {
		return p, fmt.Errorf("bad ip header %x", ip[0])
	}
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if tot > len(ip) || tot < ihl+20 {
		return p, fmt.Errorf("ip total length %d, have %d", tot, len(ip))
	}
	if c := checksum(ip[:ihl], 0); c != 0 {
		return p, fmt.Errorf("bad ip checksum (residue %#x)", c)
	}
	if ip[9] != 6 {
		return p, fmt.Errorf("protocol %d", ip[9])
	}
	s4, d4 := [4]byte(ip[12:16]), [4]byte(ip[16:20])
	tcp := ip[ihl:tot]
	if c := checksum(tcp, pseudoSum(s4, d4, 6, len(tcp))); c != 0 {
		return p, fmt.Errorf("bad tcp checksum (residue %#x)", c)
	}
	doff := int(tcp[12]>>4) * 4
	p.dstMAC = net.HardwareAddr(b[0:6]).String()
	p.srcMAC = net.HardwareAddr(b[6:12]).String()
	p.src = netip.AddrPortFrom(netip.AddrFrom4(s4), binary.BigEndian.Uint16(tcp[0:]))
	p.dst = netip.AddrPortFrom(netip.AddrFrom4(d4), binary.BigEndian.Uint16(tcp[2:]))
	p.seq = binary.BigEndian.Uint32(tcp[4:])
	p.ack = binary.BigEndian.Uint32(tcp[8:])
	p.flags = tcp[13]
	p.payloadLen = len(tcp) - doff
	return p, nil
}
