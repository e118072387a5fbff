package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// binDir holds the xlb binary built for this run; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// raceDaemons builds the daemons of the end-to-end tests with the race
// detector (XLB_E2E_RACE=1): a race the daemon runs into fails the test
// at cleanup (checkNoRace).
var raceDaemons = os.Getenv("XLB_E2E_RACE") == "1"

// xlbBinary builds cmd/xlb once per test run.
var xlbBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "xlb-e2e-")
	if err != nil {
		return "", err
	}
	binDir = dir
	bin := filepath.Join(dir, "xlb")
	args := []string{"build", "-o", bin}
	if raceDaemons {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, "../cmd/xlb")...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building xlb: %w\n%s", err, out)
	}
	return bin, nil
})

// cluster is a lab brought up for one test.
type cluster struct {
	t   *testing.T
	lab *lab.Lab
	bin string
}

func upCluster(t *testing.T) *cluster {
	t.Helper()
	lab.RequirePrivileged(t)
	bin, err := xlbBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	prefix := lab.TestPrefix()
	t.Cleanup(func() {
		checkNoRace(t, prefix)
		if err := lab.Down(prefix, io.Discard); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	l, err := lab.Up(ctx, lab.Options{Prefix: prefix, Binary: bin, XDPMode: "generic", Out: tlog{t}})
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{t: t, lab: l, bin: bin}
}

// checkNoRace fails t when a daemon of the lab with prefix reported a
// data race in its log (daemons built with XLB_E2E_RACE=1). The log
// goes when the lab does: call it before lab.Down.
func checkNoRace(t *testing.T, prefix string) {
	t.Helper()
	if !raceDaemons {
		return
	}
	for _, lb := range []string{"lb1", "lb2"} {
		b, err := os.ReadFile(lab.DaemonLog(prefix, lb))
		if err != nil {
			continue
		}
		if i := strings.Index(string(b), "WARNING: DATA RACE"); i >= 0 {
			t.Errorf("xlb on %s ran into a data race:\n%s", lb, b[i:min(len(b), i+6000)])
		}
	}
}

type tlog struct{ t *testing.T }

func (w tlog) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// connect opens a PostgreSQL connection from the client host to VIP:port.
func (c *cluster) connect(ctx context.Context, port int) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=3",
		lab.VIP, port, lab.User, lab.Database))
	if err != nil {
		return nil, err
	}
	cfg.Password = c.lab.Secrets.Password
	cfg.DialFunc = c.lab.Topology.Node("client").NS.DialContext
	return pgx.ConnectConfig(ctx, cfg)
}

// serverOf returns the address of the server a connection landed on.
func serverOf(ctx context.Context, conn *pgx.Conn) (string, error) {
	var addr string
	err := conn.QueryRow(ctx, "SELECT host(inet_server_addr())").Scan(&addr)
	return addr, err
}

// backends runs `xlb backends --json` against lb1's daemon.
func (c *cluster) backends() ([]map[string]any, error) {
	out, err := exec.Command(c.bin, "backends", "--json", "--socket", c.lab.Sockets["lb1"]).Output()
	if err != nil {
		return nil, fmt.Errorf("xlb backends: %w", err)
	}
	var v []map[string]any
	return v, json.Unmarshal(out, &v)
}

