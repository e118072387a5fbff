package health

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Login is how xlb logs in to a PostgreSQL server: a role, the database
// and the role's password, and how the connection is protected.
type Login struct {
	User     string
	Database string
	Password string
	TLS      TLS
}

// TLS says how a connection is protected, with libpq's settings of the
// same names (https://www.postgresql.org/docs/15/libpq-ssl.html), which
// pgx implements:
//
//   - SSLMode: disable (plain text), allow (plain text, else TLS), prefer
//     (TLS, else plain text; the default), require (TLS, the server not
//     verified unless SSLRootCert is set, then as verify-ca), verify-ca (TLS,
//     the server's certificate signed by SSLRootCert's CA), verify-full
//     (verify-ca, and the certificate names the host or address dialled).
//   - SSLRootCert: PEM file of the CA(s) that sign the servers' certificates.
//   - SSLCert, SSLKey: PEM files of a client certificate and its key, for
//     servers that ask for one (pg_hba.conf's cert method or clientcert).
type TLS struct {
	SSLMode     string `yaml:"sslmode"`
	SSLRootCert string `yaml:"sslrootcert"`
	SSLCert     string `yaml:"sslcert"`
	SSLKey      string `yaml:"sslkey"`
}

// SSLModes are the values of TLS.SSLMode.
var SSLModes = []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

// FieldError is a bad TLS setting: Field is sslmode, sslrootcert, sslcert
// or sslkey.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Check returns a *FieldError when a setting is bad: an unknown mode,
// verify-ca or verify-full without a root certificate, a file that cannot
// be read or holds no PEM certificate, a certificate without its key (or
// the other way round), or a key file that its group or others may read
// (libpq refuses it too).
func (t TLS) Check() error {
	if t.SSLMode != "" && !contains(SSLModes, t.SSLMode) {
		return &FieldError{"sslmode", fmt.Errorf("%q: want one of %s", t.SSLMode, strings.Join(SSLModes, ", "))}
	}
	if (t.SSLMode == "verify-ca" || t.SSLMode == "verify-full") && t.SSLRootCert == "" {
		return &FieldError{"sslrootcert", fmt.Errorf("required with sslmode %s: the CA that signs the servers' certificates", t.SSLMode)}
	}
	if t.SSLRootCert != "" {
		b, err := os.ReadFile(t.SSLRootCert)
		if err != nil {
			return &FieldError{"sslrootcert", err}
		}
		if !x509.NewCertPool().AppendCertsFromPEM(b) {
			return &FieldError{"sslrootcert", fmt.Errorf("%s holds no PEM certificate", t.SSLRootCert)}
		}
	}
	if (t.SSLCert == "") != (t.SSLKey == "") {
		if t.SSLCert == "" {
			return &FieldError{"sslcert", errors.New("required with sslkey")}
		}
		return &FieldError{"sslkey", errors.New("required with sslcert")}
	}
	if t.SSLCert != "" {
		if _, err := os.ReadFile(t.SSLCert); err != nil {
			return &FieldError{"sslcert", err}
		}
		fi, err := os.Stat(t.SSLKey)
		if err != nil {
			return &FieldError{"sslkey", err}
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return &FieldError{"sslkey", fmt.Errorf("%s has mode %v: its group and others must have no access (chmod 600)", t.SSLKey, fi.Mode().Perm())}
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// connString returns the libpq settings of a connection to host:port with
// t, every TLS setting given (so none comes from the PG* environment).
func (t TLS) connString(host string, port uint16) string {
	mode := t.SSLMode
	if mode == "" {
		mode = "prefer"
	}
	kv := [][2]string{{"host", host}, {"port", strconv.Itoa(int(port))}, {"sslmode", mode},
		{"sslrootcert", t.SSLRootCert}, {"sslcert", t.SSLCert}, {"sslkey", t.SSLKey},
		{"sslcertmode", "allow"}, {"sslpassword", ""}, {"sslsni", "1"}, {"sslnegotiation", "postgres"}}
	parts := make([]string, len(kv))
	for i, p := range kv {
		parts[i] = p[0] + "='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(p[1]) + "'"
	}
	return strings.Join(parts, " ")
}

// ConnConfig returns the pgx configuration of a connection to host:port
// that logs in with l, built field by field: the password never passes
// through a connection string, no PG* environment variable applies,
// queries use the simple protocol (no prepared statements), the session's
// application_name is ApplicationName, and timeout bounds the dial and
// the login. It is the one place where xlb's probes and its actions on
// PostgreSQL (package control/postgres) configure a connection.
func ConnConfig(host string, port uint16, l Login, timeout time.Duration) (*pgx.ConnConfig, error) {
	// pgx builds the TLS configurations (and, for allow and prefer, the
	// fallback) from host, port and the TLS settings; every other field
	// that matters is set below.
	cfg, err := pgx.ParseConfig(l.TLS.connString(host, port))
	if err != nil {
		return nil, fmt.Errorf("building connection config: %w", err)
	}
	cfg.User, cfg.Database, cfg.Password = l.User, l.Database, l.Password
	cfg.ConnectTimeout = timeout
	cfg.DialFunc = (&net.Dialer{Timeout: timeout, KeepAlive: 5 * time.Second}).DialContext
	cfg.RuntimeParams = map[string]string{"application_name": ApplicationName}
	cfg.ValidateConnect, cfg.AfterConnect = nil, nil
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cfg.StatementCacheCapacity, cfg.DescriptionCacheCapacity = 0, 0
	return cfg, nil
}

// Connect opens a connection to host:port configured by ConnConfig. Its
// errors are pgx's, which never carry the password; when the server's
// certificate fails verification the error says which setting to check.
func Connect(ctx context.Context, host string, port uint16, l Login, timeout time.Duration) (*pgx.Conn, error) {
	cfg, err := ConnConfig(host, port, l, timeout)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	var (
		unknownCA x509.UnknownAuthorityError
		badHost   x509.HostnameError
	)
	switch {
	case errors.As(err, &unknownCA):
		return nil, fmt.Errorf("%w (sslmode %s: the server's certificate is not signed by a CA in sslrootcert %s)", err, l.TLS.SSLMode, l.TLS.SSLRootCert)
	case errors.As(err, &badHost):
		return nil, fmt.Errorf("%w (sslmode verify-full: the server's certificate does not name %s)", err, host)
	}
	return conn, err
}

// CheckRole connects to t and checks that its role has what the probes
// need: membership in pg_monitor (or pg_read_all_stats, or superuser). It
// returns an error wrapping ErrPrivilege when the role lacks it, an error
// naming t when t cannot be reached or asked (the role unchecked), and
// superuser true when the role is a superuser (the probes need none).
func CheckRole(ctx context.Context, t Target, timeout time.Duration) (superuser bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := Connect(ctx, t.Addr.Addr().String(), t.Addr.Port(),
		Login{User: t.User, Database: t.Database, Password: t.Password, TLS: t.TLS}, timeout)
	if err != nil {
		return false, fmt.Errorf("connecting to %s (%v): %w", t.Name, t.Addr, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var monitor bool
	err = conn.QueryRow(ctx, `SELECT rolsuper, pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
		FROM pg_roles WHERE rolname = current_user`).Scan(&superuser, &monitor)
	if err != nil {
		return false, fmt.Errorf("reading the rights of role %s on %s: %w", t.User, t.Name, err)
	}
	if !monitor {
		return superuser, fmt.Errorf("role %s on %s: %w", t.User, t.Name, ErrPrivilege)
	}
	return superuser, nil
}
