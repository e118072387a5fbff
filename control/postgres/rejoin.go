package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xlb-dev/xlb/health"
)

// RejoinOptions says what Rejoin does. Empty Slot, AppName, ReplUser and
// Passfile are taken from the data directory's configuration by Rejoin.
type RejoinOptions struct {
	DataDir     string
	PrimaryHost string
	PrimaryPort uint16
	Bin         string
	Slot        string
	AppName     string
	// AdminUser logs in to AdminDatabase on the primary with AdminPassword
	// for pg_rewind and the slot.
	AdminUser, AdminDatabase, AdminPassword string
	ReplUser                                string
	// ReplPassword, when set, is written to Passfile; else Passfile must
	// exist.
	ReplPassword string
	Passfile     string
	LogFile      string
	// ConfigFile is postgresql.conf outside the data directory; empty: in
	// it.
	ConfigFile string
	// TLS protects the connections to the primary: rejoin's own and
	// pg_rewind's.
	TLS     health.TLS
	Timeout time.Duration
}

// OptionError is an option of RejoinOptions that is missing or bad, and
// that the data directory's configuration cannot supply either.
type OptionError struct {
	// Option is the field of RejoinOptions.
	Option string
	Err    error
}

func (e *OptionError) Error() string { return fmt.Sprintf("option %s: %v", e.Option, e.Err) }
func (e *OptionError) Unwrap() error { return e.Err }

// slotNameRe is what PostgreSQL accepts as a replication slot's name.
var slotNameRe = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// ValidSlotName reports whether s is a name PostgreSQL accepts for a
// replication slot: 1 to 63 of a-z, 0-9 and _.
func ValidSlotName(s string) bool { return slotNameRe.MatchString(s) }

// rejoinDrops are the settings rejoin removes from postgresql.auto.conf:
// xlb sets them on a primary (StopWrites, SetSynchronous), a replica has no
// use for them, and a later promotion must not inherit them.
var rejoinDrops = []string{"default_transaction_read_only", "synchronous_standby_names"}

