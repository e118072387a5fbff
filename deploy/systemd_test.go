package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// requireTool returns the path of the program name; it skips t when it is
// missing, and fails it under XLB_REQUIRE_PRIVILEGED=1 (CI installs it).
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("XLB_REQUIRE_PRIVILEGED") == "1" {
		t.Fatalf("%s not found (make test installs it: deploy/lab/lab-deps.sh test)", name)
	}
	t.Skipf("%s not found", name)
	return ""
}

// unitCopy writes xlb.service into a temporary directory with ExecStart
// pointing at a freshly built xlb (verify checks that it is executable).
func unitCopy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "xlb")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/xlb-dev/xlb/cmd/xlb").CombinedOutput(); err != nil {
		t.Fatalf("building xlb: %v\n%s", err, out)
	}
	b, err := os.ReadFile("xlb.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, "xlb.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/xlb", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	return unit
}

func TestUnitSettings(t *testing.T) {
	b, err := os.ReadFile("xlb.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Type=notify", "WatchdogSec=", "RestartPreventExitStatus=2", "NoNewPrivileges=yes",
		"ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "ReadWritePaths=/run/xlb /sys/fs/bpf",
		"LoadCredential=pgpassword:", "CapabilityBoundingSet=", "ExecReload=/bin/kill -HUP $MAINPID",
	} {
		if !strings.Contains(string(b), "\n"+want) {
			t.Errorf("xlb.service lacks a line starting %q", want)
		}
	}
}

// TestUnitAnalyze runs systemd-analyze verify and security on the unit.
func TestUnitAnalyze(t *testing.T) {
	sa := requireTool(t, "systemd-analyze")
	unit := unitCopy(t)
	t.Run("verify", func(t *testing.T) { verify(t, sa, unit) })
	t.Run("security", func(t *testing.T) { security(t, sa, unit) })
}

func verify(t *testing.T, sa, unit string) {
	out, err := exec.Command(sa, "verify", unit).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		t.Log("PID 1 is not systemd here (no /run/systemd/system): the unit is verified, not started")
	}
}

// security runs systemd-analyze security offline and wants an exposure
// level of at most 4 ("OK") with the hardening the unit promises.
func security(t *testing.T, sa, unit string) {
	out, err := exec.Command(sa, "security", "--offline=true", "--no-pager", unit).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for xlb\.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	level, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("exposure level %.1f", level)
	if level > 4 {
		t.Errorf("exposure level %.1f, want at most 4:\n%s", level, out)
	}
	for _, setting := range []string{"NoNewPrivileges=", "ProtectHome=", "PrivateTmp=", "ProtectKernelModules=",
		"CapabilityBoundingSet=~CAP_SYS_MODULE", "RestrictSUIDSGID=", "PrivateDevices="} {
		ok := false
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			if len(f) >= 2 && f[0] == "✓" && f[1] == setting {
				ok = true
			}
		}
		if !ok {
			t.Errorf("systemd-analyze security does not pass %s", setting)
		}
	}
}
