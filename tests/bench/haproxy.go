package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// haproxyConfig is what the classic setup's haproxy.cfg needs: where to
// listen, the primary behind port 3000, the replicas behind port 3001.
type haproxyConfig struct {
	Listen   netip.Addr
	PortRW   int
	PortRO   int
	Primary  haproxyServer
	Replicas []haproxyServer
	User     string // pgsql-check's user
	// StatsSocket is the admin socket the bench polls for check results.
	StatsSocket string
}

type haproxyServer struct {
	Name string
	Addr netip.AddrPort
}

// haproxyTemplate is the classic HAProxy-in-front-of-PostgreSQL
// configuration: TCP mode, generous timeouts, pgsql-check every 3 s. It
// runs as root without chroot or daemon mode (the bench owns the process
// and stops it by PID) and logs nothing but its own alerts to stderr.
var haproxyTemplate = template.Must(template.New("haproxy.cfg").Parse(`# written by tests/bench: the classic config (3000 -> primary, 3001 -> replicas)
global
    maxconn 4096
    stats socket {{.StatsSocket}} mode 600 level admin

defaults
    mode tcp
    retries 2
    timeout connect 5s
    timeout client 30m
    timeout server 30m
    timeout check 3s

listen pg_rw
    bind {{.Listen}}:{{.PortRW}}
    option pgsql-check user {{.User}}
    default-server inter 3s fall 3 rise 2
    server {{.Primary.Name}} {{.Primary.Addr}} check

listen pg_ro
    bind {{.Listen}}:{{.PortRO}}
    balance leastconn
    option pgsql-check user {{.User}}
    default-server inter 3s fall 3 rise 2
{{- range .Replicas}}
    server {{.Name}} {{.Addr}} check
{{- end}}
`))

// render returns the configuration file's text.
func (c haproxyConfig) render() (string, error) {
	var b strings.Builder
	if err := haproxyTemplate.Execute(&b, c); err != nil {
		return "", fmt.Errorf("rendering haproxy.cfg: %w", err)
	}
	return b.String(), nil
}

// haproxy is an HAProxy process the bench started in a namespace.
type haproxy struct {
	cmd    *exec.Cmd
	cfg    haproxyConfig
	log    string
	exited chan struct{}
}

// startHAProxy writes the configuration to dir, checks it (haproxy -c)
// and starts haproxy in the foreground (-db) inside ns, its output in
// dir/haproxy.log. The process is haproxy itself, in a session of its
// own, so Stop signals it by PID.
func startHAProxy(ctx context.Context, ns *lab.Namespace, dir string, cfg haproxyConfig) (*haproxy, error) {
	text, err := cfg.render()
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(text), 0o600); err != nil {
		return nil, fmt.Errorf("writing %s: %w", cfgPath, err)
	}
	if out, err := exec.CommandContext(ctx, "haproxy", "-c", "-q", "-f", cfgPath).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("checking %s: %w: %s", cfgPath, err, strings.TrimSpace(string(out)))
	}
	logPath := filepath.Join(dir, "haproxy.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", logPath, err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command("haproxy", "-db", "-f", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := ns.Start(cmd); err != nil {
		return nil, fmt.Errorf("starting haproxy in %s: %w", ns.Name, err)
	}
	h := &haproxy{cmd: cmd, cfg: cfg, log: logPath, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(h.exited)
	}()
	return h, nil
}

// PID returns the haproxy process's PID.
func (h *haproxy) PID() int { return h.cmd.Process.Pid }

// waitChecks polls the stats socket every 200 ms until every server of
// the configuration is UP with a passed layer-7 check (L7OK: a PostgreSQL
// server answered pgsql-check), haproxy exits, or ctx ends.
func (h *haproxy) waitChecks(ctx context.Context) error {
	want := []string{h.cfg.Primary.Name}
	for _, r := range h.cfg.Replicas {
		want = append(want, r.Name)
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last map[string]string
	var lastErr error
	for {
		st, err := h.serverStates()
		if err == nil {
			last = st
			if allOK(st, want) {
				return nil
			}
		}
		lastErr = err
		select {
		case <-h.exited:
			return fmt.Errorf("haproxy exited: %s", lastLines(readFileString(h.log), 10))
		case <-ctx.Done():
			return fmt.Errorf("haproxy's checks: last seen %v (last error %v): %w", last, lastErr, ctx.Err())
		case <-tick.C:
		}
	}
}

func allOK(st map[string]string, want []string) bool {
	for _, s := range want {
		if st[s] != "UP L7OK" {
			return false
		}
	}
	return true
}

// serverStates asks the stats socket for `show stat` and returns
// "status check_status" by server name.
func (h *haproxy) serverStates() (map[string]string, error) {
	c, err := net.DialTimeout("unix", h.cfg.StatsSocket, time.Second)
	if err != nil {
		return nil, fmt.Errorf("dialing haproxy's stats socket: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		return nil, fmt.Errorf("writing to haproxy's stats socket: %w", err)
	}
	return parseShowStat(bufio.NewReader(c))
}

// parseShowStat parses `show stat` CSV (header "# pxname,svname,…") and
// returns "status check_status" by server name, frontends and backends
// left out.
func parseShowStat(r io.Reader) (map[string]string, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("reading show stat header: %w", err)
	}
	if len(header) > 0 {
		header[0] = strings.TrimPrefix(header[0], "# ")
	}
	col := func(name string) int { return slices.Index(header, name) }
	sv, status, check := col("svname"), col("status"), col("check_status")
	if sv < 0 || status < 0 || check < 0 {
		return nil, fmt.Errorf("show stat header %q: missing svname, status or check_status", strings.Join(header, ","))
	}
	out := map[string]string{}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading show stat: %w", err)
		}
		if len(rec) <= max(sv, status, check) || rec[sv] == "FRONTEND" || rec[sv] == "BACKEND" {
			continue
		}
		out[rec[sv]] = rec[status] + " " + rec[check]
	}
}

// Stop sends haproxy SIGTERM (hard stop), waits up to 5 s, then SIGKILL
// and waits 5 s more. Stopping an exited haproxy is no error.
func (h *haproxy) Stop() error {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		select {
		case <-h.exited:
			return nil
		default:
		}
		if err := h.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("signalling haproxy (pid %d): %w", h.PID(), err)
		}
		select {
		case <-h.exited:
			return nil
		case <-time.After(5 * time.Second):
		}
	}
	return fmt.Errorf("stopping haproxy (pid %d): still running after SIGKILL", h.PID())
}

func readFileString(name string) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return string(b)
}
