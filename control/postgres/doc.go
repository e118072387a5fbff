// Package postgres carries out on PostgreSQL what the controller decides:
// it promotes a replica, points replicas at a new primary, sets the
// synchronous standbys and stops writes on a primary (Actions, which
// implements control.Promoter), and brings an old primary back as a
// replica with pg_rewind (Rejoin, behind `xlb pg rejoin`). It owns the
// round trip of libpq connection strings (primary_conninfo) and of
// postgresql.auto.conf, which must give back byte for byte what it read.
//
// It lives under control because it is the controller's hands: control
// declares the interface (control.Promoter) and stays pure logic, this
// package implements it against real servers, and cmd/xlb wires the two.
// It is not part of package health, which only observes; both connect
// through one builder, health.ConnConfig, so that probes and actions log
// in the same way (TLS settings included).
//
// # Roles
//
// Actions logs in as an administrative role: pg_promote, ALTER SYSTEM,
// pg_reload_conf, pg_terminate_backend of every session,
// pg_create_physical_replication_slot and reading primary_conninfo need a
// superuser in practice. Rejoin runs pg_rewind with that role and writes a
// password file for the replication role (LOGIN REPLICATION).
//
// # Rejoin as root
//
// Rejoin runs PostgreSQL's programs as the data directory's owner, and does
// every file operation on paths that owner controls (the configuration
// files, the password file postgresql.auto.conf names, the server log) on
// a thread whose filesystem identity (fsuid, fsgid, groups) is the
// owner's: root's rights never apply to them, symlinks there are refused
// (O_NOFOLLOW) and new files come from O_EXCL temporary names renamed into
// place.
//
// # Secrets
//
// Passwords never pass through a connection string or argv: connections are
// configured field by field, pg_rewind gets PGPASSWORD in its environment,
// and primary_conninfo names a password file (passfile) rather than carry a
// password. Errors about a connection string give byte offsets, never
// values.
package postgres
