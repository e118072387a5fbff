package tests

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xlb-dev/xlb/deploy/lab"
	"github.com/xlb-dev/xlb/loader"
)

// connect opens a PostgreSQL session from the client namespace to VIP:port
// and runs a query on it, within timeout.
func connect(ctx context.Context, cl *lab.Node, port int, timeout time.Duration) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ci := lab.ProcessSecrets().AppConn(lab.VIP, port)
	cfg, err := pgx.ParseConfig(ci.String())
	if err != nil {
		return nil, err
	}
	cfg.Password = ci.Password
	cfg.DialFunc = cl.NS.DialContext
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	var one int
	if err := c.QueryRow(ctx, "select 1").Scan(&one); err != nil {
		c.Close(context.Background())
		return nil, err
	}
	return c, nil
}

// TestSYNFloodLab floods VIP:3000 and VIP:3001 from the client namespace
// with hping3 (-S --flood --rand-source) for 10 s, as an attacker would:
// no established session breaks, real clients keep connecting during the
// flood (the share is logged; at least one must), and after it
// every new connection succeeds within 5 s.
func TestSYNFloodLab(t *testing.T) {
	lab.RequirePrivileged(t)
	hping, err := exec.LookPath("hping3")
	if err != nil {
		t.Fatalf("hping3 is missing (make test installs it: deploy/lab/lab-deps.sh test): %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()

	topo := newTopology(t, "pg1", "pg2", "lb1", "client")
	pg1, pg2, lb1, cl := topo.Node("pg1"), topo.Node("pg2"), topo.Node("lb1"), topo.Node("client")
	startPostgres(ctx, t, pg1.NS)
	startPostgres(ctx, t, pg2.NS)
	if err := lb1.AddAddress(netip.PrefixFrom(lab.VIP, 32)); err != nil {
		t.Fatal(err)
	}
	attachPass(t, topo.Switch, lb1.Peer)
	if err := lb1.NS.Do(func() error { return loader.EnableForwarding(lab.HostIf) }); err != nil {
		t.Fatal(err)
	}
	dp := loadDatapath(t, lb1, loader.ModeNative)
	if err := dp.SetBackends(loader.RO, []netip.AddrPort{netip.AddrPortFrom(pg2.Addr.Addr(), lab.PostgresPort)}); err != nil {
		t.Fatal(err)
	}
	for _, pg := range []*lab.Node{pg1, pg2} {
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		err := lb1.Resolve(rctx, pg.Addr.Addr())
		rcancel()
		if err != nil {
			t.Fatal(err)
		}
	}

	// Established sessions on both services.
	var sessions []*pgx.Conn
	for i := range 20 {
		port := lab.PortRW + i%2
		c, err := connect(ctx, cl, port, 10*time.Second)
		if err != nil {
			t.Fatalf("session %d to port %d before the flood: %v", i, port, err)
		}
		sessions = append(sessions, c)
	}
	t.Cleanup(func() {
		for _, c := range sessions {
			c.Close(context.Background())
		}
	})
	before, err := dp.Stats()
	if err != nil {
		t.Fatal(err)
	}

	// The flood: one hping3 per service port, stopped by PID after 10 s.
	const floodFor = 10 * time.Second
	var floods []*exec.Cmd
	for _, port := range []int{lab.PortRW, lab.PortRO} {
		cmd := exec.Command("ip", "netns", "exec", cl.NS.Name, hping, "-q", "-S", "--flood", "--rand-source",
			"-p", strconv.Itoa(port), lab.VIP.String())
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		floods = append(floods, cmd)
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
		})
	}
	start := time.Now()
	var tried, ok atomic.Int64
	for i := 0; time.Since(start) < floodFor; i++ {
		tried.Add(1)
		c, err := connect(ctx, cl, lab.PortRW+i%2, 3*time.Second)
		if err == nil {
			ok.Add(1)
			c.Close(ctx)
		}
		time.Sleep(100 * time.Millisecond) // pacing: one real client every ~100 ms, bounded by floodFor
	}
	for _, cmd := range floods {
		cmd.Process.Signal(syscall.SIGINT)
	}
	for _, cmd := range floods {
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Signal(syscall.SIGKILL)
			<-done
		}
	}
	ended := time.Now()
	during, _ := dp.Stats()

	// After the flood: ten new connections, each must succeed, the first
	// within 5 s of the flood's end (retried until then, tried at least
	// once), every later one at its first try.
	var first time.Duration
	for i := range 10 {
		c, err := connect(ctx, cl, lab.PortRW+i%2, 3*time.Second)
		for i == 0 && err != nil && time.Since(ended) < 5*time.Second {
			c, err = connect(ctx, cl, lab.PortRW+i%2, 3*time.Second)
		}
		if err != nil {
			t.Fatalf("connection %d after the flood: %v", i, err)
		}
		if i == 0 {
			first = time.Since(ended)
		}
		c.Close(ctx)
	}
	broken := 0
	for i, c := range sessions {
		var one int
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		if err := c.QueryRow(qctx, "select 1").Scan(&one); err != nil {
			broken++
			t.Errorf("established session %d broke: %v", i, err)
		}
		qcancel()
	}

	syns := func(st loader.Stats) uint64 {
		return st.Total.NewFlows + st.Total.DropTotal()
	}
	share := float64(ok.Load()) / float64(tried.Load())
	t.Logf("flood: %d SYNs reached the datapath in %v (%.0f/s); new flows %d, drops %v, ports taken back %v",
		syns(during)-syns(before), ended.Sub(start).Round(time.Millisecond),
		float64(syns(during)-syns(before))/ended.Sub(start).Seconds(),
		during.Total.NewFlows-before.Total.NewFlows, during.Total.Drops, during.Total.Expired)
	t.Logf("real clients during the flood: %d of %d connected (%.0f%%); first connection after it: %v; established sessions broken: %d of %d",
		ok.Load(), tried.Load(), 100*share, first.Round(time.Millisecond), broken, len(sessions))
	// The share is a figure: hping3 and the lab share two cores, and at
	// 137k SYN/s (seen on an EPYC) the flood also drops real clients'
	// packets in the kernel's queues before XDP sees them. xlb must still
	// let some through: none would mean the flood shut the service.
	if ok.Load() == 0 {
		t.Errorf("no real client connected during the flood (%d tried)", tried.Load())
	}
}

