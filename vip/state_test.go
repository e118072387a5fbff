package vip

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var (
	lb1Addr = netip.MustParseAddr("172.20.0.21")
	lb3Addr = netip.MustParseAddr("172.20.0.23")
)

// step is one event of a sequence and what the machine must answer.
type step struct {
	at     time.Duration // since the sequence's start
	ev     Event
	want   []Action
	state  State
	expiry time.Duration // Deadline since the start; -1 for none
}

func advert(from netip.Addr, prio uint8, interval time.Duration) Event {
	return Event{Kind: AdvertReceived, From: from, Priority: prio, Interval: interval}
}

var (
	startup  = Event{Kind: Startup}
	tick     = Event{Kind: TimerFired}
	shutdown = Event{Kind: Shutdown}
)

func TestMachine(t *testing.T) {
	const ms = time.Millisecond
	// Priority 100 at 50 ms: Skew_Time = 156 × 50 ms / 256 = 30.46875 ms,
	// Master_Down_Interval = 150 ms + skew = 180.46875 ms.
	skew100 := 156 * 50 * ms / 256
	down100 := 150*ms + skew100
	prio100 := MachineConfig{Addr: lb2Addr, Priority: 100, AdvertInterval: 50 * ms, Preempt: true}
	prio200 := MachineConfig{Addr: lb1Addr, Priority: 200, AdvertInterval: 50 * ms, Preempt: true}
	nopreempt := prio100
	nopreempt.Preempt = false

	tests := []struct {
		name  string
		cfg   MachineConfig
		steps []step
	}{
		{
			name: "silent network: backup, then master after Master_Down_Interval",
			cfg:  prio100,
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, down100},
				{down100 - 1, tick, nil, Backup, down100}, // woke early: nothing
				{down100, tick, []Action{SendAdvert, BecomeMaster}, Master, down100 + 50*ms},
				{down100 + 50*ms, tick, []Action{SendAdvert}, Master, down100 + 100*ms},
				{down100 + 120*ms, tick, []Action{SendAdvert}, Master, down100 + 170*ms}, // woke late: next from now
			},
		},
		{
			name: "address owner is master at once",
			cfg:  MachineConfig{Addr: lb2Addr, Priority: 255, AdvertInterval: 50 * ms},
			steps: []step{
				{0, startup, []Action{SendAdvert, BecomeMaster}, Master, 50 * ms},
				{10 * ms, advert(lb1Addr, 254, 50*ms), nil, Master, 50 * ms},
			},
		},
		{
			name: "higher-priority master keeps the backup down",
			cfg:  prio100,
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, down100},
				{40 * ms, advert(lb1Addr, 200, 50*ms), nil, Backup, 40*ms + down100},
				{90 * ms, advert(lb1Addr, 200, 50*ms), nil, Backup, 90*ms + down100},
				{down100, tick, nil, Backup, 90*ms + down100},
				{90*ms + down100, tick, []Action{SendAdvert, BecomeMaster}, Master, 140*ms + down100},
			},
		},
		{
			name: "backup adopts the master's interval",
			cfg:  prio100,
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, down100},
				// 3 × 1 s + 156 × 1 s / 256.
				{10 * ms, advert(lb1Addr, 200, time.Second), nil, Backup, 10*ms + 3*time.Second + 156*time.Second/256},
			},
		},
		{
			name: "equal-priority master keeps the backup down whatever its address",
			cfg:  MachineConfig{Addr: lb3Addr, Priority: 100, AdvertInterval: 50 * ms, Preempt: true},
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, down100},
				{40 * ms, advert(lb1Addr, 100, 50*ms), nil, Backup, 40*ms + down100},
			},
		},
		{
			name: "preempt: lower-priority master is ignored until the timer runs out",
			cfg:  prio200,
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, 150*ms + 56*50*ms/256},
				{20 * ms, advert(lb2Addr, 100, 50*ms), nil, Backup, 150*ms + 56*50*ms/256},
				{70 * ms, advert(lb2Addr, 100, 50*ms), nil, Backup, 150*ms + 56*50*ms/256},
				{150*ms + 56*50*ms/256, tick, []Action{SendAdvert, BecomeMaster}, Master, 200*ms + 56*50*ms/256},
			},
		},
		{
			name: "nopreempt: lower-priority master keeps the backup down",
			cfg:  MachineConfig{Addr: lb1Addr, Priority: 200, AdvertInterval: 50 * ms, Preempt: false},
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, 150*ms + 56*50*ms/256},
				{100 * ms, advert(lb2Addr, 100, 50*ms), nil, Backup, 250*ms + 56*50*ms/256},
				{200 * ms, advert(lb2Addr, 100, 50*ms), nil, Backup, 350*ms + 56*50*ms/256},
				{250 * ms, tick, nil, Backup, 350*ms + 56*50*ms/256},
			},
		},
		{
			name: "resigning master: backup takes over after Skew_Time",
			cfg:  nopreempt,
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, down100},
				{40 * ms, advert(lb1Addr, 200, 50*ms), nil, Backup, 40*ms + down100},
				{60 * ms, advert(lb1Addr, 0, 50*ms), nil, Backup, 60*ms + skew100},
				{60*ms + skew100, tick, []Action{SendAdvert, BecomeMaster}, Master, 110*ms + skew100},
			},
		},
		{
			name: "master steps down for a higher priority",
			cfg:  prio100,
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, down100},
				{down100, tick, []Action{SendAdvert, BecomeMaster}, Master, down100 + 50*ms},
				// The new master advertises every 20 ms: 60 ms + 156 × 20 ms / 256.
				{down100 + 10*ms, advert(lb1Addr, 200, 20*ms), []Action{BecomeBackup}, Backup, down100 + 10*ms + 60*ms + 156*20*ms/256},
			},
		},
		{
			name: "master ignores a lower priority",
			cfg:  prio200,
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, 150*ms + 56*50*ms/256},
				{200 * ms, tick, []Action{SendAdvert, BecomeMaster}, Master, 250 * ms},
				{210 * ms, advert(lb2Addr, 100, 50*ms), nil, Master, 250 * ms},
			},
		},
		{
			name: "equal priority: higher address wins the tie",
			cfg:  prio100, // 172.20.0.22
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, down100},
				{down100, tick, []Action{SendAdvert, BecomeMaster}, Master, down100 + 50*ms},
				{down100 + 1*ms, advert(lb1Addr, 100, 50*ms), nil, Master, down100 + 50*ms}, // .21 < .22
				{down100 + 2*ms, advert(lb3Addr, 100, 50*ms), []Action{BecomeBackup}, Backup, down100 + 2*ms + down100},
			},
		},
		{
			name: "master answers a resignation with an advertisement",
			cfg:  prio100,
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, down100},
				{down100, tick, []Action{SendAdvert, BecomeMaster}, Master, down100 + 50*ms},
				{down100 + 5*ms, advert(lb1Addr, 0, 50*ms), []Action{SendAdvert}, Master, down100 + 55*ms},
			},
		},
		{
			name: "shutdown: master resigns, stopped machine ignores everything",
			cfg:  prio100,
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, down100},
				{down100, tick, []Action{SendAdvert, BecomeMaster}, Master, down100 + 50*ms},
				{down100 + 10*ms, shutdown, []Action{SendResign, BecomeInitialize}, Initialize, -1},
				{down100 + 60*ms, tick, nil, Initialize, -1},
				{down100 + 70*ms, advert(lb1Addr, 200, 50*ms), nil, Initialize, -1},
				{down100 + 80*ms, shutdown, nil, Initialize, -1},
			},
		},
		{
			name: "shutdown: backup just stops",
			cfg:  prio100,
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, down100},
				{10 * ms, shutdown, []Action{BecomeInitialize}, Initialize, -1},
			},
		},
		{
			name: "not started: nothing happens",
			cfg:  prio100,
			steps: []step{
				{0, tick, nil, Initialize, -1},
				{0, advert(lb1Addr, 200, 50*ms), nil, Initialize, -1},
			},
		},
		{
			name: "second startup is ignored",
			cfg:  prio100,
			steps: []step{
				{0, startup, []Action{BecomeBackup}, Backup, down100},
				{10 * ms, startup, nil, Backup, down100},
			},
		},
	}
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewMachine(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tt.steps {
				got := m.Handle(t0.Add(s.at), s.ev)
				if diff := cmp.Diff(s.want, got); diff != "" {
					t.Fatalf("step %d (%+v) actions (-want +got):\n%s", i, s.ev, diff)
				}
				if m.State() != s.state {
					t.Fatalf("step %d (%+v): state %v, want %v", i, s.ev, m.State(), s.state)
				}
				var wantDeadline time.Time
				if s.expiry >= 0 {
					wantDeadline = t0.Add(s.expiry)
				}
				if !m.Deadline().Equal(wantDeadline) {
					t.Fatalf("step %d (%+v): deadline at %v, want %v", i, s.ev, m.Deadline().Sub(t0), s.expiry)
				}
			}
		})
	}
}

