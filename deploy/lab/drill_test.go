package lab

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseFault(t *testing.T) {
	for _, f := range Faults {
		got, err := ParseFault(string(f))
		if err != nil || got != f {
			t.Errorf("ParseFault(%q) = %q, %v", f, got, err)
		}
	}
	if _, err := ParseFault("reboot"); err == nil {
		t.Error(`ParseFault("reboot") succeeded`)
	}
}

func TestDrillOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		opts DrillOptions
		ok   bool
	}{
		{"defaults", DrillOptions{}, true},
		{"partition", DrillOptions{Fault: FaultPartition, Trials: 10, Clients: 8}, true},
		{"unknown fault", DrillOptions{Fault: "reboot"}, false},
		{"no trials", DrillOptions{Trials: -1}, false},
		{"too many clients", DrillOptions{Clients: 101}, false},
		{"skip rejoin, one trial", DrillOptions{Trials: 1, SkipRejoin: true}, true},
		{"skip rejoin, two trials", DrillOptions{Trials: 2, SkipRejoin: true}, false},
		{"negative load", DrillOptions{Load: -time.Second}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.opts
			o.setDefaults()
			if err := o.validate(); (err == nil) != tt.ok {
				t.Errorf("validate() = %v, want ok %t", err, tt.ok)
			}
		})
	}
}

func TestWriterID(t *testing.T) {
	seen := map[int64]bool{}
	for _, tag := range []int{0, 1, 999, 8_999_999} {
		for _, client := range []int{0, 1, 99, 999} {
			for _, seq := range []int64{1, 2, 999_999_999} {
				id := WriterID(tag, client, seq)
				if seen[id] || id <= 0 {
					t.Fatalf("WriterID(%d, %d, %d) = %d: repeated or not positive", tag, client, seq, id)
				}
				seen[id] = true
			}
		}
	}
}

func TestPercentile(t *testing.T) {
	tests := []struct {
		xs   []Seconds
		p    float64
		want Seconds
	}{
		{nil, 50, 0},
		{[]Seconds{0.3}, 50, 0.3},
		{[]Seconds{0.5, 0.1, 0.3}, 50, 0.3},
		{[]Seconds{0.4, 0.1, 0.3, 0.2}, 50, 0.2}, // nearest rank: the 2nd of 4
		{[]Seconds{0.4, 0.1, 0.3, 0.2}, 100, 0.4},
		{[]Seconds{5.3, 0.2}, 100, 5.3},
	}
	for _, tt := range tests {
		if got := percentile(tt.xs, tt.p); got != tt.want {
			t.Errorf("percentile(%v, %v) = %v, want %v", tt.xs, tt.p, got, tt.want)
		}
	}
}

func TestFirstAckAndLongestGap(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	pg1, pg2 := HostAddr("pg1"), HostAddr("pg2")
	// Acks arrive out of order across writers.
	acks := []Ack{
		{ID: 1, Server: pg1, At: at(-20)},
		{ID: 2, Server: pg1, At: at(3)}, // in flight at the fault
		{ID: 4, Server: pg2, At: at(420)},
		{ID: 3, Server: pg2, At: at(400)},
		{ID: 5, Server: pg2, At: at(430)},
		{ID: 6, Server: pg2, At: at(900)},
		{ID: 7, Server: pg2, At: at(910)},
	}
	onPG2 := func(a Ack) bool { return a.Server == pg2 }
	a, ok := firstAck(acks, t0, onPG2)
	if !ok || a.ID != 3 {
		t.Errorf("firstAck on pg2 after t0 = %+v, %t; want id 3", a, ok)
	}
	if a, ok := firstAck(acks, t0, nil); !ok || a.ID != 2 {
		t.Errorf("firstAck after t0 = %+v, %t; want id 2", a, ok)
	}
	if _, ok := firstAck(acks, at(910), nil); ok {
		t.Error("firstAck after the last ack found one")
	}
	gap, from := longestGap(acks, at(400))
	if gap != 470*time.Millisecond || !from.Equal(at(430)) {
		t.Errorf("longestGap = %v from %v, want 470ms from %v", gap, from, at(430))
	}
	if gap, _ := longestGap(acks[:1], t0); gap != 0 {
		t.Errorf("longestGap of nothing = %v", gap)
	}
}

func TestSteady(t *testing.T) {
	up := func(m, role, pool string) Backend {
		b := Backend{Member: m, Role: role, State: "up", Pools: []string{}}
		if pool != "" {
			b.Pools = []string{pool}
		}
		return b
	}
	healthy := []Backend{up("pg1", "primary", "3000"), up("pg2", "replica", "3001"), up("pg3", "replica", "3001")}
	sync := &ControlStatus{Writer: "pg1", Synchronous: true, SyncStandbys: []string{"pg3", "pg2"}, Promotable: []string{"pg2", "pg3"}}
	tests := []struct {
		name    string
		bs      []Backend
		cs      *ControlStatus
		primary string // "" = not steady
	}{
		{"async", healthy, &ControlStatus{Writer: "pg1"}, "pg1"},
		{"sync", healthy, sync, "pg1"},
		{"sync set still catching up", healthy, &ControlStatus{Writer: "pg1", Synchronous: true,
			SyncStandbys: []string{"pg2", "pg3"}, Promotable: []string{"pg3"}}, ""},
		{"writer elsewhere", healthy, &ControlStatus{Writer: "pg2"}, ""},
		{"replica down", []Backend{healthy[0], healthy[1], {Member: "pg3", Role: "replica", State: "down", Pools: []string{}}},
			&ControlStatus{Writer: "pg1"}, ""},
		{"fenced old primary", []Backend{{Member: "pg1", Role: "primary", State: "fenced", Pools: []string{}},
			up("pg2", "primary", "3000"), up("pg3", "replica", "3001")}, &ControlStatus{Writer: "pg2"}, ""},
		{"member missing", healthy[:2], &ControlStatus{Writer: "pg1"}, ""},
		{"no primary", []Backend{up("pg1", "replica", "3001"), healthy[1], healthy[2]}, &ControlStatus{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := steady(tt.bs, tt.cs)
			if got != tt.primary || (got == "") == (why == "") {
				t.Errorf("steady() = %q, %q; want primary %q (and a reason exactly when none)", got, why, tt.primary)
			}
		})
	}
}

