package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresBin is where Debian keeps PostgreSQL 15's programs.
const PostgresBin = "/usr/lib/postgresql/15/bin"

// ErrPostgresExited means the postmaster exited while it was awaited.
var ErrPostgresExited = errors.New("postgres exited")

// PostgresConfig says how to build and run a lab cluster. The zero value
// gives the lab's: port 5432 on every address of the namespace, role User
// owning Database, role ReplicationUser for the replicas, role AdminUser,
// scram-sha-256 from Subnet; their passwords default to ProcessSecrets.
type PostgresConfig struct {
	// Dir holds the data directory, the socket directory and the log. Empty
	// means a new temporary directory, removed by Close.
	Dir string
	// Bin is the directory of initdb, postgres, pg_isready and psql;
	// default PostgresBin.
	Bin  string
	Port int
	// Listen is the one address the server listens on. Invalid (the zero
	// value) means every address of the namespace, or 127.0.0.1 when the
	// server runs in the caller's namespace (a nil *Namespace).
	Listen netip.Addr
	// Allow is the network pg_hba.conf admits (scram-sha-256, also for
	// replication); default Subnet, or 127.0.0.1/32 in the caller's
	// namespace.
	Allow    netip.Prefix
	Database string
	User     string
	Password string
	// AdminPassword is AdminUser's.
	AdminPassword string
	// ReplicationUser and ReplicationPassword are the role the replicas
	// stream as: LOGIN REPLICATION and nothing else, so the application's
	// role cannot copy the cluster. Default ReplicationUser.
	ReplicationUser     string
	ReplicationPassword string
	// Slots are physical replication slots to create on a primary (say
	// "pg2", "pg3"), reserving WAL from creation. A replica ignores them.
	Slots []string
	// Settings are appended to postgresql.conf, each value quoted, after
	// the lab's replication settings (ReplicationSettings), which they
	// override.
	Settings map[string]string
	// StartTimeout bounds the wait for the server to accept connections;
	// default 30 s.
	StartTimeout time.Duration
	// TLS, when set, turns ssl on with this certificate and key, and
	// pg_hba.conf admits TCP connections over TLS only (hostssl).
	TLS *ServerTLS
}

// ServerTLS is a server's certificate and its key, PEM-encoded.
type ServerTLS struct {
	CertPEM, KeyPEM []byte
}

// ReplicationSettings are the postgresql.conf settings every lab cluster
// gets, so any node can be a primary, a replica, or change roles:
//
//   - wal_level, max_wal_senders, max_replication_slots: streaming with
//     slots (PostgreSQL 15's defaults, stated so they cannot drift).
//   - hot_standby, hot_standby_feedback: replicas answer reads, and
//     queries on them do not get cancelled by vacuum on the primary.
//   - wal_retrieve_retry_interval 200ms: a replica whose stream broke
//     retries after 200 ms, not 5 s; a promotion that lands in that sleep
//     waits it out (DESIGN.md).
//   - wal_receiver_timeout 500ms: a replica notices a primary that
//     vanished without closing the connection (a dead host, a cut link) in
//     0.5 s, not 60 s, so it stops witnessing for it soon: xlb promotes
//     only once the candidate lost the primary too, so this bounds a
//     partition failover together with the probe rule (at 5 s a partition
//     took 5.1–5.3 s, at 1 s 1.4–1.7 s; the receiver pings at half the
//     timeout, so a live primary that answers within 250 ms never trips
//     it).
//   - wal_log_hints on: pg_rewind can bring a diverged old primary back as
//     a replica (xlb pg rejoin); it refuses a cluster without hint-bit WAL
//     or data checksums. Only a restart applies it, so it is set before the
//     first start.
//   - wal_keep_size 128MB: pg_rewind reads the old primary's own WAL back
//     from where the timelines diverged to the checkpoint before that; a
//     checkpoint on the old primary after the divergence would otherwise
//     have removed it ("could not find previous WAL record"). On the new
//     primary it keeps the segment holding the promotion point, which the
//     rewound node needs to start streaming.
var ReplicationSettings = map[string]string{
	"wal_level":                   "replica",
	"max_wal_senders":             "10",
	"max_replication_slots":       "10",
	"hot_standby":                 "on",
	"hot_standby_feedback":        "on",
	"wal_retrieve_retry_interval": "200ms",
	"wal_receiver_timeout":        "500ms",
	"wal_log_hints":               "on",
	"wal_keep_size":               "128MB",
}

