package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/xlb-dev/xlb/loader"
)

// ErrAlreadyUp means a lab with the prefix exists (its state directory or
// one of its namespaces); Down removes it.
var ErrAlreadyUp = errors.New("lab already up")

// Options says how Up builds a lab. The zero value (with Binary) is `xlb
// lab up`'s.
type Options struct {
	// Prefix names the namespaces (<prefix>pg1, …) and everything else the
	// lab leaves on the host; default Prefix. Tests pass TestPrefix().
	Prefix string
	// Binary is the xlb binary that runs as the daemon on lb1 (`xlb run`)
	// and answers `xlb backends`. Required.
	Binary string
	// XDPMode is the daemon's xdp_mode: auto (default), native or generic.
	XDPMode string
	// LBs is how many LB hosts the lab has: 1 (default) or 2. With 1, lb1
	// holds the VIP statically and its daemon runs without VRRP. With 2,
	// lb1 and lb2 both run a daemon with VRRP on (VRID, priorities 150 and
	// 100, VRRPAdvertInterval): the master adds the VIP, and Up returns
	// once lb1 is master and lb2 backup.
	LBs int
	// NoPreempt turns VRRP preemption off (vrrp.preempt: false): a
	// returning lb1 stays backup while lb2 is master.
	NoPreempt bool
	// Out receives one progress line per step; nil discards them.
	Out io.Writer
	// PoolTimeout bounds the wait for the daemon to fill the pools;
	// default 30 s.
	PoolTimeout time.Duration
	// Synchronous runs the daemon in synchronous mode (synchronous: true):
	// it manages synchronous_standby_names on the primary and promotes only
	// a replica that holds every acknowledged commit.
	Synchronous bool
}