// Rejoin makes the server on o.DataDir a streaming replica of the primary
// at o.PrimaryHost:o.PrimaryPort, reporting each step on w:
//
//  1. It reads the node's application name, slot, replication user and
//     password file from postgresql.auto.conf where the flags leave them
//     out, checks that the primary is one (and not this server), creates
//     the slot there when missing, so the primary keeps WAL from now on,
//     and runs CHECKPOINT there when its control file still shows the
//     timeline before its promotion (pg_rewind would see no divergence).
//  2. It stops the local server when it runs (pg_ctl stop -m fast).
//  3. It runs pg_rewind from the primary, with the administrative
//     password in PGPASSWORD; "no rewind required" is fine. pg_rewind copies
//     the source's configuration files, so rejoin puts the node's own
//     (postgresql.conf, postgresql.auto.conf, pg_hba.conf, pg_ident.conf, a
//     password file in the data directory) back afterwards, also when
//     pg_rewind fails.
//  4. It writes standby.signal, the password file when it has a
//     replication password, and primary_conninfo (host and port of the
//     primary, everything else kept from the old one), primary_slot_name,
//     recovery_target_timeline = 'latest' and wal_retrieve_retry_interval =
//     '200ms' into postgresql.auto.conf, dropping
//     default_transaction_read_only and synchronous_standby_names.
//  5. It starts the server (pg_ctl start -w) and waits until the
//     primary's pg_stat_replication shows it streaming on its slot.
//
// PostgreSQL's programs run as the data directory's owner. Errors name the
// step; a value the flags or the configuration cannot supply is a
// *OptionError naming the option.
func Rejoin(ctx context.Context, o RejoinOptions, w io.Writer) error {
	start := time.Now()
	say := func(format string, args ...any) { fmt.Fprintf(w, "rejoin: "+format+"\n", args...) }
	primary := net.JoinHostPort(o.PrimaryHost, strconv.Itoa(int(o.PrimaryPort)))

	r, err := newRejoiner(o)
	if err != nil {
		return err
	}
	auto := filepath.Join(o.DataDir, "postgresql.auto.conf")
	var cur *autoConf
	if err := r.asOwner(func() (err error) { cur, err = readAutoConf(auto); return err }); err != nil {
		return fmt.Errorf("reading the configuration: %w", err)
	}
	base, err := parseConnInfo(cur.get("primary_conninfo"))
	if err != nil {
		return fmt.Errorf("reading the current primary_conninfo: %w", err)
	}
	// primary_conninfo never carries a password (the server would log it
	// with the setting): the password file does.
	base.del("password")
	if o.AppName == "" {
		o.AppName, _ = base.get("application_name")
	}
	if o.AppName == "" {
		return &OptionError{Option: "AppName", Err: fmt.Errorf("required: %s names none", auto)}
	}
	if o.Slot == "" {
		o.Slot = cur.get("primary_slot_name")
	}
	if o.Slot == "" {
		if !slotNameRe.MatchString(o.AppName) {
			return &OptionError{Option: "Slot", Err: fmt.Errorf("required: application name %q is no slot name", o.AppName)}
		}
		o.Slot = o.AppName
	}
	if o.ReplUser == "" {
		o.ReplUser, _ = base.get("user")
	}
	if o.ReplUser == "" {
		o.ReplUser = "replicator"
	}
	if o.Passfile == "" {
		o.Passfile, _ = base.get("passfile")
	}
	if o.Passfile == "" {
		o.Passfile = filepath.Join(o.DataDir, "pgpass")
	}
	if o.ReplPassword == "" {
		if err := r.asOwner(func() error { _, err := os.Stat(o.Passfile); return err }); err != nil {
			return &OptionError{Option: "ReplPassword",
				Err: fmt.Errorf("no replication password given and no password file: %w", err)}
		}
	}
	if o.LogFile == "" {
		o.LogFile = filepath.Join(filepath.Dir(o.DataDir), "postgres.log")
	}
	r.o = o

	// 1. The primary: one, not this server; the slot.
	admin := NewActions(health.Login{User: o.AdminUser, Database: o.AdminDatabase, Password: o.AdminPassword, TLS: o.TLS}, 10*time.Second)
	if err := r.checkPrimary(ctx, admin); err != nil {
		return fmt.Errorf("checking the primary %s: %w", primary, err)
	}
	if err := admin.ensureSlot(ctx, o.PrimaryHost, o.PrimaryPort, o.Slot); err != nil {
		return fmt.Errorf("preparing the primary %s: %w", primary, err)
	}
	if err := r.checkpointNewTimeline(ctx, admin, say); err != nil {
		return fmt.Errorf("preparing the primary %s: %w", primary, err)
	}

	// 2. Stop.
	running, err := r.running(ctx)
	if err != nil {
		return fmt.Errorf("checking the local server: %w", err)
	}
	if running {
		say("stopping the server on %s", o.DataDir)
		if out, err := r.run(ctx, "pg_ctl", nil, "stop", "-D", o.DataDir, "-m", "fast", "-w", "-t", r.seconds(ctx)); err != nil {
			return fmt.Errorf("stopping the local server: %w: %s", err, lastLines(out, 5))
		}
	}

	// 3. Rewind, keeping the node's own configuration.
	saved, err := r.saveConfig()
	if err != nil {
		return fmt.Errorf("saving the configuration: %w", err)
	}
	say("rewinding %s from %s", o.DataDir, primary)
	rewound := time.Now()
	source := connInfo{{"host", o.PrimaryHost}, {"port", strconv.Itoa(int(o.PrimaryPort))}, {"user", o.AdminUser},
		{"dbname", o.AdminDatabase}, {"connect_timeout", "10"}, {"application_name", "xlb-rejoin"}}
	for _, kv := range [][2]string{{"sslmode", o.TLS.SSLMode}, {"sslrootcert", o.TLS.SSLRootCert},
		{"sslcert", o.TLS.SSLCert}, {"sslkey", o.TLS.SSLKey}} {
		if kv[1] != "" {
			source.set(kv[0], kv[1])
		}
	}
	rewindArgs := []string{"--target-pgdata", o.DataDir, "--source-server", source.String()}
	if o.ConfigFile != "" {
		rewindArgs = append(rewindArgs, "--config-file", o.ConfigFile)
	}
	out, rewindErr := r.run(ctx, "pg_rewind", []string{"PGPASSWORD=" + o.AdminPassword}, rewindArgs...)
	if err := r.restoreConfig(saved); err != nil {
		return errors.Join(rewindErr, fmt.Errorf("restoring the configuration after pg_rewind: %w", err))
	}
	if rewindErr != nil {
		hint := ""
		if bytes.Contains(out, []byte("could not find previous WAL record")) {
			hint = " (pg_rewind needs this node's WAL back to the last checkpoint before the divergence: " +
				"keep it with wal_keep_size, or give it a restore_command)"
		}
		return fmt.Errorf("running pg_rewind: %w: %s%s", rewindErr, lastLines(out, 10), hint)
	}
	if bytes.Contains(out, []byte("no rewind required")) {
		say("no rewind required")
	} else {
		say("rewound in %v", time.Since(rewound).Round(time.Millisecond))
	}

	// 4. Point it at the primary.
	base.set("host", o.PrimaryHost)
	base.set("port", strconv.Itoa(int(o.PrimaryPort)))
	base.del("hostaddr")
	base.set("user", o.ReplUser)
	base.set("passfile", o.Passfile)
	base.set("application_name", o.AppName)
	if _, ok := base.get("connect_timeout"); !ok {
		base.set("connect_timeout", "2")
	}
	if err := r.configure(base, o.Slot); err != nil {
		return fmt.Errorf("configuring the replica: %w", err)
	}

	// 5. Start and wait for the stream.
	say("starting the server (log %s)", o.LogFile)
	started := time.Now()
	if err := r.touchLog(); err != nil {
		return fmt.Errorf("starting the server: %w", err)
	}
	startArgs := []string{"start", "-D", o.DataDir, "-w", "-t", r.seconds(ctx), "-l", o.LogFile}
	if o.ConfigFile != "" {
		startArgs = append(startArgs, "-o", "-c config_file='"+o.ConfigFile+"'")
	}
	if out, err := r.run(ctx, "pg_ctl", nil, startArgs...); err != nil {
		return fmt.Errorf("starting the server: %w: %s; log: %s", err, lastLines(out, 5), r.logTail())
	}
	if err := r.waitStreaming(ctx, admin); err != nil {
		return fmt.Errorf("waiting for the replica to stream from %s: %w; log: %s", primary, err, r.logTail())
	}
	say("streaming from %s on slot %s as %s, %v after the start, %v in all",
		primary, o.Slot, o.AppName, time.Since(started).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	return nil
}

// rejoiner runs rejoin's steps as the data directory's owner.
type rejoiner struct {
	o    RejoinOptions
	uid  int
	gid  int
	cred *syscall.Credential // nil: run as ourselves, the owner
	home string
}

// newRejoiner looks up the data directory's owner. It refuses a directory
// root owns (PostgreSQL refuses root) and a caller that is neither root
// nor the owner.
func newRejoiner(o RejoinOptions) (*rejoiner, error) {
	fi, err := os.Stat(o.DataDir)
	if err != nil {
		return nil, fmt.Errorf("reading the data directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("reading the owner of %s: no unix stat", o.DataDir)
	}
	r := &rejoiner{o: o, uid: int(st.Uid), gid: int(st.Gid)}
	if r.uid == 0 {
		return nil, fmt.Errorf("checking the data directory: %s belongs to root, which PostgreSQL refuses", o.DataDir)
	}
	u, err := user.LookupId(strconv.Itoa(r.uid))
	if err != nil {
		return nil, fmt.Errorf("looking up the owner of %s: %w", o.DataDir, err)
	}
	r.home = u.HomeDir
	switch os.Geteuid() {
	case r.uid:
	case 0:
		r.cred = &syscall.Credential{Uid: uint32(r.uid), Gid: uint32(r.gid)}
		groups, err := u.GroupIds()
		if err != nil {
			return nil, fmt.Errorf("looking up the groups of %s: %w", u.Username, err)
		}
		for _, g := range groups {
			if id, err := strconv.ParseUint(g, 10, 32); err == nil {
				r.cred.Groups = append(r.cred.Groups, uint32(id))
			}
		}
	default:
		return nil, fmt.Errorf("checking the caller: run as root or as %s, the owner of %s", u.Username, o.DataDir)
	}
	return r, nil
}

// command returns prog from the bin directory, run as the owner in the
// data directory with a small environment (plus extraEnv): nothing of the
// caller's, no PG* variable but those given.
func (r *rejoiner) command(ctx context.Context, prog string, extraEnv []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(r.o.Bin, prog), args...)
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + r.home, "LC_MESSAGES=C"}, extraEnv...)
	if lang := os.Getenv("LANG"); lang != "" {
		cmd.Env = append(cmd.Env, "LANG="+lang)
	}
	cmd.Dir = r.o.DataDir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.cred}
	return cmd
}

