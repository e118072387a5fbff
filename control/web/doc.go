// Package web serves an LB host's read-only HTTP face: /healthz, /readyz,
// /metrics (Prometheus, client_golang) and /stats (one server-rendered HTML
// page, like HAProxy's stats page).
//
// Nothing it serves changes state: every handler reads a Snapshot that
// its Source builds on demand, so /metrics and /stats show the datapath's
// per-CPU counters as they are at the request, not a copy taken on a timer.
// What only exists as events (probe durations and failures, VRRP
// transitions, when a member last changed state) is counted by a Recorder
// that the daemon feeds as things happen.
//
// # Why under control
//
// The top level of the repository is fixed (bpf loader health control vip
// cmd deploy tests). This package shows the controller's view to the
// outside, so it lives beside it, and it keeps control's rule: it imports
// neither loader nor vip. Snapshot is its own plain-data type; cmd/xlb
// fills it from the datapath, the controller and the election.
//
// # Operation
//
// The server listens on http.listen (default ":8080"; the lab binds each
// LB host's own address). It has no authentication and no write handler:
// bind it to an address only operators and Prometheus reach.
package web
