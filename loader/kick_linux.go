package loader

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// A Kicker makes the clients of cut flows notice at once, also a client
// blocked in a read that would never send another packet.
//
// # Why provoke instead of reset
//
// XDP cannot send a packet on its own, and a RST from user space is only
// accepted when its sequence number is exactly the client's next expected
// one (RFC 5961), which the datapath would have to record on every packet.
// Instead, once a backend's flows are deleted, the Kicker sends each of
// their clients two bare ACKs from VIP:port whose sequence numbers lie 2^31
// apart: a receive window is at most 2^30, so at least one of them is out of
// the window, and TCP answers an out-of-window segment (or an ACK of data
// long acknowledged, RFC 5961 §5) with an ACK carrying its exact sequence
// and acknowledgement numbers. That ACK reaches the datapath, which finds no
// flow and answers with a RST built from it — exactly in window, so the
// client's connection fails at once. The probes carry no data, so they can
// never be taken into a live stream; a socket already gone answers them
// with a RST, which the datapath drops.
//
// Only the node that owns the VIP should kick: the answer must reach a
// datapath that sends the RST.
type Kicker struct {
	fd int
}

// NewKicker opens the raw socket the Kicker sends from (CAP_NET_RAW), in the
// caller's network namespace.
func NewKicker() (*Kicker, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("opening raw socket: %w", err)
	}
	return &Kicker{fd: fd}, nil
}

// Close closes the socket.
func (k *Kicker) Close() error { return unix.Close(k.fd) }

// Kick sends the probes to the client of every flow and returns how many
// clients it reached, with every send error joined.
func (k *Kicker) Kick(flows []Flow) (int, error) {
	var (
		errs []error
		n    int
	)
	for _, f := range flows {
		if !f.Client.Addr().Is4() || !f.VIP.Addr().Is4() {
			continue
		}
		var r [8]byte
		if _, err := rand.Read(r[:]); err != nil {
			return n, fmt.Errorf("reading random numbers: %w", err)
		}
		seq := binary.BigEndian.Uint32(r[:4])
		ack := binary.BigEndian.Uint32(r[4:])
		dst := unix.SockaddrInet4{Addr: f.Client.Addr().As4()}
		var sent bool
		for _, s := range []uint32{seq, seq + 1<<31} {
			pkt := ProbePacket(f.VIP, f.Client, s, ack)
			if err := unix.Sendto(k.fd, pkt, 0, &dst); err != nil {
				errs = append(errs, fmt.Errorf("kicking %v: %w", f.Client, err))
				continue
			}
			sent = true
		}
		if sent {
			n++
		}
	}
	return n, errors.Join(errs...)
}

// ProbePacket returns an IPv4 packet (header included) carrying a bare TCP
// ACK from src to dst with the given numbers, checksums filled in.
func ProbePacket(src, dst netip.AddrPort, seq, ack uint32) []byte {
	b := make([]byte, 40)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], 40)
	b[8] = 64 // TTL
	b[9] = unix.IPPROTO_TCP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(b[12:16], s4[:])
	copy(b[16:20], d4[:])
	binary.BigEndian.PutUint16(b[10:], ^fold(sum(b[:20])))
	t := b[20:]
	binary.BigEndian.PutUint16(t[0:], src.Port())
	binary.BigEndian.PutUint16(t[2:], dst.Port())
	binary.BigEndian.PutUint32(t[4:], seq)
	binary.BigEndian.PutUint32(t[8:], ack)
	t[12] = 5 << 4
	t[13] = 0x10 // ACK
	binary.BigEndian.PutUint16(t[14:], 512)
	pseudo := make([]byte, 12)
	copy(pseudo[0:4], s4[:])
	copy(pseudo[4:8], d4[:])
	pseudo[9] = unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(pseudo[10:], uint16(len(t)))
	binary.BigEndian.PutUint16(t[16:], ^fold(sum(pseudo)+sum(t)))
	return b
}

// sum adds b as big-endian 16-bit words (RFC 1071), unfolded.
func sum(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
