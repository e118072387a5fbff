package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/deploy/lab"
	"github.com/xlb-dev/xlb/loader"
)

func main() {
	var o options
	flag.StringVar(&o.xlb, "xlb", "", "xlb binary the lab's daemon runs (default: go build ./cmd/xlb into a temporary directory)")
	flag.StringVar(&o.prefix, "prefix", "xb-", "name prefix of the bench's lab")
	flag.StringVar(&o.xdpMode, "xdp-mode", "auto", "the daemon's xdp_mode: auto, native or generic")
	flag.IntVar(&o.scale, "scale", 10, "pgbench -i scale")
	flag.IntVar(&o.clients, "clients", 8, "pgbench clients (-c)")
	flag.IntVar(&o.threads, "threads", 2, "pgbench threads (-j)")
	flag.DurationVar(&o.duration, "duration", 15*time.Second, "length of one timed -S run")
	flag.DurationVar(&o.connectDuration, "connect-duration", 15*time.Second, "length of one timed -S -C run")
	flag.DurationVar(&o.warmup, "warmup", 5*time.Second, "warm-up run per target and mode, before the timed runs")
	flag.IntVar(&o.reps, "reps", 3, "timed runs per target and mode")
	flag.StringVar(&o.out, "out", "tests/bench/out/latest.json", "where the JSON report goes")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o, os.Stdout, os.Stderr)
	interrupted := ctx.Err() != nil
	stop()
	if err != nil {
		if interrupted {
			fmt.Fprintf(os.Stderr, "bench: interrupted (%v)\n", err)
		} else {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
		os.Exit(1)
	}
}

type options struct {
	xlb, prefix, xdpMode, out         string
	scale, clients, threads, reps     int
	duration, connectDuration, warmup time.Duration
}

// target is an address pgbench runs against from the client host.
type target struct {
	name, kind string
	addr       netip.AddrPort
}

// bench holds what the runs sample.
type bench struct {
	o       options
	l       *lab.Lab
	client  *lab.Namespace
	prog    *ebpf.Program // xlb's XDP program on lb1's eth0
	daemon  int           // PID of xlb run on lb1
	haproxy *haproxy
	log     io.Writer
}