func TestMachineStatus(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	m, err := NewMachine(MachineConfig{Addr: lb2Addr, Priority: 100, AdvertInterval: 50 * time.Millisecond, Preempt: true})
	if err != nil {
		t.Fatal(err)
	}
	m.Handle(t0, startup)
	m.Handle(t0.Add(time.Millisecond), advert(lb1Addr, 200, time.Second))
	var got Status
	m.Status(&got)
	want := Status{
		State: Backup, Since: t0, Priority: 100, Master: lb1Addr, MasterPriority: 200, MasterAdvertInterval: time.Second,
		LastAdvert: t0.Add(time.Millisecond), LastAdvertFrom: lb1Addr,
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("Status (-want +got):\n%s", diff)
	}
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	var back Status
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	if diff := cmp.Diff(got, back, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("JSON round trip of %s (-want +got):\n%s", b, diff)
	}
}

func TestNewMachineRejects(t *testing.T) {
	tests := []struct {
		name string
		cfg  MachineConfig
	}{
		{"priority 0", MachineConfig{Addr: lb1Addr, AdvertInterval: time.Second}},
		{"interval too short", MachineConfig{Addr: lb1Addr, Priority: 1, AdvertInterval: time.Millisecond}},
		{"interval too long", MachineConfig{Addr: lb1Addr, Priority: 1, AdvertInterval: time.Minute}},
		{"ipv6 address", MachineConfig{Addr: netip.MustParseAddr("fe80::1"), Priority: 1, AdvertInterval: time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewMachine(tt.cfg); !errors.Is(err, ErrConfig) {
				t.Errorf("NewMachine error = %v, want ErrConfig", err)
			}
		})
	}
}

