package lab

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"
)

// RequirePrivileged skips t unless it runs as root. Under
// XLB_REQUIRE_PRIVILEGED=1 (set by CI) it fails instead: there a skipped
// privileged test is a test that did not run.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("XLB_REQUIRE_PRIVILEGED") == "1" {
		t.Fatal("needs root (CAP_BPF, CAP_NET_ADMIN) and XLB_REQUIRE_PRIVILEGED=1 forbids skipping")
	}
	t.Skip("needs root (CAP_BPF, CAP_NET_ADMIN)")
}

var seq atomic.Uint32

// TestPrefix returns a namespace name prefix unique to this process and
// call, so parallel test runs and a running lab never collide.
func TestPrefix() string {
	return fmt.Sprintf("xt%d-%d-", os.Getpid()%100000, seq.Add(1))
}