// run builds the lab, measures and reports. The lab, haproxy and the BPF
// stats are undone on every path out, the error of undoing joined to the
// bench's.
func run(ctx context.Context, o options, stdout, log io.Writer) (err error) {
	begin, load := time.Now(), loadavg()
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, BPF): run `make bench` as root")
	}
	for _, prog := range []string{pgbenchBin, "haproxy"} {
		if _, err := exec.LookPath(prog); err != nil {
			return fmt.Errorf("finding %s (Debian packages postgresql-15, haproxy; `make bench` installs them): %w", prog, err)
		}
	}
	tmp, err := os.MkdirTemp("", "xlb-bench-")
	if err != nil {
		return fmt.Errorf("creating a work directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	if o.xlb == "" {
		o.xlb = filepath.Join(tmp, "xlb")
		fmt.Fprintf(log, "bench: building %s\n", o.xlb)
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", o.xlb, "./cmd/xlb").CombinedOutput(); err != nil {
			return fmt.Errorf("building xlb: %w: %s", err, strings.TrimSpace(string(out)))
		}
	}
	if o.xlb, err = filepath.Abs(o.xlb); err != nil {
		return fmt.Errorf("locating the xlb binary: %w", err)
	}

	// A bench killed outright leaves its lab; the prefix is the bench's own.
	if inv, err := lab.Status(o.prefix); err == nil && !inv.Empty() {
		fmt.Fprintf(log, "bench: removing the lab %s an earlier bench left\n", o.prefix)
		if err := lab.Down(o.prefix, log); err != nil {
			return err
		}
	}
	defer func() {
		fmt.Fprintf(log, "bench: tearing the lab down\n")
		if derr := lab.Down(o.prefix, log); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	fmt.Fprintf(log, "bench: bringing the lab up (prefix %s)\n", o.prefix)
	l, err := lab.Up(ctx, lab.Options{Prefix: o.prefix, Binary: o.xlb, XDPMode: o.xdpMode, Out: log})
	if err != nil {
		return fmt.Errorf("bringing the lab up: %w", err)
	}
	b := &bench{o: o, l: l, client: l.Topology.Node("client").NS, log: log}

	rep := &Report{
		Date:     begin.UTC().Truncate(time.Second),
		Machine:  machine(load),
		Versions: versions(ctx, o.xlb),
		Config: Config{Scale: o.scale, Clients: o.clients, Threads: o.threads, DurationS: o.duration.Seconds(),
			ConnectDurationS: o.connectDuration.Seconds(), WarmupS: o.warmup.Seconds(), Reps: o.reps, Prefix: o.prefix},
	}
	if err := b.findXLB(rep); err != nil {
		return err
	}
	defer b.prog.Close()
	stats, how, err := enableBPFStats()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, stats.Close()) }()
	rep.BPFStats = how

	if err := b.initPgbench(ctx); err != nil {
		return err
	}
	herr := b.startHAProxy(ctx, tmp)
	if b.haproxy != nil {
		defer func() { err = errors.Join(err, b.haproxy.Stop()) }()
	}
	if herr != nil {
		return herr
	}

	lb1 := l.Topology.Node("lb1").Addr.Addr()
	if err := b.setupHop(); err != nil {
		return err
	}
	targets := []target{
		{"direct", "direct", b.pgAddr("pg1")},
		{"lb1 routing (floor)", "hop", netip.AddrPortFrom(hopAddr, lab.PostgresPort)},
		{fmt.Sprintf("xlb VIP:%d", lab.PortRW), "xlb", netip.AddrPortFrom(lab.VIP, lab.PortRW)},
		{fmt.Sprintf("haproxy :%d", lab.PortRW), "haproxy", netip.AddrPortFrom(lb1, lab.PortRW)},
	}
	for _, t := range targets {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := lab.Query(qctx, b.client, b.l.Secrets.AppConn(t.addr.Addr(), int(t.addr.Port())), "SELECT 1")
		cancel()
		if err != nil {
			return fmt.Errorf("checking %s: %w", t.name, err)
		}
	}

	before, err := b.status(ctx)
	if err != nil {
		return err
	}
	for _, m := range []struct {
		mode    string
		connect bool
		d       time.Duration
	}{{"-S", false, o.duration}, {"-S -C", true, o.connectDuration}} {
		w := workload{Clients: o.clients, Threads: o.threads, Duration: m.d, Connect: m.connect}
		rows, err := b.runMode(ctx, m.mode, w, targets)
		rep.Rows = append(rep.Rows, rows...)
		if err != nil {
			return err
		}
	}
	after, err := b.status(ctx)
	if err != nil {
		return err
	}
	rep.XLBCounters = counterDelta(before.Total, after.Total)

	rep.Machine.LoadEnd = loadavg()
	rep.Elapsed = time.Since(begin).Round(time.Second).String()
	rep.finish()
	rep.Notes = notes
	rep.writeTable(stdout)
	if err := rep.writeJSON(o.out); err != nil {
		return err
	}
	fmt.Fprintf(log, "bench: wrote %s\n", o.out)
	if rep.failed() {
		return errors.New("some pgbench runs failed (see the table and the JSON report)")
	}
	return nil
}

// notes go into the JSON report as they are.
var notes = []string{
	"-S -C rows are connection-setup-bound: a new PostgreSQL connection costs 17-19 ms here (a fork ~5 ms), ~40 TPS even direct; not tuned for",
	"xlb's LB CPU is the XDP program's run time (BPF stats) plus the daemon's utime+stime; the kernel's work around XDP (veth transmit after XDP_TX) is not in it",
	"haproxy's LB CPU is its utime+stime (all threads); softirq work for its sockets is not in it",
	"xlb's XDP program also runs (pass verdict) while HAProxy's traffic crosses lb1's eth0: see the haproxy rows' cpu.xdp_run_time_s",
	"per-process CPU times have a resolution of 10 ms (USER_HZ)",
}

// findXLB finds the daemon's PID and opens its XDP program.
func (b *bench) findXLB(rep *Report) error {
	inv, err := lab.Status(b.o.prefix)
	if err != nil {
		return err
	}
	for _, p := range inv.Processes {
		if p.Host == "lb1" && strings.HasPrefix(p.Name, "xlb") && p.Running {
			b.daemon = p.PID
		}
	}
	if b.daemon == 0 {
		return fmt.Errorf("finding xlb run on lb1 in the lab's state: none running (%+v)", inv.Processes)
	}
	lb1 := b.l.Topology.Node("lb1")
	id, err := xdpProgramID(lb1.NS, lab.HostIf)
	if err != nil {
		return fmt.Errorf("finding xlb's xdp program on lb1: %w", err)
	}
	if b.prog, err = ebpf.NewProgramFromID(id); err != nil {
		return fmt.Errorf("opening xdp program %d: %w", id, err)
	}
	rep.XDP = XDPInfo{Interface: lab.HostIf, ProgramID: uint32(id)}
	if info, err := b.prog.Info(); err == nil {
		rep.XDP.Program = info.Name
	}
	st, err := b.status(context.Background())
	if err != nil {
		return err
	}
	rep.XDP.Mode = st.Mode
	fmt.Fprintf(b.log, "bench: xlb run is pid %d; xdp program %d (%s, %s) on lb1 %s\n", b.daemon, id, rep.XDP.Program, st.Mode, lab.HostIf)
	return nil
}

