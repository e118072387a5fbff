package control

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestReconfigure(t *testing.T) {
	pg4 := Node{Name: "pg4", Addr: netip.MustParseAddrPort("172.20.0.13:5432")}
	pg3moved := Node{Name: "pg3", Addr: netip.MustParseAddrPort("172.20.0.14:5432")}
	tests := []struct {
		name     string
		cfg      Config
		nodes    []Node
		after    []step // probes after the reconfiguration
		wantErr  error
		wantRW   []netip.AddrPort
		wantRO   []netip.AddrPort
		wantCuts []string
	}{
		{name: "same nodes: nothing moves", nodes: []Node{pg1, pg2, pg3},
			wantRW: addrs(pg1), wantRO: addrs(pg2, pg3)},
		{name: "new node joins once probed", nodes: []Node{pg1, pg2, pg3, pg4}, after: []step{rep("pg4")},
			wantRW: addrs(pg1), wantRO: addrs(pg2, pg3, pg4)},
		{name: "new node not yet probed takes nothing", nodes: []Node{pg1, pg2, pg3, pg4},
			wantRW: addrs(pg1), wantRO: addrs(pg2, pg3)},
		{name: "removed replica is cut, others keep flows", nodes: []Node{pg1, pg2},
			wantRW: addrs(pg1), wantRO: addrs(pg2), wantCuts: []string{"cut 172.20.0.12:5432"}},
		{name: "moved node starts afresh, old address cut", nodes: []Node{pg1, pg2, pg3moved}, after: []step{rep("pg3")},
			wantRW: addrs(pg1), wantRO: addrs(pg2, pg3moved), wantCuts: []string{"cut 172.20.0.12:5432"}},
		{name: "removing the writer is refused", nodes: []Node{pg2, pg3}, wantErr: ErrRemoveWriter,
			wantRW: addrs(pg1), wantRO: addrs(pg2, pg3)},
		{name: "synchronous mode is refused", cfg: Config{Synchronous: true}, nodes: []Node{pg1, pg2, pg3},
			wantErr: ErrSynchronousChange, wantRW: addrs(pg1), wantRO: addrs(pg2, pg3)},
		{name: "lag limit applies at once", cfg: Config{MaxReadLag: time.Second}, nodes: []Node{pg1, pg2, pg3},
			after:  []step{{node: "pg2", replica: true, lag: 5 * time.Second}},
			wantRW: addrs(pg1), wantRO: addrs(pg3), wantCuts: []string{"cut 172.20.0.11:5432"}},
		{name: "fall applies at once", cfg: Config{Fall: 1}, nodes: []Node{pg1, pg2, pg3}, after: []step{fail("pg3")},
			wantRW: addrs(pg1), wantRO: addrs(pg2), wantCuts: []string{"cut 172.20.0.12:5432"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd := &fakeDatapath{}
			clock := time.Unix(1_700_000_000, 0)
			c := New(Config{}, []Node{pg1, pg2, pg3}, Options{Datapath: fd, Now: func() time.Time { return clock }})
			observe := func(s step) {
				clock = clock.Add(500 * time.Millisecond)
				o := Observation{Node: s.node, Time: clock, InRecovery: s.replica, Timeline: 1, ReplayLag: s.lag}
				if s.down {
					o.Err = errors.New("connection refused")
				}
				if err := c.Observe(o); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range start {
				observe(s)
			}
			if err := c.Reconfigure(tt.cfg, tt.nodes); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Reconfigure = %v, want %v", err, tt.wantErr)
			}
			for _, s := range tt.after {
				observe(s)
			}
			if diff := gocmp.Diff(tt.wantRW, fd.pools[RW], cmpAddr); diff != "" {
				t.Errorf("rw pool (-want +got):\n%s", diff)
			}
			if diff := gocmp.Diff(tt.wantRO, fd.pools[RO], cmpAddr); diff != "" {
				t.Errorf("ro pool (-want +got):\n%s", diff)
			}
			var cuts []string
			for _, l := range fd.log {
				if strings.HasPrefix(l, "cut ") {
					cuts = append(cuts, l)
				}
			}
			if diff := gocmp.Diff(tt.wantCuts, cuts); diff != "" {
				t.Errorf("cuts (-want +got):\n%s\nlog: %v", diff, fd.log)
			}
			if tt.wantErr != nil && len(c.Members()) != 3 {
				t.Errorf("refused reconfiguration changed the members: %v", c.Members())
			}
		})
	}
}

// TestReconfigureWithCommit: commit runs only once the checks passed, and
// a commit that fails changes nothing (nodes, priorities, rules, pools).
func TestReconfigureWithCommit(t *testing.T) {
	pg2first := pg2
	pg2first.Priority = 10
	tests := []struct {
		name        string
		cfg         Config
		nodes       []Node
		commitErr   error
		wantCalled  bool
		wantApplied bool
		wantErr     error
	}{
		{"applied", Config{Fall: 1}, []Node{pg1, pg2first}, nil, true, true, nil},
		{"refused: commit not called", Config{Fall: 1}, []Node{pg2first, pg3}, nil, false, false, ErrRemoveWriter},
		{"commit fails: nothing changes", Config{Fall: 1}, []Node{pg1, pg2first}, errors.New("map full"), true, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd := &fakeDatapath{}
			c := New(Config{}, []Node{pg1, pg2, pg3}, Options{Datapath: fd})
			for _, o := range []Observation{{Node: "pg1", Timeline: 1}, {Node: "pg2", InRecovery: true, Timeline: 1}, {Node: "pg3", InRecovery: true, Timeline: 1}} {
				if err := c.Observe(o); err != nil {
					t.Fatal(err)
				}
			}
			before, log := c.Members(), len(fd.log)
			called := false
			applied, err := c.ReconfigureWith(tt.cfg, tt.nodes, func() error { called = true; return tt.commitErr })
			want := tt.wantErr
			if want == nil {
				want = tt.commitErr
			}
			if !errors.Is(err, want) || (want == nil && err != nil) {
				t.Fatalf("ReconfigureWith = %v, want %v", err, want)
			}
			if called != tt.wantCalled || applied != tt.wantApplied {
				t.Fatalf("commit called %t, applied %t; want %t, %t", called, applied, tt.wantCalled, tt.wantApplied)
			}
			if applied {
				if c.cfg.Fall != 1 || len(c.Members()) != 2 {
					t.Errorf("applied, but fall %d, %d members", c.cfg.Fall, len(c.Members()))
				}
				return
			}
			if diff := gocmp.Diff(before, c.Members(), cmpAddr, cmpopts.IgnoreUnexported(Member{})); diff != "" {
				t.Errorf("members changed by a refused reconfiguration (-before +after):\n%s", diff)
			}
			if c.cfg.Fall != 3 || len(fd.log) != log {
				t.Errorf("refused, but fall %d, datapath writes %v", c.cfg.Fall, fd.log[log:])
			}
		})
	}
}
