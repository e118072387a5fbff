package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/xlb-dev/xlb/control"
	"github.com/xlb-dev/xlb/control/web"
	"github.com/xlb-dev/xlb/health"
	"github.com/xlb-dev/xlb/loader"
)

func TestReloadFields(t *testing.T) {
	base, err := parseConfig([]byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		edit      func(string) string
		wantFixed []string
		wantLive  []string
	}{
		{"same", func(s string) string { return s }, nil, nil},
		{"node added", func(s string) string { return s + "  - name: pg3\n    address: 172.20.0.12:5432\n" }, nil, []string{"nodes"}},
		{"probe and lag", func(s string) string { return s + "probe:\n  fall: 5\nmax_read_lag: 5s\n" }, nil, []string{"probe", "max_read_lag"}},
		{"vip", func(s string) string { return strings.Replace(s, "vip: 172.20.0.100", "vip: 172.20.0.101", 1) }, []string{"vip"}, nil},
		{"http and vrrp", func(s string) string { return s + "http:\n  listen: \"\"\nvrrp:\n  priority: 10\n" }, []string{"vrrp", "http"}, nil},
		{"password file", func(s string) string { return strings.Replace(s, "/nonexistent", "/elsewhere", 1) }, []string{"postgres"}, nil},
		{"allowlist", func(s string) string { return s + "allow_sources:\n  rw: [172.20.0.0/24]\n" }, nil, []string{"allow_sources"}},
		{"conntrack and state file", func(s string) string { return s + "conntrack:\n  idle_timeout: 1h\nstate_file: /tmp/x.json\n" },
			[]string{"conntrack", "state_file"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := parseConfig([]byte(tt.edit(goodConfig)))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantFixed, changed(fixedFields, base, nc)); diff != "" {
				t.Errorf("fixed fields changed (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantLive, changed(liveFields, base, nc)); diff != "" {
				t.Errorf("live fields changed (-want +got):\n%s", diff)
			}
		})
	}
}

// fakeAllow is the datapath's allowlists: what each service holds now,
// and every write in order. failOn fails the writes of that service with
// a new list (putting an old one back works).
type fakeAllow struct {
	lists  map[loader.Service][]netip.Prefix
	writes []string
	failOn *loader.Service
	old    map[loader.Service][]netip.Prefix
}

func (f *fakeAllow) SetAllowSources(svc loader.Service, p []netip.Prefix) error {
	f.writes = append(f.writes, fmt.Sprintf("%v %v", svc, p))
	if f.failOn != nil && *f.failOn == svc && !slices.Equal(p, f.old[svc]) {
		return errors.New("map full")
	}
	f.lists[svc] = slices.Clone(p)
	return nil
}

type nopPools struct{}

func (nopPools) SetPool(control.Service, []netip.AddrPort) error  { return nil }
func (nopPools) Cut(netip.AddrPort) error                         { return nil }
func (nopPools) CutService(control.Service, netip.AddrPort) error { return nil }

// TestReloadAllOrNothing sends the daemon's reload new files: a file that
// does not parse, a change that needs a restart, a change the controller
// refuses (removing the writer) together with new allowlists, and
// allowlists the datapath fails to take each leave everything — rules,
// nodes, probe settings and both allowlists — as it was; a good file
// changes all of it.
func TestReloadAllOrNothing(t *testing.T) {
	// Loopback addresses with nothing listening: the probes a reload
	// restarts send nothing off this host.
	base := `
interface: lo
vip: 172.20.0.100
node_address: 172.20.0.21
allow_sources:
  rw: [10.0.0.0/8]
postgres:
  user: ramos
  database: ramos-test-db
nodes:
  - name: pg1
    address: 127.0.0.1:1
  - name: pg2
    address: 127.0.0.1:2
`
	ro := loader.RO
	tests := []struct {
		name      string
		config    string
		failOn    *loader.Service
		wantApply bool
	}{
		{"does not parse", "vip: [unclosed\n", nil, false},
		{"needs a restart", strings.Replace(base, "vip: 172.20.0.100", "vip: 172.20.0.101", 1) + "probe:\n  fall: 5\n", nil, false},
		{"unknown field", base + "probe:\n  fal: 5\n", nil, false},
		{"writer removed, allowlists changed", strings.Replace(strings.Replace(base, "  - name: pg1\n    address: 127.0.0.1:1\n", "", 1),
			"rw: [10.0.0.0/8]", "rw: [10.1.0.0/16]", 1) + "  - name: pg3\n    address: 127.0.0.1:3\n", nil, false},
		{"datapath refuses the ro allowlist", strings.Replace(base, "rw: [10.0.0.0/8]", "rw: [10.1.0.0/16]\n  ro: [10.2.0.0/16]", 1) + "probe:\n  fall: 5\n", &ro, false},
		{"good", strings.Replace(base, "rw: [10.0.0.0/8]", "rw: [10.1.0.0/16]\n  ro: [10.2.0.0/16]", 1) +
			"  - name: pg3\n    address: 127.0.0.1:3\nprobe:\n  fall: 5\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			path := filepath.Join(t.TempDir(), "xlb.yaml")
			if err := os.WriteFile(path, []byte(base), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := LoadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			d := newReloadDaemon(t, cfg)
			allow := d.allow.(*fakeAllow)
			allow.failOn = tt.failOn
			before := struct {
				Lists  map[loader.Service][]netip.Prefix
				Rules  control.Config
				Nodes  []string
				Probe  ProbeConfig
				Allow  AllowConfig
				Probes int
			}{maps.Clone(allow.lists), d.ctlCfg, memberNames(d.ctl), d.cfg.Probe, d.cfg.AllowSources, len(d.probes.Load().byName)}
			after := func() any {
				b := before
				b.Lists, b.Rules, b.Nodes, b.Probe, b.Allow, b.Probes = maps.Clone(allow.lists), d.ctlCfg, memberNames(d.ctl), d.cfg.Probe, d.cfg.AllowSources, len(d.probes.Load().byName)
				return b
			}

			if err := os.WriteFile(path, []byte(tt.config), 0o600); err != nil {
				t.Fatal(err)
			}
			obs := make(chan health.Observation, 16)
			// The controller's reprobes run beside a reload (go test
			// -race sees it if they share a variable unguarded).
			reprobe := reprober(d.probes)
			done := make(chan struct{})
			go func() {
				defer close(done)
				// Cancelled: each probe reads its target and timeout,
				// then gives up without dialling.
				gone, stop := context.WithCancel(ctx)
				stop()
				for range 50 {
					reprobe(gone, []control.Node{{Name: "pg1"}})
				}
			}()
			d.reload(ctx, obs)
			<-done
			if d.stopWatch != nil {
				d.stopWatch()
				<-d.watchExited
			}
			if !tt.wantApply {
				if strings.HasPrefix(tt.name, "writer removed") && len(allow.writes) != 0 {
					t.Errorf("allowlists written before the controller refused: %v", allow.writes)
				}
				if diff := cmp.Diff(any(before), after(), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
					t.Errorf("a refused reload changed something (-before +after):\n%s\nallowlist writes: %v", diff, allow.writes)
				}
				return
			}
			want := map[loader.Service][]netip.Prefix{
				loader.RW: {netip.MustParsePrefix("10.1.0.0/16")},
				loader.RO: {netip.MustParsePrefix("10.2.0.0/16")},
			}
			if diff := cmp.Diff(want, allow.lists, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("allowlists (-want +got):\n%s", diff)
			}
			if d.ctlCfg.Fall != 5 || d.cfg.Probe.Fall != 5 {
				t.Errorf("fall: controller %d, config %d; want 5", d.ctlCfg.Fall, d.cfg.Probe.Fall)
			}
			if diff := cmp.Diff([]string{"pg1", "pg2", "pg3"}, memberNames(d.ctl)); diff != "" {
				t.Errorf("members (-want +got):\n%s", diff)
			}
			if n := len(d.probes.Load().byName); n != 3 {
				t.Errorf("reprobe targets: %d, want 3", n)
			}
		})
	}
}

