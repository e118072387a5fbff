package tests

import (
	"context"
	"net/netip"
	"os/exec"
	"strconv"
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
		t.Fatalf("hping3 is missing (.ci/run installs it): %v", err)
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
	// within 5 s of the flood's end.
	var first time.Duration
	for i := range 10 {
		var c *pgx.Conn
		var err error
		for time.Since(ended) < 5*time.Second {
			if c, err = connect(ctx, cl, lab.PortRW+i%2, 3*time.Second); err == nil {
				break
			}
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