var loopback = netip.MustParseAddr("127.0.0.1")

func (c *PostgresConfig) setDefaults(ns *Namespace) {
	if c.Bin == "" {
		c.Bin = PostgresBin
	}
	if c.Port == 0 {
		c.Port = PostgresPort
	}
	if ns == nil && !c.Listen.IsValid() {
		c.Listen = loopback
	}
	if !c.Allow.IsValid() {
		c.Allow = Subnet
		if ns == nil {
			c.Allow = netip.PrefixFrom(loopback, 32)
		}
	}
	if c.ReplicationUser == "" {
		c.ReplicationUser = ReplicationUser
	}
	if c.ReplicationPassword == "" {
		c.ReplicationPassword = ProcessSecrets().ReplicationPassword
	}
	if c.AdminPassword == "" {
		c.AdminPassword = ProcessSecrets().AdminPassword
	}
	if c.Database == "" {
		c.Database = Database
	}
	if c.User == "" {
		c.User = User
	}
	if c.Password == "" {
		c.Password = ProcessSecrets().Password
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 30 * time.Second
	}
}

// Postgres is a PostgreSQL cluster running as the postgres OS user inside a
// lab namespace, or in the caller's namespace (on loopback) when NS is nil.
//
// A postmaster that another program started on the same data directory
// after this one's stopped (pg_ctl start, as xlb pg rejoin runs it) is
// adopted: PID returns it, and Stop, StopImmediate, Restart and Close stop
// it by the PID in postmaster.pid, once that PID is checked to be a
// postgres of PostgresConfig.Bin working in DataDir.
type Postgres struct {
	NS        *Namespace // nil: the caller's namespace
	Dir       string     // the working directory (data, sock, postgres.log)
	DataDir   string
	SocketDir string // unix_socket_directories, so clusters never share /var/run/postgresql
	LogFile   string
	Port      int

	cfg    PostgresConfig
	ownDir bool
	cred   *syscall.Credential

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the postmaster has exited
	waitErr error
}

// StartPostgres initialises a cluster, starts it inside ns (nil: in the
// caller's namespace, on loopback), waits until it accepts connections and
// creates cfg's roles, database and replication slots. When a step fails it
// stops and removes what it made and returns the step's error; errors from
// a server that died carry its log's tail.
func StartPostgres(ctx context.Context, ns *Namespace, cfg PostgresConfig) (_ *Postgres, err error) {
	cfg.setDefaults(ns)
	p := &Postgres{NS: ns, Port: cfg.Port, cfg: cfg}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Close())
		}
	}()
	if err := p.init(ctx); err != nil {
		return nil, err
	}
	if err := p.start(ctx); err != nil {
		return nil, err
	}
	if err := p.bootstrap(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// prepare makes the directories and looks up the postgres user.
func (p *Postgres) prepare() error {
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("looking up the postgres user: %w", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("parsing the postgres user's ids: %w", err)
	}
	p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}

	p.Dir = p.cfg.Dir
	if p.Dir == "" {
		if p.Dir, err = os.MkdirTemp("", "xlb-pg-"); err != nil {
			return fmt.Errorf("creating postgres directory: %w", err)
		}
		p.ownDir = true
	} else if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return fmt.Errorf("creating postgres directory: %w", err)
	}
	p.DataDir = filepath.Join(p.Dir, "data")
	p.SocketDir = filepath.Join(p.Dir, "sock")
	p.LogFile = filepath.Join(p.Dir, "postgres.log")
	for _, d := range []string{p.Dir, p.SocketDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
		if err := os.Chown(d, int(uid), int(gid)); err != nil {
			return fmt.Errorf("handing %s to postgres: %w", d, err)
		}
	}
	return nil
}

// init makes the directories, runs initdb as postgres and writes the
// configuration.
func (p *Postgres) init(ctx context.Context) error {
	if err := p.prepare(); err != nil {
		return err
	}
	initdb := p.asPostgres(ctx, "initdb", "-D", p.DataDir, "-U", "postgres", "-E", "UTF8", "--no-locale",
		"--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("running initdb: %w: %s", err, tail(out, 20))
	}
	return p.configure()
}

