package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Running is a lab that Up started, in this process or another (`xlb-lab
// up`), found by its prefix through the state file: the namespaces of its
// hosts, the directories of its clusters and the control socket of its
// first daemon. Drill and the failover tests act on the lab through it.
type Running struct {
	Prefix string
	// Binary is the xlb binary of the lab: its CLI reads the daemon and
	// rejoins nodes.
	Binary string
	// LB is the LB host whose daemon Running asks (the first one), and
	// Socket that daemon's control socket.
	LB     string
	Socket string
	// Secrets are the lab's passwords (ReadSecrets).
	Secrets Secrets
}

// Open returns the running lab with prefix. It returns an error when the
// lab has no state file (not up), runs no daemon, or lacks a namespace.
func Open(prefix string) (*Running, error) {
	if err := validatePrefix(prefix); err != nil {
		return nil, err
	}
	st, err := readState(prefix)
	if err != nil {
		return nil, fmt.Errorf("opening lab %s (is it up? xlb-lab up): %w", prefix, err)
	}
	if len(st.Daemons) == 0 {
		return nil, fmt.Errorf("opening lab %s: it runs no xlb daemon", prefix)
	}
	for _, ns := range st.Namespaces {
		if !NamespaceExists(ns) {
			return nil, fmt.Errorf("opening lab %s: namespace %s is gone (xlb-lab down, then up)", prefix, ns)
		}
	}
	secrets, err := ReadSecrets(prefix)
	if err != nil {
		return nil, fmt.Errorf("opening lab %s: %w", prefix, err)
	}
	lb := st.Daemons[0]
	return &Running{Prefix: prefix, Binary: st.Binary, LB: lb, Socket: Socket(prefix, lb), Secrets: secrets}, nil
}

// NS returns the namespace of the lab host called host.
func (r *Running) NS(host string) *Namespace { return &Namespace{Name: r.Prefix + host} }

// HostAddr returns the lab address of the host called name, or the invalid
// Addr when there is no such host.
func HostAddr(name string) netip.Addr {
	h, ok := lookupHost(name)
	if !ok {
		return netip.Addr{}
	}
	return h.Addr.Addr()
}

// hostAt returns the name of the lab host with address a, or a itself.
func hostAt(a netip.Addr) string {
	for _, h := range Hosts {
		if h.Addr.Addr() == a {
			return h.Name
		}
	}
	return a.String()
}

// Postgres returns a handle on the cluster of PostgreSQL host host as Up
// built it (data in StateDir/<host>/data). The handle did not start the
// server: PID and the Stop methods find a running postmaster through
// postmaster.pid.
func (r *Running) Postgres(host string) (*Postgres, error) {
	if !slices.Contains(pgHosts, host) {
		return nil, fmt.Errorf("lab host %q: no PostgreSQL host (want one of %s)", host, strings.Join(pgHosts, ", "))
	}
	ns := r.NS(host)
	cfg := PostgresConfig{Dir: filepath.Join(StateDir(r.Prefix), host)}
	cfg.setDefaults(ns)
	p := &Postgres{NS: ns, Port: cfg.Port, cfg: cfg}
	if err := p.prepare(); err != nil {
		return nil, fmt.Errorf("opening the cluster of %s: %w", host, err)
	}
	if _, err := os.Stat(filepath.Join(p.DataDir, "PG_VERSION")); err != nil {
		return nil, fmt.Errorf("opening the cluster of %s: %w", host, err)
	}
	return p, nil
}

// recordPostmaster records pid as the postmaster of host in the state
// file, replacing the PID Up recorded, so Down stops the server another
// start left running.
func (r *Running) recordPostmaster(host string, pid int) error {
	st, err := readState(r.Prefix)
	if err != nil {
		return err
	}
	start, _, _ := procStat(pid)
	for i, p := range st.Processes {
		if p.Name == host && p.Host == host {
			st.Processes[i].PID, st.Processes[i].StartTime = pid, start
			return st.write()
		}
	}
	return st.addProcess(host, host, pid, "SIGINT")
}

// Backend is a row of `xlb backends --json`: what the daemon knows of one
// PostgreSQL member.
type Backend struct {
	Member    string   `json:"member"`
	Host      string   `json:"host"`
	Role      string   `json:"role"`  // primary, replica, unknown
	State     string   `json:"state"` // up, down, drained, conflict, fenced
	Timeline  uint32   `json:"timeline"`
	Pools     []string `json:"pools"` // "3000", "3001"
	LastError string   `json:"last_error"`
}

// InPool reports whether b takes new flows of the VIP port port.
func (b Backend) InPool(port int) bool { return slices.Contains(b.Pools, strconv.Itoa(port)) }

// ControlStatus is the controller's part of `xlb status --json`.
type ControlStatus struct {
	Writer         string         `json:"writer"`
	Timeline       uint32         `json:"timeline"`
	NoWriterReason string         `json:"no_writer_reason"`
	Synchronous    bool           `json:"synchronous"`
	SyncStandbys   []string       `json:"sync_standbys"`
	Promotable     []string       `json:"promotable"`
	Events         []ControlEvent `json:"events"`
}

