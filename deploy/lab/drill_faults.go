package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Fault is what Drill does to the primary.
type Fault string

const (
	// FaultKill sends SIGKILL to the postmaster: its backends and
	// walsenders notice and exit, connections close.
	FaultKill Fault = "kill"
	// FaultStop is pg_ctl stop -m immediate: SIGQUIT to the postmaster,
	// every process exits at once, no shutdown checkpoint.
	FaultStop Fault = "stop"
	// FaultPartition takes the primary's lab interface down inside its
	// namespace: the server runs on, and the replicas and the LB lose it
	// without a word (the replicas notice after wal_receiver_timeout).
	FaultPartition Fault = "partition"
)

// Faults lists every Fault.
var Faults = []Fault{FaultKill, FaultStop, FaultPartition}

// ParseFault returns the Fault named s, or an error listing the names.
func ParseFault(s string) (Fault, error) { return parseKind("fault", s, Faults) }

// Inject does f to the PostgreSQL host host and returns the time it did
// it: just before the signal (kill, stop) or the interface change
// (partition). For stop it returns once the server is down.
func (r *Running) Inject(ctx context.Context, host string, f Fault) (time.Time, error) {
	pg, err := r.Postgres(host)
	if err != nil {
		return time.Time{}, err
	}
	switch f {
	case FaultKill:
		pid := pg.PID()
		if pid == 0 {
			return time.Time{}, fmt.Errorf("killing postgres on %s: %w", host, errNoPostmaster)
		}
		t0 := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return time.Time{}, fmt.Errorf("killing postgres %d on %s: %w", pid, host, err)
		}
		return t0, nil
	case FaultStop:
		if pg.PID() == 0 {
			return time.Time{}, fmt.Errorf("stopping postgres on %s: %w", host, errNoPostmaster)
		}
		cmd := pg.asPostgres(ctx, "pg_ctl", "stop", "-D", pg.DataDir, "-m", "immediate", "-w", "-t", "30")
		t0 := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			return time.Time{}, fmt.Errorf("running pg_ctl stop -m immediate on %s: %w: %s", host, err, tail(out, 5))
		}
		return t0, nil
	case FaultPartition:
		t0 := time.Now()
		if err := r.NS(host).Run("ip", "link", "set", HostIf, "down"); err != nil {
			return time.Time{}, fmt.Errorf("cutting %s off: %w", host, err)
		}
		return t0, nil
	}
	return time.Time{}, fmt.Errorf("injecting %q: unknown fault", f)
}

// Revive undoes f on host: for kill and stop it waits (up to 30 s) until
// every process of the old server has left host's namespace, starts the
// server again on its data (it comes back as it was: a primary on its old
// timeline) and records its PID in the state file; for partition it brings
// the interface back up.
func (r *Running) Revive(ctx context.Context, host string, f Fault) error {
	if f == FaultPartition {
		if err := r.NS(host).Run("ip", "link", "set", HostIf, "up"); err != nil {
			return fmt.Errorf("bringing %s back: %w", host, err)
		}
		return nil
	}
	pg, err := r.Postgres(host)
	if err != nil {
		return err
	}
	if err := waitNamespaceEmpty(ctx, r.NS(host), 30*time.Second); err != nil {
		return fmt.Errorf("restarting postgres on %s: %w", host, err)
	}
	if err := waitPIDFileGone(ctx, pg.DataDir, 30*time.Second); err != nil {
		return fmt.Errorf("restarting postgres on %s: %w", host, err)
	}
	if err := pg.start(ctx); err != nil {
		return fmt.Errorf("restarting postgres on %s: %w", host, err)
	}
	return r.recordPostmaster(host, pg.PID())
}

// waitNamespaceEmpty polls every 20 ms until no process is left in ns
// (a killed postmaster's children exit once they notice), for up to d.
func waitNamespaceEmpty(ctx context.Context, ns *Namespace, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		pids, err := namespacePIDs(ns.Name)
		if err == nil && len(pids) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the processes in %s to exit: %w (left %v, last error %v)", ns.Name, ctx.Err(), pids, err)
		case <-tick.C:
		}
	}
}

// waitPIDFileGone polls every 20 ms, for up to d, until the process that
// dataDir's postmaster.pid names is gone, zombie included: a new
// postmaster refuses to start while kill(pid, 0) reaches the old one, and
// a killed postmaster whose parent has exited lingers as a zombie until
// init reaps it.
func waitPIDFileGone(ctx context.Context, dataDir string, d time.Duration) error {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading postmaster.pid: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return nil // PostgreSQL overwrites a file it cannot read
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the old postmaster %d to be gone: %w", pid, ctx.Err())
		case <-tick.C:
		}
	}
}

// Rejoin brings the old primary host back as a streaming replica of
// primary: it runs `xlb pg rejoin` inside host's namespace (as root; the
// PostgreSQL programs run as postgres) with the lab's administrative role
// for pg_rewind and the slot, application name and slot host, and the
// passwords in the environment; then it records the server's new PID in
// the state file. It returns once the replica streams (rejoin waits for
// that), or an error with rejoin's output.
func (r *Running) Rejoin(ctx context.Context, host, primary string) error {
	pg, err := r.Postgres(host)
	if err != nil {
		return err
	}
	paddr := HostAddr(primary)
	if !paddr.IsValid() {
		return fmt.Errorf("rejoining %s: unknown primary %q", host, primary)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.Binary, "pg", "rejoin",
		"--data-dir", pg.DataDir,
		"--primary", fmt.Sprintf("%s:%d", paddr, PostgresPort),
		"--application-name", host,
		"--slot", host,
		"--pg-user", AdminUser,
		"--replication-user", ReplicationUser,
		"--passfile", filepath.Join(pg.DataDir, passfileName),
		"--log-file", pg.LogFile,
		"--timeout", "90s")
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C",
		"XLB_PG_ADMIN_PASSWORD=" + r.Secrets.AdminPassword, "XLB_PG_REPLICATION_PASSWORD=" + r.Secrets.ReplicationPassword}
	cmd.Dir = "/"
	out, err := runIn(r.NS(host), cmd)
	if err != nil {
		return fmt.Errorf("running xlb pg rejoin on %s (primary %s): %w: %s", host, primary, err, tail(out, 15))
	}
	pid := pg.PID()
	if pid == 0 {
		return fmt.Errorf("rejoining %s: %w after xlb pg rejoin: %s", host, errNoPostmaster, tail(out, 15))
	}
	return r.recordPostmaster(host, pid)
}
