package compose

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
)

const (
	vip    = "172.20.0.100"
	pg1IP  = "172.20.0.10"
	subnet = "172.20.0.0/16"
)

// composeLab is one compose lab of this test run: its own project name,
// secrets in a temporary directory, no .env written.
type composeLab struct {
	t       *testing.T
	dir     string // deploy/compose
	project string
	env     []string
	compose []string // docker-compose, or docker compose
	secrets string   // the password files
}

func newComposeLab(t *testing.T) *composeLab {
	t.Helper()
	lab.RequirePrivileged(t)
	need := func(what string, err error) {
		if err == nil {
			return
		}
		if os.Getenv("XLB_REQUIRE_PRIVILEGED") == "1" {
			t.Fatalf("the compose lab needs %s: %v", what, err)
		}
		t.Skipf("the compose lab needs %s: %v", what, err)
	}
	_, err := exec.LookPath("docker")
	need("docker", err)
	need("a running Docker Engine", exec.Command("docker", "info").Run())
	compose := []string{"docker", "compose"}
	if exec.Command("docker", "compose", "version").Run() != nil {
		_, err := exec.LookPath("docker-compose")
		need("docker-compose or the compose plugin", err)
		compose = []string{"docker-compose"}
	}
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "..", "deploy", "compose")
	project := fmt.Sprintf("xlbtest%d", os.Getpid())
	secrets := t.TempDir()
	env := append(os.Environ(),
		"COMPOSE_PROJECT_NAME="+project,
		"XLB_SECRETS_DIR="+secrets,
		"XLB_NO_ENV_FILE=1",
		"XLB_UP_TIMEOUT=300",
		// Published ports on loopback, picked by the engine: the host's
		// 3000, 3001, 8080-8082 may be taken.
		"XLB_RW_PORT=127.0.0.1:", "XLB_RO_PORT=127.0.0.1:",
		"XLB_HTTP_PORT_LB1=127.0.0.1:", "XLB_HTTP_PORT_LB2=127.0.0.1:",
	)
	return &composeLab{t: t, dir: dir, project: project, env: env, compose: compose, secrets: secrets}
}

// run runs name args with the lab's environment in deploy/compose, bounded
// by timeout, and returns its combined output.
func (l *composeLab) run(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = l.dir
	cmd.Env = l.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("running %s %s: %w\n%s", name, strings.Join(args, " "), err, tail(out, 40))
	}
	return string(out), nil
}

// dc runs the compose tool on the lab's file.
func (l *composeLab) dc(timeout time.Duration, args ...string) (string, error) {
	args = append(append(slices.Clone(l.compose[1:]), "-f", filepath.Join(l.dir, "docker-compose.yml")), args...)
	return l.run(timeout, l.compose[0], args...)
}

// id returns the container ID of service.
func (l *composeLab) id(service string) string {
	l.t.Helper()
	out, err := l.dc(time.Minute, "ps", "-q", service)
	if err != nil || strings.TrimSpace(out) == "" {
		l.t.Fatalf("finding the container of %s: %v %s", service, err, out)
	}
	return strings.TrimSpace(out)
}