// run runs prog to its end and returns its combined output.
func (r *rejoiner) run(ctx context.Context, prog string, extraEnv []string, args ...string) ([]byte, error) {
	cmd := r.command(ctx, prog, extraEnv, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

// running reports whether a server runs on the data directory: pg_ctl
// status exits 0 when it does and 3 when it does not.
func (r *rejoiner) running(ctx context.Context) (bool, error) {
	out, err := r.run(ctx, "pg_ctl", nil, "status", "-D", r.o.DataDir)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &ee) && ee.ExitCode() == 3:
		return false, nil
	default:
		return false, fmt.Errorf("running pg_ctl status: %w: %s", err, lastLines(out, 5))
	}
}

// seconds returns what is left of ctx in whole seconds, at least 1, for
// pg_ctl -t.
func (r *rejoiner) seconds(ctx context.Context) string {
	d, ok := ctx.Deadline()
	if !ok {
		return "60"
	}
	return strconv.Itoa(max(1, int(time.Until(d)/time.Second)))
}

// checkPrimary checks that the server at --primary is a primary and not
// the local one (same data directory, port and start time as the local
// postmaster.pid says).
func (r *rejoiner) checkPrimary(ctx context.Context, admin *Actions) error {
	conn, err := admin.connect(ctx, r.o.PrimaryHost, r.o.PrimaryPort)
	if err != nil {
		return err
	}
	defer admin.close(conn)
	var (
		rec     bool
		dataDir string
		port    string
		started int64
	)
	err = admin.queryRow(ctx, conn, `SELECT pg_is_in_recovery(), current_setting('data_directory'),
		current_setting('port'), extract(epoch FROM pg_postmaster_start_time())::int8`).Scan(&rec, &dataDir, &port, &started)
	if err != nil {
		return fmt.Errorf("querying it: %w", err)
	}
	if rec {
		return errors.New("it is in recovery, no primary")
	}
	var pid []byte
	r.asOwner(func() (err error) {
		pid, _, err = readNoFollow(filepath.Join(r.o.DataDir, "postmaster.pid"))
		return err
	})
	if pid != nil {
		l := strings.Split(string(pid), "\n")
		if len(l) > 3 && sameDir(l[1], dataDir) && l[2] == strconv.FormatInt(started, 10) && l[3] == port {
			return fmt.Errorf("it is this host's server on %s", r.o.DataDir)
		}
	}
	return nil
}

