package lab

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// xlbBinary builds cmd/xlb into t's temporary directory.
func xlbBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "xlb")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/xlb-dev/xlb/cmd/xlb").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/xlb: %v\n%s", err, out)
	}
	return bin
}

// downInCleanup takes the lab with prefix down when t ends, pass or fail,
// and checks that nothing of it is left.
func downInCleanup(t *testing.T, prefix string) {
	t.Cleanup(func() {
		var out bytes.Buffer
		if err := Down(prefix, &out); err != nil {
			t.Errorf("Down in cleanup: %v\n%s", err, out.String())
		}
		requireNothingLeft(t, prefix, nil)
	})
}

// requireNothingLeft fails t when a namespace, pin directory, socket or the
// state directory of the lab with prefix exists, or one of procs runs.
func requireNothingLeft(t *testing.T, prefix string, procs []process) {
	t.Helper()
	requireGone(t, prefix)
	for _, p := range procs {
		if p.running() {
			t.Errorf("%s (pid %d) still runs", p.Name, p.PID)
		}
	}
	paths := []string{StateDir(prefix), PassPinDir(prefix)}
	for _, lb := range lbHosts {
		paths = append(paths, DaemonPinDir(prefix, lb), Socket(prefix, lb))
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left (stat: %v)", p, err)
		}
	}
}

// TestUpDemoDown builds the whole lab with a fresh xlb, checks the pools
// and the demo's spread of reads, and takes it down.
func TestUpDemoDown(t *testing.T) {
	RequirePrivileged(t)
	bin := xlbBinary(t)
	prefix := TestPrefix()
	downInCleanup(t, prefix)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	var out bytes.Buffer
	begin := time.Now()
	l, err := Up(ctx, Options{Prefix: prefix, Binary: bin, Out: &out})
	t.Logf("Up took %v:\n%s", time.Since(begin), out.String())
	if err != nil {
		t.Fatal(err)
	}

	// A second Up with the prefix refuses and leaves the lab alone.
	if _, err := Up(ctx, Options{Prefix: prefix, Binary: bin}); !errors.Is(err, ErrAlreadyUp) {
		t.Errorf("second Up: %v, want ErrAlreadyUp", err)
	}

	ms, err := daemonBackends(ctx, bin, l.Sockets["lb1"])
	if err != nil {
		t.Fatal(err)
	}
	pools := map[string][]string{}
	for _, m := range ms {
		pools[m.Member] = m.Pools
	}
	want := map[string][]string{"pg1": {"3000"}, "pg2": {"3001"}, "pg3": {"3001"}}
	if diff := cmp.Diff(want, pools); diff != "" {
		t.Errorf("pools (-want +got):\n%s", diff)
	}

	client := &Namespace{Name: prefix + "client"}
	for _, r := range replicaHosts {
		n := l.Topology.Node(r)
		got, err := Query(ctx, client, l.Secrets.AppConn(n.Addr.Addr(), PostgresPort), "SELECT pg_is_in_recovery(), current_setting('wal_retrieve_retry_interval')")
		if err != nil {
			t.Fatal(err)
		}
		if got != "t|200ms" {
			t.Errorf("%s: in recovery, wal_retrieve_retry_interval = %q, want t|200ms", r, got)
		}
	}

	inv, err := Status(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if !inv.Up || len(inv.Processes) != 4 {
		t.Errorf("Status: up %v with %d processes, want up with 4 (pg1-3, xlb): %+v", inv.Up, len(inv.Processes), inv)
	}
	st, err := readState(prefix)
	if err != nil {
		t.Fatal(err)
	}

	var demo bytes.Buffer
	err = Demo(ctx, prefix, &demo)
	t.Logf("Demo:\n%s", demo.String())
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]bool{}
	for _, line := range strings.Split(demo.String(), "\n") {
		if s, ok := strings.CutPrefix(strings.TrimSpace(line), "served by "); ok {
			served[strings.Fields(s)[0]] = true
		}
	}
	if diff := cmp.Diff(map[string]bool{"pg2": true, "pg3": true}, served); diff != "" {
		t.Errorf("servers of the demo's reads (-want +got):\n%s", diff)
	}

	out.Reset()
	if err := Down(prefix, &out); err != nil {
		t.Fatalf("Down: %v\n%s", err, out.String())
	}
	t.Logf("Down:\n%s", out.String())
	requireNothingLeft(t, prefix, st.Processes)
	if inv, err := Status(prefix); err != nil || !inv.Empty() {
		t.Errorf("Status after Down: %+v, %v; want empty", inv, err)
	}
	out.Reset()
	if err := Down(prefix, &out); err != nil {
		t.Errorf("second Down: %v", err)
	}
	if !strings.Contains(out.String(), "nothing of lab") {
		t.Errorf("second Down said %q, want it to find nothing", out.String())
	}
}

// TestUpFailsClean has the daemon exit at once: Up must name the step
// that failed and leave nothing behind.
func TestUpFailsClean(t *testing.T) {
	RequirePrivileged(t)
	prefix := TestPrefix()
	downInCleanup(t, prefix)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	var out bytes.Buffer
	_, err := Up(ctx, Options{Prefix: prefix, Binary: "/bin/false", Out: &out})
	t.Logf("Up:\n%s\nerror: %v", out.String(), err)
	if err == nil {
		t.Fatal("Up with a daemon that exits at once succeeded")
	}
	if !strings.HasPrefix(err.Error(), "waiting for xlb on lb1") || !strings.Contains(err.Error(), "xlb exited") {
		t.Errorf("Up error = %q, want it to name the step waiting for xlb on lb1 and say xlb exited", err)
	}
	requireNothingLeft(t, prefix, nil)
}

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		start  uint64
		zombie bool
		err    bool
	}{
		{"plain", "42 (postgres) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10", 987654, false, false},
		{"name with spaces and parens", "7 (a (b) c) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0", 55, true, false},
		{"truncated", "7 (x) S 1 2", 0, false, true},
		{"no name", "garbage", 0, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start, zombie, err := parseProcStat(tt.in)
			if (err != nil) != tt.err {
				t.Fatalf("err = %v, want error %v", err, tt.err)
			}
			if start != tt.start || zombie != tt.zombie {
				t.Errorf("got start %d zombie %v, want %d %v", start, zombie, tt.start, tt.zombie)
			}
		})
	}
}

func TestValidatePrefix(t *testing.T) {
	for _, p := range []string{"xlb-", "xt123-4-", "lab_2."} {
		if err := validatePrefix(p); err != nil {
			t.Errorf("validatePrefix(%q) = %v, want nil", p, err)
		}
	}
	for _, p := range []string{"", "../x", "a/b", "-x", ".x", "x y", strings.Repeat("a", 21)} {
		if err := validatePrefix(p); err == nil {
			t.Errorf("validatePrefix(%q) = nil, want an error", p)
		}
	}
}
