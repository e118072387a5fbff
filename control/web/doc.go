// Package web serves an LB host's read-only HTTP face: /healthz, /readyz,
// /metrics (Prometheus, client_golang) and /stats (one server-rendered HTML
// page, like HAProxy's stats page).
//
// Nothing it serves changes state: every handler reads a Snapshot that
// its Source builds on demand, shared by every request that comes while it
// is built and for SnapshotMaxAge after (500 ms by default, the probe
// interval): 50 concurrent scrapes cost one read of the datapath, and
// /metrics and /stats show its per-CPU counters as they were at most that
// long ago.
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
// LB host's own address). It has no write handler. TLS, client
// certificates and basic auth come from a web configuration file of
// Prometheus' exporter-toolkit (http.web_config_file, the format of every
// exporter's --web.config.file); without one it serves plain HTTP to
// anyone who reaches it, so bind an address only operators and Prometheus
// reach.
//
// # Limits
//
// At most DefaultMaxConns connections are open (more wait in the listen
// backlog) and DefaultMaxInFlight requests handled at a time; a request
// over that waits up to DefaultQueueWait, then gets 503. Headers must come
// within 5 s, a request within 10 s, a reply goes within 30 s, an idle
// connection closes after 60 s.
package web