// checkpointNewTimeline runs CHECKPOINT on a primary whose last
// checkpoint is older than its promotion. pg_rewind reads the source's
// timeline from its control file, which a promotion updates only at the
// next checkpoint; until then the source looks as if it were still on the
// target's timeline and pg_rewind says "no rewind required" to a diverged
// target, which then cannot stream.
func (r *rejoiner) checkpointNewTimeline(ctx context.Context, admin *Actions, say func(string, ...any)) error {
	conn, err := admin.connect(ctx, r.o.PrimaryHost, r.o.PrimaryPort)
	if err != nil {
		return err
	}
	defer admin.close(conn)
	var checkpointTL, currentTL int64
	err = admin.queryRow(ctx, conn, `SELECT (pg_control_checkpoint()).timeline_id::int8, `+
		health.TimelineSQL).Scan(&checkpointTL, &currentTL)
	if err != nil {
		return fmt.Errorf("reading its timelines: %w", err)
	}
	if checkpointTL >= currentTL {
		return nil
	}
	say("checkpoint on the primary: its control file still shows timeline %d, it writes %d", checkpointTL, currentTL)
	// CHECKPOINT may take long on a busy server: bounded by ctx only.
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("running CHECKPOINT: %w", err)
	}
	return nil
}

// sameDir reports whether a and b name the same directory here.
func sameDir(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

// savedFile is a configuration file's content and mode before pg_rewind.
type savedFile struct {
	path string
	data []byte
	mode os.FileMode
}

// saveConfig reads, as the owner, the node's own configuration files that
// pg_rewind would replace with the source's: those of the data directory
// that exist, and the password file when it is in the data directory. A
// symlink among them is refused (pg_rewind would not keep it either).
func (r *rejoiner) saveConfig() ([]savedFile, error) {
	names := []string{"postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"}
	paths := make([]string, 0, len(names)+1)
	for _, n := range names {
		paths = append(paths, filepath.Join(r.o.DataDir, n))
	}
	if rel, err := filepath.Rel(r.o.DataDir, r.o.Passfile); err == nil && !strings.HasPrefix(rel, "..") {
		paths = append(paths, r.o.Passfile)
	}
	var saved []savedFile
	err := r.asOwner(func() error {
		for _, p := range paths {
			b, mode, err := readNoFollow(p)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			saved = append(saved, savedFile{p, b, mode})
		}
		return nil
	})
	return saved, err
}

// readNoFollow reads the regular file at path and returns its content and
// permissions. A symlink at path is an error (O_NOFOLLOW), as is anything
// but a regular file.
func readNoFollow(path string) ([]byte, os.FileMode, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, 0, fmt.Errorf("reading %s: a symlink, refused", path)
	}
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("reading %s: not a regular file", path)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, 0, fmt.Errorf("reading %s: %w", path, err)
	}
	return b, fi.Mode().Perm(), nil
}