// configure appends the lab's settings to postgresql.conf (a replica's
// copy of its primary's file included: later lines win) and writes
// pg_hba.conf.
func (p *Postgres) configure() error {
	listen := "*"
	if p.cfg.Listen.IsValid() {
		listen = p.cfg.Listen.String()
	}
	conf := maps.Clone(ReplicationSettings)
	maps.Copy(conf, map[string]string{
		"listen_addresses":        listen,
		"port":                    strconv.Itoa(p.cfg.Port),
		"unix_socket_directories": p.SocketDir,
		"password_encryption":     "scram-sha-256",
	})
	host := "host"
	if t := p.cfg.TLS; t != nil {
		for _, f := range []struct {
			name string
			data []byte
		}{{"server.crt", t.CertPEM}, {"server.key", t.KeyPEM}} {
			path := filepath.Join(p.DataDir, f.name)
			if err := os.WriteFile(path, f.data, 0o600); err != nil {
				return fmt.Errorf("writing %s: %w", f.name, err)
			}
			if err := os.Chown(path, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
				return fmt.Errorf("handing %s to postgres: %w", f.name, err)
			}
		}
		maps.Copy(conf, map[string]string{"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"})
		host = "hostssl"
	}
	maps.Copy(conf, p.cfg.Settings)
	var b strings.Builder
	b.WriteString("\n# xlb lab\n")
	for _, k := range slices.Sorted(maps.Keys(conf)) {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteConf(conf[k]))
	}
	if err := appendFile(filepath.Join(p.DataDir, "postgresql.conf"), b.String()); err != nil {
		return err
	}
	// Local connections are trusted: the socket directory is postgres's,
	// mode 0700, so only postgres and root reach it.
	hba := fmt.Sprintf("local all all trust\n%[2]s all all %[1]v scram-sha-256\n%[2]s replication all %[1]v scram-sha-256\n",
		p.cfg.Allow.Masked(), host)
	if err := os.WriteFile(filepath.Join(p.DataDir, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return fmt.Errorf("writing pg_hba.conf: %w", err)
	}
	return nil
}

// start runs the postmaster in p.NS and waits until it accepts
// connections.
func (p *Postgres) start(ctx context.Context) error {
	logf, err := os.OpenFile(p.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return fmt.Errorf("opening postgres log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	// postgres's, like the data directory: pg_ctl, run as postgres by xlb
	// pg rejoin, appends to it.
	if err := logf.Chown(int(p.cred.Uid), int(p.cred.Gid)); err != nil {
		return fmt.Errorf("handing the postgres log to postgres: %w", err)
	}
	cmd := p.asPostgres(context.Background(), "postgres", "-D", p.DataDir)
	// Its own process group: a Ctrl-C meant for the caller must not stop it.
	cmd.SysProcAttr.Setpgid = true
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := startIn(p.NS, cmd); err != nil {
		return fmt.Errorf("starting postgres in %s: %w", nsName(p.NS), err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(done)
	}()
	return p.waitReady(ctx, done)
}

// waitReady polls pg_isready on the socket until the server accepts
// connections, the postmaster exits (done closes), StartTimeout passes or
// ctx ends.
func (p *Postgres) waitReady(ctx context.Context, done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.StartTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		check := exec.CommandContext(ctx, filepath.Join(p.cfg.Bin, "pg_isready"), "-q",
			"-h", p.SocketDir, "-p", strconv.Itoa(p.Port), "-U", "postgres", "-d", "postgres", "-t", "1")
		if check.Run() == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("waiting for postgres: %w (%v): %s", ErrPostgresExited, p.exitErr(), p.logTail())
		case <-ctx.Done():
			return fmt.Errorf("waiting for postgres: %w: %s", ctx.Err(), p.logTail())
		case <-tick.C:
		}
	}
}

// bootstrap creates the roles, the database and the replication slots over
// the socket. The SQL, passwords included, goes in on stdin.
//
// The application's role gets pg_monitor: xlb's health probes log in as it
// and read pg_stat_wal_receiver, whose columns other than pid only members
// of pg_read_all_stats see. AdminUser is a superuser: xlb promotes, fences
// and repoints nodes as it, and pg_rewind reads the source cluster as it.
func (p *Postgres) bootstrap(ctx context.Context) error {
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE ROLE %s SUPERUSER LOGIN PASSWORD %s;\n", quoteIdent(AdminUser), quoteLiteral(p.cfg.AdminPassword))
	fmt.Fprintf(&b, "CREATE ROLE %s LOGIN PASSWORD %s;\n", quoteIdent(p.cfg.User), quoteLiteral(p.cfg.Password))
	fmt.Fprintf(&b, "GRANT pg_monitor TO %s;\n", quoteIdent(p.cfg.User))
	fmt.Fprintf(&b, "CREATE DATABASE %s OWNER %s;\n", quoteIdent(p.cfg.Database), quoteIdent(p.cfg.User))
	if p.cfg.ReplicationUser == p.cfg.User {
		fmt.Fprintf(&b, "ALTER ROLE %s REPLICATION;\n", quoteIdent(p.cfg.User))
	} else {
		fmt.Fprintf(&b, "CREATE ROLE %s LOGIN REPLICATION PASSWORD %s;\n",
			quoteIdent(p.cfg.ReplicationUser), quoteLiteral(p.cfg.ReplicationPassword))
	}
	for _, s := range p.cfg.Slots {
		fmt.Fprintf(&b, "SELECT pg_create_physical_replication_slot(%s, true);\n", quoteLiteral(s))
	}
	cmd := exec.CommandContext(ctx, filepath.Join(p.cfg.Bin, "psql"), "-X", "-q", "-o", "/dev/null", "-v", "ON_ERROR_STOP=1",
		"-h", p.SocketDir, "-p", strconv.Itoa(p.Port), "-U", "postgres", "-d", "postgres")
	cmd.Stdin = strings.NewReader(b.String())
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("creating roles, database and slots: %w: %s", err, tail(out, 10))
	}
	return nil
}

