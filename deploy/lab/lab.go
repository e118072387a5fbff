package lab

import (
	"fmt"
	"net/netip"
)

// The lab's addressing and roles, as in DESIGN.md and the classic setup.
// The passwords are made per lab (Secrets); they travel in PGPASSWORD or
// password files, never in argv.
const (
	Prefix       = "xlb-" // namespace prefix of `xlb-lab up`
	Database     = "ramos-test-db"
	User         = "ramos"
	PostgresPort = 5432
	PortRW       = 3000 // VIP port of the read/write service
	PortRO       = 3001 // VIP port of the read-only service
	HTTPPort     = 8080 // each LB host's /stats, /metrics, /healthz, /readyz, on its own address
)

// ReplicationUser (LOGIN REPLICATION, nothing else) is the role the lab's
// replicas stream as, with Secrets.ReplicationPassword.
const ReplicationUser = "replicator"

var (
	// Subnet is the lab's one L2 segment.
	Subnet = netip.MustParsePrefix("172.20.0.0/24")
	// VIP is the virtual IP held by one LB node at a time.
	VIP = netip.MustParseAddr("172.20.0.100")
)

// Host is a lab host: a name (the namespace is <prefix><name>) and its
// address on the lab subnet.
type Host struct {
	Name string
	Addr netip.Prefix
}

// Hosts lists every lab host of DESIGN.md.
var Hosts = []Host{
	{"pg1", netip.MustParsePrefix("172.20.0.10/24")},
	{"pg2", netip.MustParsePrefix("172.20.0.11/24")},
	{"pg3", netip.MustParsePrefix("172.20.0.12/24")},
	{"lb1", netip.MustParsePrefix("172.20.0.21/24")},
	{"lb2", netip.MustParsePrefix("172.20.0.22/24")},
	{"client", netip.MustParsePrefix("172.20.0.50/24")},
}

// LabHosts returns the lab hosts with the given names, in that order. It
// returns an error naming the first unknown one.
func LabHosts(names ...string) ([]Host, error) {
	out := make([]Host, 0, len(names))
	for _, n := range names {
		h, ok := lookupHost(n)
		if !ok {
			return nil, fmt.Errorf("lab host %q: unknown", n)
		}
		out = append(out, h)
	}
	return out, nil
}

func lookupHost(name string) (Host, bool) {
	for _, h := range Hosts {
		if h.Name == name {
			return h, true
		}
	}
	return Host{}, false
}