// docker runs docker args and fails the test on error.
func (l *composeLab) docker(args ...string) string {
	l.t.Helper()
	out, err := l.run(2*time.Minute, "docker", args...)
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

// exec runs a shell script in service's container and returns its output.
func (l *composeLab) exec(service, script string) (string, error) {
	return l.dc(2*time.Minute, "exec", "-T", service, "sh", "-c", script)
}

func (l *composeLab) mustExec(service, script string) string {
	l.t.Helper()
	out, err := l.exec(service, script)
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

// waitFor polls cond every 500 ms until it holds or timeout passes.
func (l *composeLab) waitFor(what string, timeout time.Duration, cond func() bool) time.Duration {
	l.t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			l.t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
	return time.Since(start)
}

// startedAt returns when container id last started.
func (l *composeLab) startedAt(id string) time.Time {
	l.t.Helper()
	out, err := l.run(time.Minute, "docker", "inspect", "-f", "{{.State.StartedAt}}", id)
	if err != nil {
		l.t.Fatal(err)
	}
	at, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(out))
	if err != nil {
		l.t.Fatal(err)
	}
	return at
}

// finishedAt returns when container id last exited, as the engine saw it.
func (l *composeLab) finishedAt(id string) time.Time {
	l.t.Helper()
	var at time.Time
	l.waitFor("container "+id+" exited", time.Minute, func() bool {
		out, err := l.run(time.Minute, "docker", "inspect", "-f", "{{.State.Running}} {{.State.FinishedAt}}", id)
		f := strings.Fields(out)
		if err != nil || len(f) != 2 || f[0] != "false" {
			return false
		}
		at, err = time.Parse(time.RFC3339Nano, f[1])
		return err == nil
	})
	return at
}

func (l *composeLab) healthy(service string) bool {
	out, err := l.dc(time.Minute, "ps", "-q", service)
	if err != nil || strings.TrimSpace(out) == "" {
		return false
	}
	h, err := l.run(time.Minute, "docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", strings.TrimSpace(out))
	return err == nil && strings.TrimSpace(h) == "healthy"
}

// holdsVIP reports whether service's eth0 has the VIP.
func (l *composeLab) holdsVIP(service string) bool {
	out, err := l.exec(service, "ip -4 -o addr show dev eth0")
	return err == nil && strings.Contains(out, " "+vip+"/")
}

// psql runs one statement through the VIP on port from the client
// container and returns psql's unaligned output.
func (l *composeLab) psql(port int, sql string) string {
	l.t.Helper()
	return strings.TrimSpace(l.mustExec("client", fmt.Sprintf("psql -X -At -v ON_ERROR_STOP=1 -p %d -c %s", port, shellQuote(sql))))
}

// TestComposeLab brings the compose lab up and runs, in order: routing,
// restarts of lb1 under load, kill lb1, kill pg1, down -v.
func TestComposeLab(t *testing.T) {
	l := newComposeLab(t)

	t.Run("config of the users' file", func(t *testing.T) {
		// The plain file as users run it at home: no variables set.
		env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
		args := append(slices.Clone(l.compose[1:]), "-f", filepath.Join(l.dir, "docker-compose.yml"), "config", "-q")
		cmd := exec.Command(l.compose[0], args...)
		cmd.Dir, cmd.Env = l.dir, env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s config -q: %v\n%s", strings.Join(l.compose, " "), err, out)
		}
		args = append(args[:len(args)-2], "--profile", "admin", "config", "--services")
		cmd = exec.Command(l.compose[0], args...)
		cmd.Dir, cmd.Env = l.dir, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("config --services with profile admin: %v\n%s", err, out)
		}
		for _, s := range []string{"pg1", "pg2", "pg3", "lb1", "lb2", "client", "pgadmin"} {
			if !slices.Contains(strings.Fields(string(out)), s) {
				t.Errorf("service %s missing from %q", s, out)
			}
		}
	})

	base := os.Getenv("XLB_BASE_IMAGE")
	if base == "" {
		start := time.Now()
		out, err := l.run(20*time.Minute, "bash", filepath.Join(l.dir, "base.sh"))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		base = lines[len(lines)-1]
		t.Logf("base image %s ready in %v (built offline when new)", base, time.Since(start).Round(time.Second))
	}
	l.env = append(l.env, "XLB_BASE_IMAGE="+base)

	pins := "/sys/fs/bpf/xlb-compose-" + l.project
	t.Cleanup(func() {
		if out, err := l.run(5*time.Minute, "bash", filepath.Join(l.dir, "lab.sh"), "down"); err != nil {
			t.Errorf("cleanup: %v\n%s", err, out)
		}
		os.RemoveAll(pins)
	})
	start := time.Now()
	if out, err := l.run(15*time.Minute, "bash", filepath.Join(l.dir, "lab.sh"), "up"); err != nil {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	t.Logf("lab up (images built, every service healthy, lb1 routing) in %v", time.Since(start).Round(time.Second))

	t.Run("routing", func(t *testing.T) { testRouting(t, l) })
	t.Run("published ports", func(t *testing.T) { testPublished(t, l) })
	t.Run("restart lb1 under load", func(t *testing.T) { testRestartLB(t, l) })
	t.Run("kill lb1", func(t *testing.T) { testKillLB(t, l) })
	t.Run("kill pg1", func(t *testing.T) { testKillPrimary(t, l) })
	t.Run("down leaves nothing", func(t *testing.T) { testDown(t, l, pins) })
}