func TestDrillReportTable(t *testing.T) {
	rep := &DrillReport{Prefix: "xlb-", Fault: FaultKill, Clients: 4, Synchronous: true, Trials: []DrillTrial{
		{Trial: 1, Fault: FaultKill, OldPrimary: "pg1", NewPrimary: "pg2", Outage: 0.287, Acknowledged: 5867, Promotion: 0.116, Stall: 0.034, Rejoin: 2.487,
			Detection: 0.15, Routing: 0.011, FirstAck: 0.01},
		{Trial: 2, Fault: FaultKill, OldPrimary: "pg2", NewPrimary: "pg1", Outage: 5.194, Acknowledged: 7344, Lost: 1, LostIDs: []int64{2000000000017}, Promotion: 0.108, Stall: 0.457,
			Detection: 0.1, Routing: 4.976, FirstAck: 0.01, DeadWaits: 4, DeadWaitMax: 5.002},
	}}
	rep.summarize()
	if rep.OK() || rep.Lost != 1 || rep.OutageP50 != 0.287 || rep.OutageMax != 5.194 {
		t.Fatalf("summary: ok %t, lost %d, p50 %v, max %v", rep.OK(), rep.Lost, rep.OutageP50, rep.OutageMax)
	}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"TRIAL  FAULT  OLD -> NEW PRIMARY  OUTAGE   DETECTION  PROMOTION  ROUTING  FIRST ACK  DEAD WAITS  ACKNOWLEDGED  LOST  WRITES TO FENCED  STALL AFTER RESUME  REJOIN",
		"1      kill   pg1 -> pg2          0.287 s  0.150 s    0.116 s    0.011 s  0.010 s    0           5867          0     0                 0.034 s             2.487 s",
		"2      kill   pg2 -> pg1          5.194 s  0.100 s    0.108 s    4.976 s  0.010 s    4 (5.0 s)   7344          1     0                 0.457 s             -",
		"outage over 2 trials (kill, synchronous mode, 4 writers): p50 0.287 s, max 5.194 s; lost 1; writes to fenced 0",
		"trial 2: lost ids [2000000000017]",
	}
	if diff := cmp.Diff(want, strings.Split(strings.TrimSpace(b.String()), "\n")); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
}

// TestDrillPhases splits a 5.2 s outage: detection 0.1 s, promotion
// 0.1 s, then the writer whose INSERT acknowledged first on the new
// primary waited out its statement timeout on a dead flow before
// reconnecting.
func TestDrillPhases(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	pg1 := HostAddr("pg1")
	tr := DrillTrial{FaultAt: t0, Promotion: 0.1}
	ev := ControlEvent{Time: at(100), Took: 100 * time.Millisecond}
	first := Ack{Client: 2, Conn: at(5150), Sent: at(5160), At: at(5200)}
	ops := []Op{
		{Client: 2, Step: "insert", Server: pg1, Start: at(140), End: at(5140), Timeout: true},
		{Client: 3, Step: "insert", Server: pg1, Start: at(-10), End: at(4990), Timeout: true},
		{Client: 3, Step: "connect", Start: at(4995), End: at(6995), Timeout: true},               // not an INSERT
		{Client: 1, Step: "insert", Server: pg1, Start: at(-4000), End: at(-3000), Timeout: true}, // over before the fault
		{Client: 0, Step: "insert", Server: pg1, Start: at(-5), End: at(20)},                      // a reset: no wait
	}
	tr.phases(ev, first, ops)
	got := []Seconds{tr.Detection, tr.Promotion, tr.Routing, tr.FirstAck, Seconds(tr.DeadWaits), tr.DeadWaitMax}
	want := []Seconds{0.1, 0.1, 4.95, 0.05, 2, 5}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("detection, promotion, routing, first ack, dead waits, longest (-want +got):\n%s", diff)
	}
}

func TestHostAt(t *testing.T) {
	if got := hostAt(netip.MustParseAddr("172.20.0.11")); got != "pg2" {
		t.Errorf("hostAt(172.20.0.11) = %q", got)
	}
	if got := hostAt(netip.MustParseAddr("10.0.0.1")); got != "10.0.0.1" {
		t.Errorf("hostAt(10.0.0.1) = %q", got)
	}
	if HostAddr("nope").IsValid() {
		t.Error(`HostAddr("nope") is valid`)
	}
}

func TestOpenNoLab(t *testing.T) {
	if _, err := Open("xlb-no-such-lab-"); err == nil {
		t.Error("Open of a lab that is not up succeeded")
	}
	if _, err := Open("../etc"); err == nil {
		t.Error("Open accepted a prefix that escapes the state directory")
	}
}
