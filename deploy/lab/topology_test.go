package lab

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func mustHosts(t *testing.T, names ...string) []Host {
	t.Helper()
	hs, err := LabHosts(names...)
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

// requireGone fails t when a namespace with prefix is left.
func requireGone(t *testing.T, prefix string) {
	t.Helper()
	left, err := Namespaces(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("namespaces left: %v", left)
	}
}

func TestTopology(t *testing.T) {
	RequirePrivileged(t)
	prefix := TestPrefix()
	topo, err := NewTopology(prefix, mustHosts(t, "pg1", "lb1", "client"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})

	want := []string{prefix + "client", prefix + "lb1", prefix + "pg1", prefix + "sw"}
	got, err := Namespaces(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("namespaces (-want +got):\n%s", diff)
	}

	lb1, client := topo.Node("lb1"), topo.Node("client")
	if lb1 == nil || client == nil || topo.Node("pg2") != nil {
		t.Fatalf("Node: lb1=%v client=%v pg2=%v", lb1, client, topo.Node("pg2"))
	}
	if lb1.Peer != "v-lb1" {
		t.Errorf("lb1 peer = %q, want v-lb1", lb1.Peer)
	}
	for _, dev := range []struct {
		ns  *Namespace
		dev string
	}{{lb1.NS, HostIf}, {topo.Switch, lb1.Peer}, {client.NS, HostIf}, {topo.Switch, client.Peer}} {
		out, err := dev.ns.Output("ethtool", "-k", dev.dev)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "tx-checksumming: off") {
			t.Errorf("%s in %s: tx checksumming not off:\n%s", dev.dev, dev.ns.Name, out)
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := client.Resolve(ctx, topo.Node("pg1").Addr.Addr()); err != nil {
		t.Fatal(err)
	}

	// The VIP resolves to lb1 only while lb1 holds it.
	vip := netip.PrefixFrom(VIP, 32)
	if err := lb1.AddAddress(vip); err != nil {
		t.Fatal(err)
	}
	if err := client.Resolve(ctx, VIP); err != nil {
		t.Fatal(err)
	}
	mac, err := lb1.NS.Output("cat", "/sys/class/net/"+HostIf+"/address")
	if err != nil {
		t.Fatal(err)
	}
	if neigh, err := client.NS.Output("ip", "-4", "neigh", "show", "to", VIP.String()); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(neigh, strings.TrimSpace(mac)) {
		t.Errorf("client's neighbour entry for the VIP %q, want lb1's MAC %s", neigh, mac)
	}
	if err := lb1.DelAddress(vip); err != nil {
		t.Fatal(err)
	}
	if err := client.NS.Run("ip", "neigh", "flush", "dev", HostIf); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancelShort()
	if err := client.Resolve(short, VIP); err == nil {
		t.Errorf("VIP resolves after lb1 dropped it")
	}

	// The root namespace has no lab address. (Docker's bridge for the
	// compose lab, 172.20.0.1/16, may be up meanwhile: it is no lab host's.)
	if out, err := output(ctx, "ip", "-4", "-o", "addr", "show"); err != nil {
		t.Fatal(err)
	} else {
		for _, h := range append(slices.Clone(Hosts), Host{Name: "vip", Addr: netip.PrefixFrom(VIP, 32)}) {
			if strings.Contains(out, " "+h.Addr.Addr().String()+"/") {
				t.Errorf("root namespace has %s's lab address %v:\n%s", h.Name, h.Addr.Addr(), out)
			}
		}
	}

	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, prefix)
	if err := topo.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestTopologyHalfWay checks that a failing build removes what it made.
func TestTopologyHalfWay(t *testing.T) {
	RequirePrivileged(t)
	prefix := TestPrefix()
	// A namespace in the way makes the third host fail after sw and pg1
	// are up.
	blocker, err := NewNamespace(prefix + "client")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { blocker.Delete() })

	topo, err := NewTopology(prefix, mustHosts(t, "pg1", "client", "lb1"))
	if err == nil {
		topo.Close()
		t.Fatal("NewTopology succeeded over an existing namespace")
	}
	got, err := Namespaces(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{blocker.Name}, got); diff != "" {
		t.Errorf("namespaces after a failed build (-want +got):\n%s", diff)
	}
}

func TestValidateHosts(t *testing.T) {
	ok := netip.MustParsePrefix("172.20.0.9/24")
	tests := []struct {
		name  string
		hosts []Host
		ok    bool
	}{
		{"lab", Hosts, true},
		{"empty name", []Host{{"", ok}}, false},
		{"sw is the bridge", []Host{{"sw", ok}}, false},
		{"name too long", []Host{{"averylongname1", ok}}, false},
		{"longest name", []Host{{"averylongname", ok}}, true},
		{"twice", []Host{{"pg1", ok}, {"pg1", ok}}, false},
		{"ipv6", []Host{{"pg1", netip.MustParsePrefix("fd00::1/64")}}, false},
		{"no address", []Host{{"pg1", netip.Prefix{}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateHosts(tt.hosts)
			if (err == nil) != tt.ok {
				t.Errorf("validateHosts = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
