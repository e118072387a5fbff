package tests

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
	"github.com/xlb-dev/xlb/loader"
)

// pmtuNet is the PMTU test's own topology: the client sits behind a router
// whose link towards it has an MTU of 1280, while every interface that
// sends (client, LB, backend) has 1500:
//
//	cl 10.77.1.2 ==(rt side MTU 1280)== rt 10.77.1.1 | br0 10.77.2.1 -- lb 10.77.2.2 (VIP 10.77.2.100)
//	                                                                 -- be 10.77.2.10
type pmtuNet struct {
	cl, rt, lb, be *lab.Namespace
	lbIfindex      int
}

var (
	pmtuVIP     = netip.MustParseAddr("10.77.2.100")
	pmtuLB      = netip.MustParseAddr("10.77.2.2")
	pmtuBackend = netip.MustParseAddr("10.77.2.10")
)

func newPMTUNet(t *testing.T) *pmtuNet {
	t.Helper()
	prefix := lab.TestPrefix()
	var n pmtuNet
	for _, p := range []struct {
		ns   **lab.Namespace
		name string
	}{{&n.cl, "cl"}, {&n.rt, "rt"}, {&n.lb, "lb"}, {&n.be, "be"}} {
		ns, err := lab.NewNamespace(prefix + p.name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Delete() })
		*p.ns = ns
	}
	run := func(ns *lab.Namespace, args ...string) {
		t.Helper()
		if err := ns.Run(args[0], args[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	// Links: the router's side of the client link has MTU 1280.
	run(n.rt, "ip", "link", "add", "c0", "mtu", "1280", "type", "veth", "peer", "name", "eth0", "netns", n.cl.Name)
	run(n.rt, "ip", "link", "add", "br0", "type", "bridge")
	for _, h := range []struct {
		ns   *lab.Namespace
		port string
	}{{n.lb, "plb"}, {n.be, "pbe"}} {
		run(n.rt, "ip", "link", "add", h.port, "type", "veth", "peer", "name", "eth0", "netns", h.ns.Name)
		run(n.rt, "ip", "link", "set", h.port, "master", "br0", "up")
		run(n.rt, "ethtool", "-K", h.port, "tx", "off")
	}
	run(n.rt, "ip", "addr", "add", "10.77.1.1/24", "dev", "c0")
	run(n.rt, "ip", "addr", "add", "10.77.2.1/24", "dev", "br0")
	run(n.rt, "ip", "link", "set", "c0", "up")
	run(n.rt, "ip", "link", "set", "br0", "up")
	run(n.rt, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	run(n.rt, "ethtool", "-K", "c0", "tx", "off")
	for _, h := range []struct {
		ns   *lab.Namespace
		addr string
	}{{n.cl, "10.77.1.2/24"}, {n.lb, "10.77.2.2/24"}, {n.be, "10.77.2.10/24"}} {
		run(h.ns, "ip", "addr", "add", h.addr, "dev", "eth0")
		run(h.ns, "ip", "link", "set", "eth0", "up")
		run(h.ns, "ip", "link", "set", "lo", "up")
		run(h.ns, "ethtool", "-K", "eth0", "tx", "off")
	}
	run(n.cl, "ip", "route", "add", "default", "via", "10.77.1.1")
	run(n.lb, "ip", "route", "add", "10.77.1.0/24", "via", "10.77.2.1")
	run(n.lb, "ip", "addr", "add", pmtuVIP.String()+"/32", "dev", "eth0")
	run(n.be, "ip", "route", "add", "10.77.1.0/24", "via", "10.77.2.1")
	run(n.lb, "sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=1")
	run(n.lb, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 60999")
	return &n
}

// TestPMTUThroughLB sends 256 KiB from a backend to a client through the
// datapath over a path whose last hop has an MTU of 1280: the router's
// "fragmentation needed" about the VIP's packets must reach the backend
// translated, or its 1500-byte segments are dropped forever and the
// transfer stalls; the backend's route cache must show the learned MTU.
func TestPMTUThroughLB(t *testing.T) {
	lab.RequirePrivileged(t)
	n := newPMTUNet(t)

	var dp *loader.Datapath
	if err := n.lb.Do(func() (err error) {
		dp, err = loader.Load(loader.Config{VIP: pmtuVIP, SNATAddr: pmtuLB, SNATPorts: snatPorts})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	backend := netip.AddrPortFrom(pmtuBackend, 5432)
	if err := dp.SetBackends(loader.RW, []netip.AddrPort{backend}); err != nil {
		t.Fatal(err)
	}
	if err := n.lb.Do(func() error { _, err := dp.Attach("eth0", loader.ModeGeneric); return err }); err != nil {
		t.Fatal(err)
	}

	// The backend: a TCP server that writes 256 KiB to each connection.
	const size = 256 << 10
	var ln net.Listener
	if err := n.be.Do(func() (err error) {
		ln, err = net.Listen("tcp4", backend.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write(make([]byte, size))
			}()
		}
	}()

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// The first SYN may meet an unresolved neighbour (dropped, retransmitted
	// by the client after a second): a bounded dial is enough.
	var got int64
	start := time.Now()
	for attempt := 0; ; attempt++ {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := n.cl.DialContext(dctx, "tcp4", netip.AddrPortFrom(pmtuVIP, 3000).String())
		dcancel()
		if err != nil {
			if attempt < 3 {
				continue
			}
			t.Fatalf("dialing the vip: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		got, err = io.Copy(io.Discard, c)
		c.Close()
		if err != nil {
			st, _ := dp.Stats()
			t.Fatalf("reading through the vip: %v after %d of %d bytes (stats %+v)", err, got, size, st.Total)
		}
		break
	}
	if got != size {
		t.Fatalf("read %d bytes, want %d", got, size)
	}
	route, err := n.be.Output("ip", "route", "get", pmtuLB.String())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(route, "mtu 1280") {
		t.Fatalf("the backend learned no path MTU towards the lb: %q", route)
	}
	st, _ := dp.Stats()
	t.Logf("%d bytes in %v; backend's route to the lb: %s; datapath packets %d", got, time.Since(start).Round(time.Millisecond), route, st.Total.Packets)
}
