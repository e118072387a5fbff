package web

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xlb-dev/xlb/control"
)

// Recorder counts what happens between scrapes: probe durations and
// failures, VRRP transitions, and when each member last changed state.
// The daemon feeds it; its methods are safe for concurrent use.
type Recorder struct {
	probeDuration *prometheus.HistogramVec
	probeFailures *prometheus.CounterVec
	transitions   *prometheus.CounterVec
	events        map[string]*prometheus.CounterVec // by kind: failover, switchover

	mu       sync.Mutex
	states   map[string]string
	changed  map[string]time.Time
	lastSeen time.Time // the newest event counted
}

// NewRecorder returns a Recorder with every series of members at zero.
func NewRecorder(members []string) *Recorder {
	r := &Recorder{
		probeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "xlb_probe_duration_seconds",
			Help:    "Round trip of the probe query to a PostgreSQL member (answered probes only).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"member"}),
		probeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xlb_probe_failures_total",
			Help: "Probes of a PostgreSQL member that failed (no connection, error or timeout).",
		}, []string{"member"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xlb_vrrp_transitions_total",
			Help: "VRRP state changes of this host, by the state entered.",
		}, []string{"state"}),
		events: map[string]*prometheus.CounterVec{
			"failover": prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "xlb_failovers_total",
				Help: "Automatic failovers this daemon ran, by outcome.",
			}, []string{"outcome"}),
			"switchover": prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "xlb_switchovers_total",
				Help: "Planned switchovers this daemon ran, by outcome.",
			}, []string{"outcome"}),
		},
		states:  map[string]string{},
		changed: map[string]time.Time{},
	}
	for _, m := range members {
		r.probeDuration.WithLabelValues(m)
		r.probeFailures.WithLabelValues(m)
	}
	for _, s := range []string{"master", "backup"} {
		r.transitions.WithLabelValues(s)
	}
	for _, v := range r.events {
		for _, o := range []string{"success", "failure"} {
			v.WithLabelValues(o)
		}
	}
	return r
}

// Probe records one probe of member: its round trip when ok, a failure
// otherwise.
func (r *Recorder) Probe(member string, took time.Duration, ok bool) {
	if !ok {
		r.probeFailures.WithLabelValues(member).Inc()
		return
	}
	r.probeDuration.WithLabelValues(member).Observe(took.Seconds())
}

// State records member's state at t; a change from the state last
// recorded sets its LastChange.
func (r *Recorder) State(member, state string, t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.states[member]; ok && old != state {
		r.changed[member] = t
	}
	r.states[member] = state
}

// LastChange returns when member's state last changed, or the zero time
// when it has not changed since the daemon started.
func (r *Recorder) LastChange(member string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed[member]
}

// VRRPTransition records that this host's election entered state.
func (r *Recorder) VRRPTransition(state string) {
	r.transitions.WithLabelValues(state).Inc()
}

// Events counts the failovers and switchovers in evs (oldest first) that
// are newer than any counted before. The controller keeps only its latest
// events: call it more often than those fill (every observation does).
func (r *Recorder) Events(evs []control.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range evs {
		if !e.Time.After(r.lastSeen) {
			continue
		}
		r.lastSeen = e.Time
		o := "success"
		if e.Err != "" {
			o = "failure"
		}
		if v, ok := r.events[e.Kind]; ok {
			v.WithLabelValues(o).Inc()
		}
	}
}

// Describe implements prometheus.Collector.
func (r *Recorder) Describe(ch chan<- *prometheus.Desc) {
	for _, v := range r.events {
		v.Describe(ch)
	}
	r.probeDuration.Describe(ch)
	r.probeFailures.Describe(ch)
	r.transitions.Describe(ch)
}

// Collect implements prometheus.Collector.
func (r *Recorder) Collect(ch chan<- prometheus.Metric) {
	for _, v := range r.events {
		v.Collect(ch)
	}
	r.probeDuration.Collect(ch)
	r.probeFailures.Collect(ch)
	r.transitions.Collect(ch)
}

// Forget drops member's series and state, for a member the configuration
// no longer has.
func (r *Recorder) Forget(member string) {
	r.probeDuration.DeleteLabelValues(member)
	r.probeFailures.DeleteLabelValues(member)
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.states, member)
	delete(r.changed, member)
}
