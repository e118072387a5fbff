// Package lab builds xlb's lab on one Linux host out of network namespaces:
// a bridge namespace and one namespace per host (PostgreSQL nodes, LB nodes,
// client), each joined to the bridge by a veth pair. It serves `xlb lab` and
// the tests, which use a per-run name prefix so they never meet a running lab.
//
// NewTopology builds the namespaces and links, Topology.Close removes them;
// StartPostgres runs a PostgreSQL cluster as the postgres user inside a host
// namespace, Postgres.Close stops it by PID and removes its files; Query runs
// psql from a namespace with the password in the environment.
//
// # Needs
//
// Root (CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2's ip, ethtool, ping, and
// PostgreSQL 15 at PostgresBin with a postgres OS user. Nothing here touches
// the root namespace's interfaces, routes or sysctls.
//
// # Veth quirks the topology handles
//
// Every veth end has tx checksum offload off: a packet a namespace's own
// stack sends carries CHECKSUM_PARTIAL, and after an XDP_TX nothing finishes
// the checksum. Native XDP_TX on a host's veth is dropped unless the
// bridge-side peer (Node.Peer, in the sw namespace) has an XDP program too;
// attaching one (loader.AttachPass) is the caller's job, so this package
// needs no BPF.
package lab
