// Package loader loads, attaches, pins and updates xlb's XDP datapath.
//
// It offers a typed API over the BPF maps: set a service's backends
// (Maglev tables), remove a backend and flush its flows, list flows and read
// the per-CPU counters. It knows no policy: which node is primary is decided
// elsewhere and written here.
//
// # Pinning and restarts
//
// With a PinPath (default /sys/fs/bpf/xlb) every map is pinned by name and the
// XDP link is pinned as link_<ifname>. A restarted daemon loads the same
// pinned maps, so conntrack survives, and swaps its new program into the
// pinned link with Update, so no packet meets a detached interface. bpffs is
// mounted at /sys/fs/bpf when it is missing.
//
// # Capabilities and kernels
//
// Loading needs CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN to mount bpffs);
// xlb is built and tested on Linux 6.x and needs Linux 5.16 or newer
// (MinKernel): Features lists what it uses and since when, and CheckKernel,
// which xlb run calls first, names what the running kernel lacks. Native XDP_TX on a veth needs an XDP
// program on the peer too (see PassProgram); generic mode does not.
//
// # Byte order
//
// Addresses and ports in the maps are in network order; the API takes
// netip values and converts.
package loader
