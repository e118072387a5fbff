package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// The VIP election of a lab with two LB hosts: both daemons run VRRP in
// one virtual router, lb1 with the higher priority, so it is the master
// Up waits for.
const (
	VRID = 51
	// VRRPAdvertInterval is the daemons' advertisement interval: a backup
	// of priority 100 takes over 3 × 50 ms + 30 ms of skew after the
	// master's last advertisement.
	VRRPAdvertInterval = 50 * time.Millisecond
)

// vrrpPriorities are the LB hosts' VRRP priorities.
var vrrpPriorities = map[string]int{"lb1": 150, "lb2": 100}

// VRRPPriority returns the VRRP priority of LB host lb in a lab with two
// LB hosts: 150 for lb1, 100 for lb2, 0 for any other host.
func VRRPPriority(lb string) int { return vrrpPriorities[lb] }

// vrrp reports whether the lab's daemons elect the VIP's owner: with more
// than one LB host. With one, lb1 holds the VIP statically.
func (u *upper) vrrp() bool { return u.opts.LBs > 1 }

// daemonConfigPath and daemonLogPath are where Up writes the configuration
// and the log of the daemon on LB host lb.
func daemonConfigPath(prefix, lb string) string { return filepath.Join(StateDir(prefix), lb+".yaml") }
func daemonLogPath(prefix, lb string) string {
	return filepath.Join(StateDir(prefix), "xlb-"+lb+".log")
}

// DaemonLog returns the log file of the daemon on LB host lb.
func DaemonLog(prefix, lb string) string { return daemonLogPath(prefix, lb) }

// daemonProcess is the name the state file gives the daemon on lb.
func daemonProcess(lb string) string { return "xlb on " + lb }

// writeVRRPConfig appends the vrrp section of LB host lb's configuration:
// multicast advertisements, the lab's VRID and lb's priority, preemption
// unless Options.NoPreempt.
func (u *upper) writeVRRPConfig(b *strings.Builder, lb string) {
	fmt.Fprintf(b, "vrrp:\n  enabled: true\n  vrid: %d\n  priority: %d\n  advert_interval: %v\n  preempt: %t\n",
		VRID, VRRPPriority(lb), VRRPAdvertInterval, !u.opts.NoPreempt)
}

// VRRPStatus is the vrrp part of `xlb status --json`: a daemon's view of
// the VIP election.
type VRRPStatus struct {
	State          string    `json:"state"` // master, backup, initialize
	Since          time.Time `json:"since"`
	Priority       int       `json:"priority"`
	Preempt        bool      `json:"preempt"`
	Source         string    `json:"source"`
	Master         string    `json:"master"` // the master's address; "" when none is known
	MasterPriority int       `json:"master_priority"`
	LastAdvert     time.Time `json:"last_advert"`
	LastAdvertFrom string    `json:"last_advert_from"`
	HoldsVIP       bool      `json:"holds_vip"`
}

