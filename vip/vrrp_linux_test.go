package vip

import (
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestFailover runs two instances on lb1 (priority 200) and lb2 (100) at
// the default 50 ms and drives them through a kill, a return with
// preemption, a clean stop and a return without preemption, probing the
// VIP from the client all along.
func TestFailover(t *testing.T) {
	t.Parallel()
	l := newVIPLab(t)
	cfg1 := Config{VRID: testVRID, Priority: 200, Preempt: true, VIP: testVIP}
	cfg2 := Config{VRID: testVRID, Priority: 100, Preempt: true, VIP: testVIP}
	lb1 := start(t, l.lb1, cfg1)
	lb2 := start(t, l.lb2, cfg2)

	waitFor(t, 2*time.Second, "lb1 master, lb2 backup", func() bool {
		return lb1.Status().State == Master && lb2.Status().State == Backup && lb2.Status().Master == lb1.Status().Source
	})
	if !hasVIP(t, l.lb1) || hasVIP(t, l.lb2) {
		t.Fatalf("VIP on lb1 %v, on lb2 %v; want lb1 only", hasVIP(t, l.lb1), hasVIP(t, l.lb2))
	}
	p := l.startProber(t)
	p.answeredBy(t, time.Now(), "lb1", 2*time.Second)
	if got := l.neighMAC(t); got != l.lb1MAC {
		t.Fatalf("client has %s for the VIP, want lb1's %s", got, l.lb1MAC)
	}

	// Kill
	t.Log("phase: kill")
	{
		// The master node dies: its instance stops without a word and its
		// link goes down, so nothing of it answers any more.
		killed := time.Now()
		lb1.kill(t)
		if err := l.topo.Switch.Run("ip", "link", "set", l.lb1.Peer, "down"); err != nil {
			t.Fatal(err)
		}
		took := waitFor(t, 2*time.Second, "lb2 master", func() bool { return lb2.Status().State == Master }).Sub(killed)
		waitFor(t, time.Second, "VIP on lb2", func() bool { return hasVIP(t, l.lb2) })
		gap := p.answeredBy(t, killed, "lb2", 2*time.Second)
		t.Logf("kill: lb2 master after %v (its OnMaster %v); first answer from lb2 %v after the kill; longest outage %v",
			took.Round(time.Millisecond), lb2.nthMaster(t, 1).Sub(killed).Round(time.Millisecond),
			gap.Round(time.Millisecond), p.longestOutage(killed).Round(time.Millisecond))
		if got := l.neighMAC(t); got != l.lb2MAC {
			t.Errorf("client has %s for the VIP, want lb2's %s (gratuitous ARP)", got, l.lb2MAC)
		}
		if err := l.topo.Switch.Run("ip", "link", "set", l.lb1.Peer, "up"); err != nil {
			t.Fatal(err)
		}
	}

	// Return preempts
	t.Log("phase: return preempts")
	{
		// The VIP the killed instance left on lb1 goes at startup.
		back := time.Now()
		lb1 = start(t, l.lb1, cfg1)
		took := waitFor(t, 2*time.Second, "lb1 master, lb2 backup", func() bool {
			return lb1.Status().State == Master && lb2.Status().State == Backup
		}).Sub(back)
		waitFor(t, time.Second, "VIP on lb1 only", func() bool { return hasVIP(t, l.lb1) && !hasVIP(t, l.lb2) })
		gap := p.answeredBy(t, back, "lb1", 2*time.Second)
		t.Logf("preempt: lb1 master %v after its start; first answer from lb1 after %v", took.Round(time.Millisecond), gap.Round(time.Millisecond))
		waitFor(t, time.Second, "client learns lb1's MAC", func() bool { return l.neighMAC(t) == l.lb1MAC })
	}

	// Clean stop
	t.Log("phase: clean stop")
	{
		stopped := time.Now()
		lb1.stop(t)
		if hasVIP(t, l.lb1) {
			t.Errorf("VIP still on lb1 after a clean stop")
		}
		took := waitFor(t, 2*time.Second, "lb2 master", func() bool { return lb2.Status().State == Master }).Sub(stopped)
		gap := p.answeredBy(t, stopped, "lb2", 2*time.Second)
		t.Logf("clean stop: lb2 master after %v (skew %v, master down %v); first answer from lb2 after %v; longest outage %v",
			took.Round(time.Millisecond), (156 * DefaultAdvertInterval / 256).Round(time.Millisecond),
			(3*DefaultAdvertInterval + 156*DefaultAdvertInterval/256).Round(time.Millisecond),
			gap.Round(time.Millisecond), p.longestOutage(stopped).Round(time.Millisecond))
		waitFor(t, time.Second, "client learns lb2's MAC", func() bool { return l.neighMAC(t) == l.lb2MAC })
	}

	// Return without preemption
	t.Log("phase: return without preemption")
	{
		nopreempt := cfg1
		nopreempt.Preempt = false
		lb1 = start(t, l.lb1, nopreempt)
		waitFor(t, time.Second, "lb1 backup of lb2", func() bool {
			s := lb1.Status()
			return s.State == Backup && s.Master == lb2.Status().Source
		})
		// Five Master_Down_Intervals of lb1 (5 × 172 ms) in which it must
		// not take over.
		watch := time.Now().Add(5 * (3*DefaultAdvertInterval + 56*DefaultAdvertInterval/256))
		for time.Now().Before(watch) {
			if s := lb1.Status(); s.State != Backup {
				t.Fatalf("lb1 %v, want backup: it preempted", s.State)
			}
			time.Sleep(10 * time.Millisecond) // sampling interval of the watch
		}
		if n := len(lb1.masters()); n != 0 {
			t.Errorf("lb1 became master %d times", n)
		}
		if lb2.Status().State != Master || !hasVIP(t, l.lb2) || hasVIP(t, l.lb1) {
			t.Errorf("lb2 %v holding VIP %v, lb1 holding %v; want lb2 master with the VIP", lb2.Status().State, hasVIP(t, l.lb2), hasVIP(t, l.lb1))
		}
	}
}

// TestCleanStopUsesSkew checks that a resigning master hands over after
// the backup's Skew_Time, not its Master_Down_Interval: at 500 ms adverts
// a backup of priority 100 waits 305 ms after a priority-0 advertisement
// but 1.8 s after silence.
func TestCleanStopUsesSkew(t *testing.T) {
	t.Parallel()
	l := newVIPLab(t)
	const interval = 500 * time.Millisecond
	skew := 156 * interval / 256
	down := 3*interval + skew
	lb1 := start(t, l.lb1, Config{VRID: testVRID, Priority: 200, Preempt: true, VIP: testVIP, AdvertInterval: interval})
	lb2 := start(t, l.lb2, Config{VRID: testVRID, Priority: 100, Preempt: true, VIP: testVIP, AdvertInterval: interval})
	waitFor(t, 2*down, "lb1 master, lb2 backup", func() bool {
		return lb1.Status().State == Master && lb2.Status().State == Backup && lb2.Status().Master.IsValid()
	})
	stopped := time.Now()
	lb1.stop(t)
	took := waitFor(t, down, "lb2 master", func() bool { return lb2.Status().State == Master }).Sub(stopped)
	t.Logf("clean stop at %v adverts: lb2 master after %v (skew %v, master down %v)", interval, took.Round(time.Millisecond), skew, down)
	if took >= (skew+down)/2 {
		t.Errorf("lb2 took over after %v, want about the skew %v: the priority-0 advertisement was not heard", took, skew)
	}
}

// TestNoTakeoverUnderCPULoad keeps both cores busy with 2 × NumCPU
// spinning processes while lb1 (200) and lb2 (100) run at the default
// interval: lb2 must never take over. The window is 5 s, or
// XLB_VIP_LOAD_DURATION (say 60s, the length of a pgbench run).
func TestNoTakeoverUnderCPULoad(t *testing.T) {
	l := newVIPLab(t)
	window := 5 * time.Second
	if s := os.Getenv("XLB_VIP_LOAD_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("XLB_VIP_LOAD_DURATION: %v", err)
		}
		window = d
	}
	lb1 := start(t, l.lb1, Config{VRID: testVRID, Priority: 200, Preempt: true, VIP: testVIP})
	lb2 := start(t, l.lb2, Config{VRID: testVRID, Priority: 100, Preempt: true, VIP: testVIP})
	waitFor(t, 2*time.Second, "lb1 master, lb2 backup", func() bool {
		return lb1.Status().State == Master && lb2.Status().State == Backup && lb2.Status().Master.IsValid()
	})

	for range 2 * runtime.NumCPU() {
		spin := exec.Command("sh", "-c", "while :; do :; done")
		if err := spin.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			spin.Process.Kill()
			spin.Wait()
		})
	}
	// Sample how long lb2 has not heard lb1; under load the sampling is
	// late too, so this is a lower bound of the worst silence.
	var worst time.Duration
	end := time.Now().Add(window)
	for time.Now().Before(end) {
		s := lb2.Status()
		if s.State != Backup {
			t.Fatalf("lb2 %v under CPU load after %v, want backup", s.State, window-time.Until(end))
		}
		worst = max(worst, time.Since(s.LastAdvert))
		time.Sleep(5 * time.Millisecond) // sampling interval of the watch
	}
	down := 3*DefaultAdvertInterval + 156*DefaultAdvertInterval/256
	t.Logf("%v of %d spinning processes: lb2 stayed backup; longest silence seen %v (master down %v)",
		window, 2*runtime.NumCPU(), worst.Round(time.Millisecond), down.Round(time.Millisecond))
	if n := len(lb1.masters()); n != 1 || len(lb2.masters()) != 0 {
		t.Errorf("lb1 became master %d times, lb2 %d times; want 1 and 0", n, len(lb2.masters()))
	}
}