func TestStateText(t *testing.T) {
	for _, s := range []State{Initialize, Backup, Master} {
		b, _ := s.MarshalText()
		var got State
		if err := got.UnmarshalText(b); err != nil || got != s {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", b, got, err, s)
		}
	}
	var s State
	if err := s.UnmarshalText([]byte("fault")); !errors.Is(err, ErrUnknownState) {
		t.Errorf("UnmarshalText(fault) error = %v, want ErrUnknownState", err)
	}
}

// TestResumeStartsAsMaster: a resumed machine is master at once and still
// yields to a higher-priority master's advertisement.
func TestResumeStartsAsMaster(t *testing.T) {
	self := netip.MustParseAddr("172.20.0.21")
	m, err := NewMachine(MachineConfig{Addr: self, Priority: 100, AdvertInterval: 50 * time.Millisecond, Preempt: true, Resume: true})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	acts := m.Handle(now, Event{Kind: Startup})
	if m.State() != Master || !slices.Contains(acts, BecomeMaster) || !slices.Contains(acts, SendAdvert) {
		t.Fatalf("resumed startup: state %v, actions %v; want master, advertising", m.State(), acts)
	}
	m.Handle(now.Add(10*time.Millisecond), Event{Kind: AdvertReceived, From: netip.MustParseAddr("172.20.0.22"), Priority: 200, Interval: 50 * time.Millisecond})
	if m.State() != Backup {
		t.Fatalf("resumed master after a priority-200 advert: %v, want backup", m.State())
	}
}

// TestSetPriority: a master whose priority drops below a backup's yields
// when the backup (preempting) advertises, and advertises the new priority.
func TestSetPriority(t *testing.T) {
	self := netip.MustParseAddr("172.20.0.21")
	m, err := NewMachine(MachineConfig{Addr: self, Priority: 150, AdvertInterval: 50 * time.Millisecond, Preempt: true, Resume: true})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	m.Handle(now, Event{Kind: Startup})
	m.SetPriority(50)
	var s Status
	m.Status(&s)
	if m.Priority() != 50 || s.MasterPriority != 50 {
		t.Fatalf("priority %d, master priority %d; want 50", m.Priority(), s.MasterPriority)
	}
	m.Handle(now.Add(60*time.Millisecond), Event{Kind: AdvertReceived, From: netip.MustParseAddr("172.20.0.22"), Priority: 100, Interval: 50 * time.Millisecond})
	if m.State() != Backup {
		t.Fatalf("master at priority 50 after a priority-100 advert: %v, want backup", m.State())
	}
	m.SetPriority(255) // the owner's priority cannot be taken this way
	if m.Priority() != 50 {
		t.Fatalf("SetPriority(255) changed the priority to %d", m.Priority())
	}
}