// restoreConfig writes the saved files back, as the owner.
func (r *rejoiner) restoreConfig(saved []savedFile) error {
	return r.asOwner(func() error {
		var errs []error
		for _, f := range saved {
			errs = append(errs, writeFile(f.path, f.data, f.mode))
		}
		return errors.Join(errs...)
	})
}

// writeFile writes data to path with mode through a new temporary file in
// the same directory (O_EXCL: it follows no planted name) renamed into
// place (a symlink at path is replaced, not followed). Run as the owner
// (asOwner), the file is the owner's, and a directory the owner cannot
// write is an error rather than a place root writes to.
func writeFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".xlb-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	err = errors.Join(err, f.Chmod(mode), f.Close())
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// configure writes, as the owner, what makes the rewound node a replica:
// the password file (when rejoin has a replication password),
// postgresql.auto.conf's replication settings, standby.signal, and no
// recovery.signal.
func (r *rejoiner) configure(conninfo connInfo, slot string) error {
	return r.asOwner(func() error {
		if r.o.ReplPassword != "" {
			esc := strings.NewReplacer(`\`, `\\`, `:`, `\:`)
			line := fmt.Sprintf("*:*:*:%s:%s\n", esc.Replace(r.o.ReplUser), esc.Replace(r.o.ReplPassword))
			if err := writeFile(r.o.Passfile, []byte(line), 0o600); err != nil {
				return err
			}
		}
		path := filepath.Join(r.o.DataDir, "postgresql.auto.conf")
		conf, err := readAutoConf(path)
		if err != nil {
			return err
		}
		for _, k := range rejoinDrops {
			conf.del(k)
		}
		conf.set("primary_conninfo", conninfo.String())
		conf.set("primary_slot_name", slot)
		conf.set("recovery_target_timeline", "latest")
		conf.set("wal_retrieve_retry_interval", "200ms")
		if err := writeFile(path, conf.bytes(), 0o600); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(r.o.DataDir, "standby.signal"), nil, 0o600); err != nil {
			return err
		}
		if err := os.Remove(filepath.Join(r.o.DataDir, "recovery.signal")); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing recovery.signal: %w", err)
		}
		return nil
	})
}

// touchLog opens the log file as the owner, creating it when missing, so
// that pg_ctl, running as the owner, can append to it: a symlink there is
// refused, and a directory the owner cannot write is an error naming
// --log-file rather than a place root creates files in.
func (r *rejoiner) touchLog() error {
	return r.asOwner(func() error {
		f, err := os.OpenFile(r.o.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o640)
		switch {
		case errors.Is(err, syscall.ELOOP):
			return fmt.Errorf("opening the log %s: a symlink, refused", r.o.LogFile)
		case errors.Is(err, os.ErrPermission):
			return fmt.Errorf("opening the log %s as the data directory's owner (give a --log-file it may write): %w", r.o.LogFile, err)
		case err != nil:
			return fmt.Errorf("opening the log %s: %w", r.o.LogFile, err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("opening the log %s: %w", r.o.LogFile, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("opening the log %s: not a regular file", r.o.LogFile)
		}
		return nil
	})
}

// logTail returns the last lines of the server log, read as the owner.
func (r *rejoiner) logTail() string {
	var b []byte
	r.asOwner(func() (err error) { b, _, err = readNoFollow(r.o.LogFile); return err })
	return lastLines(b, 10)
}

// waitStreaming polls the primary every 50 ms until its walsender on the
// slot streams and the replica has flushed the primary's WAL as of the
// start of the wait: a replica that cannot follow the primary's timeline
// streams its own only up to the fork, and stops there. It fails early
// when the local server has exited.
func (r *rejoiner) waitStreaming(ctx context.Context, admin *Actions) error {
	conn, err := admin.connect(ctx, r.o.PrimaryHost, r.o.PrimaryPort)
	if err != nil {
		return err
	}
	defer admin.close(conn)
	var target string
	if err := admin.queryRow(ctx, conn, "SELECT pg_current_wal_flush_lsn()::text").Scan(&target); err != nil {
		return fmt.Errorf("reading the primary's WAL position: %w", err)
	}
	pidFile := filepath.Join(r.o.DataDir, "postmaster.pid")
	var state, flushed string
	err = pollEvery(ctx, 50*time.Millisecond, func(ctx context.Context) (bool, error) {
		if _, err := os.Stat(pidFile); err != nil {
			return false, fmt.Errorf("the server exited: %w", err)
		}
		var caughtUp bool
		err := admin.queryRow(ctx, conn, `SELECT coalesce(r.state, 'not connected'), coalesce(r.flush_lsn::text, 'none'),
			coalesce(r.flush_lsn >= $2::pg_lsn, false)
			FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
			WHERE s.slot_name = $1`, r.o.Slot, target).Scan(&state, &flushed, &caughtUp)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, fmt.Errorf("slot %s is gone", r.o.Slot)
		}
		return err == nil && state == "streaming" && caughtUp, err
	})
	if err != nil {
		return fmt.Errorf("slot %s: %s, flushed %s of %s: %w", r.o.Slot, state, flushed, target, err)
	}
	return nil
}

// lastLines returns the last n lines of b, trimmed.
func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
