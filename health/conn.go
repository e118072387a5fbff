package health

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
)

// Login is how xlb logs in to a PostgreSQL server: a role, the database
// and the role's password, and how the connection is protected.
type Login struct {
	User     string
	Database string
	Password string
	// TLS, when set, is used for every connection, which fails when the
	// server does not offer TLS; nil connects in plain text.
	TLS *tls.Config
}

// ConnConfig returns the pgx configuration of a connection to host:port
// that logs in with l, built field by field: the password never passes
// through a connection string, no PG* environment variable applies,
// queries use the simple protocol (no prepared statements), the session's
// application_name is ApplicationName, and timeout bounds the dial and
// the login. It is the one place where xlb's probes and its actions on
// PostgreSQL (package control/postgres) configure a connection.
func ConnConfig(host string, port uint16, l Login, timeout time.Duration) (*pgx.ConnConfig, error) {
	// sslmode=disable keeps the PG* environment's TLS settings out;
	// every field that matters is set below.
	cfg, err := pgx.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, fmt.Errorf("building connection config: %w", err)
	}
	cfg.Host, cfg.Port = host, port
	cfg.User, cfg.Database, cfg.Password = l.User, l.Database, l.Password
	cfg.TLSConfig, cfg.Fallbacks = l.TLS, nil
	cfg.ConnectTimeout = timeout
	cfg.DialFunc = (&net.Dialer{Timeout: timeout, KeepAlive: 5 * time.Second}).DialContext
	cfg.RuntimeParams = map[string]string{"application_name": ApplicationName}
	cfg.ValidateConnect, cfg.AfterConnect = nil, nil
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cfg.StatementCacheCapacity, cfg.DescriptionCacheCapacity = 0, 0
	return cfg, nil
}

// Connect opens a connection to host:port configured by ConnConfig. Its
// errors are pgx's, which never carry the password.
func Connect(ctx context.Context, host string, port uint16, l Login, timeout time.Duration) (*pgx.Conn, error) {
	cfg, err := ConnConfig(host, port, l, timeout)
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}