// ReplicaConfig says how to build a streaming replica of a lab primary.
// The embedded PostgresConfig says how to run it (Dir, Bin, Port, Listen,
// Allow, Settings, StartTimeout) and which role it streams as
// (ReplicationUser, ReplicationPassword, as on the primary); its Slots are
// ignored.
type ReplicaConfig struct {
	PostgresConfig
	// Name is the replica's application_name in primary_conninfo, by which
	// the primary's pg_stat_replication and synchronous_standby_names know
	// it ("pg2"). Required.
	Name string
	// Primary is where the replica reaches its primary, seen from the
	// replica's namespace. Required.
	Primary netip.AddrPort
	// Slot is the physical replication slot on the primary the replica
	// streams from; it must exist there (PostgresConfig.Slots). Default
	// Name.
	Slot string
}

// passfileName is the libpq password file in a replica's data directory
// that primary_conninfo names.
const passfileName = "pgpass"

// StartReplica builds a streaming replica of the primary at cfg.Primary
// and starts it inside ns (nil: in the caller's namespace, on loopback):
// pg_basebackup -R -S <slot> -X stream runs as postgres inside ns, the
// replica gets the lab's settings (ReplicationSettings, its own port,
// socket and pg_hba.conf) and a primary_conninfo that carries
// application_name=<Name> and names a password file in the data
// directory (mode 0600, owned by postgres) rather than the password. It
// returns once the replica accepts read-only connections. When a step
// fails it stops and removes what it made and returns the step's error.
func StartReplica(ctx context.Context, ns *Namespace, cfg ReplicaConfig) (_ *Postgres, err error) {
	if cfg.Name == "" || !cfg.Primary.IsValid() {
		return nil, fmt.Errorf("starting replica %q of %v: need a name and the primary's address", cfg.Name, cfg.Primary)
	}
	if cfg.Slot == "" {
		cfg.Slot = cfg.Name
	}
	cfg.setDefaults(ns)
	p := &Postgres{NS: ns, Port: cfg.Port, cfg: cfg.PostgresConfig}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Close())
		}
	}()
	if err := p.prepare(); err != nil {
		return nil, err
	}
	if err := p.basebackup(ctx, cfg); err != nil {
		return nil, err
	}
	if err := p.configure(); err != nil {
		return nil, err
	}
	if err := p.start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// basebackup clones the primary into p.DataDir and points the clone at it.
