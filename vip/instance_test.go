package vip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeLink is Conn, Addresser and Announcer in memory, for an Instance in
// a synctest bubble: it logs what the instance does at which fake time.
type fakeLink struct {
	start    time.Time
	rx       chan rxPacket
	wake     chan struct{}
	addFails int // AddAddress fails this many times first

	mu       sync.Mutex
	deadline time.Time
	ops      []string // the loop's: sends, adds, removals, WhileMaster calls, in order
	calls    []string // OnMaster and OnBackup, in order
	garps    []string
}

type rxPacket struct {
	msg []byte
	h   Header
}

func newFakeLink() *fakeLink {
	return &fakeLink{start: time.Now(), rx: make(chan rxPacket, 16), wake: make(chan struct{}, 1)}
}

func (f *fakeLink) logf(to *[]string, format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	*to = append(*to, fmt.Sprintf("%v ", time.Since(f.start))+fmt.Sprintf(format, args...))
}

func (f *fakeLink) ReadFrom(b []byte) ([]byte, Header, error) {
	for {
		f.mu.Lock()
		dl := f.deadline
		f.mu.Unlock()
		var timeout <-chan time.Time
		if !dl.IsZero() {
			left := time.Until(dl)
			if left <= 0 {
				return nil, Header{}, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(left)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case p := <-f.rx:
			return b[:copy(b, p.msg)], p.h, nil
		case <-timeout:
		case <-f.wake:
		}
	}
}

func (f *fakeLink) WriteTo(msg []byte, h Header) error {
	a, err := Unmarshal(msg, h.Src, h.Dst)
	if err != nil {
		f.logf(&f.ops, "send invalid: %v", err)
		return nil
	}
	f.logf(&f.ops, "send prio %d to %v ttl %d", a.Priority, h.Dst, h.TTL)
	return nil
}

func (f *fakeLink) SetReadDeadline(t time.Time) error {
	f.mu.Lock()
	f.deadline = t
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
	return nil
}

func (f *fakeLink) AddAddress(p netip.Prefix) error {
	if f.addFails > 0 {
		f.addFails--
		f.logf(&f.ops, "add %v failed", p)
		return errors.New("no")
	}
	f.logf(&f.ops, "add %v", p)
	return nil
}

func (f *fakeLink) DelAddress(p netip.Prefix) error {
	f.logf(&f.ops, "del %v", p)
	return nil
}

func (f *fakeLink) Announce(ip netip.Addr) error {
	f.logf(&f.garps, "garp %v", ip)
	return nil
}

// inject is a packet the test delivers at a fake time.
type inject struct {
	at  time.Duration
	msg []byte
	h   Header
}

// advertFrom returns a valid advertisement from src to the group.
func advertFrom(t *testing.T, src netip.Addr, prio uint8, interval time.Duration) ([]byte, Header) {
	t.Helper()
	b, err := (&Advertisement{VRID: testVRID, Priority: prio, Interval: interval, Addresses: []netip.Addr{vipAddr}}).Marshal(src, MulticastGroup)
	if err != nil {
		t.Fatal(err)
	}
	return b, Header{Src: src, Dst: MulticastGroup, TTL: TTL}
}

// every returns the packet built by mk at from, from+step, … before to.
func every(from, step, to time.Duration, msg []byte, h Header) []inject {
	var out []inject
	for at := from; at < to; at += step {
		out = append(out, inject{at, msg, h})
	}
	return out
}

// TestInstance runs an Instance over fakeLink in a synctest bubble:
// priority 128 at 100 ms gives Skew_Time 50 ms and Master_Down_Interval
// 350 ms, so every time below is exact.
func TestInstance(t *testing.T) {
	const ms = time.Millisecond
	self := lb2Addr
	base := Config{
		Interface: "eth0", VRID: testVRID, Priority: 128, Preempt: true, VIP: testVIP,
		AdvertInterval: 100 * ms, SourceAddr: self, GARPCount: 3, GARPInterval: 10 * ms,
	}
	higher, higherH := advertFrom(t, lb1Addr, 200, 100*ms)
	resign, resignH := advertFrom(t, lb1Addr, 0, 100*ms)
	lowTTL := higherH
	lowTTL.TTL = 64
	otherVRID, _ := (&Advertisement{VRID: testVRID + 1, Priority: 200, Interval: 100 * ms, Addresses: []netip.Addr{vipAddr}}).Marshal(lb1Addr, MulticastGroup)
	badSum := append([]byte(nil), higher...)
	badSum[7]++
	own, ownH := advertFrom(t, self, 200, 100*ms)

	vip := testVIP.String()
	aloneOps := []string{
		"0s del " + vip,
		"350ms send prio 128 to 224.0.0.18 ttl 255", "350ms add " + vip, "350ms renew",
		"450ms send prio 128 to 224.0.0.18 ttl 255", "450ms renew",
		"550ms send prio 128 to 224.0.0.18 ttl 255", "550ms renew",
		"560ms send prio 0 to 224.0.0.18 ttl 255", "560ms del " + vip,
	}
	aloneCalls := []string{"0s backup", "350ms master", "560ms backup"}
	aloneGARPs := []string{"350ms garp 172.20.0.100", "360ms garp 172.20.0.100", "370ms garp 172.20.0.100"}

	tests := []struct {
		name     string
		cfg      func(*Config)
		addFails int
		packets  []inject
		stopAt   time.Duration
		kill     bool
		ops      []string
		calls    []string
		garps    []string
	}{
		{
			name:   "alone: master after Master_Down_Interval, resigns on stop",
			stopAt: 560 * ms, ops: aloneOps, calls: aloneCalls, garps: aloneGARPs,
		},
		{
			name: "second burst and periodic refresh while master",
			cfg: func(c *Config) {
				c.GARPRepeatAfter, c.GARPRefresh = 100*ms, 60*ms
			},
			stopAt: 560 * ms, ops: aloneOps, calls: aloneCalls,
			garps: append(append([]string(nil), aloneGARPs...),
				"470ms garp 172.20.0.100", "480ms garp 172.20.0.100", "490ms garp 172.20.0.100", "550ms garp 172.20.0.100"),
		},
		{
			name:    "advertisements with TTL 64 are ignored",
			packets: every(100*ms, 100*ms, 560*ms, higher, lowTTL),
			stopAt:  560 * ms, ops: aloneOps, calls: aloneCalls, garps: aloneGARPs,
		},
		{
			name:    "another VRID is ignored",
			packets: every(100*ms, 100*ms, 560*ms, otherVRID, higherH),
			stopAt:  560 * ms, ops: aloneOps, calls: aloneCalls, garps: aloneGARPs,
		},
		{
			name:    "a bad checksum is ignored",
			packets: every(100*ms, 100*ms, 560*ms, badSum, higherH),
			stopAt:  560 * ms, ops: aloneOps, calls: aloneCalls, garps: aloneGARPs,
		},
		{
			name:    "our own advertisement is ignored",
			packets: every(100*ms, 100*ms, 560*ms, own, ownH),
			stopAt:  560 * ms, ops: aloneOps, calls: aloneCalls, garps: aloneGARPs,
		},
		{
			name:    "with unicast peers, other senders are ignored",
			cfg:     func(c *Config) { c.UnicastPeers = []netip.Addr{lb3Addr} },
			packets: every(100*ms, 100*ms, 560*ms, higher, higherH),
			stopAt:  420 * ms,
			ops: []string{
				"0s del " + vip,
				"350ms send prio 128 to 172.20.0.23 ttl 255", "350ms add " + vip, "350ms renew",
				"420ms send prio 0 to 172.20.0.23 ttl 255", "420ms del " + vip,
			},
			calls: []string{"0s backup", "350ms master", "420ms backup"},
			garps: aloneGARPs,
		},
		{
			name:    "higher-priority master keeps it backup; its resignation hands over after Skew_Time",
			packets: append(every(100*ms, 100*ms, 450*ms, higher, higherH), inject{450 * ms, resign, resignH}),
			stopAt:  515 * ms,
			ops: []string{
				"0s del " + vip,
				"500ms send prio 128 to 224.0.0.18 ttl 255", "500ms add " + vip, "500ms renew",
				"515ms send prio 0 to 224.0.0.18 ttl 255", "515ms del " + vip,
			},
			calls: []string{"0s backup", "500ms master", "515ms backup"},
			garps: []string{"500ms garp 172.20.0.100", "510ms garp 172.20.0.100"},
		},
		{
			name:    "a higher priority preempts the master, which stops its announcements",
			packets: []inject{{355 * ms, higher, higherH}},
			stopAt:  400 * ms,
			ops: []string{
				"0s del " + vip,
				"350ms send prio 128 to 224.0.0.18 ttl 255", "350ms add " + vip, "350ms renew",
				"355ms del " + vip,
				"400ms del " + vip, // stopping as backup: no resignation, no callback
			},
			calls: []string{"0s backup", "350ms master", "355ms backup"},
			garps: []string{"350ms garp 172.20.0.100"},
		},
		{
			name:   "killed: no resignation, the VIP stays, no callback",
			stopAt: 400 * ms, kill: true,
			ops: []string{
				"0s del " + vip,
				"350ms send prio 128 to 224.0.0.18 ttl 255", "350ms add " + vip, "350ms renew",
			},
			calls: []string{"0s backup", "350ms master"},
			garps: aloneGARPs,
		},
		{
			name:     "a failed add is retried every interval",
			addFails: 1,
			stopAt:   455 * ms,
			ops: []string{
				"0s del " + vip,
				"350ms send prio 128 to 224.0.0.18 ttl 255", "350ms add " + vip + " failed",
				"450ms add " + vip, "450ms send prio 128 to 224.0.0.18 ttl 255", "450ms renew",
				"455ms send prio 0 to 224.0.0.18 ttl 255", "455ms del " + vip,
			},
			calls: []string{"0s backup", "350ms master", "455ms backup"},
			garps: []string{"450ms garp 172.20.0.100"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFakeLink()
				f.addFails = tt.addFails
				cfg := base
				if tt.cfg != nil {
					tt.cfg(&cfg)
				}
				cfg.OnMaster = func() { f.logf(&f.calls, "master") }
				cfg.OnBackup = func() { f.logf(&f.calls, "backup") }
				cfg.WhileMaster = func() { f.logf(&f.ops, "renew") }
				cfg.Logger = slog.New(slog.DiscardHandler)
				in, err := New(cfg, f, f, f)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(t.Context())
				kill, killFn := context.WithCancel(t.Context())
				done := make(chan error, 1)
				go func() { done <- in.run(ctx, kill) }()
				for _, p := range tt.packets {
					if p.at >= tt.stopAt {
						break
					}
					time.Sleep(p.at - time.Since(f.start))
					f.rx <- rxPacket{p.msg, p.h}
				}
				time.Sleep(tt.stopAt - time.Since(f.start))
				if tt.kill {
					killFn()
				} else {
					cancel()
				}
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
				cancel()
				killFn()
				synctest.Wait() // the announcements of a killed instance end
				f.mu.Lock()
				defer f.mu.Unlock()
				if diff := cmp.Diff(tt.ops, f.ops); diff != "" {
					t.Errorf("sends, adds, removals and renewals (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(tt.calls, f.calls); diff != "" {
					t.Errorf("callbacks (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(tt.garps, f.garps); diff != "" {
					t.Errorf("gratuitous ARPs (-want +got):\n%s", diff)
				}
			})
		})
	}
}

func TestInstanceRunsOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeLink()
		in, err := New(Config{Interface: "eth0", VRID: 1, Priority: 100, VIP: testVIP, SourceAddr: lb2Addr, Logger: slog.New(slog.DiscardHandler)}, f, f, f)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- in.Run(ctx) }()
		synctest.Wait()
		if err := in.Run(ctx); !errors.Is(err, ErrRunning) {
			t.Errorf("second Run: %v, want ErrRunning", err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func TestNewRejects(t *testing.T) {
	ok := Config{Interface: "eth0", VRID: 1, Priority: 100, VIP: testVIP, SourceAddr: lb2Addr}
	tests := []struct {
		name string
		edit func(*Config)
	}{
		{"vrid 0", func(c *Config) { c.VRID = 0 }},
		{"priority 0", func(c *Config) { c.Priority = 0 }},
		{"priority 255", func(c *Config) { c.Priority = 255 }},
		{"interval not whole centiseconds", func(c *Config) { c.AdvertInterval = 55 * time.Millisecond }},
		{"interval too long", func(c *Config) { c.AdvertInterval = time.Minute }},
		{"no vip", func(c *Config) { c.VIP = netip.Prefix{} }},
		{"ipv6 vip", func(c *Config) { c.VIP = netip.MustParsePrefix("fd00::1/128") }},
		{"ipv6 peer", func(c *Config) { c.UnicastPeers = []netip.Addr{netip.MustParseAddr("fd00::2")} }},
		{"no source", func(c *Config) { c.SourceAddr = netip.Addr{} }},
		{"negative garp count", func(c *Config) { c.GARPCount = -1 }},
		{"sched priority 100", func(c *Config) { c.SchedPriority = 100 }},
	}
	f := newFakeLink()
	if _, err := New(ok, f, f, f); err != nil {
		t.Fatalf("New(%+v): %v", ok, err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.edit(&cfg)
			if _, err := New(cfg, f, f, f); !errors.Is(err, ErrConfig) {
				t.Errorf("New error = %v, want ErrConfig", err)
			}
		})
	}
}
