package vip

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// Helpers of the privileged tests: a lab of lb1, lb2 and client, instances
// run in the LB namespaces, a TCP service on every LB answering with the
// node's name, and a client probing the VIP.

const (
	testVRID    = 51
	servicePort = 8080
)

var testVIP = netip.PrefixFrom(lab.VIP, 32)

// vipLab is a topology of lb1, lb2 and client with a name service on each
// LB node.
type vipLab struct {
	topo             *lab.Topology
	lb1, lb2, client *lab.Node
	lb1MAC, lb2MAC   string
}

// newVIPLab builds the lab and removes it in t.Cleanup.
func newVIPLab(t *testing.T) *vipLab {
	t.Helper()
	lab.RequirePrivileged(t)
	hosts, err := lab.LabHosts("lb1", "lb2", "client")
	if err != nil {
		t.Fatal(err)
	}
	topo, err := lab.NewTopology(lab.TestPrefix(), hosts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	l := &vipLab{topo: topo, lb1: topo.Node("lb1"), lb2: topo.Node("lb2"), client: topo.Node("client")}
	l.lb1MAC = macOf(t, l.lb1)
	l.lb2MAC = macOf(t, l.lb2)
	serveName(t, l.lb1)
	serveName(t, l.lb2)
	return l
}

// macOf returns n's HostIf MAC address.
func macOf(t *testing.T, n *lab.Node) string {
	t.Helper()
	var mac string
	err := n.NS.Do(func() error {
		ifi, err := net.InterfaceByName(lab.HostIf)
		if err != nil {
			return err
		}
		mac = ifi.HardwareAddr.String()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// serveName listens on servicePort on every address of n, so on the VIP
// when n holds it, and writes n's name to every connection.
func serveName(t *testing.T, n *lab.Node) {
	t.Helper()
	var l net.Listener
	err := n.NS.Do(func() (err error) {
		l, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", servicePort))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(n.Name))
			c.Close()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
}

// instance is an Instance running in a node's namespace, with a record of
// its callbacks.
type instance struct {
	*Instance
	node   *lab.Node
	cancel context.CancelFunc
	killFn context.CancelFunc
	done   chan error

	mu       sync.Mutex
	masterAt []time.Time // OnMaster calls
	backupAt []time.Time // OnBackup calls
}

// start dials an instance with cfg in n's namespace and runs it until
// stop, kill or the test's cleanup.
func start(t *testing.T, n *lab.Node, cfg Config) *instance {
	t.Helper()
	i := &instance{node: n, done: make(chan error, 1)}
	cfg.Interface = lab.HostIf
	cfg.OnMaster = func() { i.mu.Lock(); i.masterAt = append(i.masterAt, time.Now()); i.mu.Unlock() }
	cfg.OnBackup = func() { i.mu.Lock(); i.backupAt = append(i.backupAt, time.Now()); i.mu.Unlock() }
	cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", n.Name)
	err := n.NS.Do(func() (err error) {
		i.Instance, err = Dial(cfg)
		return err
	})
	if err != nil {
		t.Fatalf("dialing on %s: %v", n.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	kill, killFn := context.WithCancel(context.Background())
	i.cancel, i.killFn = cancel, killFn
	go func() { i.done <- i.run(ctx, kill) }()
	t.Cleanup(func() {
		i.stop(t)
		i.Close()
	})
	return i
}

// stop ends the instance cleanly (priority-0 advertisement, VIP removed)
// and waits for Run to return. Stopping twice is a no-op.
func (i *instance) stop(t *testing.T) {
	t.Helper()
	i.cancel()
	i.wait(t)
}

// kill ends the instance as kill -9 would: no advertisement, the VIP left
// on the interface.
func (i *instance) kill(t *testing.T) {
	t.Helper()
	i.killFn()
	i.wait(t)
}

func (i *instance) wait(t *testing.T) {
	t.Helper()
	select {
	case err, ok := <-i.done:
		if ok {
			close(i.done)
			if err != nil {
				t.Errorf("%s: Run: %v", i.node.Name, err)
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: Run did not return within 5s", i.node.Name)
	}
}

// masters returns the times of OnMaster calls.
func (i *instance) masters() []time.Time {
	i.mu.Lock()
	defer i.mu.Unlock()
	return append([]time.Time(nil), i.masterAt...)
}

// nthMaster waits until OnMaster has been called n times and returns when
// it was called the n-th time.
func (i *instance) nthMaster(t *testing.T, n int) time.Time {
	t.Helper()
	waitFor(t, 2*time.Second, fmt.Sprintf("%s's OnMaster call %d", i.node.Name, n), func() bool { return len(i.masters()) >= n })
	return i.masters()[n-1]
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// waitFor polls cond every 5 ms until it holds, and fails t when within
// does not suffice. It returns when cond first held.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if cond() {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(5 * time.Millisecond) // polling interval of the condition above
	}
}

// hasVIP reports whether n's HostIf carries the VIP.
func hasVIP(t *testing.T, n *lab.Node) bool {
	t.Helper()
	out, err := n.NS.Output("ip", "-4", "-o", "addr", "show", "dev", lab.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(out, " "+testVIP.String()+" ")
}

// neighMAC returns the MAC the client's neighbour table has for the VIP, or
// "" when none.
func (l *vipLab) neighMAC(t *testing.T) string {
	t.Helper()
	out, err := l.client.NS.Output("ip", "-4", "neigh", "show", lab.VIP.String(), "dev", lab.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// probe is one connection attempt from the client to the VIP's service.
type probe struct {
	at     time.Time
	answer string // the node's name; "" when the attempt failed
}

// prober connects from the client to VIP:servicePort every 20 ms until
// stopped.
type prober struct {
	mu     sync.Mutex
	probes []probe
	cancel context.CancelFunc
	done   chan error
}

func (l *vipLab) startProber(t *testing.T) *prober {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &prober{cancel: cancel, done: make(chan error, 1)}
	target := netip.AddrPortFrom(lab.VIP, servicePort).String()
	go func() {
		p.done <- l.client.NS.Do(func() error {
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				at := time.Now()
				name := ""
				d := net.Dialer{Timeout: 20 * time.Millisecond}
				if c, err := d.DialContext(ctx, "tcp4", target); err == nil {
					c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
					b, _ := io.ReadAll(c)
					c.Close()
					name = string(b)
				}
				p.mu.Lock()
				p.probes = append(p.probes, probe{at, name})
				p.mu.Unlock()
				select {
				case <-ctx.Done():
					return nil
				case <-tick.C:
				}
			}
		})
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *prober) stop(t *testing.T) {
	p.cancel()
	if err, ok := <-p.done; ok {
		close(p.done)
		if err != nil {
			t.Error(err)
		}
	}
}

// last returns the latest probe's answer.
func (p *prober) last() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.probes) == 0 {
		return ""
	}
	return p.probes[len(p.probes)-1].answer
}

// answeredBy waits until a probe started after since is answered by name,
// and returns how long after since that probe started.
func (p *prober) answeredBy(t *testing.T, since time.Time, name string, within time.Duration) time.Duration {
	t.Helper()
	var got time.Duration
	waitFor(t, within, "probe answered by "+name, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, pr := range p.probes {
			if pr.at.After(since) && pr.answer == name {
				got = pr.at.Sub(since)
				return true
			}
		}
		return false
	})
	return got
}

// longestOutage returns the longest run of failed probes after since, from
// the last answered probe before the run to the first answered after it.
func (p *prober) longestOutage(since time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var longest time.Duration
	var lastOK time.Time
	for _, pr := range p.probes {
		if pr.answer == "" {
			continue
		}
		if !lastOK.IsZero() && pr.at.After(since) {
			longest = max(longest, pr.at.Sub(lastOK))
		}
		lastOK = pr.at
	}
	return longest
}