// The password reaches pg_basebackup and the walreceiver through a
// password file only: first one in p.Dir (the data directory must not
// exist yet), then moved into the data directory. The primary_conninfo -R
// writes (without the password, measured with PostgreSQL 15, but naming
// the file's first place and every libpq default) is replaced by a short
// one naming the file's final place; -R's standby.signal and
// primary_slot_name stay.
func (p *Postgres) basebackup(ctx context.Context, cfg ReplicaConfig) error {
	host, port := cfg.Primary.Addr().String(), int(cfg.Primary.Port())
	tmpPass := filepath.Join(p.Dir, passfileName)
	if err := p.writePassfile(tmpPass, cfg.ReplicationUser, cfg.ReplicationPassword); err != nil {
		return err
	}
	conn := fmt.Sprintf("host=%s port=%d user=%s application_name=%s connect_timeout=5",
		quoteConnValue(host), port, quoteConnValue(cfg.ReplicationUser), quoteConnValue(cfg.Name))
	cmd := p.asPostgres(ctx, "pg_basebackup", "-D", p.DataDir, "-d", conn, "-w",
		"-R", "-S", cfg.Slot, "-X", "stream", "-c", "fast", "--no-sync")
	cmd.Env = append(cmd.Env, "PGPASSFILE="+tmpPass)
	if out, err := runIn(p.NS, cmd); err != nil {
		return fmt.Errorf("running pg_basebackup from %v in %s: %w: %s", cfg.Primary, nsName(p.NS), err, tail(out, 20))
	}

	passfile := filepath.Join(p.DataDir, passfileName)
	if err := os.Rename(tmpPass, passfile); err != nil {
		return fmt.Errorf("moving the password file into the data directory: %w", err)
	}
	conninfo := fmt.Sprintf("host=%s port=%d user=%s passfile=%s application_name=%s connect_timeout=2",
		quoteConnValue(host), port, quoteConnValue(cfg.ReplicationUser), quoteConnValue(passfile), quoteConnValue(cfg.Name))
	auto := filepath.Join(p.DataDir, "postgresql.auto.conf")
	b, err := os.ReadFile(auto)
	if err != nil {
		return fmt.Errorf("reading postgresql.auto.conf: %w", err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "primary_conninfo") {
			lines = append(lines, l)
		}
	}
	lines = append(lines, "primary_conninfo = "+quoteConf(conninfo), "")
	if err := os.WriteFile(auto, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		return fmt.Errorf("writing postgresql.auto.conf: %w", err)
	}
	return nil
}

