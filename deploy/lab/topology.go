package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Names inside the lab's namespaces.
const (
	SwitchName = "sw"   // the bridge namespace is <prefix>sw
	BridgeName = "br0"  // the bridge, in the sw namespace
	HostIf     = "eth0" // every host's lab interface, in its namespace
	peerPrefix = "v-"   // the bridge side of host h is v-<h>, in the sw namespace
	maxIfName  = 15     // IFNAMSIZ - 1
)

// Node is a host of a built topology.
type Node struct {
	Host
	// NS is the host's namespace; its lab interface is HostIf.
	NS *Namespace
	// Peer is the bridge-side end of the host's veth, in the topology's
	// Switch namespace. Native XDP_TX on HostIf needs an XDP program on it.
	Peer string
}

// Topology is a bridge namespace and one namespace per host, each host
// joined to the bridge by a veth pair. Nothing of it is in the root
// namespace.
type Topology struct {
	Prefix string
	Switch *Namespace

	mu      sync.Mutex
	nodes   []*Node
	created []*Namespace // in creation order, for Close
}

// NewTopology builds the namespaces <prefix>sw (the bridge) and
// <prefix><host> for every host, with the host's address on HostIf and tx
// checksum offload off on both ends of every veth. When a step fails it
// tears down what it built and returns the step's error.
func NewTopology(prefix string, hosts []Host) (_ *Topology, err error) {
	if err := validateHosts(hosts); err != nil {
		return nil, err
	}
	t := &Topology{Prefix: prefix}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.Close())
		}
	}()
	if t.Switch, err = t.newNamespace(prefix + SwitchName); err != nil {
		return nil, err
	}
	if err := t.Switch.Run("ip", "link", "add", BridgeName, "type", "bridge"); err != nil {
		return nil, fmt.Errorf("adding bridge: %w", err)
	}
	if err := t.Switch.Run("ip", "link", "set", BridgeName, "up"); err != nil {
		return nil, fmt.Errorf("bringing up bridge: %w", err)
	}
	for _, h := range hosts {
		if err := t.addHost(h); err != nil {
			return nil, fmt.Errorf("adding host %s: %w", h.Name, err)
		}
	}
	return t, nil
}

func validateHosts(hosts []Host) error {
	seen := map[string]bool{}
	for _, h := range hosts {
		switch {
		case h.Name == "" || h.Name == SwitchName:
			return fmt.Errorf("host name %q: reserved or empty", h.Name)
		case len(peerPrefix+h.Name) > maxIfName:
			return fmt.Errorf("host name %q: longer than %d characters", h.Name, maxIfName-len(peerPrefix))
		case seen[h.Name]:
			return fmt.Errorf("host name %q: given twice", h.Name)
		case !h.Addr.Addr().Is4():
			return fmt.Errorf("host %s address %v: need an IPv4 prefix", h.Name, h.Addr)
		}
		seen[h.Name] = true
	}
	return nil
}

func (t *Topology) newNamespace(name string) (*Namespace, error) {
	ns, err := NewNamespace(name)
	if err != nil {
		return nil, fmt.Errorf("creating namespace %s: %w", name, err)
	}
	t.mu.Lock()
	t.created = append(t.created, ns)
	t.mu.Unlock()
	return ns, nil
}

// addHost creates the host's namespace and its veth pair, created in the sw
// namespace with the host end moved straight into the host namespace.
func (t *Topology) addHost(h Host) error {
	ns, err := t.newNamespace(t.Prefix + h.Name)
	if err != nil {
		return err
	}
	n := &Node{Host: h, NS: ns, Peer: peerPrefix + h.Name}
	steps := []struct {
		ns   *Namespace
		args []string
	}{
		{t.Switch, []string{"ip", "link", "add", n.Peer, "type", "veth", "peer", "name", HostIf, "netns", ns.Name}},
		{t.Switch, []string{"ethtool", "-K", n.Peer, "tx", "off"}},
		{t.Switch, []string{"ip", "link", "set", n.Peer, "master", BridgeName, "up"}},
		{ns, []string{"ethtool", "-K", HostIf, "tx", "off"}},
		{ns, []string{"ip", "addr", "add", h.Addr.String(), "dev", HostIf}},
		{ns, []string{"ip", "link", "set", HostIf, "up"}},
	}
	for _, s := range steps {
		if err := s.ns.Run(s.args[0], s.args[1:]...); err != nil {
			return err
		}
	}
	t.mu.Lock()
	t.nodes = append(t.nodes, n)
	t.mu.Unlock()
	return nil
}

// Node returns the host called name, or nil when the topology has none.
func (t *Topology) Node(name string) *Node {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, n := range t.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Nodes returns the hosts in the order they were given.
func (t *Topology) Nodes() []*Node {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]*Node(nil), t.nodes...)
}

// Close deletes every namespace the topology created, hosts first; their
// interfaces go with them. It is idempotent and skips namespaces already
// gone. Processes still running in a namespace keep it alive unnamed, so
// stop them first.
func (t *Topology) Close() error {
	t.mu.Lock()
	created := t.created
	t.created, t.nodes = nil, nil
	t.mu.Unlock()
	var errs []error
	for i := len(created) - 1; i >= 0; i-- {
		ns := created[i]
		if err := ns.Delete(); err != nil && NamespaceExists(ns.Name) {
			errs = append(errs, fmt.Errorf("deleting namespace %s: %w", ns.Name, err))
		}
	}
	return errors.Join(errs...)
}

// AddAddress adds p to the node's HostIf, say the VIP as a /32 so the node
// answers ARP for it.
func (n *Node) AddAddress(p netip.Prefix) error {
	if err := n.NS.Run("ip", "addr", "add", p.String(), "dev", HostIf); err != nil {
		return fmt.Errorf("adding %v to %s: %w", p, n.Name, err)
	}
	return nil
}

// DelAddress removes p from the node's HostIf.
func (n *Node) DelAddress(p netip.Prefix) error {
	if err := n.NS.Run("ip", "addr", "del", p.String(), "dev", HostIf); err != nil {
		return fmt.Errorf("removing %v from %s: %w", p, n.Name, err)
	}
	return nil
}

// Resolve makes the node learn addr's MAC on HostIf: it sends a UDP
// datagram to addr's discard port from inside the namespace, which starts
// ARP, and polls the neighbour table until addr has a link-layer address.
// It returns an error when ctx ends first.
func (n *Node) Resolve(ctx context.Context, addr netip.Addr) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for sent := 0; ; sent++ {
		if sent%10 == 0 { // again every 500 ms, in case ARP gave up
			err := n.NS.Do(func() error {
				c, err := net.Dial("udp4", netip.AddrPortFrom(addr, 9).String())
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.Write([]byte("xlb lab"))
				return err
			})
			if err != nil {
				return fmt.Errorf("resolving %v from %s: %w", addr, n.Name, err)
			}
		}
		out, err := n.NS.OutputContext(ctx, "ip", "-4", "neigh", "show", "to", addr.String(), "dev", HostIf)
		if err == nil && strings.Contains(out, "lladdr") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("resolving %v from %s: %w (neighbour entry %q)", addr, n.Name, ctx.Err(), strings.TrimSpace(out))
		case <-tick.C:
		}
	}
}
