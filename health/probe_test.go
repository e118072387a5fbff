package health

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

const testPassword = "probe-secret-123"

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()
	return addr
}

// silentServer accepts connections on loopback and never answers, like a
// hung server; cleanup closes it and its connections.
func silentServer(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().(*net.TCPAddr).AddrPort()
}

func testTarget(name string, addr netip.AddrPort) Target {
	return Target{Name: name, Addr: addr, User: "ramos", Database: "ramos-test-db", Password: testPassword}
}

func TestProbeUnreachable(t *testing.T) {
	const timeout = 200 * time.Millisecond
	tests := []struct {
		name    string
		addr    func(t *testing.T) netip.AddrPort
		timeout bool // the error is the probe's timeout
	}{
		{"refused", closedAddr, false},
		{"silent", silentServer, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := tt.addr(t)
			p := NewProber(testTarget("pg1", addr), timeout)
			t.Cleanup(func() { p.Close() })
			for i := range 2 { // a failed probe leaves nothing half-open behind
				start := time.Now()
				obs := p.Probe(t.Context())
				took := time.Since(start)
				if obs.Err == nil {
					t.Fatalf("probe %d of %v: no error", i, addr)
				}
				t.Logf("probe %d took %v: %v", i, took, obs.Err)
				if took > timeout+100*time.Millisecond {
					t.Errorf("probe %d took %v, want at most the timeout %v (+100 ms)", i, took, timeout)
				}
				if got := errors.Is(obs.Err, context.DeadlineExceeded); got != tt.timeout {
					t.Errorf("probe %d: errors.Is(err, DeadlineExceeded) = %v, want %v", i, got, tt.timeout)
				}
				if obs.Node != "pg1" || obs.Addr != addr || obs.Time.Before(start) || obs.Latency != 0 || obs.InRecovery {
					t.Errorf("probe %d: observation %+v, want node pg1 at %v, finished after %v, no latency", i, obs, addr, start)
				}
				for _, s := range []string{"pg1", addr.String()} {
					if !strings.Contains(obs.Err.Error(), s) {
						t.Errorf("error %q does not name %q", obs.Err, s)
					}
				}
				if strings.Contains(obs.Err.Error(), testPassword) {
					t.Errorf("error %q carries the password", obs.Err)
				}
			}
		})
	}
}

func TestProbeClosed(t *testing.T) {
	p := NewProber(testTarget("pg1", closedAddr(t)), time.Second)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if obs := p.Probe(t.Context()); !errors.Is(obs.Err, ErrClosed) {
		t.Errorf("Probe after Close: %v, want ErrClosed", obs.Err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestWatchIndependent checks that a hung node does not slow the probes
// of another, and that Watch returns when its context ends.
func TestWatchIndependent(t *testing.T) {
	const (
		interval = 50 * time.Millisecond
		timeout  = time.Second
		window   = timeout / 2 // well inside the hung node's first probe
	)
	ctx, cancel := context.WithCancel(t.Context())
	out := make(chan Observation)
	done := make(chan struct{})
	go func() {
		Watch(ctx, []Target{testTarget("hung", silentServer(t)), testTarget("down", closedAddr(t))}, interval, timeout, out)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Watch did not return within 5 s of its context's end")
		}
	})

	// Within one probe of the hung node, the other is probed every
	// interval.
	count := map[string]int{}
	deadline := time.After(window)
loop:
	for {
		select {
		case o := <-out:
			if o.Err == nil {
				t.Errorf("observation of %s without error", o.Node)
			}
			count[o.Node]++
		case <-deadline:
			break loop
		}
	}
	t.Logf("observations in %v: %v", window, count)
	if count["hung"] != 0 || count["down"] < 3 {
		t.Errorf("observations %v, want none of hung and at least 3 of down", count)
	}

	// A receiver that stops reading holds Watch up only until ctx ends.
	cancel()
	select {
	case <-done:
	case <-time.After(timeout + time.Second):
		t.Fatal("Watch did not return after its context ended")
	}
}

// TestWakerProbesAtOnce: with long intervals, Wake brings the next probe
// forward.
func TestWakerProbesAtOnce(t *testing.T) {
	w := NewWaker()
	out := make(chan Observation, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		WatchWith(ctx, []Target{testTarget("down", closedAddr(t))},
			WatchOptions{Interval: time.Hour, FastInterval: time.Hour, Timeout: time.Second, NoSentinel: true, Waker: w}, out)
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-out:
	case <-time.After(5 * time.Second):
		t.Fatal("no first observation")
	}
	start := time.Now()
	w.Wake("down", "unknown")
	select {
	case o := <-out:
		if o.Node != "down" {
			t.Fatalf("observation of %q", o.Node)
		}
		t.Logf("woken probe after %v", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("Wake did not bring a probe forward (interval 1h)")
	}
}
