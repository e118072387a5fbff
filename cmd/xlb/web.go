package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	toolkit "github.com/prometheus/exporter-toolkit/web"

	"github.com/xlb-dev/xlb/control"
	"github.com/xlb-dev/xlb/control/web"
	"github.com/xlb-dev/xlb/loader"
)

// defaultHTTPListen is http.listen when the configuration leaves it out.
const defaultHTTPListen = ":8080"

// HTTPConfig is the read-only HTTP server (/stats, /metrics, /healthz,
// /readyz).
type HTTPConfig struct {
	// Listen is host:port; "" turns the server off. Default ":8080".
	Listen *string `yaml:"listen"`
	// Refresh is how often /stats reloads itself; default 2s.
	Refresh Duration `yaml:"refresh"`
	// WebConfigFile is the absolute path of a web configuration file of
	// Prometheus' exporter-toolkit (TLS, client certificates, basic auth
	// users), as every exporter's --web.config.file; "" serves plain HTTP.
	WebConfigFile string `yaml:"web_config_file"`
}

func (h *HTTPConfig) setDefaults() {
	if h.Listen == nil {
		l := defaultHTTPListen
		h.Listen = &l
	}
	if h.Refresh == 0 {
		h.Refresh = Duration(2 * time.Second)
	}
}

func (h *HTTPConfig) validate() error {
	if *h.Listen == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(*h.Listen)
	if err != nil {
		return fieldErr("http.listen", "%q: want host:port, :port or empty (off)", *h.Listen)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fieldErr("http.listen", "%q: port %q is not 1 to 65535", *h.Listen, port)
	}
	if host != "" && net.ParseIP(host) == nil {
		return fieldErr("http.listen", "%q: host must be an IP address", *h.Listen)
	}
	if h.Refresh < Duration(time.Second) {
		return fieldErr("http.refresh", "%v: want at least 1s", time.Duration(h.Refresh))
	}
	if f := h.WebConfigFile; f != "" {
		if !filepath.IsAbs(f) {
			return fieldErr("http.web_config_file", "%q: want an absolute path", f)
		}
		if err := toolkit.Validate(f); err != nil {
			return &ConfigError{Field: "http.web_config_file", Err: fmt.Errorf("%s: %w", f, err)}
		}
	}
	return nil
}

// startHTTP serves d's HTTP face on cfg.HTTP.Listen until ctx ends; it does
// nothing when that is empty.
func (d *daemon) startHTTP(ctx context.Context) error {
	listen := *d.cfg.HTTP.Listen
	if listen == "" {
		slog.Info("http server off (http.listen is empty)")
		return nil
	}
	srv, err := web.New(web.SourceFunc(d.snapshot), d.rec, web.Options{Refresh: time.Duration(d.cfg.HTTP.Refresh)})
	if err != nil {
		return err
	}
	addr, err := web.Listen(ctx, listen, srv.Handler(), web.ListenOptions{WebConfigFile: d.cfg.HTTP.WebConfigFile})
	if err != nil {
		return &ConfigError{Field: "http.listen", Err: err}
	}
	slog.Info("http server", "addr", addr.String(), "paths", "/stats /metrics /healthz /readyz",
		"web_config_file", d.cfg.HTTP.WebConfigFile)
	return nil
}

// memberState is the state xlb backends and /stats show for m.
func memberState(m control.Member) string {
	switch {
	case m.Fenced:
		return "fenced"
	case m.Conflict:
		return "conflict"
	case m.Drained:
		return "drained"
	}
	return string(m.Health)
}

