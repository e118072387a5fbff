package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"golang.org/x/net/netutil"

	"github.com/xlb-dev/xlb/control"
	"github.com/xlb-dev/xlb/control/web"
	"github.com/xlb-dev/xlb/health"
	"github.com/xlb-dev/xlb/loader"
	"github.com/xlb-dev/xlb/vip"
)

// BackendView is one row of `xlb backends`.
type BackendView struct {
	Member    string `json:"member"`
	Host      string `json:"host"`
	Role      string `json:"role"`
	State     string `json:"state"`
	Timeline  uint32 `json:"timeline"`
	ReplayLSN string `json:"replay_lsn"`
	WALLSN    string `json:"wal_lsn,omitempty"`
	LagMS     int64  `json:"lag_ms"`
	// LagBytes is how far the member's replay is behind the writer's WAL
	// position; 0 on the writer and when unknown.
	LagBytes uint64 `json:"lag_bytes"`
	// Synchronous: a synchronous standby as xlb last set them.
	Synchronous bool `json:"synchronous"`
	// LBHost is the address of the LB host whose daemon answered.
	LBHost    string           `json:"lb_host"`
	Pools     []string         `json:"pools"`
	Flows     int              `json:"active_flows"`
	Packets   uint64           `json:"packets"`
	Bytes     uint64           `json:"bytes"`
	LastCheck time.Time        `json:"last_check"`
	LastError string           `json:"last_error,omitempty"`
	Drained   bool             `json:"drained"`
	Counters  *loader.Counters `json:"counters,omitempty"`
}

// StatusView is `xlb status`.
type StatusView struct {
	Version     string                     `json:"version"`
	Uptime      string                     `json:"uptime"`
	Interface   string                     `json:"interface"`
	Mode        string                     `json:"xdp_mode"`
	VIP         string                     `json:"vip"`
	NodeAddress string                     `json:"node_address"`
	PortRW      uint16                     `json:"port_rw"`
	PortRO      uint16                     `json:"port_ro"`
	SNATPorts   string                     `json:"snat_ports"`
	PinPath     string                     `json:"pin_path"`
	Writer      []string                   `json:"writer"`
	Readers     []string                   `json:"readers"`
	Flows       int                        `json:"active_flows"`
	Total       loader.Counters            `json:"total"`
	Services    map[string]loader.Counters `json:"services"`
	Control     control.Status             `json:"control"`
	VRRP        *vip.Status                `json:"vrrp,omitempty"`
	LeaseError  string                     `json:"lease_error,omitempty"`
}

func (d *daemon) backends() ([]BackendView, error) {
	st, err := d.dp.Stats()
	if err != nil {
		return nil, err
	}
	flows, err := d.dp.FlowCounts()
	if err != nil {
		return nil, err
	}
	var out []BackendView
	members := d.ctl.Members()
	cs := d.ctl.Status()
	lag := lagBytes(members, cs.Writer)
	for _, m := range members {
		v := BackendView{
			Member:    m.Name,
			Host:      m.Addr.String(),
			Role:      string(m.Role),
			State:     string(m.Health),
			Timeline:  m.Timeline,
			LagMS:     m.ReplayLag.Milliseconds(),
			Flows:     flows.Backends[m.Addr].Active,
			LastCheck: m.LastCheck,
			LastError: m.LastError,
			Drained:   m.Drained,
			Pools:     []string{},
			LagBytes:  lag[m.Name],
			LBHost:    d.cfg.NodeAddress,
		}
		v.Synchronous = slices.Contains(cs.SyncStandbys, m.Name)
		if m.Drained {
			v.State = "drained"
		}
		if m.Conflict {
			v.State = "conflict"
		}
		if m.Fenced {
			v.State = "fenced"
		}
		if m.ReplayLSN != 0 {
			v.ReplayLSN = health.LSN(m.ReplayLSN).String()
		}
		if m.WALLSN != 0 {
			v.WALLSN = health.LSN(m.WALLSN).String()
		}
		for _, p := range m.Pools {
			v.Pools = append(v.Pools, poolName(d.cfg, p))
		}
		if c, ok := st.Backends[m.Addr]; ok {
			v.Packets, v.Bytes = c.Packets, c.Bytes
		}
		out = append(out, v)
	}
	return out, nil
}

