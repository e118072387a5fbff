package lab

import (
	"errors"
	"os"
	"os/exec"
	"testing"
)

// TestDeps checks lab-deps.sh, the one list of packages that make test,
// make lab, make bench, make generate and .ci/run install: an unknown group
// is refused (exit 2), and on a machine where it reports every package of
// the test group present, every program the tests run is on PATH. Under
// XLB_REQUIRE_PRIVILEGED=1 (CI, after make test ran it) a missing package
// fails the test.
func TestDeps(t *testing.T) {
	err := exec.Command("sh", "lab-deps.sh", "no-such-group").Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Errorf("lab-deps.sh no-such-group: %v, want exit status 2", err)
	}

	out, err := exec.Command("sh", "lab-deps.sh", "--check", "test").CombinedOutput()
	if err != nil {
		if os.Getenv("XLB_REQUIRE_PRIVILEGED") == "1" {
			t.Fatalf("lab-deps.sh --check test: %v: %s", err, out)
		}
		t.Skipf("lab-deps.sh --check test: %v: %s", err, out)
	}
	// What the tests and the lab run, each from a package of the test group.
	for _, prog := range []string{
		"clang", "llvm-strip", "ip", "ethtool", "nft", "psql", "pg_basebackup", "pg_isready",
		"keepalived", "haproxy", "hping3", "tcpdump", "pgrep", "bpftool", "promtool", "prometheus",
		"chromium", "systemd-analyze", "mmdebstrap", "docker-compose",
	} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Errorf("lab-deps.sh reports the test group present, but %s is not on PATH: %v", prog, err)
		}
	}
	for _, p := range []string{PostgresBin + "/initdb", PostgresBin + "/postgres", "/usr/include/bpf/bpf_helpers.h"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("lab-deps.sh reports the test group present, but %v", err)
		}
	}
}
