package web

import (
	"net/http"
	"strconv"
	"time"
)

// Limits of the HTTP face, whatever the load: the open connections, the
// requests handled at a time, how long one waits for its turn, and the
// server's timeouts.
const (
	DefaultMaxConns    = 256
	DefaultMaxInFlight = 8
	DefaultQueueWait   = 5 * time.Second

	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10
)

// LimitInFlight returns h handling at most n requests at a time. A request
// over the limit waits for a turn up to wait, or until it is cancelled,
// then gets 503 Service Unavailable with Retry-After.
func LimitInFlight(h http.Handler, n int, wait time.Duration) http.Handler {
	slots := make(chan struct{}, max(n, 1))
	retry := strconv.Itoa(max(int(wait/time.Second), 1))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case slots <- struct{}{}:
		default:
			t := time.NewTimer(wait)
			select {
			case slots <- struct{}{}:
				t.Stop()
			case <-t.C:
				w.Header().Set("Retry-After", retry)
				http.Error(w, "too many requests in flight", http.StatusServiceUnavailable)
				return
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		defer func() { <-slots }()
		h.ServeHTTP(w, r)
	})
}
