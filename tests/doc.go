// Package tests holds xlb's end-to-end tests: the XDP datapath and, later,
// the daemon, run in a lab of network namespaces (deploy/lab) against real
// PostgreSQL 15.
//
// # Needs
//
// Root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) and PostgreSQL 15 at
// lab.PostgresBin. Without root the tests skip, unless
// XLB_REQUIRE_PRIVILEGED=1 (CI), where they fail. Every namespace, process
// and BPF link a test starts is removed in its cleanup, also when it fails.
package tests