// heldSession is psql in the client namespace holding one session on
// VIP:port, as an application does: no connect or statement timeout, no
// TCP keepalive beyond the kernel's two hours, stopping at its first error
// (ON_ERROR_STOP). The test writes a query every 100 ms and reads the
// answers.
type heldSession struct {
	name    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	stderr  bytes.Buffer
	answers atomic.Int64
	last    atomic.Int64 // unix ns of the last answer
	done    chan error
}

// holdSession starts psql to VIP:port from the client namespace and waits
// for its first answer.
func holdSession(ctx context.Context, t *testing.T, r *lab.Running, port int) *heldSession {
	t.Helper()
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatalf("psql is missing: %v", err)
	}
	h := &heldSession{name: fmt.Sprintf("psql to VIP:%d", port), done: make(chan error, 1)}
	h.cmd = exec.Command("ip", "netns", "exec", r.NS("client").Name, psql, "-X", "-A", "-t", "-q",
		"-v", "ON_ERROR_STOP=1", "-h", lab.VIP.String(), "-p", strconv.Itoa(port), "-U", lab.User, "-d", lab.Database)
	h.cmd.Env = append(os.Environ(), "PGPASSWORD="+r.Secrets.Password, "PGCONNECT_TIMEOUT=0", "PGAPPNAME=held")
	h.cmd.Stderr = &h.stderr
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.cmd.Process.Kill()
		<-h.done
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "1" {
				h.answers.Add(1)
				h.last.Store(time.Now().UnixNano())
			}
		}
		h.done <- h.cmd.Wait()
	}()
	h.query()
	if err := h.waitAnswers(ctx, 1, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	return h
}

// query sends one query; an error means psql is gone (done says why).
func (h *heldSession) query() error {
	_, err := io.WriteString(h.stdin, "select 1;\n")
	return err
}

