package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

// DemoReads is how many separate read connections Demo opens.
const DemoReads = 20

// Demo shows the lab with prefix at work, from its client namespace and
// through the VIP: it creates the table test_replication and inserts a
// row through VIP:3000 (the primary), reads the row back through VIP:3001
// (a replica; polled for up to 10 s while replication catches up), opens
// DemoReads separate connections through VIP:3001 and counts the servers
// that answered (inet_server_addr()), then prints `xlb backends` from the
// first LB host. It writes everything to w and returns an error when a
// step fails or the reads did not spread over at least two servers.
func Demo(ctx context.Context, prefix string, w io.Writer) error {
	if err := validatePrefix(prefix); err != nil {
		return err
	}
	st, err := readState(prefix)
	if err != nil {
		return fmt.Errorf("running the demo: lab %s is not up (xlb-lab up): %w", prefix, err)
	}
	client := &Namespace{Name: prefix + "client"}
	if !NamespaceExists(client.Name) {
		return fmt.Errorf("running the demo: lab %s has no namespace %s", prefix, client.Name)
	}
	secrets, err := ReadSecrets(prefix)
	if err != nil {
		return fmt.Errorf("running the demo: %w", err)
	}
	rw, ro := secrets.AppConn(VIP, PortRW), secrets.AppConn(VIP, PortRO)

	fmt.Fprintf(w, "demo: through VIP:%d (read/write, the primary): create table test_replication, insert a row\n", PortRW)
	if _, err := Query(ctx, client, rw, "CREATE TABLE IF NOT EXISTS test_replication ("+
		"id serial PRIMARY KEY, data text, created_at timestamptz DEFAULT now())"); err != nil {
		return fmt.Errorf("creating test_replication through VIP:%d: %w", PortRW, err)
	}
	// A SELECT around the INSERT, so psql prints the row and no status.
	row, err := Query(ctx, client, rw, "WITH ins AS (INSERT INTO test_replication (data) "+
		"VALUES ('written through the VIP by xlb-lab demo') RETURNING id) SELECT id, inet_server_addr() FROM ins")
	if err != nil {
		return fmt.Errorf("inserting through VIP:%d: %w", PortRW, err)
	}
	id, server, _ := strings.Cut(row, "|")
	fmt.Fprintf(w, "  row %s written on %s\n", id, hostLabel(server))

	fmt.Fprintf(w, "demo: through VIP:%d (read-only, the replicas): read row %s back\n", PortRO, id)
	begin := time.Now()
	row, err = pollQuery(ctx, 10*time.Second, client, ro,
		fmt.Sprintf("SELECT data, inet_server_addr() FROM test_replication WHERE id = %s", quoteLiteral(id)))
	if err != nil {
		return fmt.Errorf("reading row %s back through VIP:%d: %w", id, PortRO, err)
	}
	data, server, _ := strings.Cut(row, "|")
	fmt.Fprintf(w, "  row %s %q read on %s after %v\n", id, data, hostLabel(server), time.Since(begin).Round(time.Millisecond))

	fmt.Fprintf(w, "demo: %d new connections through VIP:%d, each asking inet_server_addr()\n", DemoReads, PortRO)
	count := map[string]int{}
	for i := 1; i <= DemoReads; i++ {
		server, err := Query(ctx, client, ro, "SELECT inet_server_addr()")
		if err != nil {
			return fmt.Errorf("read connection %d through VIP:%d: %w", i, PortRO, err)
		}
		fmt.Fprintf(w, "  connection %2d: %s\n", i, hostLabel(server))
		count[server]++
	}
	servers := slices.Sorted(maps.Keys(count))
	for _, s := range servers {
		fmt.Fprintf(w, "  served by %s: %d of %d\n", hostLabel(s), count[s], DemoReads)
	}

	if len(st.Daemons) > 0 {
		lb := st.Daemons[0]
		fmt.Fprintf(w, "demo: xlb backends (on %s)\n", lb)
		cmd := (&Namespace{Name: prefix + lb}).Command(ctx, st.Binary, "backends", "--socket", Socket(prefix, lb))
		cmd.Stdout, cmd.Stderr = w, w
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("running xlb backends in %s: %w", prefix+lb, err)
		}
	}
	if len(servers) < 2 {
		return fmt.Errorf("reads through VIP:%d did not spread: only %v answered %d connections", PortRO, servers, DemoReads)
	}
	return nil
}

// pollQuery runs sql every 100 ms until it returns a row or d passes, and
// returns the row or the last error.
func pollQuery(ctx context.Context, d time.Duration, ns *Namespace, c ConnInfo, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		row, err := Query(ctx, ns, c, sql)
		if err == nil && row != "" {
			return row, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = errors.New("no row")
			}
			return "", fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// hostLabel renders a lab address as "pg2 (172.20.0.11)".
func hostLabel(addr string) string {
	for _, h := range Hosts {
		if h.Addr.Addr().String() == addr {
			return fmt.Sprintf("%s (%s)", h.Name, addr)
		}
	}
	return addr
}

// ExecCommand returns an unstarted command that runs argv in the namespace
// of host (a lab host or "sw") of the lab with prefix, through ip netns
// exec, with the caller's environment plus the lab's libpq settings:
// PGPASSWORD always, PGUSER and PGDATABASE unless set. The password never
// appears in argv. It returns an error when the host is unknown or its
// namespace does not exist.
func ExecCommand(ctx context.Context, prefix, host string, argv []string) (*exec.Cmd, error) {
	if err := validatePrefix(prefix); err != nil {
		return nil, err
	}
	if len(argv) == 0 {
		return nil, errors.New("exec: no command given")
	}
	if _, ok := lookupHost(host); !ok && host != SwitchName {
		known := []string{SwitchName}
		for _, h := range Hosts {
			known = append(known, h.Name)
		}
		return nil, fmt.Errorf("exec: unknown lab host %q (want one of %s)", host, strings.Join(known, ", "))
	}
	ns := &Namespace{Name: prefix + host}
	if !NamespaceExists(ns.Name) {
		return nil, fmt.Errorf("exec: namespace %s does not exist (is the lab up? xlb-lab up)", ns.Name)
	}
	secrets, err := ReadSecrets(prefix)
	if err != nil {
		return nil, fmt.Errorf("exec: %w", err)
	}
	cmd := ns.Command(ctx, argv[0], argv[1:]...)
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "PGPASSWORD=") })
	env = append(env, "PGPASSWORD="+secrets.Password)
	for k, v := range map[string]string{"PGUSER": User, "PGDATABASE": Database} {
		if _, set := os.LookupEnv(k); !set {
			env = append(env, k+"="+v)
		}
	}
	cmd.Env = env
	return cmd, nil
}

// Exec runs argv in host's namespace with this process's stdin, stdout and
// stderr, as ExecCommand prepares it, and waits for it. A terminal's
// SIGINT and SIGQUIT reach the command directly (it is in the foreground
// process group), so Exec only outlives them; SIGTERM and SIGHUP it
// forwards. The command's failure comes back as an *exec.ExitError.
func Exec(ctx context.Context, prefix, host string, argv []string) error {
	cmd, err := ExecCommand(ctx, prefix, host, argv)
	if err != nil {
		return err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s in %s: %w", argv[0], prefix+host, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case err := <-done:
			return err
		case s := <-sigs:
			if s == syscall.SIGTERM || s == syscall.SIGHUP {
				cmd.Process.Signal(s)
			}
		}
	}
}