// xlb runs an xlb subcommand against lb1's daemon; the last argument is
// the positional one (flags must precede it).
func (c *cluster) xlb(args ...string) error {
	n := len(args) - 1
	args = append(append(args[:n:n], "--socket", c.lab.Sockets["lb1"]), args[n])
	out, err := exec.Command(c.bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("xlb %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// pools returns member -> pools as xlb backends reports them.
func (c *cluster) pools() (map[string]string, error) {
	bs, err := c.backends()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, b := range bs {
		var ps []string
		for _, p := range b["pools"].([]any) {
			ps = append(ps, p.(string))
		}
		out[b["member"].(string)] = strings.Join(ps, ",")
	}
	return out, nil
}

// waitFor polls cond every 50 ms until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cond()
}

// readOn opens connections to VIP:3001 until one lands on addr.
func (c *cluster) readOn(ctx context.Context, addr string) (*pgx.Conn, error) {
	for range 50 {
		conn, err := c.connect(ctx, 3001)
		if err != nil {
			return nil, err
		}
		got, err := serverOf(ctx, conn)
		if err == nil && got == addr {
			return conn, nil
		}
		conn.Close(ctx)
	}
	return nil, fmt.Errorf("no read connection landed on %s in 50 tries", addr)
}

// spread opens n read connections and counts the servers they land on.
func (c *cluster) spread(ctx context.Context, n int) (map[string]int, error) {
	count := map[string]int{}
	for range n {
		conn, err := c.connect(ctx, 3001)
		if err != nil {
			return count, err
		}
		addr, err := serverOf(ctx, conn)
		conn.Close(ctx)
		if err != nil {
			return count, err
		}
		count[addr]++
	}
	return count, nil
}

func TestCluster(t *testing.T) {
	c := upCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const pg1, pg2, pg3 = "172.20.0.10", "172.20.0.11", "172.20.0.12"

	t.Run("writes go to the primary", func(t *testing.T) {
		conn, err := c.connect(ctx, 3000)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS e2e (id int primary key, note text)"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO e2e VALUES (1, 'via 3000')"); err != nil {
			t.Fatal(err)
		}
		if addr, err := serverOf(ctx, conn); err != nil || addr != pg1 {
			t.Fatalf("write landed on %q (%v), want the primary %s", addr, err, pg1)
		}
		var ip string
		if err := conn.QueryRow(ctx, "SELECT host(client_addr) FROM pg_stat_activity WHERE pid = pg_backend_pid()").Scan(&ip); err != nil || ip != "172.20.0.21" {
			t.Fatalf("primary sees the client as %q (%v), want lb1 172.20.0.21", ip, err)
		}
	})

	t.Run("reads spread over the replicas", func(t *testing.T) {
		count, err := c.spread(ctx, 100)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("100 reads: %v", count)
		if count[pg1] != 0 || count[pg2] < 25 || count[pg3] < 25 || count[pg2]+count[pg3] != 100 {
			t.Fatalf("100 reads landed %v: want all on replicas, each at least 25", count)
		}
	})

	t.Run("writes through 3001 fail", func(t *testing.T) {
		conn, err := c.connect(ctx, 3001)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, "INSERT INTO e2e VALUES (2, 'via 3001')")
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "25006" {
			t.Fatalf("write via 3001: %v, want read_only_sql_transaction (25006)", err)
		}
	})

	t.Run("drain keeps flows and takes no new ones", func(t *testing.T) {
		held, err := c.readOn(ctx, pg2)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close(ctx)
		if err := c.xlb("backends", "drain", "pg2"); err != nil {
			t.Fatal(err)
		}
		count, err := c.spread(ctx, 20)
		if err != nil {
			t.Fatal(err)
		}
		if count[pg2] != 0 {
			t.Fatalf("drained pg2 took %d of 20 new reads", count[pg2])
		}
		if addr, err := serverOf(ctx, held); err != nil || addr != pg2 {
			t.Fatalf("connection held on drained pg2: %q, %v", addr, err)
		}
		if err := c.xlb("backends", "enable", "pg2"); err != nil {
			t.Fatal(err)
		}
		if !waitFor(5*time.Second, func() bool { p, _ := c.pools(); return p["pg2"] == "3001" }) {
			t.Fatal("pg2 not back in pool 3001 after enable")
		}
	})

	t.Run("a dead replica leaves the pool and comes back", func(t *testing.T) {
		held, err := c.readOn(ctx, pg3)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close(ctx)
		start := time.Now()
		if err := c.lab.Postgres["pg3"].StopImmediate(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		if !waitFor(3*time.Second, func() bool { p, _ := c.pools(); return p["pg3"] == "" }) {
			t.Fatalf("pg3 still in a pool 3 s after it died")
		}
		t.Logf("pg3 left the read pool %v after pg_ctl stop -m immediate", time.Since(start).Round(time.Millisecond))
		count, err := c.spread(ctx, 20)
		if err != nil {
			t.Fatal(err)
		}
		if count[pg3] != 0 || count[pg2] != 20 {
			t.Fatalf("20 reads after pg3 died landed %v, want all on pg2", count)
		}
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		defer qcancel()
		if _, err := serverOf(qctx, held); err == nil {
			t.Fatal("a query on the connection to dead pg3 succeeded")
		} else if qctx.Err() != nil {
			t.Fatalf("a query on the connection to dead pg3 hung instead of failing: %v", err)
		}
		if err := c.lab.Postgres["pg3"].Restart(ctx); err != nil {
			t.Fatal(err)
		}
		if !waitFor(20*time.Second, func() bool { p, _ := c.pools(); return p["pg3"] == "3001" }) {
			t.Fatal("pg3 not back in pool 3001 after restart")
		}
		conn, err := c.readOn(ctx, pg3)
		if err != nil {
			t.Fatalf("no read reaches pg3 after restart: %v", err)
		}
		conn.Close(ctx)
	})
}
