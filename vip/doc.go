// Package vip elects the owner of a virtual IP between LB nodes with
// VRRPv3 (RFC 5798), adds and removes the address with netlink and
// announces it with gratuitous ARP. A keepalived node speaking
// vrrp_version 3 in the same virtual router is a peer like any other.
//
// It comes in three layers. Advertisement marshals and parses VRRPv3
// messages for IPv4, checksum over the pseudo-header included. Machine is
// the state machine of RFC 5798 §6.4 without I/O: events and their times
// in, actions out. Instance runs a Machine on an interface: Dial opens the
// raw socket, the netlink handle and the ARP socket, New takes any Conn,
// Addresser and Announcer (tests pass fakes), and Run takes part in the
// election until its context ends.
//
// # Election
//
// A node starts as backup and becomes master when it hears no
// advertisement for Master_Down_Interval = 3 × Master_Adver_Interval +
// Skew_Time, with Skew_Time = (256 − Priority) × Master_Adver_Interval /
// 256, so that the highest priority goes first. A backup takes the
// master's advertised interval as its Master_Adver_Interval. A master
// steps down for a higher priority, or an equal one from a higher primary
// address. With Preempt, a backup of higher priority than the master lets
// its timer run out and takes over; without, it waits until the master
// falls silent or resigns. A master that stops cleanly sends a priority-0
// advertisement, and the backups take over after their Skew_Time.
//
// Becoming master: send an advertisement, add the VIP, send GARPCount
// gratuitous ARPs GARPInterval apart (5 × 150 ms by default; Linux
// overrides a neighbour entry on a gratuitous ARP even within its
// locktime), call OnMaster. Becoming backup or stopping as master: stop
// announcing, remove the VIP, call OnBackup. The callbacks run on a
// goroutine of their own, in order, so a slow one (promoting PostgreSQL)
// never delays an advertisement. WhileMaster, by contrast, runs on the
// advertising thread after every advertisement a master holding the VIP
// sends: a datapath lease renewed there for about 3 × AdvertInterval
// lapses soon after the last advertisement, also when the process was
// killed, before a backup takes over (Master_Down_Interval). Run removes the VIP at startup too: a
// process killed with SIGKILL leaves it on the interface, as keepalived
// does, and until the next start the node still answers ARP for it.
//
// # Timing
//
// DefaultAdvertInterval is 50 ms. A backup of priority 100 declares a
// silent master dead after 150 ms + 30 ms of skew. Measured in this
// package's tests (kernel 6.18, 2 cores, veth and a bridge in network
// namespaces, a client probing a TCP service on the VIP every 20 ms):
//
//	master killed (no advertisement, link down)   backup master after 135–160 ms,
//	                                              client answered by it after 135–165 ms
//	the same with unicast peers                   backup master after 155–175 ms
//	master stopped cleanly (priority 0)           backup master after 27–37 ms (skew 30 ms)
//	master returns, preempts                      master 166–171 ms after its start
//	keepalived (priority 150) killed              instance master after 157–175 ms
//	keepalived stopped (SIGTERM)                  instance master after 31–32 ms
//	instance killed, keepalived (priority 50)     client answered by keepalived's node
//	                                              after 156–198 ms
//	instance stopped, keepalived takes over       keepalived's VIP after 43–84 ms
//
// # Scheduling
//
// A 50 ms interval leaves a master three chances to be heard, so an
// advertisement must never be late by more than about 100 ms, also when
// every core is busy. With 4 spinning processes on 2 cores
// (TestNoTakeoverUnderCPULoad) and the loop under the normal scheduler,
// the backup went 136–177 ms without hearing the master in runs of 30 and
// 60 s: a takeover in waiting, and one run did flap. So Run's loop has an
// OS thread of its own under SCHED_FIFO (Config.SchedPriority, default 10)
// that waits in ppoll(2) on the raw socket rather than in Go's network
// poller, so that the kernel wakes it directly: the longest silence then
// was 65 ms in 30 s and 78 ms in 60 s. (Real-time priority with the Go
// poller alone made it worse: the wake-up still passes through
// normal-priority runtime threads.) The thread does microseconds of work
// per interval. Without CAP_SYS_NICE Run logs a warning and goes on.
//
// # Keepalived
//
// A keepalived peer needs vrrp_version 3, the same virtual_router_id, the
// same VIP in virtual_ipaddress and advert_int in seconds (0.05 for 50
// ms); keepalived logs but accepts a different interval, and a backup
// adopts the master's anyway. Its default is preemption, as here.
//
//	vrrp_instance xlb {
//		state BACKUP
//		interface eth0
//		virtual_router_id 51
//		priority 100
//		advert_int 0.05
//		virtual_ipaddress {
//			172.20.0.100/32 dev eth0
//		}
//	}
//
// # Needs
//
// Linux, CAP_NET_RAW (the raw socket for IP protocol 112 and the packet
// socket for ARP), CAP_NET_ADMIN (the address) and CAP_SYS_NICE (the
// real-time thread). Dial opens its sockets in the calling thread's
// network namespace and they stay there, so code that runs an instance in
// a namespace dials inside it (lab.Namespace.Do) and runs it anywhere.
// Advertisements go to 224.0.0.18 with TTL 255 and TOS 0xc0, or to
// Config.UnicastPeers one by one; received ones count only with TTL 255,
// a good checksum, the configured VRID, and, with unicast peers, from a
// peer. The tests need root, keepalived and tcpdump; they skip without
// them, and fail under XLB_REQUIRE_PRIVILEGED=1.
package vip