// writePassfile writes a libpq password file for user on any host, port
// and database, mode 0600 and owned by postgres (libpq ignores a file
// others can read). Any host: when the replica is repointed at another
// primary (xlb's Follow changes only host and port of primary_conninfo),
// the same file still answers.
func (p *Postgres) writePassfile(name, user, password string) error {
	esc := strings.NewReplacer(`\`, `\\`, `:`, `\:`)
	line := fmt.Sprintf("*:*:*:%s:%s\n", esc.Replace(user), esc.Replace(password))
	if err := os.WriteFile(name, []byte(line), 0o600); err != nil {
		return fmt.Errorf("writing password file %s: %w", name, err)
	}
	if err := os.Chown(name, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
		return fmt.Errorf("handing password file %s to postgres: %w", name, err)
	}
	return nil
}

// asPostgres returns a command running prog from cfg.Bin as the postgres
// OS user, which PostgreSQL requires (it refuses root).
func (p *Postgres) asPostgres(ctx context.Context, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(p.cfg.Bin, prog), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "HOME=" + p.Dir}
	cmd.Dir = p.Dir
	return cmd
}

// PID returns the postmaster's PID, or 0 when it is not running. A
// postmaster another program started on the data directory counts (see
// adoptedPID).
func (p *Postgres) PID() int {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return p.adoptedPID()
	}
	select {
	case <-done:
		return p.adoptedPID()
	default:
		return cmd.Process.Pid
	}
}

// Stop shuts the server down fast (SIGINT to the postmaster's PID, as
// pg_ctl stop -m fast) and waits up to timeout; then it kills it and waits
// again. It returns nil when the server is already down.
func (p *Postgres) Stop(timeout time.Duration) error {
	return p.stop(syscall.SIGINT, "fast", timeout)
}

// StopImmediate stops the server as pg_ctl stop -m immediate does: SIGQUIT
// to the postmaster's PID, which makes every backend and walsender exit at
// once, without a shutdown checkpoint, closing their connections (the next
// start runs crash recovery). It waits up to timeout; then it kills it and
// waits again. It returns nil when the server is already down.
func (p *Postgres) StopImmediate(timeout time.Duration) error {
	return p.stop(syscall.SIGQUIT, "immediate", timeout)
}

func (p *Postgres) stop(sig syscall.Signal, mode string, timeout time.Duration) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return p.stopAdopted(sig, mode, timeout)
	}
	select {
	case <-done:
		return p.stopAdopted(sig, mode, timeout)
	default:
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling postgres %d: %w", cmd.Process.Pid, err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing postgres %d: %w", cmd.Process.Pid, err)
	}
	select {
	case <-done:
		return fmt.Errorf("stopping postgres %d: killed after %v without an %s shutdown", cmd.Process.Pid, timeout, mode)
	case <-time.After(5 * time.Second):
		return fmt.Errorf("stopping postgres %d: still running after SIGKILL", cmd.Process.Pid)
	}
}

// Restart stops a running server fast (30 s) and starts it again, in the
// same namespace with the same data; a stopped one (StopImmediate) it just
// starts. It returns once the server accepts connections, or an error
// carrying the log's tail.
func (p *Postgres) Restart(ctx context.Context) error {
	if err := p.Stop(30 * time.Second); err != nil {
		return err
	}
	return p.start(ctx)
}

// Addr returns the address the server listens on when it listens on one
// (PostgresConfig.Listen, or loopback in the caller's namespace), and the
// zero AddrPort when it listens on every address of its namespace.
func (p *Postgres) Addr() netip.AddrPort {
	if !p.cfg.Listen.IsValid() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(p.cfg.Listen, uint16(p.Port))
}

// QueryLocal runs sql with psql as the postgres superuser over the
// cluster's unix socket, from the caller's namespace, and returns the
// output as Query does.
func (p *Postgres) QueryLocal(ctx context.Context, sql string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(p.cfg.Bin, "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		"-h", p.SocketDir, "-p", strconv.Itoa(p.Port), "-U", "postgres", "-d", "postgres", "-c", sql)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("querying postgres on %s: %w: %s", p.SocketDir, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Promote promotes a replica with pg_promote(), which returns once the
// server has left recovery and writes on a new timeline. It waits until
// ctx's deadline (60 s without one) and returns an error when the server is
// no replica or the promotion did not finish in time.
func (p *Postgres) Promote(ctx context.Context) error {
	wait := 60
	if d, ok := ctx.Deadline(); ok {
		wait = max(1, int(time.Until(d)/time.Second))
	}
	out, err := p.QueryLocal(ctx, fmt.Sprintf("SELECT pg_promote(true, %d)", wait))
	if err != nil {
		return fmt.Errorf("promoting: %w", err)
	}
	if out != "t" {
		return fmt.Errorf("promoting: not promoted within %d s: %s", wait, p.logTail())
	}
	return nil
}

// CurrentLSN returns a primary's pg_current_wal_lsn(), as PostgreSQL
// writes it ("0/3000060").
func (p *Postgres) CurrentLSN(ctx context.Context) (string, error) {
	out, err := p.QueryLocal(ctx, "SELECT pg_current_wal_lsn()")
	if err != nil {
		return "", fmt.Errorf("reading the current WAL LSN: %w", err)
	}
	return out, nil
}

// WaitReplaying polls a replica every 50 ms until it has replayed WAL up
// to lsn (pg_last_wal_replay_lsn() >= lsn). It returns an error with the
// last replayed LSN when ctx ends first.
func (p *Postgres) WaitReplaying(ctx context.Context, lsn string) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	q := fmt.Sprintf("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn, pg_last_wal_replay_lsn()", quoteLiteral(lsn))
	for {
		out, err := p.QueryLocal(ctx, q)
		if err == nil && strings.HasPrefix(out, "t|") {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for replay up to %s: %w (replayed %q, last error %v)", lsn, ctx.Err(), out, err)
		case <-tick.C:
		}
	}
}

// Close stops the server (30 s for a fast shutdown) and removes its
// directory when StartPostgres made it. It is idempotent.
func (p *Postgres) Close() error {
	err := p.Stop(30 * time.Second)
	if p.ownDir && p.Dir != "" && p.PID() == 0 {
		if rerr := os.RemoveAll(p.Dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("removing %s: %w", p.Dir, rerr))
		}
	}
	return err
}

func (p *Postgres) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

func (p *Postgres) logTail() string {
	b, _ := os.ReadFile(p.LogFile)
	return tail(b, 20)
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listened on a
// moment ago (the kernel picked it), for a loopback cluster. Another
// program may still take it before the server binds it; the server's
// start then fails with the log saying so.
func FreePort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ConnInfo names a PostgreSQL endpoint for Query.
type ConnInfo struct {
	Host     string
	Port     int
	User     string
	Password string // sent in PGPASSWORD, never argv
	Database string
	// ConnectTimeout is libpq's connect_timeout; default 5 s.
	ConnectTimeout time.Duration
}

// String returns the libpq connection string, without the password.
func (c ConnInfo) String() string {
	ct := c.ConnectTimeout
	if ct == 0 {
		ct = 5 * time.Second
	}
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s connect_timeout=%d sslmode=disable",
		quoteConnValue(c.Host), c.Port, quoteConnValue(c.User), quoteConnValue(c.Database), int(ct.Round(time.Second)/time.Second))
}

// Query runs sql with psql inside ns (nil: the caller's namespace) and returns its output unaligned and
// without headers ("a|b" per row), trimmed. On failure the error carries
// psql's stderr; ctx bounds the whole run.
func Query(ctx context.Context, ns *Namespace, c ConnInfo, sql string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := commandIn(ctx, ns, filepath.Join(PostgresBin, "psql"), "-X", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		"-d", c.String(), "-c", sql)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "PGPASSWORD=" + c.Password}
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("querying %s:%d from %s: %w: %s", c.Host, c.Port, nsName(ns), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// startIn starts cmd in ns, or in the caller's namespace when ns is nil.
func startIn(ns *Namespace, cmd *exec.Cmd) error {
	if ns == nil {
		return cmd.Start()
	}
	return ns.Start(cmd)
}

// runIn runs cmd to completion in ns (nil: the caller's namespace) and
// returns its combined output.
func runIn(ns *Namespace, cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := startIn(ns, cmd); err != nil {
		return nil, err
	}
	err := cmd.Wait()
	return out.Bytes(), err
}

// commandIn returns an unstarted command that runs in ns, or in the
// caller's namespace when ns is nil.
func commandIn(ctx context.Context, ns *Namespace, name string, args ...string) *exec.Cmd {
	if ns == nil {
		return exec.CommandContext(ctx, name, args...)
	}
	return ns.Command(ctx, name, args...)
}

// nsName names ns in messages.
func nsName(ns *Namespace) string {
	if ns == nil {
		return "the caller's namespace"
	}
	return ns.Name
}

func appendFile(name, s string) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", name, err)
	}
	if _, err := f.WriteString(s); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// quoteIdent quotes s as an SQL identifier, as pgx does.
func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

// quoteConf quotes s as a value of postgresql.conf: in single quotes,
// quotes and backslashes doubled (the file reads backslash escapes).
func quoteConf(s string) string {
	return "'" + strings.NewReplacer(`'`, `''`, `\`, `\\`).Replace(s) + "'"
}

// quoteLiteral quotes s as an SQL string literal as control/postgres does
// (which this package cannot import: its tests import this one): quotes
// doubled, and with a backslash an E'...' literal with backslashes doubled.
func quoteLiteral(s string) string {
	q := strings.ReplaceAll(s, "'", "''")
	if strings.Contains(s, `\`) {
		return `E'` + strings.ReplaceAll(q, `\`, `\\`) + `'`
	}
	return "'" + q + "'"
}

// quoteConnValue quotes a libpq keyword value.
func quoteConnValue(s string) string {
	if s != "" && !strings.ContainsAny(s, ` '\`) {
		return s
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
