// Package lab builds xlb's lab on one Linux host out of network namespaces:
// a bridge namespace and one namespace per host (PostgreSQL nodes, LB nodes,
// client), each joined to the bridge by a veth pair. It serves `xlb lab` and
// the tests, which use a per-run name prefix so they never meet a running lab.
//
// # Needs
//
// Root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2's ip. Nothing here touches
// the root namespace's interfaces, routes or sysctls.
package lab
