package compose

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSystemdUnit starts xlb under systemd with deploy/xlb.service as it
// ships: systemd runs as PID 1 of a container (this machine's PID 1 is not
// systemd), made from the compose lab's offline base image.
// Type=notify must report READY once the datapath is attached and the
// node was probed (nothing listens there: a failed probe counts), a
// SIGKILL must be followed by a restart that keeps running, and a bad
// configuration must stop it with exit code 2 and no restart
// (RestartPreventExitStatus=2). The container has no network of its own
// (--network none); xlb attaches to one end of a veth pair made in it.
func TestSystemdUnit(t *testing.T) {
	l := newComposeLab(t)
	base := os.Getenv("XLB_BASE_IMAGE")
	if base == "" {
		out, err := l.run(20*time.Minute, "bash", filepath.Join(l.dir, "base.sh"))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		base = lines[len(lines)-1]
	}

	ctxDir := t.TempDir()
	repo := filepath.Join(l.dir, "..", "..")
	build := exec.Command("go", "build", "-o", filepath.Join(ctxDir, "xlb"), "./cmd/xlb")
	build.Dir, build.Env = repo, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building xlb: %v\n%s", err, out)
	}
	unit, err := os.ReadFile(filepath.Join(repo, "deploy", "xlb.service"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"xlb.service":     string(unit),
		"xlb.yaml":        systemdConfig,
		"pgpassword":      "probe-secret\n",
		"pgadminpassword": "admin-secret\n",
		// LoadCredential= leaves its directory empty in these containers
		// (systemd 252 under Docker 20.10 here; the copy into the
		// credentials mount does not reach the service): the only change
		// to the unit is that the passwords are read where they lie.
		"credentials.conf": "[Service]\nLoadCredential=\n",
		"Dockerfile": fmt.Sprintf(`FROM %s
COPY xlb /usr/local/bin/xlb
COPY xlb.service /etc/systemd/system/xlb.service
COPY credentials.conf /etc/systemd/system/xlb.service.d/credentials.conf
COPY xlb.yaml pgpassword pgadminpassword /etc/xlb/
RUN chmod 0600 /etc/xlb/pgpassword /etc/xlb/pgadminpassword && test -x /lib/systemd/systemd
`, base),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(ctxDir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	image := fmt.Sprintf("xlb-systemd-test:%d", os.Getpid())
	l.docker("build", "-q", "-t", image, ctxDir)
	t.Cleanup(func() { l.run(time.Minute, "docker", "image", "rm", "-f", image) })

	name := fmt.Sprintf("xlb-systemd-test-%d", os.Getpid())
	// Removed also when `docker run` fails after creating it.
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := l.run(time.Minute, "docker", "exec", name, "journalctl", "-u", "xlb", "--no-pager", "-n", "40")
			t.Logf("xlb's journal:\n%s", out)
		}
		l.run(time.Minute, "docker", "rm", "-f", name)
	})
	// Not --privileged: these machines lack CAP_SYS_RESOURCE, and runc
	// fails to give a privileged container every capability ("unable to
	// apply caps"). Every other capability, no seccomp or AppArmor filter
	// (systemd and the unit's sandboxing use namespaces and mounts), a
	// cgroup namespace of its own.
	l.docker("run", "-d", "--name", name, "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
		"--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined", "--cgroupns", "private",
		"--network", "none", "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
		image, "/lib/systemd/systemd")
	sh := func(script string) (string, error) {
		return l.run(2*time.Minute, "docker", "exec", name, "sh", "-c", script)
	}
	show := func() map[string]string {
		out, _ := sh("systemctl show xlb -p ActiveState -p SubState -p Result -p NRestarts -p MainPID -p ExecMainStatus -p StatusText")
		m := map[string]string{}
		for _, line := range strings.Split(out, "\n") {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
				m[k] = v
			}
		}
		return m
	}
	waitFor := func(what string, d time.Duration, cond func(map[string]string) bool) map[string]string {
		t.Helper()
		deadline := time.Now().Add(d)
		for {
			st := show()
			if cond(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not after %v: %v", what, d, st)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// systemd up (degraded is fine: units a container cannot run).
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, _ := sh("systemctl is-system-running")
		if s := strings.TrimSpace(out); s == "running" || s == "degraded" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd in the container did not come up: %q", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, err := sh("ip link add xdp0 type veth peer name xdp1 && ip addr add 10.99.0.2/24 dev xdp0 && ip link set xdp1 up && ip link set xdp0 up"); err != nil {
		t.Fatalf("making the interface: %v\n%s", err, out)
	}

	// Type=notify: `systemctl start` returns once xlb sent READY=1.
	start := time.Now()
	if out, err := sh("systemctl start xlb"); err != nil {
		t.Fatalf("systemctl start xlb: %v\n%s", err, out)
	}
	st := show()
	if st["ActiveState"] != "active" || st["SubState"] != "running" || !strings.Contains(st["StatusText"], "datapath attached") {
		t.Fatalf("after systemctl start: %v", st)
	}
	t.Logf("xlb active under systemd %v after systemctl start: %q", time.Since(start).Round(time.Millisecond), st["StatusText"])
	if out, err := sh("xlb status --socket /run/xlb/xlb.sock"); err != nil || !strings.Contains(out, "xdp generic on xdp0") {
		t.Errorf("xlb status under systemd: %v\n%s", err, out)
	}

	// SIGKILL: Restart=always brings it back, READY again.
	pid := st["MainPID"]
	if out, err := sh("kill -9 " + pid); err != nil {
		t.Fatalf("kill -9 %s: %v\n%s", pid, err, out)
	}
	st = waitFor("restarted after SIGKILL", time.Minute, func(m map[string]string) bool {
		return m["NRestarts"] == "1" && m["ActiveState"] == "active" && m["SubState"] == "running" && m["MainPID"] != pid
	})
	t.Logf("after kill -9: restarted, %v", st)

	// A bad configuration: exit 2, failed, not restarted.
	if out, err := sh("echo 'bogus_field: 1' >> /etc/xlb/xlb.yaml"); err != nil {
		t.Fatalf("breaking the configuration: %v\n%s", err, out)
	}
	sh("systemctl restart xlb")
	st = waitFor("failed on the bad configuration", time.Minute, func(m map[string]string) bool {
		return m["ActiveState"] == "failed"
	})
	if st["ExecMainStatus"] != "2" || st["NRestarts"] != "0" {
		t.Errorf("bad configuration: %v, want exit status 2 and no restart", st)
	}
	// RestartSec is 200 ms: it stays failed for a second, five times that.
	for hold := time.Now().Add(time.Second); time.Now().Before(hold); {
		if st := show(); st["ActiveState"] != "failed" || st["NRestarts"] != "0" {
			t.Fatalf("restarted despite exit 2: %v", st)
		}
	}
	out, _ := sh("journalctl -u xlb --no-pager -n 20")
	if !strings.Contains(out, "bogus_field") {
		t.Errorf("the journal does not name the bad field:\n%s", out)
	}
}

// systemdConfig is xlb's configuration in the systemd container: one node
// where nothing listens.
const systemdConfig = `interface: xdp0
xdp_mode: generic
vip: 10.99.0.100
node_address: 10.99.0.2
ports: {rw: 3000, ro: 3001}
snat_ports: 20000-29999
pin_path: /sys/fs/bpf/xlb
socket: /run/xlb/xlb.sock
state_file: /var/lib/xlb/state.json
postgres:
  user: xlbprobe
  database: postgres
  password_file: /etc/xlb/pgpassword
  admin_user: xlbadmin
  admin_password_file: /etc/xlb/pgadminpassword
  sslmode: disable
http:
  listen: "127.0.0.1:8080"
nodes:
  - name: pg1
    address: 127.0.0.1:5432
`