// snapshot reads the datapath, the controller and the election now. On a
// datapath read error it returns what it has and the error.
func (d *daemon) snapshot() (web.Snapshot, error) {
	now := time.Now()
	s := web.Snapshot{
		Time: now, Host: d.cfg.NodeAddress, Version: version, Started: d.started, VIP: d.cfg.VIP,
	}
	var errs []error
	st, err := d.dp.Stats()
	errs = append(errs, err)
	use, err := d.dp.Usage()
	errs = append(errs, err)
	s.Datapath = web.Datapath{
		Attached: loader.Attached(d.cfg.Interface), Interface: d.cfg.Interface, Mode: string(d.mode),
		Lease: d.cfg.VRRP.Enabled, Entries: use.Entries, Capacity: use.Capacity,
		Flows: use.Flows, Active: use.Active, SNATInUse: use.SNATInUse, SNATPorts: use.SNATPorts,
	}
	if d.cfg.VRRP.Enabled {
		s.Datapath.LeaseRemaining, err = d.dp.LeaseRemaining()
		errs = append(errs, err)
	}
	s.Global = webCounters(st.Global)
	for _, svc := range loader.Services {
		csvc := control.RW
		if svc == loader.RO {
			csvc = control.RO
		}
		s.Services = append(s.Services, web.Service{
			Name: svc.String(), Port: d.port(csvc), Backends: addrStrings(d.ctl.Pool(csvc)),
			Active: use.ActiveByService[svc], Counters: webCounters(st.Services[svc]),
		})
	}
	cs := d.ctl.Status()
	d.rec.Events(cs.Events)
	s.Writer, s.NoWriterReason, s.Timeline, s.Synchronous, s.Events = cs.Writer, cs.NoWriterReason, cs.Timeline, cs.Synchronous, cs.Events
	members := d.ctl.Members()
	lag := lagBytes(members, cs.Writer)
	for _, m := range members {
		wm := web.Member{
			Name: m.Name, Addr: m.Addr.String(), Role: string(m.Role), Health: string(m.Health),
			State: memberState(m), Fenced: m.Fenced, Drained: m.Drained, Timeline: m.Timeline,
			ReplayLag: m.ReplayLag, Synchronous: slices.Contains(cs.SyncStandbys, m.Name),
			Active: use.ActiveByBackend[m.Addr], Counters: webCounters(st.Backends[m.Addr]),
			Latency: m.Latency, LastCheck: m.LastCheck, LastChange: d.rec.LastChange(m.Name), LastError: m.LastError,
		}
		wm.LagBytes = lag[m.Name]
		for _, p := range m.Pools {
			wm.Pools = append(wm.Pools, p.String())
		}
		s.Members = append(s.Members, wm)
	}
	if d.election != nil {
		v := d.election.Status()
		s.VRRP = &web.VRRP{VRID: int(v.VRID), State: v.State.String(), Priority: int(v.Priority),
			Since: v.Since, HoldsVIP: v.HoldsVIP}
		if v.Master.IsValid() {
			s.VRRP.Master = v.Master.String()
		}
	}
	if err := errors.Join(errs...); err != nil {
		return s, fmt.Errorf("reading the datapath: %w", err)
	}
	return s, nil
}

func (d *daemon) port(s control.Service) uint16 {
	if s == control.RW {
		return d.cfg.Ports.RW
	}
	return d.cfg.Ports.RO
}

func webCounters(c loader.Counters) web.Counters {
	return web.Counters{Packets: c.Packets, Bytes: c.Bytes, BytesOut: c.BytesOut, NewFlows: c.NewFlows, RSTs: c.RSTs, Drops: c.Drops}
}

// recordObservation feeds the recorder one probe and the member's state
// after the controller took it.
func (d *daemon) recordObservation(name string, latency time.Duration, ok bool) {
	d.rec.Probe(name, latency, ok)
	d.rec.Events(d.ctl.Status().Events)
	for _, m := range d.ctl.Members() {
		if m.Name == name {
			d.rec.State(name, memberState(m), time.Now())
		}
	}
}

func nodeNames(cfg *Config) []string {
	var out []string
	for _, n := range cfg.Nodes {
		out = append(out, n.Name)
	}
	return out
}

// lagBytes returns, by member name, how many bytes of WAL each replica's
// replay is behind the writer's last known position (absent when unknown).
func lagBytes(members []control.Member, writer string) map[string]uint64 {
	var pos uint64
	for _, m := range members {
		if m.Name == writer {
			pos = m.WALLSN
		}
	}
	out := map[string]uint64{}
	for _, m := range members {
		if m.Role == control.RoleReplica && m.ReplayLSN != 0 && pos > m.ReplayLSN {
			out[m.Name] = pos - m.ReplayLSN
		}
	}
	return out
}
