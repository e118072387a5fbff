package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
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
)

// PostgresBin is where Debian keeps PostgreSQL 15's programs.
const PostgresBin = "/usr/lib/postgresql/15/bin"

// ErrPostgresExited means the postmaster exited while it was awaited.
var ErrPostgresExited = errors.New("postgres exited")

// PostgresConfig says how to build and run a lab cluster. The zero value
// gives the lab's: port 5432, role User with Password owning Database,
// scram-sha-256 from Subnet.
type PostgresConfig struct {
	// Dir holds the data directory, the socket directory and the log. Empty
	// means a new temporary directory, removed by Close.
	Dir string
	// Bin is the directory of initdb, postgres, pg_isready and psql;
	// default PostgresBin.
	Bin  string
	Port int
	// Allow is the network pg_hba.conf admits (scram-sha-256, also for
	// replication); default Subnet.
	Allow    netip.Prefix
	Database string
	User     string
	Password string
	// Settings are appended to postgresql.conf, each value quoted.
	Settings map[string]string
	// StartTimeout bounds the wait for the server to accept connections;
	// default 30 s.
	StartTimeout time.Duration
}

func (c *PostgresConfig) setDefaults() {
	if c.Bin == "" {
		c.Bin = PostgresBin
	}
	if c.Port == 0 {
		c.Port = PostgresPort
	}
	if !c.Allow.IsValid() {
		c.Allow = Subnet
	}
	if c.Database == "" {
		c.Database = Database
	}
	if c.User == "" {
		c.User = User
	}
	if c.Password == "" {
		c.Password = Password
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 30 * time.Second
	}
}

// Postgres is a PostgreSQL cluster running as the postgres OS user inside a
// lab namespace.
type Postgres struct {
	NS        *Namespace
	Dir       string // the working directory (data, sock, postgres.log)
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

// StartPostgres initialises a cluster, starts it inside ns, waits until it
// accepts connections and creates cfg's role and database. When a step
// fails it stops and removes what it made and returns the step's error;
// errors from a server that died carry its log's tail.
func StartPostgres(ctx context.Context, ns *Namespace, cfg PostgresConfig) (_ *Postgres, err error) {
	cfg.setDefaults()
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

// init makes the directories, runs initdb as postgres and writes the
// configuration.
func (p *Postgres) init(ctx context.Context) error {
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

	initdb := p.asPostgres(ctx, "initdb", "-D", p.DataDir, "-U", "postgres", "-E", "UTF8", "--no-locale",
		"--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("running initdb: %w: %s", err, tail(out, 20))
	}

	conf := map[string]string{
		"listen_addresses":        "*",
		"port":                    strconv.Itoa(p.cfg.Port),
		"unix_socket_directories": p.SocketDir,
		"password_encryption":     "scram-sha-256",
	}
	for k, v := range p.cfg.Settings {
		conf[k] = v
	}
	var b strings.Builder
	b.WriteString("\n# xlb lab\n")
	for _, k := range slices.Sorted(maps.Keys(conf)) {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteLiteral(conf[k]))
	}
	if err := appendFile(filepath.Join(p.DataDir, "postgresql.conf"), b.String()); err != nil {
		return err
	}
	// Local connections are trusted: the socket directory is postgres's,
	// mode 0700, so only postgres and root reach it.
	hba := fmt.Sprintf("local all all trust\nhost all all %[1]v scram-sha-256\nhost replication all %[1]v scram-sha-256\n",
		p.cfg.Allow.Masked())
	if err := os.WriteFile(filepath.Join(p.DataDir, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return fmt.Errorf("writing pg_hba.conf: %w", err)
	}
	return nil
}

// start runs the postmaster in p.NS and waits until it accepts
// connections.
func (p *Postgres) start(ctx context.Context) error {
	logf, err := os.OpenFile(p.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening postgres log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	cmd := p.asPostgres(context.Background(), "postgres", "-D", p.DataDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := p.NS.Start(cmd); err != nil {
		return fmt.Errorf("starting postgres in %s: %w", p.NS.Name, err)
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
	return p.waitReady(ctx)
}

// waitReady polls pg_isready on the socket until the server accepts
// connections, the postmaster exits, StartTimeout passes or ctx ends.
func (p *Postgres) waitReady(ctx context.Context) error {
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
		case <-p.done:
			return fmt.Errorf("waiting for postgres: %w (%v): %s", ErrPostgresExited, p.exitErr(), p.logTail())
		case <-ctx.Done():
			return fmt.Errorf("waiting for postgres: %w: %s", ctx.Err(), p.logTail())
		case <-tick.C:
		}
	}
}

// bootstrap creates the role and the database over the socket. The SQL,
// password included, goes in on stdin.
func (p *Postgres) bootstrap(ctx context.Context) error {
	sql := fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD %s;\nCREATE DATABASE %s OWNER %s;\n",
		quoteIdent(p.cfg.User), quoteLiteral(p.cfg.Password), quoteIdent(p.cfg.Database), quoteIdent(p.cfg.User))
	cmd := exec.CommandContext(ctx, filepath.Join(p.cfg.Bin, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
		"-h", p.SocketDir, "-p", strconv.Itoa(p.Port), "-U", "postgres", "-d", "postgres")
	cmd.Stdin = strings.NewReader(sql)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("creating role and database: %w: %s", err, tail(out, 10))
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

// PID returns the postmaster's PID, or 0 when it is not running.
func (p *Postgres) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	select {
	case <-p.done:
		return 0
	default:
		return p.cmd.Process.Pid
	}
}

// Stop shuts the server down fast (SIGINT to the postmaster's PID, as
// pg_ctl stop -m fast) and waits up to timeout; then it kills it and waits
// again. It returns nil when the server is already down.
func (p *Postgres) Stop(timeout time.Duration) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
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
		return fmt.Errorf("stopping postgres %d: killed after %v without a fast shutdown", cmd.Process.Pid, timeout)
	case <-time.After(5 * time.Second):
		return fmt.Errorf("stopping postgres %d: still running after SIGKILL", cmd.Process.Pid)
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

// LabConn returns the lab's credentials on host:port.
func LabConn(host netip.Addr, port int) ConnInfo {
	return ConnInfo{Host: host.String(), Port: port, User: User, Password: Password, Database: Database}
}

// Query runs sql with psql inside ns and returns its output unaligned and
// without headers ("a|b" per row), trimmed. On failure the error carries
// psql's stderr; ctx bounds the whole run.
func Query(ctx context.Context, ns *Namespace, c ConnInfo, sql string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := ns.Command(ctx, filepath.Join(PostgresBin, "psql"), "-X", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		"-d", c.String(), "-c", sql)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "PGPASSWORD=" + c.Password}
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("querying %s:%d from %s: %w: %s", c.Host, c.Port, ns.Name, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
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

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// quoteConnValue quotes a libpq keyword value.
func quoteConnValue(s string) string {
	if s != "" && !strings.ContainsAny(s, ` '\`) {
		return s
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