func (o *Options) setDefaults() {
	if o.Prefix == "" {
		o.Prefix = Prefix
	}
	if o.XDPMode == "" {
		o.XDPMode = string(loader.ModeAuto)
	}
	if o.LBs == 0 {
		o.LBs = 1
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.PoolTimeout == 0 {
		o.PoolTimeout = 30 * time.Second
	}
}

func (o *Options) validate() error {
	if err := validatePrefix(o.Prefix); err != nil {
		return err
	}
	if o.Binary == "" {
		return errors.New("lab options: Binary (the xlb binary) is required")
	}
	if _, err := loader.ParseMode(o.XDPMode); err != nil {
		return fmt.Errorf("lab options: %w", err)
	}
	if o.LBs < 1 || o.LBs > len(lbHosts) {
		return fmt.Errorf("lab options: %d LB hosts: want 1 to %d", o.LBs, len(lbHosts))
	}
	return nil
}

// Lab is a lab that Up built. Its processes run detached: they outlive
// the process that called Up, and Down(Prefix) stops them from any
// process.
type Lab struct {
	Prefix string
	// Dir is the state directory (StateDir).
	Dir      string
	Topology *Topology
	// Postgres holds the clusters by host: pg1 the primary, pg2 and pg3
	// its streaming replicas.
	Postgres map[string]*Postgres
	// Binary is the xlb binary the daemons run.
	Binary string
	// Sockets maps each LB host that runs a daemon to its control socket.
	Sockets map[string]string
	// Secrets are the lab's passwords, made for it and kept in Dir.
	Secrets Secrets
}

// The lab's PostgreSQL layout: the primary and its replicas, each
// streaming from a replication slot named after it.
var (
	primaryHost  = "pg1"
	replicaHosts = []string{"pg2", "pg3"}
	pgHosts      = append([]string{primaryHost}, replicaHosts...)
)

// Up builds the lab of DESIGN.md: the bridge namespace and the hosts pg1
// (primary), pg2 and pg3 (streaming replicas with slots), lb1 (the VIP,
// forwarding, the pass-through XDP program on its bridge-side peer pinned
// in PassPinDir, and xlb run as a detached daemon), optionally lb2, and
// client. It writes one line per step to opts.Out and returns once the
// daemon has pg1 in the read/write pool and pg2 and pg3 in the read-only
// one. With two LB hosts both run a daemon with VRRP on and neither gets
// the VIP from Up: it returns once both daemons have those pools, lb1 is
// VRRP master holding the VIP and lb2 backup. Every PID it starts is
// recorded in the state file in StateDir.
//
// It returns an error wrapping ErrAlreadyUp, and changes nothing, when a
// lab with the prefix exists. When a step fails it returns an error naming
// the step and tears down everything built so far (as Down does).
func Up(ctx context.Context, opts Options) (_ *Lab, err error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if err := preflight(opts.Binary); err != nil {
		return nil, err
	}
	if err := checkNotUp(opts.Prefix); err != nil {
		return nil, err
	}
	begin := time.Now()
	u := &upper{
		opts: opts,
		lab: &Lab{
			Prefix:   opts.Prefix,
			Dir:      StateDir(opts.Prefix),
			Postgres: map[string]*Postgres{},
			Binary:   opts.Binary,
			Sockets:  map[string]string{},
		},
		st: &state{
			Prefix:  opts.Prefix,
			Created: begin.UTC(),
			Binary:  opts.Binary,
			LBs:     slices.Clone(lbHosts[:opts.LBs]),
			Daemons: slices.Clone(lbHosts[:opts.LBs]),
		},
	}
	defer func() {
		if err != nil {
			fmt.Fprintln(opts.Out, "lab: a step failed; tearing down what was built")
			if derr := Down(opts.Prefix, opts.Out); derr != nil {
				err = errors.Join(err, fmt.Errorf("tearing down: %w", derr))
			}
		}
	}()
	if err := u.run(ctx); err != nil {
		return nil, err
	}
	fmt.Fprintf(opts.Out, "lab: up in %v\n", time.Since(begin).Round(100*time.Millisecond))
	return u.lab, nil
}

// upper carries Up's work from step to step.
type upper struct {
	opts Options
	lab  *Lab
	st   *state
}

// step prints the step's progress line, runs f and names the step in its
// error.
func (u *upper) step(name string, f func() error) error {
	fmt.Fprintf(u.opts.Out, "lab: %s\n", name)
	if err := f(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func (u *upper) run(ctx context.Context) error {
	prefix, dir := u.opts.Prefix, u.lab.Dir
	if err := u.step("creating state directory "+dir, u.makeStateDir); err != nil {
		return err
	}

	hosts := u.hosts()
	names := []string{SwitchName}
	for _, h := range hosts {
		names = append(names, h.Name)
	}
	if err := u.step(fmt.Sprintf("creating namespaces %s{%s}", prefix, strings.Join(names, ",")), func() (err error) {
		u.lab.Topology, err = NewTopology(prefix, hosts)
		return err
	}); err != nil {
		return err
	}
	topo := u.lab.Topology
	pg1 := topo.Node(primaryHost)

	if err := u.step(fmt.Sprintf("starting %s (primary, replication slots %s)", primaryHost, strings.Join(replicaHosts, ", ")), func() error {
		pg, err := StartPostgres(ctx, pg1.NS, u.lab.Secrets.config(PostgresConfig{Dir: filepath.Join(dir, primaryHost), Slots: replicaHosts}))
		if err != nil {
			return err
		}
		u.lab.Postgres[primaryHost] = pg
		return u.st.addProcess(primaryHost, primaryHost, pg.PID(), "SIGINT")
	}); err != nil {
		return err
	}
	for _, r := range replicaHosts {
		if err := u.step(fmt.Sprintf("starting %s (streaming replica of %s, slot %s)", r, primaryHost, r), func() error {
			pg, err := StartReplica(ctx, topo.Node(r).NS, ReplicaConfig{
				PostgresConfig: u.lab.Secrets.config(PostgresConfig{
					Dir:      filepath.Join(dir, r),
					Settings: map[string]string{"wal_retrieve_retry_interval": "200ms"},
				}),
				Name:    r,
				Primary: netip.AddrPortFrom(pg1.Addr.Addr(), PostgresPort),
			})
			if err != nil {
				return err
			}
			u.lab.Postgres[r] = pg
			return u.st.addProcess(r, r, pg.PID(), "SIGINT")
		}); err != nil {
			return err
		}
	}
	if err := u.step(fmt.Sprintf("waiting for %s to stream from %s", strings.Join(replicaHosts, " and "), primaryHost), func() error {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return waitStreaming(wctx, u.lab.Postgres[primaryHost], replicaHosts)
	}); err != nil {
		return err
	}

	for i, lb := range u.st.LBs {
		n := topo.Node(lb)
		if i == 0 && !u.vrrp() {
			if err := u.step(fmt.Sprintf("configuring %s: VIP %v on %s, forwarding on", lb, VIP, HostIf), func() error {
				if err := n.AddAddress(netip.PrefixFrom(VIP, 32)); err != nil {
					return err
				}
				return n.NS.Do(func() error { return loader.EnableForwarding(HostIf) })
			}); err != nil {
				return err
			}
		}
		if u.vrrp() {
			// The VRRP master adds the VIP; forwarding is on everywhere.
			if err := u.step(fmt.Sprintf("configuring %s: forwarding on (the VIP comes with VRRP)", lb), func() error {
				return n.NS.Do(func() error { return loader.EnableForwarding(HostIf) })
			}); err != nil {
				return err
			}
		}
		passDir := PassPinDir(prefix)
		if err := u.step(fmt.Sprintf("attaching the pass-through XDP program to %s in %s (pinned in %s)", n.Peer, topo.Switch.Name, passDir), func() error {
			return attachPinnedPass(topo.Switch, n.Peer, passDir)
		}); err != nil {
			return err
		}
	}

	for _, lb := range u.st.Daemons {
		if err := u.startDaemon(ctx, lb); err != nil {
			return err
		}
	}
	if u.vrrp() {
		return u.waitVRRP(ctx)
	}
	return nil
}

// hosts returns the lab's hosts: every host of Hosts but the LB hosts
// beyond Options.LBs.
func (u *upper) hosts() []Host {
	var hosts []Host
	for _, h := range Hosts {
		if slices.Contains(lbHosts, h.Name) && !slices.Contains(u.st.LBs, h.Name) {
			continue
		}
		hosts = append(hosts, h)
	}
	return hosts
}

// makeStateDir creates the state directory (0711: the postgres user
// reaches its clusters' directories in it, nobody lists it) and the first
// state file, which already names every namespace, pin and socket the lab
// may leave.
func (u *upper) makeStateDir() error {
	if err := os.MkdirAll(StateRoot, 0o711); err != nil {
		return fmt.Errorf("creating %s: %w", StateRoot, err)
	}
	if err := os.Mkdir(u.lab.Dir, 0o711); err != nil {
		return fmt.Errorf("creating %s: %w", u.lab.Dir, err)
	}
	// Mkdir's mode is filtered by the umask.
	if err := os.Chmod(u.lab.Dir, 0o711); err != nil {
		return fmt.Errorf("securing %s: %w", u.lab.Dir, err)
	}
	s, err := NewSecrets()
	if err != nil {
		return err
	}
	if err := s.write(u.lab.Dir); err != nil {
		return err
	}
	u.lab.Secrets = s
	u.st.Namespaces = nil
	for _, h := range u.hosts() {
		u.st.Namespaces = append(u.st.Namespaces, u.opts.Prefix+h.Name)
	}
	u.st.Namespaces = append(u.st.Namespaces, u.opts.Prefix+SwitchName)
	u.st.PinDirs = []string{PassPinDir(u.opts.Prefix)}
	for _, lb := range u.st.LBs {
		u.st.PinDirs = append(u.st.PinDirs, DaemonPinDir(u.opts.Prefix, lb))
		u.st.Sockets = append(u.st.Sockets, Socket(u.opts.Prefix, lb))
	}
	return u.st.write()
}

// startDaemon resolves the backends from lb, writes its configuration,
// starts xlb run there detached and waits for the pools.
func (u *upper) startDaemon(ctx context.Context, lb string) error {
	n := u.lab.Topology.Node(lb)
	if err := u.step(fmt.Sprintf("resolving %s from %s", strings.Join(pgHosts, ", "), lb), func() error {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		for _, h := range pgHosts {
			if err := n.Resolve(rctx, u.lab.Topology.Node(h).Addr.Addr()); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}

	cfgPath := daemonConfigPath(u.opts.Prefix, lb)
	socket := Socket(u.opts.Prefix, lb)
	if err := u.step(fmt.Sprintf("writing %s's configuration %s", lb, cfgPath), func() error {
		return u.writeDaemonConfig(n, cfgPath, socket)
	}); err != nil {
		return err
	}

	logPath := daemonLogPath(u.opts.Prefix, lb)
	var exited <-chan error
	if err := u.step(fmt.Sprintf("starting xlb on %s (log %s)", lb, logPath), func() (err error) {
		exited, err = u.startDetached(n, daemonProcess(lb), logPath, u.opts.Binary, "run", "--config", cfgPath)
		return err
	}); err != nil {
		return err
	}
	u.lab.Sockets[lb] = socket

	want := map[string]string{primaryHost: fmt.Sprint(PortRW)}
	for _, r := range replicaHosts {
		want[r] = fmt.Sprint(PortRO)
	}
	return u.step(fmt.Sprintf("waiting for xlb on %s: %s in pool %d, %s in pool %d", lb,
		primaryHost, PortRW, strings.Join(replicaHosts, " and "), PortRO), func() error {
		wctx, cancel := context.WithTimeout(ctx, u.opts.PoolTimeout)
		defer cancel()
		if err := waitPools(wctx, u.opts.Binary, socket, want, exited); err != nil {
			return fmt.Errorf("%w\n%s's log (%s), last lines:\n%s", err, lb, logPath, fileTail(logPath, 15))
		}
		return nil
	})
}

// labProbes is the lab's probe rule: a node is down after 3 failed probes
// in a row, every 250 ms, each bounded by 200 ms (the product's default is
// 500 ms / 300 ms). On the lab's links a probe answers in about a
// millisecond, so a partitioned primary is found down in 0.5-0.8 s.
const labProbes = "probe:\n  interval: 250ms\n  timeout: 200ms\n  fall: 3\n  rise: 2\n"

// writeDaemonConfig writes the password files of the probe role and of
// the administrative role (AdminUser, which promotes and repoints nodes)
// and the daemon's configuration for LB node n, all mode 0600. Failover is
// on; synchronous mode follows Options.Synchronous.
func (u *upper) writeDaemonConfig(n *Node, cfgPath, socket string) error {
	pwPath := filepath.Join(u.lab.Dir, "pgpassword")
	if err := os.WriteFile(pwPath, []byte(u.lab.Secrets.Password), 0o600); err != nil {
		return fmt.Errorf("writing password file: %w", err)
	}
	adminPwPath := filepath.Join(u.lab.Dir, "pgadminpassword")
	if err := os.WriteFile(adminPwPath, []byte(u.lab.Secrets.AdminPassword), 0o600); err != nil {
		return fmt.Errorf("writing admin password file: %w", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# xlb on %s of lab %q, written by xlb-lab up (see deploy/xlb.example.yaml).\n", n.Name, u.opts.Prefix)
	fmt.Fprintf(&b, "interface: %s\nxdp_mode: %s\nvip: %v\nnode_address: %v\n", HostIf, u.opts.XDPMode, VIP, n.Addr.Addr())
	fmt.Fprintf(&b, "ports:\n  rw: %d\n  ro: %d\nsnat_ports: 20000-29999\n", PortRW, PortRO)
	fmt.Fprintf(&b, "pin_path: %s\nsocket: %s\nstate_file: %s\n", DaemonPinDir(u.opts.Prefix, n.Name), socket,
		filepath.Join(u.lab.Dir, n.Name+".state.json"))
	fmt.Fprintf(&b, "postgres:\n  user: %s\n  database: %s\n  password_file: %s\n", User, Database, pwPath)
	fmt.Fprintf(&b, "  admin_user: %s\n  admin_password_file: %s\n", AdminUser, adminPwPath)
	// The lab's servers offer no TLS: with prefer every connect would try
	// it first (a second backend fork).
	b.WriteString("  sslmode: disable\n")
	fmt.Fprintf(&b, "failover: true\nsynchronous: %t\n", u.opts.Synchronous)
	b.WriteString(labProbes)
	fmt.Fprintf(&b, "http:\n  listen: %v\n", netip.AddrPortFrom(n.Addr.Addr(), HTTPPort))
	if u.vrrp() {
		u.writeVRRPConfig(&b, n.Name)
	}
	b.WriteString("nodes:\n")
	for _, h := range pgHosts {
		fmt.Fprintf(&b, "  - name: %s\n    address: %v\n", h, netip.AddrPortFrom(u.lab.Topology.Node(h).Addr.Addr(), PostgresPort))
	}
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", cfgPath, err)
	}
	return nil
}

// startDetached starts argv in n's namespace as a daemon of its own: a new
// session (no terminal signal reaches it), stdin /dev/null, stdout and
// stderr appended to logPath. It records the PID in the state file and
// returns a channel that gets the exit status when the process exits while
// this process lives (waiting for it also reaps it).
func (u *upper) startDetached(n *Node, name, logPath string, argv ...string) (<-chan error, error) {
	pid, exited, err := spawnDetached(n.NS, logPath, argv...)
	if err != nil {
		return nil, err
	}
	if err := u.st.addProcess(name, n.Name, pid, "SIGTERM"); err != nil {
		return nil, err
	}
	return exited, nil
}

// waitStreaming polls the primary's pg_stat_replication every 100 ms until
// every replica named streams from it, or ctx ends.
func waitStreaming(ctx context.Context, primary *Postgres, replicas []string) error {
	want := strings.Join(slices.Sorted(slices.Values(replicas)), ",")
	const q = "SELECT coalesce(string_agg(application_name, ',' ORDER BY application_name), '') FROM pg_stat_replication WHERE state = 'streaming'"
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		got, err := primary.QueryLocal(ctx, q)
		if err == nil && got == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("streaming replicas %q, want %q (last error %v): %w", got, want, err, ctx.Err())
		case <-tick.C:
		}
	}
}

// daemonBackends runs `xlb backends --json --socket socket` and decodes it.
func daemonBackends(ctx context.Context, binary, socket string) ([]Backend, error) {
	out, err := output(ctx, binary, "backends", "--json", "--socket", socket)
	if err != nil {
		return nil, err
	}
	var ms []Backend
	if err := json.Unmarshal([]byte(out), &ms); err != nil {
		return nil, fmt.Errorf("decoding xlb backends --json: %w", err)
	}
	return ms, nil
}

// waitPools polls the daemon on socket every 200 ms until every member in
// want is in exactly the pool want names, the daemon exits (exited
// delivers) or ctx ends.
func waitPools(ctx context.Context, binary, socket string, want map[string]string, exited <-chan error) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last string
	var lastErr error
	for {
		bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ms, err := daemonBackends(bctx, binary, socket)
		cancel()
		if err == nil {
			last = summarizeBackends(ms)
			if poolsMatch(ms, want) {
				return nil
			}
		}
		lastErr = err
		select {
		case err := <-exited:
			return fmt.Errorf("xlb exited (%v)", err)
		case <-ctx.Done():
			return fmt.Errorf("pools not as wanted: last seen [%s], last error %v: %w", last, lastErr, ctx.Err())
		case <-tick.C:
		}
	}
}

func poolsMatch(ms []Backend, want map[string]string) bool {
	found := 0
	for _, m := range ms {
		w, ok := want[m.Member]
		if !ok {
			continue
		}
		if !slices.Equal(m.Pools, []string{w}) {
			return false
		}
		found++
	}
	return found == len(want)
}

// preflight checks what Up needs before it changes anything.
func preflight(binary string) error {
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (network namespaces, BPF)")
	}
	for _, prog := range []string{"ip", "ethtool"} {
		if _, err := exec.LookPath(prog); err != nil {
			return fmt.Errorf("finding %s (Debian package %s): %w", prog, map[string]string{"ip": "iproute2", "ethtool": "ethtool"}[prog], err)
		}
	}
	for _, prog := range []string{"postgres", "initdb", "pg_basebackup", "psql", "pg_isready"} {
		if _, err := os.Stat(filepath.Join(PostgresBin, prog)); err != nil {
			return fmt.Errorf("finding PostgreSQL 15 (Debian packages postgresql-15, postgresql-client-15): %w", err)
		}
	}
	fi, err := os.Stat(binary)
	if err != nil {
		return fmt.Errorf("finding the xlb binary: %w", err)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("xlb binary %s: not an executable file", binary)
	}
	return nil
}

// checkNotUp returns an error wrapping ErrAlreadyUp when anything of a lab
// with prefix exists.
func checkNotUp(prefix string) error {
	var found []string
	if _, err := os.Stat(StateDir(prefix)); err == nil {
		found = append(found, StateDir(prefix))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("checking %s: %w", StateDir(prefix), err)
	}
	for _, ns := range labNamespaces(prefix) {
		if NamespaceExists(ns) {
			found = append(found, "namespace "+ns)
		}
	}
	if len(found) > 0 {
		return fmt.Errorf("%w: %s (run xlb-lab down --prefix %s first)", ErrAlreadyUp, strings.Join(found, ", "), prefix)
	}
	return nil
}

// fileTail returns the last n lines of the file name, or a note when it
// cannot be read.
func fileTail(name string, n int) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return tail(b, n)
}
