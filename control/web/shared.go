package web

import (
	"sync"
	"time"
)

// DefaultSnapshotMaxAge is Options.SnapshotMaxAge when left zero: the
// probe interval's default, so a shared snapshot is no older than what it
// shows of the members.
const DefaultSnapshotMaxAge = 500 * time.Millisecond

// shared is a Source that builds one snapshot for every reader: a reader
// that comes while one is built waits for it, and one built less than
// maxAge ago is handed out again. However many requests come, src builds
// at most one snapshot at a time and, with maxAge > 0, at most one per
// maxAge.
type shared struct {
	src    Source
	maxAge time.Duration
	now    func() time.Time

	mu       sync.Mutex
	building *build // nil: none under way
	waiting  int    // readers waiting for building
	last     *build // the last one finished; nil before
}

// build is one call of the underlying Source; done is closed when snap and
// err are set.
type build struct {
	done chan struct{}
	at   time.Time // when it started
	snap Snapshot
	err  error
}

// Share returns a Source that shares src's snapshots among concurrent
// readers and reuses one for maxAge (0: DefaultSnapshotMaxAge; negative:
// only readers that wait for the same build share it). Readers must not
// change what a Snapshot holds.
func Share(src Source, maxAge time.Duration) Source {
	if maxAge == 0 {
		maxAge = DefaultSnapshotMaxAge
	}
	return &shared{src: src, maxAge: maxAge, now: time.Now}
}

// Snapshot returns the snapshot under way or a fresh enough one, or builds
// one.
func (s *shared) Snapshot() (Snapshot, error) {
	s.mu.Lock()
	if b := s.building; b != nil {
		s.waiting++
		s.mu.Unlock()
		<-b.done
		s.mu.Lock()
		s.waiting--
		s.mu.Unlock()
		return b.snap, b.err
	}
	if b := s.last; b != nil && s.now().Sub(b.at) < s.maxAge {
		s.mu.Unlock()
		return b.snap, b.err
	}
	b := &build{done: make(chan struct{}), at: s.now()}
	s.building = b
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.building, s.last = nil, b
		s.mu.Unlock()
		close(b.done)
	}()
	b.snap, b.err = s.src.Snapshot()
	return b.snap, b.err
}