// testRouting: writes land on pg1, reads spread over pg2 and pg3.
func testRouting(t *testing.T, l *composeLab) {
	l.t = t
	got := l.psql(3000, "CREATE TABLE IF NOT EXISTS routing (id serial PRIMARY KEY); INSERT INTO routing DEFAULT VALUES; SELECT host(inet_server_addr()) || ' ' || pg_is_in_recovery()")
	if want := pg1IP + " false"; lastLine(got) != want {
		t.Fatalf("write through VIP:3000 answered by %q, want %q", got, want)
	}
	out := l.mustExec("client", `for i in $(seq 20); do psql -X -At -p 3001 -c "SELECT host(inet_server_addr()) || ' ' || pg_is_in_recovery()"; done`)
	seen := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		seen[line]++
	}
	t.Logf("20 reads through VIP:3001: %v", seen)
	if len(seen) != 2 || seen["172.20.0.11 true"] == 0 || seen["172.20.0.12 true"] == 0 {
		t.Fatalf("reads through VIP:3001 went to %v, want both replicas (172.20.0.11, 172.20.0.12) and nothing else", seen)
	}
}

// testPublished reaches lb1's HTTP and the relay to VIP:3000 through the
// ports published on the host's loopback.
func testPublished(t *testing.T, l *composeLab) {
	l.t = t
	port := func(service, p string) string {
		t.Helper()
		out, err := l.dc(time.Minute, "port", service, p)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	// lb1's port is published by lb1-net, whose network namespace it joins.
	metrics := "http://" + port("lb1-net", "8080") + "/metrics"
	resp, err := http.Get(metrics)
	if err != nil {
		t.Fatalf("GET %s: %v", metrics, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "xlb_") {
		t.Fatalf("GET %s: %s, %d bytes without xlb_ metrics", metrics, resp.Status, len(body))
	}
	hostPort := strings.SplitN(port("publish", "3000"), ":", 2)
	pw, err := os.ReadFile(filepath.Join(l.secrets, "pg_password"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("psql", "-X", "-At", "-h", hostPort[0], "-p", hostPort[1], "-U", "ramos", "-d", "ramos-test-db",
		"-c", "SELECT host(inet_server_addr())")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+strings.TrimSpace(string(pw)), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != pg1IP {
		t.Fatalf("psql through the published port %v to VIP:3000: %v %q, want %s", hostPort, err, out, pg1IP)
	}
}

// testRestartLB runs pgbench through VIP:3000 over long-lived connections
// while lb1 is restarted (docker restart, then docker kill + start): no
// client loses its connection. lb1's network namespace is lb1-net's, so
// eth0 and the XDP program on it stay while the daemon is away, and its
// maps and link are pinned in the host's bpffs for the daemon that comes
// back. lb2 is stopped meanwhile: with it up it would take the VIP while
// lb1 is away, and it has no record of lb1's flows.
func testRestartLB(t *testing.T, l *composeLab) {
	l.t = t
	if _, err := l.dc(2*time.Minute, "stop", "lb2"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.t = t
		if _, err := l.dc(2*time.Minute, "start", "lb2"); err != nil {
			t.Error(err)
			return
		}
		l.waitFor("lb2 healthy again", 2*time.Minute, func() bool { return l.healthy("lb2") })
	})
	l.mustExec("client", "pgbench -q -i -s 1 -p 3000")
	for _, how := range []string{"docker restart", "docker kill + docker start"} {
		pb := startStream(t, l, "client", "pgbench -n -c 4 -j 2 -T 20 -P 1 -p 3000")
		pb.waitLine(t, "pgbench reporting progress", time.Minute, func(s string) bool { return strings.HasPrefix(s, "progress:") })
		id := l.id("lb1")
		before := l.startedAt(id)
		if how == "docker restart" {
			l.docker("restart", id)
		} else {
			l.docker("kill", id)
			l.docker("start", id)
		}
		if l.startedAt(id).Equal(before) {
			t.Fatalf("lb1 was not restarted by %s", how)
		}
		l.waitFor("lb1 holding the VIP after "+how, 2*time.Minute, func() bool { return l.holdsVIP("lb1") })
		out, err := pb.wait(3 * time.Minute)
		t.Logf("%s of lb1 under pgbench:\n%s", how, tail([]byte(out), 12))
		if err != nil {
			t.Fatalf("pgbench across %s of lb1: %v\n%s", how, err, out)
		}
		if strings.Contains(out, "aborted") || !strings.Contains(out, "number of failed transactions: 0 ") {
			t.Fatalf("pgbench lost connections across %s of lb1:\n%s", how, out)
		}
		// pgbench's own clock: the stall while lb1 was away, then
		// transactions again on the same connections.
		var tps []float64
		for _, line := range strings.Split(out, "\n") {
			var at, v float64
			if n, _ := fmt.Sscanf(line, "progress: %f s, %f tps", &at, &v); n == 2 {
				tps = append(tps, v)
			}
		}
		stall := 0
		for _, v := range tps {
			if v == 0 {
				stall++
			}
		}
		if len(tps) < 3 || slices.Min(tps[len(tps)-3:]) == 0 {
			t.Fatalf("pgbench's connections do not carry transactions at the end, after %s of lb1:\n%s", how, out)
		}
		t.Logf("%s of lb1: pgbench's 4 connections went on, 0 failed; %d of %d progress lines (1 s) with 0 tps", how, stall, len(tps))
	}
}

// testKillLB kills lb1 while a client opens a connection through
// VIP:3000 every 100 ms: lb2 takes the VIP and connections resume; the
// gap is logged. lb1 comes back and takes the VIP back (preemption).
func testKillLB(t *testing.T, l *composeLab) {
	l.t = t
	l.waitFor("lb1 and lb2 healthy", 2*time.Minute, func() bool { return l.healthy("lb1") && l.healthy("lb2") })
	p := startProbe(t, l, `psql -X -At -p 3000 -c "SELECT host(inet_server_addr())"`)
	p.waitOK(t, 5, 30*time.Second)
	id := l.id("lb1")
	l.docker("kill", id)
	died := l.finishedAt(id)
	neigh, _ := l.exec("client", "ip neigh show 172.20.0.100; ip neigh show 172.20.0.22")
	t.Logf("client's neighbour entries %v after lb1 died (lb1 is 02:42:ac:14:00:15, lb2 02:42:ac:14:00:16):\n%s",
		time.Since(died).Round(time.Millisecond), neigh)
	p.waitLine(t, "connections through the VIP resuming", 60*time.Second, func(pl probeLine) bool {
		return pl.ok && pl.at.After(died.Add(time.Second))
	})
	last, first, fails := resumed(p.stop(t), died, func(probeLine) bool { return true })
	t.Logf("docker kill lb1: last connection through lb1 %v before lb1 died, first through lb2 %v after; gap between good connections %v, %d failed attempts (a new psql connection every 100 ms; busy machine)",
		died.Sub(last).Round(time.Millisecond), first.Sub(died).Round(time.Millisecond), first.Sub(last).Round(time.Millisecond), fails)
	if !l.holdsVIP("lb2") {
		t.Fatal("lb2 does not hold the VIP after lb1 was killed")
	}
	if out, _ := l.exec("lb2", "xlb status"); !strings.Contains(strings.ToLower(out), "master") {
		t.Errorf("xlb status on lb2 does not say master:\n%s", out)
	}
	l.docker("start", id)
	l.waitFor("lb1 healthy and holding the VIP again", 2*time.Minute, func() bool { return l.healthy("lb1") && l.holdsVIP("lb1") })
	l.waitFor("lb2 giving the VIP up", time.Minute, func() bool { return !l.holdsVIP("lb2") })
}

// testKillPrimary kills pg1 while a client writes through VIP:3000 every
// 100 ms: a replica is promoted and writes resume on it; the outage is
// logged.
func testKillPrimary(t *testing.T, l *composeLab) {
	l.t = t
	l.psql(3000, "CREATE TABLE IF NOT EXISTS writes (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
	p := startProbe(t, l, `psql -X -At -p 3000 -c "INSERT INTO writes DEFAULT VALUES RETURNING host(inet_server_addr())"`)
	p.waitOK(t, 5, 30*time.Second)
	id := l.id("pg1")
	l.docker("kill", id)
	died := l.finishedAt(id)
	p.waitLine(t, "a write on a promoted replica", 90*time.Second, func(pl probeLine) bool {
		return pl.ok && pl.out != pg1IP
	})
	last, first, fails := resumed(p.stop(t), died, func(pl probeLine) bool { return pl.out != pg1IP })
	var on string
	for _, pl := range p.parsed() {
		if pl.at.Equal(first) {
			on = pl.out
		}
	}
	t.Logf("docker kill pg1: last write on pg1 %v before pg1 died, first on %s (promoted) %v after; write outage %v, %d failed attempts (a new psql connection every 100 ms; probes every 1 s, 3 misses; busy machine)",
		died.Sub(last).Round(time.Millisecond), on, first.Sub(died).Round(time.Millisecond), first.Sub(last).Round(time.Millisecond), fails)
	if on != "172.20.0.11" && on != "172.20.0.12" {
		t.Fatalf("writes resumed on %q, want pg2 or pg3", on)
	}
	if got := l.psql(3000, "SELECT pg_is_in_recovery()"); got != "f" {
		t.Fatalf("VIP:3000 reaches a node in recovery (%q) after the failover", got)
	}
	t.Logf("xlb backends on lb1 after the failover:\n%s", l.mustExec("lb1", "xlb backends"))
}

// testDown: down -v removes the lab's containers, network, volumes and
// pins on the host.
func testDown(t *testing.T, l *composeLab, pins string) {
	l.t = t
	if _, err := os.Stat(pins); err != nil {
		t.Fatalf("the lab's pins are not in the host's bpffs before down: %v", err)
	}
	if out, err := l.run(5*time.Minute, "bash", filepath.Join(l.dir, "lab.sh"), "down"); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	label := "label=com.docker.compose.project=" + l.project
	for _, what := range [][]string{
		{"ps", "-a", "-q", "--filter", label},
		{"network", "ls", "-q", "--filter", label},
		{"volume", "ls", "-q", "--filter", label},
		{"network", "ls", "-q", "--filter", "name=" + l.project},
		{"volume", "ls", "-q", "--filter", "name=" + l.project},
	} {
		if out := strings.TrimSpace(l.docker(what...)); out != "" {
			t.Errorf("docker %s: left behind %q", strings.Join(what, " "), out)
		}
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		ents, _ := os.ReadDir(pins)
		t.Errorf("pins left on the host in %s: %v (%v)", pins, ents, err)
	}
	if out, _ := exec.Command("ip", "-4", "-o", "addr", "show", "to", subnet).Output(); len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("the root namespace still has an address in %s: %s", subnet, out)
	}
}

// stream is a command in a container whose output lines are collected as
// they come.
type stream struct {
	cmd     *exec.Cmd
	started time.Time
	mu      sync.Mutex
	buf     bytes.Buffer
	lines   []string
	done    chan error    // the command's Wait result
	read    chan struct{} // closed when the reader has seen EOF: every line is in lines
}

func startStream(t *testing.T, l *composeLab, service, script string) *stream {
	t.Helper()
	args := append(append(slices.Clone(l.compose[1:]), "-f", filepath.Join(l.dir, "docker-compose.yml")), "exec", "-T", service, "sh", "-c", script)
	s := &stream{cmd: exec.Command(l.compose[0], args...), done: make(chan error, 1), read: make(chan struct{})}
	s.cmd.Dir, s.cmd.Env = l.dir, l.env
	r, w := io.Pipe()
	s.cmd.Stdout, s.cmd.Stderr = w, w
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.started = time.Now()
	go func() {
		defer close(s.read)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			s.mu.Lock()
			s.lines = append(s.lines, sc.Text())
			s.buf.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
		}
		// A line too long for the scanner ends it: drain the pipe, so the
		// command's writes never block and EOF is still seen.
		io.Copy(io.Discard, r)
	}()
	go func() { err := s.cmd.Wait(); w.Close(); s.done <- err }()
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.cmd.Process.Kill()
		}
	})
	return s
}

