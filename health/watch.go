package health

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Watch probes every target every interval, each probe bounded by
// timeout, and sends each Observation to out, until ctx ends; then it
// closes its connections and returns. It does not close out.
//
// Every target has its own goroutine and connection, so a slow or dead one
// never delays another; a receiver that does not keep up delays only the
// target whose observation waits. A probe that failed because its
// persistent connection broke (a restarted server, a terminated backend, a
// dropped link that said so) is repeated at once on a new connection, and
// only that result is sent: a broken connection costs no interval, and an
// Err means the node itself failed. A probe that timed out is not repeated,
// so a hung node reports within one timeout.
func Watch(ctx context.Context, targets []Target, interval, timeout time.Duration, out chan<- Observation) {
	WatchWith(ctx, targets, WatchOptions{Interval: interval, Timeout: timeout}, out)
}

// WatchOptions tunes WatchWith.
type WatchOptions struct {
	Interval time.Duration // between probes of a healthy node
	Timeout  time.Duration // one probe's bound
	// FastInterval is the pace after a failed probe, until one succeeds, so
	// a down node is confirmed in a few fast probes rather than intervals;
	// default Interval/25, at least 10 ms.
	FastInterval time.Duration
	// NoSentinel turns off the sentinel connection (see WatchWith).
	NoSentinel bool
	// Waker, when set, lets the caller ask for immediate probes by name.
	Waker *Waker
}

// Waker asks a running WatchWith for immediate probes of named targets.
type Waker struct {
	mu    sync.Mutex
	chans map[string]chan struct{}
}

// NewWaker returns a Waker to pass in WatchOptions.
func NewWaker() *Waker { return &Waker{chans: map[string]chan struct{}{}} }

// Wake probes the named targets now (or right after a probe under way).
// Unknown names are ignored; it never blocks.
func (w *Waker) Wake(names ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, n := range names {
		if ch, ok := w.chans[n]; ok {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
}

func (w *Waker) register(name string, ch chan struct{}) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.chans[name] = ch
}

// WatchWith is Watch with options. Besides the probe connection, each
// target gets a sentinel connection that sits idle waiting for the server
// to speak; when the server dies its sockets close, the sentinel's read
// fails and the target is probed at once, so a killed postmaster is seen
// in milliseconds instead of up to an interval.
func WatchWith(ctx context.Context, targets []Target, o WatchOptions, out chan<- Observation) {
	if o.FastInterval <= 0 {
		o.FastInterval = max(o.Interval/25, 10*time.Millisecond)
	}
	var wg sync.WaitGroup
	for _, t := range targets {
		wake := make(chan struct{}, 1)
		o.Waker.register(t.Name, wake)
		if !o.NoSentinel {
			wg.Go(func() { sentinel(ctx, t, o, wake) })
		}
		wg.Go(func() { watch(ctx, NewProber(t, o.Timeout), o, wake, out) })
	}
	wg.Wait()
}

// watch is WatchWith for one prober.
func watch(ctx context.Context, p *Prober, o WatchOptions, wake <-chan struct{}, out chan<- Observation) {
	defer p.Close()
	timer := time.NewTimer(o.Interval)
	defer timer.Stop()
	for {
		start := time.Now()
		obs, retry := p.probe(ctx)
		if retry && ctx.Err() == nil {
			slog.Debug("reprobing on a new connection", "node", obs.Node, "err", obs.Err)
			obs, _ = p.probe(ctx)
		}
		if ctx.Err() != nil {
			return
		}
		select {
		case out <- obs:
		case <-ctx.Done():
			return
		}
		next := o.Interval
		if obs.Err != nil {
			next = o.FastInterval
		}
		timer.Reset(max(next-time.Since(start), 0))
		select {
		case <-timer.C:
		case <-wake:
			slog.Debug("sentinel woke the prober", "node", obs.Node)
		case <-ctx.Done():
			return
		}
	}
}

// sentinel keeps an idle connection to t and wakes the prober when it
// breaks. While t is unreachable it retries every interval.
func sentinel(ctx context.Context, t Target, o WatchOptions, wake chan<- struct{}) {
	p := NewProber(t, o.Timeout)
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, o.Timeout)
		conn, err := p.connect(cctx)
		cancel()
		if err == nil {
			// Blocks until the server sends something or the socket
			// closes; nothing is ever LISTENed to, so only closing ends it.
			err = conn.PgConn().WaitForNotification(ctx)
			conn.Close(context.Background())
			if ctx.Err() != nil {
				return
			}
			select {
			case wake <- struct{}{}:
			default:
			}
		}
		select {
		case <-time.After(o.Interval):
		case <-ctx.Done():
			return
		}
	}
}
