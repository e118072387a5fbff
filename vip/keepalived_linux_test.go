package vip

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// requireTool skips t when the program name is not installed, or fails it
// under XLB_REQUIRE_PRIVILEGED=1 (CI), where make test installs it (deploy/lab/lab-deps.sh).
func requireTool(t *testing.T, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err == nil {
		return
	}
	msg := fmt.Sprintf("needs %s (apt-get install -y %s)", name, pkg)
	if os.Getenv("XLB_REQUIRE_PRIVILEGED") == "1" {
		t.Fatal(msg + " and XLB_REQUIRE_PRIVILEGED=1 forbids skipping")
	}
	t.Skip(msg)
}

// keepalived is Debian's keepalived running VRRP only, in the foreground,
// in a node's namespace.
type keepalived struct {
	node    *lab.Node
	cmd     *exec.Cmd
	vrrpPID string // file with the VRRP child's PID
	done    chan struct{}

	mu  sync.Mutex
	log bytes.Buffer
}

// keepalivedConf returns a keepalived.conf for one VRRPv3 instance on
// HostIf with the test's VRID and VIP, its VRRP process real-time like
// an Instance's loop.
func keepalivedConf(name string, prio int, interval time.Duration) string {
	return fmt.Sprintf(`global_defs {
	router_id %s
	vrrp_version 3
	vrrp_rt_priority 10
}
vrrp_instance xlb {
	state BACKUP
	interface %s
	virtual_router_id %d
	priority %d
	advert_int %s
	virtual_ipaddress {
		%s dev %s
	}
}
`, name, lab.HostIf, testVRID, prio, strconv.FormatFloat(interval.Seconds(), 'f', -1, 64), testVIP, lab.HostIf)
}

// startKeepalived runs keepalived with priority prio in n's namespace,
// with its configuration and PID files in a directory of the test, and
// kills it in t.Cleanup if it still runs.
func startKeepalived(t *testing.T, n *lab.Node, prio int, interval time.Duration) *keepalived {
	t.Helper()
	requireTool(t, "keepalived", "keepalived")
	dir := t.TempDir()
	conf := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(conf, []byte(keepalivedConf(n.Name, prio, interval)), 0o644); err != nil {
		t.Fatal(err)
	}
	k := &keepalived{node: n, vrrpPID: filepath.Join(dir, "vrrp.pid"), done: make(chan struct{})}
	// -n foreground, -l -D -G detailed log on stderr and not to syslog,
	// -P VRRP only, -R no respawn (a killed VRRP child stays dead).
	k.cmd = exec.Command("keepalived", "-n", "-l", "-D", "-G", "-P", "-R",
		"-f", conf, "-p", filepath.Join(dir, "keepalived.pid"), "-r", k.vrrpPID)
	k.cmd.Stdout = k
	k.cmd.Stderr = k
	if err := n.NS.Start(k.cmd); err != nil {
		t.Fatalf("starting keepalived on %s: %v", n.Name, err)
	}
	go func() {
		k.cmd.Wait()
		close(k.done)
	}()
	t.Cleanup(func() {
		k.kill(t)
		t.Logf("keepalived on %s:\n%s", n.Name, k.output())
	})
	waitFor(t, 5*time.Second, "keepalived's VRRP child", func() bool { return k.childPID() > 0 })
	return k
}

// Write collects keepalived's log.
func (k *keepalived) Write(b []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.log.Write(b)
}

func (k *keepalived) output() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.log.String()
}

// state returns the state keepalived last logged entering: "MASTER",
// "BACKUP", "FAULT" or "" before any.
func (k *keepalived) state() string {
	out := k.output()
	i := strings.LastIndex(out, "Entering ")
	if i < 0 {
		return ""
	}
	f := strings.Fields(out[i:])
	if len(f) < 2 {
		return ""
	}
	return f[1]
}

