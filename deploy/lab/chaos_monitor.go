package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// poolSample is one daemon's view at one moment, as its control API's
// status says: whether it holds the VIP, the controller's writer and
// newest timeline, and the pools it routes to.
type poolSample struct {
	At       time.Time
	LB       string
	HoldsVIP bool
	Writer   string
	Timeline uint32
	RW, RO   []netip.Addr
}

// monitorInterval is how often the monitor asks each daemon.
const monitorInterval = 200 * time.Millisecond

// monitor samples every daemon of a lab every monitorInterval until stop.
// It talks to the control API directly (GET /v1/status on the Unix
// socket), not through the CLI, to cost little while clients run.
type monitor struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	samples []poolSample
}

// startMonitor starts sampling the daemons on the LB hosts lbs.
func startMonitor(ctx context.Context, prefix string, lbs []string) *monitor {
	ctx, cancel := context.WithCancel(ctx)
	m := &monitor{cancel: cancel, done: make(chan struct{})}
	clients := map[string]*http.Client{}
	for _, lb := range lbs {
		clients[lb] = unixHTTP(Socket(prefix, lb))
	}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(monitorInterval)
		defer tick.Stop()
		for {
			for _, lb := range lbs {
				if s, err := sampleDaemon(ctx, clients[lb], lb); err == nil {
					m.mu.Lock()
					m.samples = append(m.samples, s)
					m.mu.Unlock()
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return m
}

// stop stops sampling and returns every sample, in time order per daemon.
func (m *monitor) stop() []poolSample {
	m.cancel()
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.samples
}

// unixHTTP returns an HTTP client that reaches the daemon on socket.
func unixHTTP(socket string) *http.Client {
	return &http.Client{Timeout: time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}}}
}

// sampleDaemon asks the daemon behind c for its status.
func sampleDaemon(ctx context.Context, c *http.Client, lb string) (poolSample, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://xlb/v1/status", nil)
	if err != nil {
		return poolSample{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return poolSample{}, fmt.Errorf("asking xlb on %s: %w", lb, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return poolSample{}, fmt.Errorf("reading xlb on %s: %w", lb, err)
	}
	var v struct {
		Writer  []string      `json:"writer"`
		Readers []string      `json:"readers"`
		Control ControlStatus `json:"control"`
		VRRP    *VRRPStatus   `json:"vrrp"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return poolSample{}, fmt.Errorf("decoding the status of xlb on %s: %w", lb, err)
	}
	s := poolSample{At: time.Now(), LB: lb, HoldsVIP: v.VRRP == nil || v.VRRP.HoldsVIP,
		Writer: v.Control.Writer, Timeline: v.Control.Timeline, RW: addrsOf(v.Writer), RO: addrsOf(v.Readers)}
	return s, nil
}

// addrsOf parses "addr:port" strings, skipping what does not parse.
func addrsOf(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, ap.Addr())
		}
	}
	return out
}
