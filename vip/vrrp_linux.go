package vip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Dial opens what an Instance needs on cfg.Interface, in the calling
// thread's network namespace: a raw IPv4 socket for protocol 112 bound to
// the interface (joined to 224.0.0.18 unless cfg.UnicastPeers are set), a
// netlink handle for the VIP and a packet socket for gratuitous ARP. A zero
// cfg.SourceAddr becomes the interface's first IPv4 address other than the
// VIP. The sockets stay in that namespace whichever thread uses them
// later, so a test can Dial inside a namespace and Run anywhere. It needs
// CAP_NET_RAW and CAP_NET_ADMIN, and CAP_SYS_NICE for cfg.SchedPriority,
// without which Run logs a warning and goes on. It returns ErrConfig,
// wrapped, for a field out of range.
func Dial(cfg Config) (_ *Instance, err error) {
	ifi, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("finding interface %q: %w", cfg.Interface, err)
	}
	if !cfg.SourceAddr.IsValid() {
		if cfg.SourceAddr, err = primaryAddr(ifi, cfg.VIP.Addr()); err != nil {
			return nil, err
		}
	}
	var closers []interface{ Close() error }
	defer func() {
		if err != nil {
			for _, c := range closers {
				c.Close()
			}
		}
	}()
	conn, err := listenVRRP(ifi, len(cfg.UnicastPeers) == 0)
	if err != nil {
		return nil, err
	}
	closers = append(closers, conn)
	addr, err := newNetlinkAddresser(ifi)
	if err != nil {
		return nil, err
	}
	closers = append(closers, addr)
	ann, err := dialARP(ifi)
	if err != nil {
		return nil, err
	}
	closers = append(closers, ann)
	in, err := New(cfg, conn, addr, ann)
	if err != nil {
		return nil, err
	}
	if prio := in.cfg.SchedPriority; prio > 0 {
		in.realtime = func() error { return setFIFO(prio) }
	}
	return in, nil
}

// setFIFO puts the calling thread under SCHED_FIFO at prio; its children
// start under the normal scheduler.
func setFIFO(prio int) error {
	attr := unix.SchedAttr{Policy: unix.SCHED_FIFO, Priority: uint32(prio), Flags: unix.SCHED_FLAG_RESET_ON_FORK}
	if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
		return fmt.Errorf("setting SCHED_FIFO priority %d: %w", prio, err)
	}
	return nil
}

// primaryAddr returns ifi's first IPv4 address other than not.
func primaryAddr(ifi *net.Interface, not netip.Addr) (netip.Addr, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("listing addresses of %s: %w", ifi.Name, err)
	}
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err == nil && p.Addr().Is4() && p.Addr() != not {
			return p.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("finding an IPv4 address on %s: %w", ifi.Name, ErrConfig)
}

// rawConn is Conn over a raw IPv4 socket that writes its own headers
// (IP_HDRINCL), so every advertisement has TTL 255 and the source its
// checksum was computed with. It waits in ppoll(2) on its own thread rather
// than in Go's network poller: the kernel then wakes the caller, a
// real-time thread, directly when a packet or the deadline comes, with no
// normal-priority thread in between.
type rawConn struct {
	fd   int
	wake int // eventfd: SetReadDeadline from another goroutine interrupts ppoll

	mu       sync.Mutex
	deadline time.Time
	reading  bool // a ReadFrom is in progress: wake it on a new deadline
}

// listenVRRP opens a raw socket for protocol 112 bound to ifi, with
// multicast loopback off and, when join is set, 224.0.0.18 joined on ifi.
func listenVRRP(ifi *net.Interface, join bool) (_ *rawConn, err error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, IPProtocol)
	if err != nil {
		return nil, fmt.Errorf("opening vrrp socket: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("opening eventfd: %w", err)
	}
	c := &rawConn{fd: fd, wake: wake}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	mreq := &unix.IPMreqn{Multiaddr: MulticastGroup.As4(), Ifindex: int32(ifi.Index)}
	steps := []struct {
		what string
		err  error
	}{
		{"binding to the interface", unix.BindToDevice(fd, ifi.Name)},
		{"setting IP_HDRINCL", unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_HDRINCL, 1)},
		{"setting the multicast interface", unix.SetsockoptIPMreqn(fd, unix.IPPROTO_IP, unix.IP_MULTICAST_IF, mreq)},
		{"turning multicast loopback off", unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP, 0)},
	}
	if join {
		steps = append(steps, struct {
			what string
			err  error
		}{"joining 224.0.0.18", unix.SetsockoptIPMreqn(fd, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP, mreq)})
	}
	for _, s := range steps {
		if s.err != nil {
			return nil, fmt.Errorf("%s on %s: %w", s.what, ifi.Name, s.err)
		}
	}
	return c, nil
}

// ReadFrom implements Conn.
func (c *rawConn) ReadFrom(b []byte) ([]byte, Header, error) {
	fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}, {Fd: int32(c.wake), Events: unix.POLLIN}}
	defer func() {
		c.mu.Lock()
		c.reading = false
		c.mu.Unlock()
	}()
	for {
		c.mu.Lock()
		dl := c.deadline
		c.reading = true
		c.mu.Unlock()
		var ts *unix.Timespec
		if !dl.IsZero() {
			left := time.Until(dl)
			if left <= 0 {
				return nil, Header{}, os.ErrDeadlineExceeded
			}
			t := unix.NsecToTimespec(left.Nanoseconds())
			ts = &t
		}
		fds[0].Revents, fds[1].Revents = 0, 0
		_, err := unix.Ppoll(fds, ts, nil)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return nil, Header{}, fmt.Errorf("polling vrrp socket: %w", err)
		}
		if fds[1].Revents != 0 {
			var v [8]byte
			unix.Read(c.wake, v[:]) // clear it; the loop rereads the deadline
		}
		if fds[0].Revents == 0 {
			continue
		}
		n, _, err := unix.Recvfrom(c.fd, b, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, Header{}, fmt.Errorf("receiving from vrrp socket: %w", err)
		}
		if msg, h, ok := parseIPv4(b[:n]); ok {
			return msg, h, nil
		}
	}
}