// waitAnswers waits up to d for n answers in all.
func (h *heldSession) waitAnswers(ctx context.Context, n int64, d time.Duration) error {
	deadline := time.Now().Add(d)
	for h.answers.Load() < n {
		if err := h.failed(); err != nil {
			return err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s: %d answers after %v, want %d", h.name, h.answers.Load(), d, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// failed returns why psql stopped or printed an error, nil while it holds.
func (h *heldSession) failed() error {
	select {
	case err := <-h.done:
		h.done <- err
		return fmt.Errorf("%s exited (%v) after %d answers: %s", h.name, err, h.answers.Load(), strings.TrimSpace(h.stderr.String()))
	default:
	}
	return nil
}

// TestSYNFloodHeldSession is the flood of issue 16 as a user saw it: the
// lab with one LB host and its daemon (probes, pools, cuts: everything
// `xlb lab up` runs), psql holding a session on VIP:3000 and another on
// VIP:3001 and querying every 100 ms with no client timeout, and hping3
// -S --flood --rand-source at both ports for 10 s. Any error of a held
// session fails the test, as does a query unanswered for 15 s.
func TestSYNFloodHeldSession(t *testing.T) {
	hping, err := exec.LookPath("hping3")
	if err != nil {
		lab.RequirePrivileged(t)
		t.Fatalf("hping3 is missing (make test installs it: deploy/lab/lab-deps.sh test): %v", err)
	}
	r := upLab(t, lab.Options{XDPMode: string(loader.ModeAuto)})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	held := []*heldSession{holdSession(ctx, t, r, lab.PortRW), holdSession(ctx, t, r, lab.PortRO)}
	t.Cleanup(func() {
		for _, dev := range []string{"v-lb1", "v-pg1", "v-client"} {
			out, _ := exec.Command("ip", "-n", r.NS("sw").Name, "-s", "link", "show", dev).CombinedOutput()
			t.Logf("sw %s:\n%s", dev, out)
		}
		out, _ := exec.Command("ip", "-n", r.NS("lb1").Name, "-s", "link", "show", lab.HostIf).CombinedOutput()
		t.Logf("lb1 %s:\n%s", lab.HostIf, out)
	})

	const floodFor = 10 * time.Second
	var floods []*exec.Cmd
	for _, port := range []int{lab.PortRW, lab.PortRO} {
		cmd := exec.Command("ip", "netns", "exec", r.NS("client").Name, hping, "-q", "-S", "--flood", "--rand-source",
			"-p", strconv.Itoa(port), lab.VIP.String())
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		floods = append(floods, cmd)
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
		})
	}
	start := time.Now()
	stopFloods := func() {
		for _, cmd := range floods {
			cmd.Process.Signal(syscall.SIGKILL)
		}
	}
	// A query every 100 ms on each session, for the flood and 2 s after it.
	var sent int64
	for time.Since(start) < floodFor+2*time.Second {
		if time.Since(start) >= floodFor {
			stopFloods()
		}
		sent++
		for _, h := range held {
			if err := h.failed(); err != nil {
				stopFloods()
				t.Fatalf("%v after %v of flood\n%s", err, time.Since(start).Round(time.Millisecond), status(r))
			}
			if err := h.query(); err != nil {
				continue // psql is gone: failed says why on the next round
			}
			if last := time.Unix(0, h.last.Load()); time.Since(last) > 15*time.Second {
				stopFloods()
				t.Fatalf("%s: no answer for %v (the session hangs)\n%s", h.name, time.Since(last).Round(time.Millisecond), status(r))
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	stopFloods()
	for _, h := range held {
		// Every query sent must be answered (psql answers in order).
		if err := h.waitAnswers(ctx, sent+1, 20*time.Second); err != nil {
			t.Errorf("%v\n%s", err, status(r))
			continue
		}
		t.Logf("%s: %d queries answered, none failed", h.name, h.answers.Load())
	}
	// No node left the pools: a healthy node taken out under the flood
	// has all its sessions reset, held here or not.
	name := filepath.Join(lab.StateDir(r.Prefix), "xlb-"+r.LB+".log")
	log, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(log)) {
		if strings.Contains(line, `msg="node down"`) {
			t.Errorf("a healthy node went down during the flood: %s", strings.TrimSpace(line))
		}
	}
	t.Logf("after the flood:\n%s", status(r))
}

// status returns `xlb status` of the lab's daemon, or why not.
func status(r *lab.Running) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, r.Binary, "status", "--socket", r.Socket).CombinedOutput()
	if err != nil {
		out = fmt.Appendf(out, "xlb status: %v\n", err)
	}
	name := filepath.Join(lab.StateDir(r.Prefix), "xlb-"+r.LB+".log")
	log, err := os.ReadFile(name)
	if err != nil {
		return fmt.Sprintf("%s\nreading the daemon's log: %v", out, err)
	}
	lines := strings.Split(strings.TrimSpace(string(log)), "\n")
	return fmt.Sprintf("%s\n%s, last lines:\n%s", out, name, strings.Join(lines[max(0, len(lines)-30):], "\n"))
}