func (s *stream) waitLine(t *testing.T, what string, timeout time.Duration, match func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		found := slices.ContainsFunc(s.lines, match)
		s.mu.Unlock()
		if found {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v; output:\n%s", what, timeout, s.output())
}

func (s *stream) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// wait waits for the command to end and for its output to be read to
// EOF, both within timeout, and returns the output.
func (s *stream) wait(timeout time.Duration) (string, error) {
	deadline := time.After(timeout)
	select {
	case err := <-s.done:
		// Wait returned and closed the pipe's writer; the reader gets the
		// rest of the output and EOF, and closes read.
		select {
		case <-s.read:
			return s.output(), err
		case <-deadline:
			return s.output(), errors.Join(err, fmt.Errorf("output not read to its end within %v of the start of the wait", timeout))
		}
	case <-deadline:
		s.cmd.Process.Kill()
		return s.output(), fmt.Errorf("still running after %v", timeout)
	}
}

// probe runs a statement in a loop in the client container, one new
// connection every 100 ms, for at most two minutes or until stopped,
// printing "<unix nanoseconds> ok|fail <output>" per attempt.
type probe struct {
	l    *composeLab
	s    *stream
	flag string
}

type probeLine struct {
	at  time.Time
	ok  bool
	out string
}

func startProbe(t *testing.T, l *composeLab, stmt string) *probe {
	t.Helper()
	flag := fmt.Sprintf("/tmp/probe-stop-%d", time.Now().UnixNano())
	script := fmt.Sprintf(`end=$(( $(date +%%s) + 120 ))
while [ ! -e %[1]s ] && [ $(date +%%s) -lt $end ]; do
	if out=$(PGCONNECT_TIMEOUT=2 %[2]s 2>&1); then r=ok; else r=fail; fi
	echo "$(date +%%s%%N) $r $(echo "$out" | head -n 1)"
	sleep 0.1
done`, flag, stmt)
	return &probe{l: l, s: startStream(t, l, "client", script), flag: flag}
}

func (p *probe) parsed() []probeLine {
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	var out []probeLine
	for _, line := range p.s.lines {
		f := strings.SplitN(line, " ", 3)
		if len(f) < 2 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		pl := probeLine{at: time.Unix(0, ns), ok: f[1] == "ok"}
		if len(f) == 3 {
			pl.out = strings.TrimSpace(f[2])
		}
		out = append(out, pl)
	}
	return out
}

func (p *probe) waitLine(t *testing.T, what string, timeout time.Duration, match func(probeLine) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if slices.ContainsFunc(p.parsed(), match) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v; probe:\n%s", what, timeout, tail([]byte(p.s.output()), 30))
}

func (p *probe) waitOK(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	count := 0
	p.waitLine(t, fmt.Sprintf("%d good probes", n), timeout, func(pl probeLine) bool {
		if pl.ok {
			count++
		}
		return count >= n
	})
}

func (p *probe) stop(t *testing.T) []probeLine {
	t.Helper()
	p.l.exec("client", "touch "+p.flag)
	if _, err := p.s.wait(time.Minute); err != nil {
		t.Logf("probe: %v", err)
	}
	return p.parsed()
}

// resumed returns the end of the last good attempt that ended before
// died, the end of the first good attempt after it that good accepts and
// that no failed attempt follows before it, and the failed attempts after
// died.
func resumed(lines []probeLine, died time.Time, good func(probeLine) bool) (last, first time.Time, fails int) {
	for _, pl := range lines {
		switch {
		case !pl.at.After(died):
			if pl.ok {
				last = pl.at
			}
		case !pl.ok:
			fails++
			first = time.Time{}
		case first.IsZero() && good(pl):
			first = pl.at
		}
	}
	return last, first, fails
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