// parseIPv4 returns the payload and header fields of a whole IPv4 datagram
// as a raw socket delivers it, or false for anything else (a fragment, a
// truncated header).
func parseIPv4(b []byte) ([]byte, Header, bool) {
	if len(b) < ipv4HeaderLen || b[0]>>4 != 4 {
		return nil, Header{}, false
	}
	hl := int(b[0]&0x0f) * 4
	if hl < ipv4HeaderLen || len(b) < hl {
		return nil, Header{}, false
	}
	if frag := binary.BigEndian.Uint16(b[6:]); frag&0x3fff != 0 { // MF or an offset
		return nil, Header{}, false
	}
	h := Header{
		Src: netip.AddrFrom4([4]byte(b[12:16])),
		Dst: netip.AddrFrom4([4]byte(b[16:20])),
		TTL: int(b[8]),
	}
	return b[hl:], h, true
}

// ipv4HeaderLen is the length of an IPv4 header without options.
const ipv4HeaderLen = 20

// WriteTo implements Conn. The kernel fills in the ID and the header
// checksum.
func (c *rawConn) WriteTo(msg []byte, h Header) error {
	b := make([]byte, ipv4HeaderLen+len(msg))
	b[0] = 4<<4 | ipv4HeaderLen/4
	b[1] = ipTOS
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[8] = uint8(h.TTL)
	b[9] = IPProtocol
	s4, d4 := h.Src.As4(), h.Dst.As4()
	copy(b[12:], s4[:])
	copy(b[16:], d4[:])
	copy(b[ipv4HeaderLen:], msg)
	return unix.Sendto(c.fd, b, 0, &unix.SockaddrInet4{Addr: d4})
}

// SetReadDeadline implements Conn; it interrupts a ReadFrom in progress.
func (c *rawConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	reading := c.reading
	c.mu.Unlock()
	if !reading {
		return nil
	}
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	if _, err := unix.Write(c.wake, one[:]); err != nil && !errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("waking vrrp reader: %w", err)
	}
	return nil
}

// Close closes the socket. Call it when no ReadFrom is in progress.
func (c *rawConn) Close() error {
	return errors.Join(unix.Close(c.fd), unix.Close(c.wake))
}

// netlinkAddresser is Addresser over rtnetlink for one interface.
type netlinkAddresser struct {
	h    *netlink.Handle
	link netlink.Link
}

// newNetlinkAddresser opens a netlink socket in the calling thread's
// namespace for ifi.
func newNetlinkAddresser(ifi *net.Interface) (*netlinkAddresser, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	link, err := h.LinkByIndex(ifi.Index)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("finding link %s: %w", ifi.Name, err)
	}
	return &netlinkAddresser{h: h, link: link}, nil
}

// AddAddress implements Addresser.
func (a *netlinkAddresser) AddAddress(p netip.Prefix) error {
	err := a.h.AddrAdd(a.link, nlAddr(p))
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding %v to %s: %w", p, a.link.Attrs().Name, err)
	}
	return nil
}

// DelAddress implements Addresser.
func (a *netlinkAddresser) DelAddress(p netip.Prefix) error {
	err := a.h.AddrDel(a.link, nlAddr(p))
	if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing %v from %s: %w", p, a.link.Attrs().Name, err)
	}
	return nil
}

// Close closes the netlink socket.
func (a *netlinkAddresser) Close() error {
	a.h.Close()
	return nil
}

func nlAddr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
}

// arpAnnouncer is Announcer over a packet socket that receives nothing:
// its filter drops every frame, so no ARP traffic queues up unread.
type arpAnnouncer struct {
	c  *arp.Client
	hw net.HardwareAddr
}

func dialARP(ifi *net.Interface) (*arpAnnouncer, error) {
	dropAll, err := bpf.Assemble([]bpf.Instruction{bpf.RetConstant{Val: 0}})
	if err != nil {
		return nil, fmt.Errorf("assembling arp socket filter: %w", err)
	}
	p, err := packet.Listen(ifi, packet.Raw, int(ethernet.EtherTypeARP), &packet.Config{Filter: dropAll})
	if err != nil {
		return nil, fmt.Errorf("opening arp socket on %s: %w", ifi.Name, err)
	}
	c, err := arp.New(ifi, p)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("opening arp client on %s: %w", ifi.Name, err)
	}
	return &arpAnnouncer{c: c, hw: ifi.HardwareAddr}, nil
}

// Announce implements Announcer with an ARP request from ip to ip,
// broadcast: receivers that know ip update its MAC (Linux does so even
// within the neighbour table's locktime, as for any gratuitous ARP).
func (a *arpAnnouncer) Announce(ip netip.Addr) error {
	p, err := arp.NewPacket(arp.OperationRequest, a.hw, ip, ethernet.Broadcast, ip)
	if err != nil {
		return fmt.Errorf("building gratuitous arp for %v: %w", ip, err)
	}
	if err := a.c.WriteTo(p, ethernet.Broadcast); err != nil {
		return fmt.Errorf("sending gratuitous arp for %v: %w", ip, err)
	}
	return nil
}

// Close closes the packet socket.
func (a *arpAnnouncer) Close() error { return a.c.Close() }
