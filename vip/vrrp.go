package vip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Protocol numbers and addresses of VRRP for IPv4 (RFC 5798 §5.1.1).
const (
	// IPProtocol is VRRP's IP protocol number.
	IPProtocol = 112
	// TTL is the only IP TTL a VRRP packet may be sent or accepted with.
	TTL = 255
)

// MulticastGroup is the IPv4 multicast address VRRP advertisements go to
// when no unicast peers are configured.
var MulticastGroup = netip.AddrFrom4([4]byte{224, 0, 0, 18})

// Field values and limits of a VRRPv3 message (RFC 5798 §5.2).
const (
	version          = 3
	typeAdvert       = 1
	headerLen        = 8
	maxIntervalCS    = 1<<12 - 1 // 12 bits of centiseconds
	centisecond      = 10 * time.Millisecond
	maxAddresses     = 255
	priorityResign   = 0   // a master giving up (RFC 5798 §5.2.4)
	priorityOwner    = 255 // the owner of the addresses
	pseudoHeaderLen  = 12
	ipv4AddrLen      = 4
	reservedAndIntvl = 4 // offset of the 4 reserved bits + 12-bit interval
)

// MinAdvertInterval and MaxAdvertInterval bound the advertisement interval
// a VRRPv3 message can carry: 1 to 4095 centiseconds.
const (
	MinAdvertInterval = centisecond
	MaxAdvertInterval = maxIntervalCS * centisecond
)

// Errors Unmarshal and Marshal return, wrapped with detail; match them with
// errors.Is.
var (
	// ErrTruncated means the message is shorter than its header or than
	// the addresses its count announces, or longer than them.
	ErrTruncated = errors.New("vrrp: message length does not match its address count")
	// ErrVersion means the version field is not 3.
	ErrVersion = errors.New("vrrp: not version 3")
	// ErrType means the type field is not 1 (advertisement).
	ErrType = errors.New("vrrp: not an advertisement")
	// ErrChecksum means the checksum over the IPv4 pseudo-header and the
	// message does not verify.
	ErrChecksum = errors.New("vrrp: bad checksum")
	// ErrInterval means the advertisement interval is zero or does not fit
	// 12 bits of centiseconds.
	ErrInterval = errors.New("vrrp: advertisement interval out of range")
	// ErrAddress means an address is not IPv4 or there are more than 255.
	ErrAddress = errors.New("vrrp: bad address list")
)

// Advertisement is a VRRPv3 advertisement for IPv4 (RFC 5798 §5.2):
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|(rsvd) |     Max Adver Int     |          Checksum             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       IPv4 Address(es)                        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
type Advertisement struct {
	// VRID is the virtual router: peers of one VIP share it.
	VRID uint8
	// Priority is the sender's: 1–254 for a backup-capable router, 255
	// for the addresses' owner, 0 for a master giving up.
	Priority uint8
	// Interval is the sender's advertisement interval, a whole number of
	// centiseconds on the wire.
	Interval time.Duration
	// Addresses are the virtual IPv4 addresses.
	Addresses []netip.Addr
}

// Marshal returns the advertisement's wire form with the checksum computed
// over the IPv4 pseudo-header of src and dst. Interval is rounded to the
// nearest centisecond. It returns ErrInterval or ErrAddress, wrapped, when
// a field does not fit.
func (a *Advertisement) Marshal(src, dst netip.Addr) ([]byte, error) {
	cs := (a.Interval + centisecond/2) / centisecond
	if cs < 1 || cs > maxIntervalCS {
		return nil, fmt.Errorf("marshaling interval %v: %w", a.Interval, ErrInterval)
	}
	if len(a.Addresses) > maxAddresses {
		return nil, fmt.Errorf("marshaling %d addresses: %w", len(a.Addresses), ErrAddress)
	}
	for _, ip := range append([]netip.Addr{src, dst}, a.Addresses...) {
		if !ip.Is4() {
			return nil, fmt.Errorf("marshaling address %v: %w", ip, ErrAddress)
		}
	}
	b := make([]byte, headerLen+ipv4AddrLen*len(a.Addresses))
	b[0] = version<<4 | typeAdvert
	b[1] = a.VRID
	b[2] = a.Priority
	b[3] = uint8(len(a.Addresses))
	binary.BigEndian.PutUint16(b[reservedAndIntvl:], uint16(cs))
	for i, ip := range a.Addresses {
		a4 := ip.As4()
		copy(b[headerLen+ipv4AddrLen*i:], a4[:])
	}
	binary.BigEndian.PutUint16(b[6:], checksum(b, src, dst))
	return b, nil
}

// Unmarshal parses a VRRPv3 advertisement that came from src to dst and
// verifies its checksum. It returns ErrTruncated, ErrVersion, ErrType,
// ErrInterval, ErrAddress or ErrChecksum, wrapped, for a message it
// rejects. The reserved bits are ignored, as RFC 5798 §5.2.6 asks.
func Unmarshal(b []byte, src, dst netip.Addr) (*Advertisement, error) {
	if len(b) < headerLen {
		return nil, fmt.Errorf("parsing %d bytes: %w", len(b), ErrTruncated)
	}
	if v := b[0] >> 4; v != version {
		return nil, fmt.Errorf("parsing version %d: %w", v, ErrVersion)
	}
	if t := b[0] & 0x0f; t != typeAdvert {
		return nil, fmt.Errorf("parsing type %d: %w", t, ErrType)
	}
	n := int(b[3])
	if len(b) != headerLen+ipv4AddrLen*n {
		return nil, fmt.Errorf("parsing %d bytes for %d addresses: %w", len(b), n, ErrTruncated)
	}
	cs := binary.BigEndian.Uint16(b[reservedAndIntvl:]) & maxIntervalCS
	if cs == 0 {
		return nil, fmt.Errorf("parsing interval: %w", ErrInterval)
	}
	if !src.Is4() || !dst.Is4() {
		return nil, fmt.Errorf("parsing pseudo-header %v > %v: %w", src, dst, ErrAddress)
	}
	if sum := checksum(b, src, dst); sum != 0 {
		return nil, fmt.Errorf("parsing checksum %#04x from %v: %w", binary.BigEndian.Uint16(b[6:]), src, ErrChecksum)
	}
	a := &Advertisement{
		VRID:      b[1],
		Priority:  b[2],
		Interval:  time.Duration(cs) * centisecond,
		Addresses: make([]netip.Addr, n),
	}
	for i := range n {
		a.Addresses[i] = netip.AddrFrom4([4]byte(b[headerLen+ipv4AddrLen*i:]))
	}
	return a, nil
}

// checksum returns the Internet checksum (RFC 1071) of the IPv4
// pseudo-header (src, dst, zero, protocol 112, length of b) followed by b.
// Over a message whose checksum field holds the right value it returns 0;
// over one whose field is zero it returns the value to put there.
func checksum(b []byte, src, dst netip.Addr) uint16 {
	var ph [pseudoHeaderLen]byte
	s4, d4 := src.As4(), dst.As4()
	copy(ph[0:], s4[:])
	copy(ph[4:], d4[:])
	ph[9] = IPProtocol
	binary.BigEndian.PutUint16(ph[10:], uint16(len(b)))
	sum := sum16(0, ph[:])
	sum = sum16(sum, b)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// sum16 adds b to sum as big-endian 16-bit words, padding an odd last byte
// with zero.
func sum16(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}
