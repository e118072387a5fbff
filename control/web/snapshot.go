package web

import (
	"time"

	"github.com/xlb-dev/xlb/control"
)

// Source builds a Snapshot when a request needs one.
type Source interface {
	Snapshot() (Snapshot, error)
}

// SourceFunc adapts a function to Source.
type SourceFunc func() (Snapshot, error)

// Snapshot calls f.
func (f SourceFunc) Snapshot() (Snapshot, error) { return f() }

// Snapshot is everything the pages and metrics show, at one moment.
type Snapshot struct {
	Time    time.Time
	Host    string // this LB host's address
	Version string
	Started time.Time
	VIP     string

	Datapath Datapath
	Services []Service
	// Global are the drops that no service can be blamed for (a fragment
	// to the VIP, say).
	Global Counters

	Members        []Member
	Writer         string // empty: no writer known
	NoWriterReason string
	Timeline       uint32
	Synchronous    bool
	Events         []control.Event // failovers and switchovers, oldest first

	VRRP *VRRP // nil when the election is off (one LB host)
}

// Counters are datapath counters summed over CPUs. Packets and Bytes count
// both directions of the flows; BytesOut is the part of Bytes going out to
// clients (from the backends).
type Counters struct {
	Packets, Bytes, BytesOut, NewFlows, RSTs uint64
	Drops                                    map[string]uint64 // by reason
}

// BytesIn returns the bytes that came in from clients (to the backends).
func (c Counters) BytesIn() uint64 { return c.Bytes - min(c.BytesOut, c.Bytes) }

// DropTotal returns the sum of Drops.
func (c Counters) DropTotal() uint64 {
	var n uint64
	for _, v := range c.Drops {
		n += v
	}
	return n
}

// Datapath is the XDP program's state on this host.
type Datapath struct {
	Attached  bool
	Interface string
	Mode      string // native or generic
	// Lease reports whether VIP ownership follows a lease (VRRP on);
	// LeaseRemaining is how long it still runs.
	Lease          bool
	LeaseRemaining time.Duration
	// Entries and Capacity are the conntrack map's use (two entries a flow).
	Entries, Capacity int
	Flows, Active     int
	SNATInUse         int
	SNATPorts         int
}

// Service is one VIP port.
type Service struct {
	Name     string // rw or ro
	Port     uint16
	Backends []string // the pool as written
	Active   int      // active flows
	Counters
}

// Member is one PostgreSQL node as this LB host sees it.
type Member struct {
	Name, Addr string
	Role       string // primary, replica or unknown
	Health     string // up, down or unknown
	// State is what the page shows: Health, or drained, fenced or conflict
	// when one of those applies.
	State     string
	Fenced    bool
	Drained   bool
	Timeline  uint32
	ReplayLag time.Duration
	// LagBytes is how far its replay is behind the writer's WAL position;
	// zero on the writer and when unknown.
	LagBytes    uint64
	Synchronous bool // a synchronous standby as xlb last set them
	Pools       []string
	Active      int // active flows
	Counters
	Latency    time.Duration // last probe's query round trip
	LastCheck  time.Time
	LastChange time.Time // when State last changed; zero: not since start
	LastError  string
}

// VRRP is the VIP election on this host.
type VRRP struct {
	VRID     int
	State    string // initialize, backup or master
	Priority int
	Master   string // the master's address; empty when none is known
	Since    time.Time
	HoldsVIP bool
}