func poolName(cfg *Config, s control.Service) string {
	if s == control.RW {
		return fmt.Sprint(cfg.Ports.RW)
	}
	return fmt.Sprint(cfg.Ports.RO)
}

func (d *daemon) status() (StatusView, error) {
	st, err := d.dp.Stats()
	if err != nil {
		return StatusView{}, err
	}
	flows, err := d.dp.FlowCounts()
	if err != nil {
		return StatusView{}, err
	}
	v := StatusView{
		Version:     version,
		Uptime:      time.Since(d.started).Round(time.Second).String(),
		Interface:   d.cfg.Interface,
		Mode:        string(d.mode),
		VIP:         d.cfg.VIP,
		NodeAddress: d.cfg.NodeAddress,
		PortRW:      d.cfg.Ports.RW,
		PortRO:      d.cfg.Ports.RO,
		SNATPorts:   d.cfg.SNATPorts,
		PinPath:     d.cfg.PinPath,
		Writer:      addrStrings(d.ctl.Pool(control.RW)),
		Readers:     addrStrings(d.ctl.Pool(control.RO)),
		Flows:       flows.All.Active,
		Total:       st.Total,
		Services:    map[string]loader.Counters{},
		Control:     d.ctl.Status(),
	}
	if d.election != nil {
		st := d.election.Status()
		v.VRRP = &st
	}
	if d.leaseErr != nil {
		if e := d.leaseErr.Load(); e != nil {
			v.LeaseError = *e
		}
	}
	for s, c := range st.Services {
		v.Services[s.String()] = c
	}
	return v, nil
}

func addrStrings(a []netip.AddrPort) []string {
	out := []string{}
	for _, x := range a {
		out = append(out, x.String())
	}
	return out
}

// serveAPI serves the control API on a Unix socket that only root can use
// (mode 0600). It refuses to start when another daemon answers there. It
// keeps at most apiMaxConns connections open and handles apiMaxInFlight
// requests at a time (one more waits up to apiQueueWait, then gets 503).
func serveAPI(path string, d *daemon) (*http.Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s: another xlb answers there", path)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("securing %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/backends", func(w http.ResponseWriter, r *http.Request) {
		v, err := d.backends()
		reply(w, v, err)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		v, err := d.status()
		reply(w, v, err)
	})
	mux.HandleFunc("POST /v1/backends/{name}/{action}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		var err error
		switch r.PathValue("action") {
		case "drain":
			err = d.ctl.Drain(name)
		case "enable":
			err = d.ctl.Enable(name)
		default:
			http.Error(w, "unknown action", http.StatusNotFound)
			return
		}
		if errors.Is(err, control.ErrUnknownNode) {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		reply(w, map[string]string{"member": name, "action": r.PathValue("action")}, err)
	})
	mux.HandleFunc("POST /v1/switchover", func(w http.ResponseWriter, r *http.Request) {
		// The request's context ends the switchover only before
		// pg_promote is sent; after that it completes (control.Switchover).
		ctx, cancel := context.WithTimeout(r.Context(), switchoverWait)
		defer cancel()
		ev, err := d.ctl.Switchover(ctx, r.URL.Query().Get("to"))
		switch {
		case errors.Is(err, control.ErrUnknownNode), errors.Is(err, control.ErrNotReplica), errors.Is(err, control.ErrBusy),
			errors.Is(err, control.ErrNotOwner):
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		reply(w, ev, err)
	})
	srv := &http.Server{
		Handler:           web.LimitInFlight(mux, apiMaxInFlight, apiQueueWait),
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, IdleTimeout: time.Minute,
		// A switchover replies after its wait and its promotion.
		WriteTimeout: switchoverWait + actionTimeout + 10*time.Second,
	}
	go func() {
		if err := srv.Serve(netutil.LimitListener(ln, apiMaxConns)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("control api", "err", err)
		}
	}()
	return srv, nil
}

// switchoverWait bounds a switchover's wait for the target to replay the
// old primary's WAL; the promotion after it has its own bound
// (actionTimeout). The CLI waits for both.
const (
	switchoverWait = 30 * time.Second
	actionTimeout  = 10 * time.Second
)

// Limits of the control API (see serveAPI).
const (
	apiMaxConns    = 32
	apiMaxInFlight = 4
	apiQueueWait   = 5 * time.Second
)

func reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}
