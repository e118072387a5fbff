// Package control is xlb's controller: observations of the PostgreSQL nodes
// in, decisions out (roles, pool contents, promotion, fencing, flow flush).
// It is pure logic with an injected clock, so failover sequences are table
// tests; it imports neither loader nor vip.
package control
