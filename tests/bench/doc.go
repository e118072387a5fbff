// Command bench compares, in the lab, PostgreSQL reached directly, through
// xlb's VIP and through HAProxy with the classic configuration, using
// pgbench's select-only script from the client host. `make bench` runs it.
//
// It builds its own lab (prefix "xb-" by default, so it never meets `xlb
// lab up` or a test run), initialises pgbench's tables on the primary
// (scale 10), starts Debian's haproxy in lb1's namespace on lb1's own
// address (3000 → the primary, 3001 → the replicas, option pgsql-check),
// and then, for pgbench -S and for -S -C, warms every target up and runs
// three rounds in which each target gets one timed run, the order rotating
// by round so no target always runs first or last on a noisy machine.
//
// It prints a table of median TPS, average latency, the ratio to direct,
// and the load balancer's CPU time: the haproxy process's (utime+stime,
// all threads) against xlb's XDP program run time (run_time_ns with BPF
// run-time stats on) plus the `xlb run` daemon's own CPU. The figures,
// every run's included, go to tests/bench/out/latest.json.
//
// # Needs
//
// Root, the lab's packages and haproxy (deploy/lab/lab-deps.sh bench); `make
// bench` installs what is missing. The lab is torn down when the bench
// ends, fails or is interrupted (SIGINT, SIGTERM); haproxy is stopped by
// its PID. BPF run-time stats are on only while the bench runs
// (BPF_ENABLE_STATS; the kernel.bpf_stats_enabled sysctl as a fallback,
// restored afterwards).
//
// # Reading the figures
//
// The -C rows open a new connection per transaction: on these VMs a fork
// costs ~5 ms and a new PostgreSQL connection 17–19 ms, so they measure
// PostgreSQL's connection setup (~40 TPS even direct) more than the load
// balancer. XDP run time leaves out what the kernel spends around the
// program (the veth transmit after XDP_TX); HAProxy's CPU time includes
// its syscalls but not the softirq work of its sockets.
//
// Client, load balancer and databases share the machine's cores. With 8
// clients on 2 cores they are saturated, so the work of the extra hops
// through lb1 (veth receive, XDP_TX, the bridge) costs TPS that a load
// balancer on a host of its own would not; -clients 1 shows the latency a
// path adds on its own. The machine is shared and noisy: the table gives,
// beside the medians, each target's TPS over direct's in the same round,
// and the load average at the start and the end.
package main
