package postgres

import (
	"bytes"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// TestRejoinOwnerPlantsSymlinks gives rejoin, run as root, a data
// directory whose owner (postgres) planted symlinks and paths to a file
// root owns (readable by all, like /etc/passwd): the log file, the
// password file, a configuration file and postgresql.auto.conf point at
// it, or the password file lies in a directory only root may write. Root
// must not be tricked: the victim keeps its content, mode and owner, and
// nothing appears where the owner could not write itself.
func TestRejoinOwnerPlantsSymlinks(t *testing.T) {
	lab.RequirePrivileged(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test is about what root does")
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)

	const victimContent = "root:x:0:0:root:/root:/bin/bash\n"
	setup := func(t *testing.T) (dir, data, victimDir, victim string) {
		t.Helper()
		// t.TempDir's directories are root's, 0700: the owner must reach
		// the data directory, as it does in real life.
		base := t.TempDir()
		for _, d := range []string{base, filepath.Dir(base)} {
			if err := os.Chmod(d, 0o711); err != nil {
				t.Fatal(err)
			}
		}
		dir = filepath.Join(base, "pg") // like /var/lib/postgresql/15
		data = filepath.Join(dir, "data")
		for _, d := range []string{dir, data} {
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(d, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		for name, content := range map[string]string{"PG_VERSION": "15\n", "postgresql.auto.conf": "primary_slot_name = 'pg1'\n"} {
			p := filepath.Join(data, name)
			if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		victimDir = filepath.Join(base, "etc") // root's, 0755
		if err := os.Mkdir(victimDir, 0o755); err != nil {
			t.Fatal(err)
		}
		victim = filepath.Join(victimDir, "passwd")
		if err := os.WriteFile(victim, []byte(victimContent), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir, data, victimDir, victim
	}
	plant := func(t *testing.T, link, target string) {
		t.Helper()
		os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(link, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	untouched := func(t *testing.T, victim string) {
		t.Helper()
		b, err := os.ReadFile(victim)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(victim)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if string(b) != victimContent || fi.Mode().Perm() != 0o644 || st.Uid != 0 || st.Gid != 0 {
			t.Errorf("victim %s: %q, mode %v, owner %d:%d; want it untouched (root's, 0644)", victim, b, fi.Mode().Perm(), st.Uid, st.Gid)
		}
	}
	newR := func(t *testing.T, o RejoinOptions) *rejoiner {
		t.Helper()
		o.ReplUser, o.ReplPassword = "replicator", "s3cret"
		r, err := newRejoiner(o)
		if err != nil {
			t.Fatal(err)
		}
		if r.cred == nil {
			t.Fatal("rejoiner runs as the owner; want root acting for postgres")
		}
		return r
	}
	conninfo := connInfo{{"host", "127.0.0.1"}, {"user", "replicator"}}

	t.Run("log file symlink", func(t *testing.T) {
		dir, data, _, victim := setup(t)
		log := filepath.Join(dir, "postgres.log")
		plant(t, log, victim)
		r := newR(t, RejoinOptions{DataDir: data, LogFile: log})
		err := r.touchLog()
		t.Logf("touchLog: %v", err)
		if err == nil || !strings.Contains(err.Error(), "a symlink, refused") {
			t.Errorf("touchLog with a planted symlink: %v, want an error saying it is a symlink", err)
		}
		untouched(t, victim)
	})

	t.Run("log file in a directory root owns", func(t *testing.T) {
		_, data, victimDir, victim := setup(t)
		log := filepath.Join(victimDir, "postgres.log")
		r := newR(t, RejoinOptions{DataDir: data, LogFile: log})
		err := r.touchLog()
		t.Logf("touchLog: %v", err)
		if err == nil || !strings.Contains(err.Error(), "--log-file") {
			t.Errorf("touchLog in root's directory: %v, want an error naming --log-file", err)
		}
		if _, err := os.Lstat(log); err == nil {
			t.Errorf("%s was created", log)
		}
		untouched(t, victim)
	})

	t.Run("password file symlink", func(t *testing.T) {
		_, data, _, victim := setup(t)
		pass := filepath.Join(data, "pgpass")
		plant(t, pass, victim)
		r := newR(t, RejoinOptions{DataDir: data, Passfile: pass})
		if err := r.configure(conninfo, "pg1"); err != nil {
			t.Fatal(err)
		}
		untouched(t, victim)
		// The symlink was replaced by the owner's own password file.
		fi, err := os.Lstat(pass)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 || int(st.Uid) != uid {
			t.Errorf("%s: mode %v owner %d, want a regular file, 0600, postgres's (%d)", pass, fi.Mode(), st.Uid, uid)
		}
		if b, _ := os.ReadFile(pass); string(b) != "*:*:*:replicator:s3cret\n" {
			t.Errorf("%s = %q", pass, b)
		}
		// And the other files rejoin wrote are the owner's too.
		for _, name := range []string{"postgresql.auto.conf", "standby.signal"} {
			fi, err := os.Stat(filepath.Join(data, name))
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid {
				t.Errorf("%s belongs to %d, want postgres (%d)", name, st.Uid, uid)
			}
		}
	})

	t.Run("password file in a directory root owns", func(t *testing.T) {
		_, data, victimDir, victim := setup(t)
		pass := filepath.Join(victimDir, "pgpass")
		r := newR(t, RejoinOptions{DataDir: data, Passfile: pass})
		err := r.configure(conninfo, "pg1")
		t.Logf("configure: %v", err)
		if err == nil {
			t.Error("configure wrote a password file into root's directory")
		}
		entries, err := os.ReadDir(victimDir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 {
			t.Errorf("root's directory holds %d entries, want only the victim", len(entries))
		}
		untouched(t, victim)
	})

	t.Run("configuration symlinks", func(t *testing.T) {
		_, data, _, victim := setup(t)
		plant(t, filepath.Join(data, "pg_hba.conf"), victim)
		r := newR(t, RejoinOptions{DataDir: data, Passfile: filepath.Join(data, "pgpass")})
		saved, err := r.saveConfig()
		t.Logf("saveConfig: %v", err)
		if err == nil {
			t.Errorf("saveConfig followed pg_hba.conf to the victim")
		}
		for _, f := range saved {
			if bytes.Contains(f.data, []byte(victimContent)) {
				t.Errorf("saved %s holds the victim's content", f.path)
			}
		}
		os.Remove(filepath.Join(data, "pg_hba.conf"))
		plant(t, filepath.Join(data, "postgresql.auto.conf"), victim)
		err = r.configure(conninfo, "pg1")
		t.Logf("configure: %v", err)
		if err == nil || !strings.Contains(err.Error(), "a symlink, refused") {
			t.Errorf("configure with postgresql.auto.conf a symlink: %v, want an error saying it is a symlink", err)
		}
		untouched(t, victim)
	})
}