// String renders s as "master (priority 150, master 172.20.0.21, holds
// the VIP)".
func (s *VRRPStatus) String() string {
	if s == nil {
		return "vrrp off"
	}
	out := fmt.Sprintf("%s (priority %d, master %s", s.State, s.Priority, orDash(s.Master))
	if s.HoldsVIP {
		out += ", holds the VIP"
	}
	return out + ")"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// DaemonVRRP runs `xlb status --json --socket socket` and returns its vrrp
// part, nil when the daemon runs no election. It returns an error when the
// daemon does not answer.
func DaemonVRRP(ctx context.Context, binary, socket string) (*VRRPStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := output(ctx, binary, "status", "--json", "--socket", socket)
	if err != nil {
		return nil, err
	}
	var v struct {
		VRRP *VRRPStatus `json:"vrrp"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("decoding xlb status --json: %w", err)
	}
	return v.VRRP, nil
}

// WaitVRRP polls the daemons of the lab with prefix every 20 ms until the
// one on LB host master is VRRP master holding the VIP and every other is
// backup knowing master's address as the master's, and returns their
// statuses by LB host. When ctx ends first it returns an error with the
// last statuses seen.
func WaitVRRP(ctx context.Context, prefix, master string) (map[string]*VRRPStatus, error) {
	st, err := readState(prefix)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(st.Daemons, master) {
		return nil, fmt.Errorf("waiting for %s to be vrrp master: lab %s runs no daemon there (daemons: %s)",
			master, prefix, strings.Join(st.Daemons, ", "))
	}
	return waitVRRP(ctx, prefix, st.Binary, st.Daemons, master)
}

func waitVRRP(ctx context.Context, prefix, binary string, daemons []string, master string) (map[string]*VRRPStatus, error) {
	h, _ := lookupHost(master)
	want := h.Addr.Addr().String()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	last := map[string]*VRRPStatus{}
	lastErr := map[string]error{}
	for {
		ok := true
		for _, lb := range daemons {
			s, err := DaemonVRRP(ctx, binary, Socket(prefix, lb))
			last[lb], lastErr[lb] = s, err
			switch {
			case err != nil || s == nil:
				ok = false
			case lb == master:
				ok = ok && s.State == "master" && s.HoldsVIP
			default:
				ok = ok && s.State == "backup" && s.Master == want && !s.HoldsVIP
			}
		}
		if ok {
			return last, nil
		}
		select {
		case <-ctx.Done():
			var seen []string
			for _, lb := range daemons {
				if lastErr[lb] != nil {
					seen = append(seen, fmt.Sprintf("%s: %v", lb, lastErr[lb]))
				} else {
					seen = append(seen, fmt.Sprintf("%s: %v", lb, last[lb]))
				}
			}
			return last, fmt.Errorf("waiting for %s to be vrrp master and the others backup: %w (last seen: %s)",
				master, ctx.Err(), strings.Join(seen, "; "))
		case <-tick.C:
		}
	}
}

// waitVRRP waits for lb1 to be master and the other LB hosts backup,
// bounded by Options.PoolTimeout.
func (u *upper) waitVRRP(ctx context.Context) error {
	master := u.st.Daemons[0]
	return u.step(fmt.Sprintf("waiting for VRRP: %s master (priority %d), %s backup", master, VRRPPriority(master),
		strings.Join(u.st.Daemons[1:], ", ")), func() error {
		wctx, cancel := context.WithTimeout(ctx, u.opts.PoolTimeout)
		defer cancel()
		_, err := waitVRRP(wctx, u.opts.Prefix, u.opts.Binary, u.st.Daemons, master)
		return err
	})
}

// spawnDetached starts argv in ns as a daemon of its own: a new session
// (no terminal signal reaches it), stdin /dev/null, stdout and stderr
// appended to logPath. It returns the PID and a channel that gets the exit
// status when the process exits while this process lives (waiting for it
// also reaps it).
func spawnDetached(ns *Namespace, logPath string, argv ...string) (int, <-chan error, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, nil, fmt.Errorf("opening log: %w", err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := ns.Start(cmd); err != nil {
		return 0, nil, fmt.Errorf("starting %s in %s: %w", argv[0], ns.Name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return cmd.Process.Pid, exited, nil
}

// ErrNoDaemon means the LB host runs no daemon of the lab: none was
// started there, or it is not running.
var ErrNoDaemon = errors.New("no xlb daemon")

// daemonRecord returns the lab's state and the index of the process record
// of the daemon on lb, -1 when there is none. It returns an error wrapping
// ErrNoDaemon when the lab starts no daemon on lb.
func daemonRecord(prefix, lb string) (*state, int, error) {
	if err := validatePrefix(prefix); err != nil {
		return nil, -1, err
	}
	st, err := readState(prefix)
	if err != nil {
		return nil, -1, err
	}
	if !slices.Contains(st.Daemons, lb) {
		return nil, -1, fmt.Errorf("lab %s, host %q: %w (daemons: %s)", prefix, lb, ErrNoDaemon, strings.Join(st.Daemons, ", "))
	}
	i := slices.IndexFunc(st.Processes, func(p process) bool { return p.Name == daemonProcess(lb) && p.Host == lb })
	return st, i, nil
}

// DaemonPID returns the PID of the daemon running on LB host lb of the lab
// with prefix. It returns an error wrapping ErrNoDaemon when none runs
// there (a recorded PID that exited, or now names another process, does
// not count).
func DaemonPID(prefix, lb string) (int, error) {
	st, i, err := daemonRecord(prefix, lb)
	if err != nil {
		return 0, err
	}
	if i < 0 || !st.Processes[i].running() {
		return 0, fmt.Errorf("lab %s, host %s: %w running", prefix, lb, ErrNoDaemon)
	}
	return st.Processes[i].PID, nil
}

// SignalDaemon sends sig to the daemon on LB host lb of the lab with
// prefix (SIGKILL: a crash; SIGTERM: a clean stop) and returns its PID. It
// never signals a reused PID: it returns an error wrapping ErrNoDaemon
// when the recorded daemon does not run.
func SignalDaemon(prefix, lb string, sig syscall.Signal) (int, error) {
	pid, err := DaemonPID(prefix, lb)
	if err != nil {
		return 0, err
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return 0, fmt.Errorf("signalling xlb on %s (pid %d): %w", lb, pid, err)
	}
	return pid, nil
}

// WaitDaemonGone polls every 10 ms until the process pid, once the daemon
// on lb, has exited, or d passes; it returns an error in that case.
func WaitDaemonGone(lb string, pid int, d time.Duration) error {
	p := process{Name: daemonProcess(lb), PID: pid}
	p.StartTime, _, _ = procStat(pid)
	deadline := time.Now().Add(d)
	for p.running() {
		if time.Now().After(deadline) {
			return fmt.Errorf("xlb on %s (pid %d) still runs after %v", lb, pid, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// RestartDaemon starts the daemon on LB host lb of the lab with prefix
// again, with the configuration and log file Up gave it, and records the
// new PID in the state file in place of the old one, so Down stops it. A
// daemon still running there is stopped first (SIGTERM; SIGKILL after
// 10 s). It returns the new PID as soon as the process has started,
// without waiting for it to serve (a restart right after a crash is what
// some callers measure). It returns an error wrapping ErrNoDaemon when the
// lab starts no daemon on lb.
func RestartDaemon(prefix, lb string) (int, error) {
	st, i, err := daemonRecord(prefix, lb)
	if err != nil {
		return 0, err
	}
	if i >= 0 && st.Processes[i].running() {
		if err := stopProcesses(st.Processes[i:i+1], 10*time.Second); err != nil {
			return 0, fmt.Errorf("restarting xlb on %s: %w", lb, err)
		}
	}
	ns := &Namespace{Name: prefix + lb}
	pid, _, err := spawnDetached(ns, daemonLogPath(prefix, lb), st.Binary, "run", "--config", daemonConfigPath(prefix, lb))
	if err != nil {
		return 0, fmt.Errorf("restarting xlb on %s: %w", lb, err)
	}
	start, _, _ := procStat(pid)
	p := process{Name: daemonProcess(lb), Host: lb, PID: pid, StartTime: start, Signal: "SIGTERM"}
	if i >= 0 {
		st.Processes[i] = p
	} else {
		st.Processes = append(st.Processes, p)
	}
	if err := st.write(); err != nil {
		return pid, fmt.Errorf("recording xlb on %s (pid %d): %w", lb, pid, err)
	}
	return pid, nil
}

// DaemonConfig returns the path of the configuration file Up wrote for the
// daemon on lb (a test may edit it and send SIGHUP).
func DaemonConfig(prefix, lb string) string { return daemonConfigPath(prefix, lb) }