// newReloadDaemon returns a daemon for cfg as runDaemon wires it, with
// fakes for the datapath's pools and allowlists, and pg1 the writer, pg2 a
// replica.
func newReloadDaemon(t *testing.T, cfg *Config) *daemon {
	t.Helper()
	nodes := make([]control.Node, len(cfg.Nodes))
	targets := make([]health.Target, len(cfg.Nodes))
	for i, n := range cfg.Nodes {
		nodes[i] = control.Node{Name: n.Name, Addr: cfg.nodes[i]}
		targets[i] = health.Target{Name: n.Name, Addr: cfg.nodes[i], User: cfg.Postgres.User, Database: cfg.Postgres.Database}
	}
	ctlCfg := liveRules(control.Config{}, cfg)
	ctl := control.New(ctlCfg, nodes, control.Options{Datapath: nopPools{}})
	now := time.Now()
	for _, o := range []control.Observation{{Node: "pg1", Time: now, Timeline: 1}, {Node: "pg2", Time: now, Timeline: 1, InRecovery: true}} {
		if err := ctl.Observe(o); err != nil {
			t.Fatal(err)
		}
	}
	var probes atomic.Pointer[probeSet]
	probes.Store(newProbeSet(targets, time.Duration(cfg.Probe.Timeout)))
	allow := &fakeAllow{lists: map[loader.Service][]netip.Prefix{loader.RW: cfg.allowRW, loader.RO: cfg.allowRO},
		old: map[loader.Service][]netip.Prefix{loader.RW: cfg.allowRW, loader.RO: cfg.allowRO}}
	return &daemon{cfg: cfg, allow: allow, ctl: ctl, rec: web.NewRecorder(nodeNames(cfg)), ctlCfg: ctlCfg,
		targets: targets, waker: health.NewWaker(), probes: &probes}
}

func memberNames(c *control.Controller) []string {
	var out []string
	for _, m := range c.Members() {
		out = append(out, m.Name)
	}
	return out
}

// TestSetAllowlists: when the datapath refuses one service's new list,
// the lists written before it are put back; when that fails too, mixed
// says so.
func TestSetAllowlists(t *testing.T) {
	oldL := [2][]netip.Prefix{{netip.MustParsePrefix("10.0.0.0/8")}, nil}
	newL := [2][]netip.Prefix{{netip.MustParsePrefix("10.1.0.0/16")}, {netip.MustParsePrefix("10.2.0.0/16")}}
	ro := loader.RO
	f := &fakeAllow{lists: map[loader.Service][]netip.Prefix{loader.RW: oldL[0], loader.RO: oldL[1]},
		old: map[loader.Service][]netip.Prefix{loader.RW: oldL[0], loader.RO: oldL[1]}, failOn: &ro}
	mixed, err := setAllowlists(f, oldL, newL)
	if err == nil || mixed {
		t.Fatalf("setAllowlists = %t, %v; want an error, not mixed", mixed, err)
	}
	want := []string{"rw [10.1.0.0/16]", "ro [10.2.0.0/16]", "ro []", "rw [10.0.0.0/8]"}
	if diff := cmp.Diff(want, f.writes); diff != "" {
		t.Errorf("writes (-want +got):\n%s", diff)
	}
	if !slices.Equal(f.lists[loader.RW], oldL[0]) || len(f.lists[loader.RO]) != 0 {
		t.Errorf("lists after the failure: %v, want the old ones", f.lists)
	}
}
