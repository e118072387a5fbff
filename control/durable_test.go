package control

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDurableFrom(t *testing.T) {
	down := errors.New("connection refused")
	tests := []struct {
		name         string
		obs          []Observation
		want         Durable
		wantAnswered int
	}{
		{"none answered", []Observation{{Node: "pg1", Err: down}}, Durable{}, 0},
		{"old primary and a follower of the new one", []Observation{
			{Node: "pg1", Timeline: 1, SystemID: 7},                   // old primary, restarted unrejoined
			{Node: "pg2", Timeline: 2, SystemID: 7},                   // promoted
			{Node: "pg3", Timeline: 2, SystemID: 7, InRecovery: true}, // follows pg2
		}, Durable{Timeline: 2, SystemID: 7}, 3},
		{"new primary down, its follower still says so", []Observation{
			{Node: "pg1", Timeline: 1, SystemID: 7},
			{Node: "pg2", Err: down, Timeline: 9, SystemID: 7},
			{Node: "pg3", Timeline: 2, SystemID: 7, InRecovery: true},
		}, Durable{Timeline: 2, SystemID: 7}, 2},
		{"a foreign node's newer timeline does not count", []Observation{
			{Node: "pg1", Timeline: 3, SystemID: 7},
			{Node: "pg2", Timeline: 3, SystemID: 7, InRecovery: true},
			{Node: "pg3", Timeline: 12, SystemID: 99},
		}, Durable{Timeline: 3, SystemID: 7}, 3},
		{"tie: the identifier with the newest timeline", []Observation{
			{Node: "pg1", Timeline: 1, SystemID: 5},
			{Node: "pg2", Timeline: 4, SystemID: 9},
		}, Durable{Timeline: 4, SystemID: 9}, 2},
		{"tie on timeline too: the smaller identifier", []Observation{
			{Node: "pg1", Timeline: 2, SystemID: 9},
			{Node: "pg2", Timeline: 2, SystemID: 5},
		}, Durable{Timeline: 2, SystemID: 5}, 2},
		{"no identifier reported", []Observation{
			{Node: "pg1", Timeline: 2},
		}, Durable{Timeline: 2}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, answered := DurableFrom(tt.obs)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("DurableFrom (-want +got):\n%s", diff)
			}
			if answered != tt.wantAnswered {
				t.Errorf("answered %d, want %d", answered, tt.wantAnswered)
			}
		})
	}
}

// TestRebuiltStateFences: a controller started with the state DurableFrom
// rebuilt (pg3 followed the promoted pg2) routes no writes to the old
// primary pg1, even when afterwards it alone answers.
func TestRebuiltStateFences(t *testing.T) {
	known, _ := DurableFrom([]Observation{
		{Node: "pg1", Timeline: 1, SystemID: 7},
		{Node: "pg2", Err: errors.New("timeout")},
		{Node: "pg3", Timeline: 2, SystemID: 7, InRecovery: true},
	})
	r := newRig(Config{Known: known})
	r.run(t, []ev{up("pg1", 1000), down("pg2"), down("pg3")})
	if rw := r.dp.pools[RW]; len(rw) != 0 {
		t.Fatalf("writes routed to %v, the old primary on timeline 1", rw)
	}
	if !r.c.member("pg1").Fenced {
		t.Fatal("pg1 not fenced")
	}
}