// pgAddr returns the PostgreSQL address of lab host name.
func (b *bench) pgAddr(name string) netip.AddrPort {
	return netip.AddrPortFrom(b.l.Topology.Node(name).Addr.Addr(), lab.PostgresPort)
}

// initPgbench creates pgbench's tables on the primary, directly, once.
func (b *bench) initPgbench(ctx context.Context) error {
	pg1 := b.pgAddr("pg1")
	fmt.Fprintf(b.log, "bench: pgbench -i -s %d on pg1 (%v)\n", b.o.scale, pg1)
	start := time.Now()
	ictx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	_, err := pgbench(ictx, b.client, b.l.Secrets.Password, "-i", "-q", "-s", fmt.Sprint(b.o.scale), "-h", pg1.Addr().String(),
		"-p", fmt.Sprint(pg1.Port()), "-U", lab.User, lab.Database)
	if err != nil {
		return err
	}
	fmt.Fprintf(b.log, "bench: initialised in %v\n", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// hopAddr is a second address of pg1 that the client reaches only
// through lb1, routed by lb1's kernel both ways without balancing or NAT:
// the floor of an in-path LB in this lab (the same veth and bridge hops as
// the VIP's path, plus XDP's pass verdict on lb1).
var hopAddr = netip.MustParseAddr("172.20.0.110")

// setupHop puts hopAddr on pg1 and routes it through lb1: the client
// routes it via lb1, lb1 via pg1, and pg1 answers from it via lb1 (a
// source rule, so pg1's other traffic stays direct). lb1 sends no ICMP
// redirects (one-arm routing would tell the client to go direct). Only
// the bench lab's own namespaces change.
func (b *bench) setupHop() error {
	topo := b.l.Topology
	pg1, lb1, client := topo.Node("pg1"), topo.Node("lb1"), topo.Node("client")
	hop := hopAddr.String()
	steps := []struct {
		ns   *lab.Namespace
		args []string
	}{
		{pg1.NS, []string{"ip", "addr", "add", hop + "/32", "dev", "lo"}},
		{pg1.NS, []string{"ip", "rule", "add", "from", hop, "lookup", "110"}},
		{pg1.NS, []string{"ip", "route", "add", "default", "via", lb1.Addr.Addr().String(), "dev", lab.HostIf, "table", "110"}},
		{lb1.NS, []string{"sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf." + lab.HostIf + ".send_redirects=0"}},
		{lb1.NS, []string{"ip", "route", "add", hop + "/32", "via", pg1.Addr.Addr().String(), "dev", lab.HostIf}},
		{client.NS, []string{"ip", "route", "add", hop + "/32", "via", lb1.Addr.Addr().String(), "dev", lab.HostIf}},
	}
	for _, st := range steps {
		if out, err := st.ns.Output(st.args[0], st.args[1:]...); err != nil {
			return fmt.Errorf("routing %s through lb1: %s in %s: %w: %s", hop, strings.Join(st.args, " "), st.ns.Name, err, out)
		}
	}
	return nil
}

// startHAProxy starts haproxy in lb1's namespace and waits for its checks.
// b.haproxy is set once the process runs, also when the wait fails.
func (b *bench) startHAProxy(ctx context.Context, dir string) error {
	topo := b.l.Topology
	cfg := haproxyConfig{
		Listen:      topo.Node("lb1").Addr.Addr(),
		PortRW:      lab.PortRW,
		PortRO:      lab.PortRO,
		Primary:     haproxyServer{"pg1", b.pgAddr("pg1")},
		User:        lab.User,
		StatsSocket: filepath.Join(dir, "haproxy.sock"),
	}
	for _, r := range []string{"pg2", "pg3"} {
		cfg.Replicas = append(cfg.Replicas, haproxyServer{r, b.pgAddr(r)})
	}
	h, err := startHAProxy(ctx, topo.Node("lb1").NS, dir, cfg)
	if err != nil {
		return err
	}
	b.haproxy = h
	fmt.Fprintf(b.log, "bench: haproxy is pid %d in %s; waiting for its pgsql-checks\n", h.PID(), topo.Node("lb1").NS.Name)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return h.waitChecks(wctx)
}

// sample reads the counters a run's CPU is the delta of.
type sample struct {
	xdp              *ebpf.ProgramStats
	daemon, haproxyT time.Duration
}

func (b *bench) sample() (sample, error) {
	var s sample
	var err error
	if s.xdp, err = b.prog.Stats(); err != nil {
		return s, fmt.Errorf("reading xdp program stats: %w", err)
	}
	if s.daemon, err = procCPU(b.daemon); err != nil {
		return s, fmt.Errorf("xlb run: %w", err)
	}
	if s.haproxyT, err = procCPU(b.haproxy.PID()); err != nil {
		return s, fmt.Errorf("haproxy: %w", err)
	}
	return s, nil
}

func cpuDelta(a, z sample) CPU {
	return CPU{
		XDPRunTimeS: (z.xdp.Runtime - a.xdp.Runtime).Seconds(),
		XDPRuns:     z.xdp.RunCount - a.xdp.RunCount,
		DaemonS:     (z.daemon - a.daemon).Seconds(),
		HAProxyS:    (z.haproxyT - a.haproxyT).Seconds(),
	}
}

// runMode warms every target up, then runs the rounds: in round r the
// targets run in order rotated by r. A failed run is recorded in its row
// and the bench goes on; an interrupt or a failed sample ends it.
func (b *bench) runMode(ctx context.Context, mode string, w workload, targets []target) ([]*Row, error) {
	rows := make([]*Row, len(targets))
	for i, t := range targets {
		rows[i] = &Row{Target: t.name, Kind: t.kind, Addr: t.addr.String(), Mode: mode,
			ConnectionSetupBound: w.Connect, DurationS: w.Duration.Seconds()}
	}
	warm := w
	warm.Duration = b.o.warmup
	for i, t := range targets {
		if b.o.warmup <= 0 {
			break
		}
		fmt.Fprintf(b.log, "bench: %s %s: warm-up %v\n", t.name, mode, b.o.warmup)
		r, err := runWorkload(ctx, b.client, b.l.Secrets.Password, warm, t.addr.Addr().String(), int(t.addr.Port()))
		if ctx.Err() != nil {
			return rows, ctx.Err()
		}
		if err != nil {
			fmt.Fprintf(b.log, "bench: %s %s: warm-up failed: %v\n", t.name, mode, err)
			continue
		}
		rows[i].Warmup = &r
	}
	for round := range b.o.reps {
		for k := range targets {
			i := (k + round) % len(targets)
			t := targets[i]
			before, err := b.sample()
			if err != nil {
				return rows, err
			}
			r, rerr := runWorkload(ctx, b.client, b.l.Secrets.Password, w, t.addr.Addr().String(), int(t.addr.Port()))
			if ctx.Err() != nil {
				return rows, ctx.Err()
			}
			after, err := b.sample()
			if err != nil {
				return rows, err
			}
			rp := Rep{runResult: r, Round: round + 1, CPU: cpuDelta(before, after)}
			if rerr != nil {
				rp.Error = rerr.Error()
				fmt.Fprintf(b.log, "bench: %s %s round %d: %v\n", t.name, mode, round+1, rerr)
			} else {
				fmt.Fprintf(b.log, "bench: %s %s round %d: %.1f tps, %.3f ms\n", t.name, mode, round+1, r.TPS, r.LatencyAvgMS)
			}
			rows[i].Reps = append(rows[i].Reps, rp)
		}
	}
	return rows, nil
}

// xlbStatus is the part of `xlb status --json` the bench reads.
type xlbStatus struct {
	Mode  string          `json:"xdp_mode"`
	Total loader.Counters `json:"total"`
}

// status runs `xlb status --json` against lb1's daemon.
func (b *bench) status(ctx context.Context) (xlbStatus, error) {
	var st xlbStatus
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(sctx, b.l.Binary, "status", "--json", "--socket", b.l.Sockets["lb1"]).Output()
	if err != nil {
		return st, fmt.Errorf("running xlb status: %w", err)
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("decoding xlb status --json: %w", err)
	}
	return st, nil
}

// machine describes this host; load is the load average at the start.
func machine(load string) Machine {
	m := Machine{NProc: runtime.NumCPU(), Go: runtime.Version(), LoadStart: load}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// loadavg returns the 1, 5 and 15 minute load averages, "?" when
// /proc/loadavg cannot be read.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

// versions names what was measured: pgbench, haproxy, and the work tree
// xlb was built from. A version that cannot be read is left out.
func versions(ctx context.Context, xlb string) map[string]string {
	v := map[string]string{}
	first := func(name string, args ...string) string {
		out, err := exec.CommandContext(ctx, name, args...).Output()
		if err != nil {
			return ""
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	if s := first(pgbenchBin, "--version"); s != "" {
		v["pgbench"] = strings.TrimPrefix(s, "pgbench (PostgreSQL) ")
	}
	if s := first("haproxy", "-v"); s != "" {
		if f := strings.Fields(s); len(f) >= 3 {
			s = f[2]
		}
		v["haproxy"] = s
	}
	if s := first("git", "rev-parse", "--short", "HEAD"); s != "" {
		if d := first("git", "status", "--porcelain", "--untracked-files=no"); d != "" {
			s += "+dirty"
		}
		v["xlb"] = s
	}
	return v
}
