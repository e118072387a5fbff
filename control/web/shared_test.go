package web

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingSource counts its builds; each waits for gate when gate is set.
type countingSource struct {
	builds atomic.Int32
	gate   chan struct{}
}

func (c *countingSource) Snapshot() (Snapshot, error) {
	n := c.builds.Add(1)
	if c.gate != nil {
		<-c.gate
	}
	return Snapshot{Host: string(rune('a' + n - 1))}, nil
}

// TestShareConcurrent starts many readers while one build is held and
// checks that all of them get that one build.
func TestShareConcurrent(t *testing.T) {
	src := &countingSource{gate: make(chan struct{})}
	s := Share(src, -1)
	const readers = 50
	var wg sync.WaitGroup
	got := make([]string, readers)
	for i := range readers {
		wg.Go(func() {
			snap, err := s.Snapshot()
			if err != nil {
				t.Error(err)
			}
			got[i] = snap.Host
		})
	}
	// Wait (bounded) until one build is under way and every other reader
	// waits for it, then let it finish.
	sh := s.(*shared)
	queued := func() int {
		sh.mu.Lock()
		defer sh.mu.Unlock()
		if sh.building == nil {
			return 0
		}
		return sh.waiting
	}
	for deadline := time.Now().Add(10 * time.Second); queued() != readers-1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: %d builds, %d readers waiting, want 1 and %d", src.builds.Load(), queued(), readers-1)
		}
	}
	close(src.gate)
	wg.Wait()
	if n := src.builds.Load(); n != 1 {
		t.Errorf("%d builds for %d concurrent readers, want 1", n, readers)
	}
	for i, h := range got {
		if h == "" {
			t.Errorf("reader %d got an empty snapshot", i)
		}
	}
}

// TestShareMaxAge checks reuse within maxAge and a new build after it,
// with an injected clock; errors are shared like snapshots.
func TestShareMaxAge(t *testing.T) {
	now := time.Unix(1000, 0)
	var builds int
	fail := errors.New("datapath gone")
	s := &shared{maxAge: time.Second, now: func() time.Time { return now },
		src: SourceFunc(func() (Snapshot, error) {
			builds++
			if builds == 3 {
				return Snapshot{Host: "partial"}, fail
			}
			return Snapshot{Host: "ok"}, nil
		})}
	steps := []struct {
		name    string
		advance time.Duration
		builds  int
		host    string
		err     error
	}{
		{"first", 0, 1, "ok", nil},
		{"reused", 999 * time.Millisecond, 1, "ok", nil},
		{"expired", time.Millisecond, 2, "ok", nil},
		{"failed", time.Second, 3, "partial", fail},
		{"failure reused", 500 * time.Millisecond, 3, "partial", fail},
		{"rebuilt", 500 * time.Millisecond, 4, "ok", nil},
	}
	for _, st := range steps {
		now = now.Add(st.advance)
		snap, err := s.Snapshot()
		if builds != st.builds || snap.Host != st.host || !errors.Is(err, st.err) {
			t.Errorf("%s: builds %d, host %q, err %v; want %d, %q, %v", st.name, builds, snap.Host, err, st.builds, st.host, st.err)
		}
	}
}
