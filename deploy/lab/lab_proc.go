package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procStat returns pid's start time in clock ticks since boot (field 22 of
// /proc/<pid>/stat) and whether it is a zombie. It returns an error when
// there is no such process.
func procStat(pid int) (start uint64, zombie bool, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false, err
	}
	return parseProcStat(string(b))
}

// parseProcStat parses a /proc/<pid>/stat line. The command name (field 2)
// may hold spaces and parentheses, so the fields are counted from the last
// ')'.
func parseProcStat(s string) (start uint64, zombie bool, err error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false, fmt.Errorf("parsing /proc stat %q: no command name", s)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 20 {
		return 0, false, fmt.Errorf("parsing /proc stat %q: %d fields after the name, want at least 20", s, len(f))
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("parsing start time %q: %w", f[19], err)
	}
	return start, f[0] == "Z", nil
}

// running reports whether p is still the process Up started: alive, not a
// zombie, and started when recorded (no reused PID).
func (p process) running() bool {
	start, zombie, err := procStat(p.PID)
	if err != nil || zombie {
		return false
	}
	return p.StartTime == 0 || start == p.StartTime
}

func (p process) signal() syscall.Signal {
	if p.Signal == "SIGINT" {
		return syscall.SIGINT
	}
	return syscall.SIGTERM
}

// stopProcesses sends each running process its stop signal, polls until
// all are gone or grace passes, then sends SIGKILL to the rest and polls
// 5 s more. It returns an error naming those still running.
func stopProcesses(procs []process, grace time.Duration) error {
	var errs []error
	for _, p := range procs {
		if !p.running() {
			continue
		}
		if err := syscall.Kill(p.PID, p.signal()); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("signalling %s (pid %d): %w", p.Name, p.PID, err))
		}
	}
	left := waitGone(procs, grace)
	for _, p := range left {
		if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("killing %s (pid %d): %w", p.Name, p.PID, err))
		}
	}
	for _, p := range waitGone(left, 5*time.Second) {
		errs = append(errs, fmt.Errorf("stopping %s (pid %d): still running after SIGKILL", p.Name, p.PID))
	}
	return errors.Join(errs...)
}

// waitGone polls every 50 ms until none of procs runs or d passes, and
// returns those still running.
func waitGone(procs []process, d time.Duration) []process {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		left := slices.DeleteFunc(slices.Clone(procs), func(p process) bool { return !p.running() })
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		<-tick.C
	}
}

// namespacePIDs returns the PIDs of the processes in namespace ns (ip
// netns pids), without the caller's own.
func namespacePIDs(ns string) ([]int, error) {
	out, err := output(context.Background(), "ip", "netns", "pids", ns)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parsing ip netns pids %s: %q is no PID", ns, f)
		}
		if pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
