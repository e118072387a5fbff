package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// pgbenchBin is Debian's pgbench for PostgreSQL 15 (postgresql-client-15
// ships it beside psql).
var pgbenchBin = filepath.Join(lab.PostgresBin, "pgbench")

// workload is one pgbench run's shape: the built-in select-only script
// (-S), optionally with a new connection per transaction (-C).
type workload struct {
	Clients  int
	Threads  int
	Duration time.Duration
	Connect  bool // -C
}

// pgbenchArgs returns pgbench's arguments for w against addr (no password:
// it travels in PGPASSWORD). -n skips the vacuum pgbench runs before a test
// by default: the tables were vacuumed once by -i, and a vacuum through a
// balancer is no part of what is measured.
func pgbenchArgs(w workload, host string, port int) []string {
	args := []string{"-h", host, "-p", strconv.Itoa(port), "-U", lab.User,
		"-n", "-S", "-c", strconv.Itoa(w.Clients), "-j", strconv.Itoa(w.Threads),
		"-T", strconv.Itoa(int(w.Duration.Round(time.Second) / time.Second))}
	if w.Connect {
		args = append(args, "-C")
	}
	return append(args, lab.Database)
}

// pgbenchEnv is the environment of every pgbench and psql the bench runs:
// the password in PGPASSWORD, never argv, and a connect timeout so a
// broken path fails instead of hanging.
func pgbenchEnv(password string) []string {
	return []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "PGPASSWORD=" + password,
		"PGCONNECT_TIMEOUT=5", "PGSSLMODE=disable"}
}

// runResult is what one pgbench run reports.
type runResult struct {
	TPS float64 `json:"tps"`
	// TPSBasis is pgbench's qualifier: "without initial connection time",
	// or "including reconnection times" with -C.
	TPSBasis     string  `json:"tps_basis"`
	LatencyAvgMS float64 `json:"latency_avg_ms"`
	Transactions int64   `json:"transactions"`
	Failed       int64   `json:"failed_transactions"`
	// ConnTimeMS is "initial connection time" without -C and "average
	// connection time" with it.
	ConnTimeMS float64 `json:"connection_time_ms"`
}

var (
	tpsRe     = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(([^)]*)\)`)
	latencyRe = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	txnRe     = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	failedRe  = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
	connRe    = regexp.MustCompile(`(?m)^(?:initial|average) connection time = ([0-9.]+) ms`)
)

// errNoSummary means pgbench's output lacks the lines a result needs.
var errNoSummary = errors.New("no pgbench summary")

// parsePgbench reads pgbench's summary (PostgreSQL 15's format). It
// returns an error wrapping errNoSummary when the tps or latency line is
// missing.
func parsePgbench(out string) (runResult, error) {
	var r runResult
	m := tpsRe.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("%w: no tps line", errNoSummary)
	}
	r.TPS, _ = strconv.ParseFloat(m[1], 64)
	r.TPSBasis = m[2]
	m = latencyRe.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("%w: no latency average line", errNoSummary)
	}
	r.LatencyAvgMS, _ = strconv.ParseFloat(m[1], 64)
	if m := txnRe.FindStringSubmatch(out); m != nil {
		r.Transactions, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := failedRe.FindStringSubmatch(out); m != nil {
		r.Failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := connRe.FindStringSubmatch(out); m != nil {
		r.ConnTimeMS, _ = strconv.ParseFloat(m[1], 64)
	}
	return r, nil
}

// pgbench runs pgbench with args in ns, logging in with password, and
// returns its stdout. A failure
// carries the tail of its stderr.
func pgbench(ctx context.Context, ns *lab.Namespace, password string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := ns.Command(ctx, pgbenchBin, args...)
	cmd.Env = pgbenchEnv(password)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("running pgbench %s in %s: %w: %s", strings.Join(args, " "), ns.Name, err, lastLines(stderr.String(), 5))
	}
	return stdout.String(), nil
}

// runWorkload runs w against host:port from ns, logging in with password,
// and parses the summary.
// It bounds the run by the workload's duration plus a minute.
func runWorkload(ctx context.Context, ns *lab.Namespace, password string, w workload, host string, port int) (runResult, error) {
	ctx, cancel := context.WithTimeout(ctx, w.Duration+time.Minute)
	defer cancel()
	out, err := pgbench(ctx, ns, password, pgbenchArgs(w, host, port)...)
	if err != nil {
		return runResult{}, err
	}
	r, err := parsePgbench(out)
	if err != nil {
		return r, fmt.Errorf("parsing pgbench's output against %s:%d: %w:\n%s", host, port, err, lastLines(out, 20))
	}
	if r.Failed > 0 {
		return r, fmt.Errorf("pgbench against %s:%d: %d failed transactions", host, port, r.Failed)
	}
	return r, nil
}

// lastLines returns the last n lines of s, trimmed.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
