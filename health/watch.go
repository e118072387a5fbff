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
	var wg sync.WaitGroup
	for _, t := range targets {
		wg.Go(func() { watch(ctx, NewProber(t, timeout), interval, out) })
	}
	wg.Wait()
}

// watch is Watch for one prober.
func watch(ctx context.Context, p *Prober, interval time.Duration, out chan<- Observation) {
	defer p.Close()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
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
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}
