// Package lab builds xlb's lab on one Linux host out of network namespaces:
// a bridge namespace and one namespace per host (PostgreSQL nodes, LB nodes,
// client), each joined to the bridge by a veth pair. It serves `xlb-lab` and
// the tests, which use a per-run name prefix so they never meet a running lab.
//
// NewTopology builds the namespaces and links, Topology.Close removes them;
// StartPostgres runs a PostgreSQL cluster as the postgres user inside a host
// namespace, Postgres.Close stops it by PID and removes its files; Query runs
// psql from a namespace with the password in the environment.
//
// # Replication
//
// Every cluster is ready to be a primary or a replica (ReplicationSettings:
// hot standby, feedback, wal_retrieve_retry_interval 200ms). A primary gets
// the role ReplicationUser (LOGIN REPLICATION only) and the physical slots
// of PostgresConfig.Slots; StartReplica clones it with pg_basebackup -R -S
// <slot> -X stream, run as postgres inside the replica's namespace, and
// points primary_conninfo at it with application_name=<name> and a
// password file in the data directory (0600, postgres's). Passwords go
// through stdin, the environment or password files, never argv.
// StopImmediate, Restart, Promote and WaitReplaying drive failover drills.
//
// # Loopback clusters
//
// With a nil *Namespace a cluster runs in the caller's namespace and
// listens on 127.0.0.1 only (pg_hba admits 127.0.0.1/32), on a port from
// FreePort: that is how package health's tests probe real servers from the
// test process, whose pgx goroutines could not follow a namespace switch.
//
// # Needs
//
// Root (CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2's ip, ethtool, and
// PostgreSQL 15 at PostgresBin with a postgres OS user. Nothing here touches
// the root namespace's interfaces, routes or sysctls.
//
// # Veth quirks the topology handles
//
// Every veth end has tx checksum offload off: a packet a namespace's own
// stack sends carries CHECKSUM_PARTIAL, and after an XDP_TX nothing finishes
// the checksum. Native XDP_TX on a host's veth is dropped unless the
// bridge-side peer (Node.Peer, in the sw namespace) has an XDP program too;
// NewTopology leaves attaching one (loader.AttachPass) to its caller; Up
// attaches and pins one under /sys/fs/bpf/<prefix>lab so it outlives
// `xlb-lab up`, and keeps its state (PIDs, configs, logs) in
// /run/xlb-lab/<prefix>.
package lab
