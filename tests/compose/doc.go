// Package compose tests the compose lab (deploy/compose) end to end with
// the Docker Engine and docker-compose (or `docker compose`) of the host:
// the lab comes up from images built on a base made offline from Debian's
// packages, routes writes to the primary and reads over the replicas, fails
// over when pg1 or lb1 is killed, keeps established connections across a
// restart of lb1 (its network namespace held by lb1-net, its maps pinned in
// the host's bpffs), and leaves nothing behind.
//
// # Needs
//
// Root, a running Docker Engine, docker-compose 1.29+ or the compose
// plugin, mmdebstrap (installed by deploy/compose/base.sh when missing) and
// a reachable Debian mirror for the first base image build. The lab's
// network is 172.20.0.0/16, fixed: the test refuses to run while another
// compose lab is up. Under XLB_REQUIRE_PRIVILEGED=1 (CI) a missing piece
// fails the test instead of skipping it.
//
// # Figures
//
// The test logs the write outage after `docker kill pg1`, the gap for new
// connections after `docker kill lb1`, the time lb1 took to come back in
// the restart tests and how long the base image and `up` took.
package compose