// TestUnicastPeers elects and fails over with unicast advertisements
// only: neither node joins 224.0.0.18.
func TestUnicastPeers(t *testing.T) {
	t.Parallel()
	l := newVIPLab(t)
	lb1 := start(t, l.lb1, Config{VRID: testVRID, Priority: 200, Preempt: true, VIP: testVIP, UnicastPeers: []netip.Addr{l.lb2.Addr.Addr()}})
	lb2 := start(t, l.lb2, Config{VRID: testVRID, Priority: 100, Preempt: true, VIP: testVIP, UnicastPeers: []netip.Addr{l.lb1.Addr.Addr()}})
	waitFor(t, 2*time.Second, "lb1 master, lb2 its backup", func() bool {
		return lb1.Status().State == Master && lb2.Status().State == Backup && lb2.Status().Master == l.lb1.Addr.Addr()
	})
	if out, err := l.lb2.NS.Output("ip", "maddr", "show", "dev", "eth0"); err != nil || strings.Contains(out, MulticastGroup.String()) {
		t.Errorf("lb2's multicast groups (err %v):\n%s\nwant no %v", err, out, MulticastGroup)
	}
	killed := time.Now()
	lb1.kill(t)
	waitFor(t, 2*time.Second, "lb2 master", func() bool { return lb2.Status().State == Master })
	t.Logf("unicast: lb2 master after %v", lb2.nthMaster(t, 1).Sub(killed).Round(time.Millisecond))
	waitFor(t, time.Second, "VIP on lb2", func() bool { return hasVIP(t, l.lb2) })
}
