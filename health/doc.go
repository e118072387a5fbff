// Package health probes PostgreSQL nodes with pgx and reports what it sees:
// reachability, pg_is_in_recovery(), the timeline, the WAL LSNs, how far a
// replica lags, whether and from where it streams, and the probe's
// latency. It only observes: it decides nothing and changes nothing on
// the nodes.
//
// A Prober keeps one connection to one node and runs one SQL statement per
// probe (simple protocol: one round trip), valid on a primary and on a
// replica. Watch runs a Prober per node on an interval and sends every
// Observation to a channel, for the controller.
//
// # The role the probes log in as
//
// It needs LOGIN, CONNECT on the database, and pg_monitor (or
// pg_read_all_stats): without it pg_stat_wal_receiver hides everything but
// the pid, and a probe of a replica fails with ErrPrivilege rather than
// report it as not streaming. It needs no superuser and writes nothing.
// Sessions carry application_name "xlb".
//
// # Secrets
//
// PasswordFrom reads the password from a file (0600: one its group or
// others may read is refused) or the environment, never from argv.
// Connections are configured field by field, so the password is never part
// of a connection string; no error or log line of this package carries it.
//
// # Connections and TLS
//
// ConnConfig is xlb's one connection builder: the probes use it, and so do
// the administrative actions of package control/postgres. TLS takes
// libpq's settings (sslmode, default prefer; sslrootcert; sslcert and
// sslkey), built into TLS configurations by pgx; no PG* environment
// variable changes them. A server whose certificate fails verification
// yields an error naming the setting to check. CheckRole checks at start
// that the probe role has pg_monitor.
//
// # Timing
//
// Every probe, connecting included, is bounded by the timeout (pgx closes
// the socket when it passes). A probe that times out drops its connection;
// the next one reconnects. A probe that fails because its connection broke
// (a restarted server, a terminated backend) is retried at once on a new
// connection by Watch, so only a node that really fails yields an Err.
// Measured on loopback with PostgreSQL 15: the probe query takes about
// 0.4 ms on an open connection and 1.5 ms as the first on a new one (cold
// backend caches). After pg_ctl stop -m immediate of the primary, a
// replica's pg_stat_wal_receiver row is gone within a millisecond, and it
// streams again about 80 ms after the primary accepts connections (with
// wal_retrieve_retry_interval 200ms). A promotion completes in about 25 ms,
// but pg_promote() with wait => true returns only at its next 100 ms poll;
// the new timeline is visible to the next probe, while
// pg_control_checkpoint() still names the old one until the checkpoint
// after the promotion.
//
// Watch needs a positive interval; a timeout well under it keeps probes on
// schedule.
//
// # Network namespaces
//
// pgx dials from whatever OS thread runs the goroutine, so a Prober
// reaches the addresses of the namespace the process runs in: run the
// daemon (or the test) in the namespace that reaches the nodes, not in a
// goroutine that entered one.
package health
