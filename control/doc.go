// Package control is xlb's controller: observations of the PostgreSQL nodes
// in, decisions out — which node takes writes (VIP:3000), which take reads
// (VIP:3001), whose flows are cut.
//
// It is pure logic. It declares what it needs as small types and
// interfaces — Observation in, a Datapath to write pools to, a clock — and
// imports neither loader nor vip; cmd/xlb passes the real ones. Decisions are
// therefore table tests that run in microseconds.
//
// # Rules
//
// A node is down after Fall consecutive failed probes and up after Rise
// consecutive good ones; a single failed probe never changes a role or a
// pool. Its role is what its last good probe said (pg_is_in_recovery()).
// The write pool holds the one up primary (with several, the newest
// timeline; the rest are reported as conflicting). The read pool holds the
// up replicas within MaxReadLag, or the primary when there are none and
// ReadFallback is on. A drained node takes no new flows and keeps its
// existing ones; a node that leaves a pool because it is down or changed
// role has its flows cut, so clients get a RST at their next packet.
package control
