package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// adoptedPID returns the PID of a postmaster that runs on p.DataDir but
// that p did not start (pg_ctl start by xlb pg rejoin), or 0 when there is
// none. The PID comes from postmaster.pid and counts only when that
// process is alive, not a zombie, runs p's postgres binary and works in
// p.DataDir: a stale file whose PID was reused names someone else.
func (p *Postgres) adoptedPID() int {
	if p.DataDir == "" {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(p.DataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0
	}
	if _, zombie, err := procStat(pid); err != nil || zombie {
		return 0
	}
	proc := "/proc/" + strconv.Itoa(pid)
	exe, err1 := os.Readlink(proc + "/exe")
	cwd, err2 := os.Readlink(proc + "/cwd")
	if errors.Join(err1, err2) != nil || !sameFile(exe, filepath.Join(p.cfg.Bin, "postgres")) || !sameFile(cwd, p.DataDir) {
		return 0
	}
	return pid
}

// sameFile reports whether paths a and b name the same file.
func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

// stopAdopted stops an adopted postmaster (adoptedPID) as stop does its
// own: sig, a poll every 20 ms for up to timeout, then SIGKILL and 5 s
// more. It is not p's child, so its exit shows as the PID gone or a
// zombie. It returns nil when there is none.
func (p *Postgres) stopAdopted(sig syscall.Signal, mode string, timeout time.Duration) error {
	pid := p.adoptedPID()
	if pid == 0 {
		return nil
	}
	start, _, err := procStat(pid)
	if err != nil {
		return nil
	}
	gone := func() bool {
		s, zombie, err := procStat(pid)
		return err != nil || zombie || s != start
	}
	waitGone := func(d time.Duration) bool {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		limit := time.After(d)
		for !gone() {
			select {
			case <-limit:
				return gone()
			case <-tick.C:
			}
		}
		return true
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signalling adopted postgres %d: %w", pid, err)
	}
	if waitGone(timeout) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing adopted postgres %d: %w", pid, err)
	}
	if waitGone(5 * time.Second) {
		return fmt.Errorf("stopping adopted postgres %d: killed after %v without an %s shutdown", pid, timeout, mode)
	}
	return fmt.Errorf("stopping adopted postgres %d: still running after SIGKILL", pid)
}
