// Package health probes PostgreSQL nodes with pgx: reachability,
// pg_is_in_recovery(), timeline, WAL LSNs, replication lag and latency. It
// only observes.
package health