// ControlEvent is a failover or switchover the daemon carried out.
type ControlEvent struct {
	Time      time.Time     `json:"time"`
	Kind      string        `json:"kind"`
	From      string        `json:"from"`
	To        string        `json:"to"`
	Took      time.Duration `json:"took"`
	LostBytes uint64        `json:"lost_bytes"`
	Error     string        `json:"error"`
}

// Backends runs `xlb backends --json` against the daemon.
func (r *Running) Backends(ctx context.Context) ([]Backend, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := output(ctx, r.Binary, "backends", "--json", "--socket", r.Socket)
	if err != nil {
		return nil, err
	}
	var bs []Backend
	if err := json.Unmarshal([]byte(out), &bs); err != nil {
		return nil, fmt.Errorf("decoding xlb backends --json: %w", err)
	}
	return bs, nil
}

// Control runs `xlb status --json` against the daemon and returns its
// control part.
func (r *Running) Control(ctx context.Context) (*ControlStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := output(ctx, r.Binary, "status", "--json", "--socket", r.Socket)
	if err != nil {
		return nil, err
	}
	var v struct {
		Control ControlStatus `json:"control"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("decoding xlb status --json: %w", err)
	}
	return &v.Control, nil
}

// WaitBackends polls the daemon every 50 ms until ok holds for its
// backends, and returns them. When ctx ends first it returns an error
// naming what (what ok waits for) with the last rows seen and the last
// lines of the daemon's log.
func (r *Running) WaitBackends(ctx context.Context, what string, ok func([]Backend) bool) ([]Backend, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last []Backend
	var lastErr error
	for {
		bs, err := r.Backends(ctx)
		if err == nil {
			last = bs
			if ok(bs) {
				return bs, nil
			}
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("waiting for %s: %w (last seen [%s], last error %v)\n%s", what, ctx.Err(),
				summarizeBackends(last), lastErr, r.daemonLogTail(15))
		case <-tick.C:
		}
	}
}

// daemonLogTail returns the last n lines of the daemon's log, headed.
func (r *Running) daemonLogTail(n int) string {
	name := filepath.Join(StateDir(r.Prefix), "xlb-"+r.LB+".log")
	return fmt.Sprintf("%s's log (%s), last lines:\n%s", r.LB, name, fileTail(name, n))
}

// Find returns the backend called member, and false when bs has none.
func Find(bs []Backend, member string) (Backend, bool) {
	for _, b := range bs {
		if b.Member == member {
			return b, true
		}
	}
	return Backend{}, false
}

// writerOf returns the member in the read/write pool, or "" when none or
// more than one is.
func writerOf(bs []Backend) string {
	w := ""
	for _, b := range bs {
		if b.InPool(PortRW) {
			if w != "" {
				return ""
			}
			w = b.Member
		}
	}
	return w
}

// summarizeBackends renders rows as "pg1 primary/up [3000]; …".
func summarizeBackends(bs []Backend) string {
	parts := make([]string, 0, len(bs))
	for _, b := range bs {
		s := fmt.Sprintf("%s %s/%s %v", b.Member, b.Role, b.State, b.Pools)
		if b.LastError != "" {
			s += " (" + b.LastError + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// Application names of the drill's sessions: writers, readers, and
// everything else (table, checks), so a check on a node can tell writers'
// sessions apart.
const (
	writerApp = "xlb-drill-writer"
	readerApp = "xlb-drill-reader"
	checkApp  = "xlb-drill"
)

// Connect opens a PostgreSQL session as the lab's application role from
// the client namespace to addr:port: VIP:PortRW, VIP:PortRO or a node's
// PostgresPort. The password goes in the configuration, not a string.
func (r *Running) Connect(ctx context.Context, addr netip.Addr, port int) (*pgx.Conn, error) {
	return r.connect(ctx, addr, port, checkApp, false)
}

// connect opens a session as Connect does, for application app. A naive
// session is opened as applications commonly do: no connect timeout and
// no TCP keepalive (Go's dialer sends keepalives after 15 s idle; libpq
// and most drivers leave the kernel's two hours).
func (r *Running) connect(ctx context.Context, addr netip.Addr, port int, app string, naive bool) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=2 application_name=%s",
		addr, port, quoteConnValue(User), quoteConnValue(Database), app))
	if err != nil {
		return nil, fmt.Errorf("parsing connection settings: %w", err)
	}
	cfg.Password = r.Secrets.Password
	cfg.DialFunc = r.NS("client").DialContext
	if naive {
		cfg.ConnectTimeout = 0
		cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return r.NS("client").dial(ctx, net.Dialer{KeepAlive: -1}, network, addr)
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to %v:%d from %sclient: %w", addr, port, r.Prefix, err)
	}
	return conn, nil
}

// onNode runs f on a session opened from the client namespace straight to
// host's PostgreSQL (not through the VIP), bounded by 30 s.
func (r *Running) onNode(ctx context.Context, host string, f func(context.Context, *pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := r.Connect(ctx, HostAddr(host), PostgresPort)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return f(ctx, conn)
}

// errNoPostmaster means a cluster that should run has no postmaster.
var errNoPostmaster = errors.New("no postmaster runs")