// childPID returns the PID of keepalived's VRRP child from its PID file,
// or 0 while there is none, it is dead or it is not keepalived.
func (k *keepalived) childPID() int {
	b, err := os.ReadFile(k.vrrpPID)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	// /proc/<pid>/stat is "pid (comm) state …"; a zombie (Z) is dead.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	comm, rest, ok := strings.Cut(string(stat), ") ")
	if !ok || !strings.HasSuffix(comm, "(keepalived") || strings.HasPrefix(rest, "Z") {
		return 0
	}
	return pid
}

// stop sends SIGTERM, on which keepalived sends a priority-0
// advertisement and removes the VIP, and waits for it to exit.
func (k *keepalived) stop(t *testing.T) {
	t.Helper()
	k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("keepalived on %s did not stop within 10s", k.node.Name)
	}
}

// kill kills the VRRP child, then the parent, with SIGKILL, as a crash
// would: no advertisement, the VIP left on the interface.
func (k *keepalived) kill(t *testing.T) {
	t.Helper()
	if pid := k.childPID(); pid > 0 {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	k.cmd.Process.Kill()
	select {
	case <-k.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("keepalived on %s did not die within 10s", k.node.Name)
	}
	waitFor(t, 5*time.Second, "keepalived's VRRP child gone", func() bool { return k.childPID() == 0 })
}

// TestKeepalivedInterop elects and fails over between an instance on lb1
// and keepalived on lb2 in both directions: keepalived dying and coming
// back to preempt, resigning; then the instance dying and coming back to
// preempt, resigning.
func TestKeepalivedInterop(t *testing.T) {
	t.Parallel()
	l := newVIPLab(t)
	const interval = 50 * time.Millisecond
	xlbCfg := Config{VRID: testVRID, Priority: 100, Preempt: true, VIP: testVIP, AdvertInterval: interval}
	p := l.startProber(t)

	ka := startKeepalived(t, l.lb2, 150, interval)
	xlb := start(t, l.lb1, xlbCfg)
	waitFor(t, 3*time.Second, "keepalived master, lb1 its backup", func() bool {
		s := xlb.Status()
		return ka.state() == "MASTER" && s.State == Backup && s.Master == l.lb2.Addr.Addr() && s.MasterPriority == 150
	})
	waitFor(t, time.Second, "VIP on lb2 only", func() bool { return hasVIP(t, l.lb2) && !hasVIP(t, l.lb1) })
	p.answeredBy(t, time.Now(), "lb2", 2*time.Second)

	// Keepalived killed
	t.Log("phase: keepalived killed")
	{
		killed := time.Now()
		ka.kill(t)
		if err := l.topo.Switch.Run("ip", "link", "set", l.lb2.Peer, "down"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 2*time.Second, "lb1 master", func() bool { return xlb.Status().State == Master })
		took := xlb.nthMaster(t, 1).Sub(killed)
		gap := p.answeredBy(t, killed, "lb1", 2*time.Second)
		t.Logf("keepalived killed: lb1 master (OnMaster) after %v, first answer from lb1 after %v", took.Round(time.Millisecond), gap.Round(time.Millisecond))
		waitFor(t, time.Second, "client learns lb1's MAC", func() bool { return l.neighMAC(t) == l.lb1MAC })
		if err := l.topo.Switch.Run("ip", "link", "set", l.lb2.Peer, "up"); err != nil {
			t.Fatal(err)
		}
	}

	// Keepalived back preempts
	t.Log("phase: keepalived back preempts")
	{
		ka = startKeepalived(t, l.lb2, 150, interval)
		waitFor(t, 3*time.Second, "keepalived master, lb1 backup", func() bool {
			return ka.state() == "MASTER" && xlb.Status().State == Backup
		})
		waitFor(t, time.Second, "VIP on lb2 only", func() bool { return hasVIP(t, l.lb2) && !hasVIP(t, l.lb1) })
		waitFor(t, 2*time.Second, "client learns lb2's MAC", func() bool { return l.neighMAC(t) == l.lb2MAC })
	}

	// Keepalived stops
	t.Log("phase: keepalived stops")
	{
		stopped := time.Now()
		ka.stop(t)
		waitFor(t, 2*time.Second, "lb1 master", func() bool { return xlb.Status().State == Master })
		took := xlb.nthMaster(t, 2).Sub(stopped)
		t.Logf("keepalived stopped: lb1 master (OnMaster) after %v (skew %v)", took.Round(time.Millisecond), (156 * interval / 256).Round(time.Millisecond))
		waitFor(t, time.Second, "VIP on lb1 only", func() bool { return hasVIP(t, l.lb1) && !hasVIP(t, l.lb2) })
		waitFor(t, 2*time.Second, "client learns lb1's MAC", func() bool { return l.neighMAC(t) == l.lb1MAC })
	}

	// Keepalived backs up
	t.Log("phase: keepalived backs up")
	{
		ka = startKeepalived(t, l.lb2, 50, interval)
		waitFor(t, 3*time.Second, "keepalived backup", func() bool { return ka.state() == "BACKUP" })
		// Three Master_Down_Intervals of keepalived (priority 50) in which
		// it must stay backup: it hears lb1's advertisements.
		watch := time.Now().Add(3 * (3*interval + 206*interval/256))
		for time.Now().Before(watch) {
			if s := ka.state(); s != "BACKUP" {
				t.Fatalf("keepalived %s, want BACKUP under lb1's advertisements", s)
			}
			time.Sleep(10 * time.Millisecond) // sampling interval of the watch
		}
		if xlb.Status().State != Master || hasVIP(t, l.lb2) {
			t.Fatalf("lb1 %v, VIP on lb2 %v; want lb1 master alone", xlb.Status().State, hasVIP(t, l.lb2))
		}
	}

	// Xlb killed
	t.Log("phase: xlb killed")
	{
		killed := time.Now()
		xlb.kill(t)
		if err := l.topo.Switch.Run("ip", "link", "set", l.lb1.Peer, "down"); err != nil {
			t.Fatal(err)
		}
		took := waitFor(t, 2*time.Second, "VIP on lb2", func() bool { return hasVIP(t, l.lb2) }).Sub(killed)
		gap := p.answeredBy(t, killed, "lb2", 2*time.Second)
		t.Logf("xlb killed: VIP on keepalived's lb2 after %v, first answer from lb2 after %v", took.Round(time.Millisecond), gap.Round(time.Millisecond))
		if s := ka.state(); s != "MASTER" {
			t.Errorf("keepalived %s, want MASTER", s)
		}
		waitFor(t, time.Second, "client learns lb2's MAC", func() bool { return l.neighMAC(t) == l.lb2MAC })
		if err := l.topo.Switch.Run("ip", "link", "set", l.lb1.Peer, "up"); err != nil {
			t.Fatal(err)
		}
	}

	// Xlb back preempts
	t.Log("phase: xlb back preempts")
	{
		xlb = start(t, l.lb1, xlbCfg)
		waitFor(t, 3*time.Second, "lb1 master, keepalived backup", func() bool {
			return xlb.Status().State == Master && ka.state() == "BACKUP"
		})
		waitFor(t, time.Second, "VIP on lb1 only", func() bool { return hasVIP(t, l.lb1) && !hasVIP(t, l.lb2) })
		waitFor(t, 2*time.Second, "client learns lb1's MAC", func() bool { return l.neighMAC(t) == l.lb1MAC })
	}

	// Xlb stops
	t.Log("phase: xlb stops")
	{
		stopped := time.Now()
		xlb.stop(t)
		took := waitFor(t, 2*time.Second, "VIP on lb2", func() bool { return hasVIP(t, l.lb2) }).Sub(stopped)
		t.Logf("xlb stopped: VIP on keepalived's lb2 after %v (keepalived's skew %v)", took.Round(time.Millisecond), (206 * interval / 256).Round(time.Millisecond))
		if s := ka.state(); s != "MASTER" {
			t.Errorf("keepalived %s, want MASTER", s)
		}
	}
}
