package web

import (
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// collector turns a Snapshot, built at each scrape, into metrics.
type collector struct {
	src Source
}

// exported lists the names desc made, for MetricNames.
var exported []string

func desc(name, help string, labels ...string) *prometheus.Desc {
	exported = append(exported, name)
	return prometheus.NewDesc(name, help, labels, nil)
}

// The metrics the collector exports; MetricNames lists them with the
// Recorder's.
var (
	buildInfo = desc("xlb_build_info", "Always 1; the version label says which xlb runs.", "version")

	svcPackets  = desc("xlb_service_packets_total", "Packets forwarded for a VIP service, both directions.", "service")
	svcBytes    = desc("xlb_service_bytes_total", "Bytes forwarded for a VIP service, as received, by direction: in from clients, out to clients.", "service", "direction")
	svcNewFlows = desc("xlb_service_new_flows_total", "Flows (client connections) opened to a VIP service.", "service")
	svcActive   = desc("xlb_service_active_flows", "Flows to a VIP service that are open now.", "service")
	svcRSTs     = desc("xlb_service_rsts_sent_total", "TCP resets the datapath sent to clients of a VIP service.", "service")
	svcDrops    = desc("xlb_service_drops_total", "Packets to a VIP service dropped by the datapath, by reason.", "service", "reason")
	svcBackends = desc("xlb_service_backends", "Backends in a VIP service's pool.", "service")
	globalDrops = desc("xlb_global_drops_total", "Packets to the VIP dropped before a service was known, by reason.", "reason")

	beLabels   = []string{"member", "backend"}
	bePackets  = desc("xlb_backend_packets_total", "Packets forwarded to and from a backend.", beLabels...)
	beBytes    = desc("xlb_backend_bytes_total", "Bytes forwarded to and from a backend, as received, by direction: in from clients, out to clients.", "member", "backend", "direction")
	beNewFlows = desc("xlb_backend_new_flows_total", "Flows opened to a backend.", beLabels...)
	beActive   = desc("xlb_backend_active_flows", "Flows to a backend that are open now.", beLabels...)
	beRSTs     = desc("xlb_backend_rsts_sent_total", "TCP resets sent to clients of a backend's flows.", beLabels...)
	beDrops    = desc("xlb_backend_drops_total", "Packets of a backend's flows dropped, by reason.", "member", "backend", "reason")

	memUp       = desc("xlb_member_up", "1 when the member answers its probes (after rise/fall), else 0.", "member")
	memRole     = desc("xlb_member_role", "1 for the member's role as its last answered probe said.", "member", "role")
	memFenced   = desc("xlb_member_fenced", "1 when the member claims primary on an old timeline (kept out of every pool).", "member")
	memDrained  = desc("xlb_member_drained", "1 when an operator drained the member.", "member")
	memTimeline = desc("xlb_member_timeline", "The member's PostgreSQL timeline.", "member")
	memLagSec   = desc("xlb_member_replay_lag_seconds", "Age of the last transaction a replica replayed (0 when caught up).", "member")
	memLagBytes = desc("xlb_member_replay_lag_bytes", "WAL bytes between the writer's position and the member's replay position.", "member")
	memSync     = desc("xlb_member_synchronous", "1 when the member is a synchronous standby as xlb set them.", "member")
	memPool     = desc("xlb_member_in_pool", "1 when the member is in the service's pool.", "member", "service")
	memCheck    = desc("xlb_member_last_check_timestamp_seconds", "When the member was last probed (Unix time).", "member")
	memChange   = desc("xlb_member_last_change_timestamp_seconds", "When the member's state last changed (Unix time; 0: not since the daemon started).", "member")

	writerKnown = desc("xlb_writer_known", "1 when a writer (primary) is in the read/write pool.")
	timeline    = desc("xlb_cluster_timeline", "The newest PostgreSQL timeline seen or made.")
	lastOutage  = desc("xlb_last_outage_seconds", "How long the last failover or switchover left the cluster without a writer.")

	vrrpState    = desc("xlb_vrrp_state", "1 for this host's VRRP state.", "state")
	vrrpPriority = desc("xlb_vrrp_priority", "This host's current VRRP priority (lowered while it cannot serve).")
	vipOwner     = desc("xlb_vip_owner", "1 when this host holds the VIP.")

	dpAttached = desc("xlb_datapath_attached", "1 when the XDP program is attached to the interface.", "interface", "mode")
	dpLease    = desc("xlb_datapath_lease_remaining_seconds", "How long this host's VIP lease in the datapath still runs.")
	dpEntries  = desc("xlb_flow_map_entries", "Conntrack entries in use (two a flow).")
	dpCapacity = desc("xlb_flow_map_capacity", "Conntrack entries the flow map holds.")
	dpFill     = desc("xlb_flow_map_fill_ratio", "Conntrack entries in use divided by capacity.")
	dpSNATUse  = desc("xlb_snat_ports_in_use", "SNAT ports held by flows (closed ones until freed).")
	dpSNATCap  = desc("xlb_snat_ports", "SNAT ports in the configured range.")

	scrapeErr = desc("xlb_snapshot_errors", "1 when part of the snapshot could not be read at this scrape (see the log).")
)

var allDescs = []*prometheus.Desc{buildInfo, svcPackets, svcBytes, svcNewFlows, svcActive, svcRSTs, svcDrops,
	svcBackends, globalDrops, bePackets, beBytes, beNewFlows, beActive, beRSTs, beDrops, memUp, memRole,
	memFenced, memDrained, memTimeline, memLagSec, memLagBytes, memSync, memPool, memCheck, memChange,
	writerKnown, timeline, lastOutage, vrrpState, vrrpPriority, vipOwner, dpAttached,
	dpLease, dpEntries, dpCapacity, dpFill, dpSNATUse, dpSNATCap, scrapeErr}

// Describe implements prometheus.Collector.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Collect implements prometheus.Collector: it builds a Snapshot now and
// reports it. A snapshot that failed in part still reports what it has,
// with xlb_snapshot_errors at 1.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	s, err := c.src.Snapshot()
	if err != nil {
		slog.Warn("metrics snapshot", "err", err)
	}
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	gauge(scrapeErr, b2f(err != nil))
	gauge(buildInfo, 1, s.Version)

	for _, sv := range s.Services {
		counter(svcPackets, sv.Packets, sv.Name)
		counter(svcBytes, sv.BytesIn(), sv.Name, "in")
		counter(svcBytes, sv.BytesOut, sv.Name, "out")
		counter(svcNewFlows, sv.NewFlows, sv.Name)
		counter(svcRSTs, sv.RSTs, sv.Name)
		gauge(svcActive, float64(sv.Active), sv.Name)
		gauge(svcBackends, float64(len(sv.Backends)), sv.Name)
		for _, r := range slices.Sorted(maps.Keys(sv.Drops)) {
			counter(svcDrops, sv.Drops[r], sv.Name, r)
		}
	}
	for _, r := range slices.Sorted(maps.Keys(s.Global.Drops)) {
		counter(globalDrops, s.Global.Drops[r], r)
	}

	sync := map[string]bool{}
	for _, m := range s.Members {
		counter(bePackets, m.Packets, m.Name, m.Addr)
		counter(beBytes, m.BytesIn(), m.Name, m.Addr, "in")
		counter(beBytes, m.BytesOut, m.Name, m.Addr, "out")
		counter(beNewFlows, m.NewFlows, m.Name, m.Addr)
		counter(beRSTs, m.RSTs, m.Name, m.Addr)
		gauge(beActive, float64(m.Active), m.Name, m.Addr)
		for _, r := range slices.Sorted(maps.Keys(m.Drops)) {
			counter(beDrops, m.Drops[r], m.Name, m.Addr, r)
		}
		gauge(memUp, b2f(m.Health == "up"), m.Name)
		for _, r := range []string{"primary", "replica", "unknown"} {
			gauge(memRole, b2f(m.Role == r), m.Name, r)
		}
		gauge(memFenced, b2f(m.Fenced), m.Name)
		gauge(memDrained, b2f(m.Drained), m.Name)
		gauge(memTimeline, float64(m.Timeline), m.Name)
		gauge(memLagSec, m.ReplayLag.Seconds(), m.Name)
		gauge(memLagBytes, float64(m.LagBytes), m.Name)
		gauge(memSync, b2f(m.Synchronous), m.Name)
		sync[m.Name] = m.Synchronous
		for _, sv := range s.Services {
			gauge(memPool, b2f(slices.Contains(m.Pools, sv.Name)), m.Name, sv.Name)
		}
		gauge(memCheck, unix(m.LastCheck), m.Name)
		gauge(memChange, unix(m.LastChange), m.Name)
	}

	gauge(writerKnown, b2f(s.Writer != ""))
	gauge(timeline, float64(s.Timeline))
	var outage float64
	for _, e := range s.Events {
		if e.Err == "" {
			outage = e.Took.Seconds()
		}
	}
	gauge(lastOutage, outage)

	if v := s.VRRP; v != nil {
		for _, st := range []string{"initialize", "backup", "master"} {
			gauge(vrrpState, b2f(v.State == st), st)
		}
		gauge(vrrpPriority, float64(v.Priority))
		gauge(vipOwner, b2f(v.HoldsVIP))
	} else {
		// One LB host: it owns the VIP whenever its datapath runs.
		gauge(vipOwner, b2f(s.Datapath.Attached))
	}

	d := s.Datapath
	gauge(dpAttached, b2f(d.Attached), d.Interface, d.Mode)
	if d.Lease {
		gauge(dpLease, d.LeaseRemaining.Seconds())
	}
	gauge(dpEntries, float64(d.Entries))
	gauge(dpCapacity, float64(d.Capacity))
	if d.Capacity > 0 {
		gauge(dpFill, float64(d.Entries)/float64(d.Capacity))
	}
	gauge(dpSNATUse, float64(d.SNATInUse))
	gauge(dpSNATCap, float64(d.SNATPorts))
}

// MetricNames returns the name of every metric xlb exports itself (Go and
// process collectors aside), sorted.
func MetricNames() []string {
	out := slices.Clone(exported)
	out = append(out, "xlb_probe_duration_seconds", "xlb_probe_failures_total", "xlb_vrrp_transitions_total",
		"xlb_failovers_total", "xlb_switchovers_total")
	slices.Sort(out)
	return out
}

// unix returns t in Unix seconds, 0 for the zero time.
func unix(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
