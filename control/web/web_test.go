package web

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/xlb-dev/xlb/control"
)

var t0 = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)

// cluster returns a snapshot of a three-member cluster: pg1 writes, pg2
// replicates, pg3 is down.
func cluster() Snapshot {
	return Snapshot{
		Time: t0, Host: "172.20.0.21", Version: "test", Started: t0.Add(-time.Hour), VIP: "172.20.0.100",
		Datapath: Datapath{Attached: true, Interface: "eth0", Mode: "native", Lease: true, LeaseRemaining: 150 * time.Millisecond,
			Entries: 6, Capacity: 1 << 18, Flows: 3, Active: 2, SNATInUse: 3, SNATPorts: 10000},
		Services: []Service{
			{Name: "rw", Port: 3000, Backends: []string{"172.20.0.10:5432"}, Active: 1,
				Counters: Counters{Packets: 100, Bytes: 9000, NewFlows: 4, RSTs: 1, Drops: map[string]uint64{"no_flow": 2}}},
			{Name: "ro", Port: 3001, Backends: []string{"172.20.0.11:5432"}, Active: 1,
				Counters: Counters{Packets: 50, Bytes: 4000, NewFlows: 2}},
		},
		Global: Counters{Drops: map[string]uint64{"fragment": 5}},
		Members: []Member{
			{Name: "pg1", Addr: "172.20.0.10:5432", Role: "primary", Health: "up", State: "up", Timeline: 2, Pools: []string{"rw"},
				Active: 1, Counters: Counters{Packets: 100, Bytes: 9000, BytesOut: 6000, NewFlows: 4, RSTs: 1, Drops: map[string]uint64{"no_route": 1}}, LastCheck: t0.Add(-300 * time.Millisecond)},
			{Name: "pg2", Addr: "172.20.0.11:5432", Role: "replica", Health: "up", State: "up", Timeline: 2, Pools: []string{"ro"},
				ReplayLag: 1500 * time.Millisecond, LagBytes: 8192, Synchronous: true, Active: 1,
				Counters: Counters{Packets: 50, Bytes: 4000, NewFlows: 2}, LastCheck: t0.Add(-200 * time.Millisecond)},
			{Name: "pg3", Addr: "172.20.0.12:5432", Role: "replica", Health: "down", State: "down", Timeline: 2,
				LastCheck: t0.Add(-100 * time.Millisecond), LastChange: t0.Add(-5 * time.Second), LastError: "connecting to pg3: refused"},
		},
		Writer: "pg1", Timeline: 2, Synchronous: true,
		Events: []control.Event{
			{Time: t0.Add(-10 * time.Minute), Kind: "failover", From: "pg0", To: "pg1", Took: 800 * time.Millisecond},
			{Time: t0.Add(-5 * time.Minute), Kind: "switchover", From: "pg1", To: "pg2", Err: "target lags"},
		},
		VRRP: &VRRP{VRID: 51, State: "master", Priority: 150, Master: "172.20.0.21", Since: t0.Add(-time.Minute), HoldsVIP: true},
	}
}

func newTestServer(t *testing.T, snap Snapshot, err error) *httptest.Server {
	t.Helper()
	rec := NewRecorder([]string{"pg1", "pg2", "pg3"})
	rec.Probe("pg1", 2*time.Millisecond, true)
	rec.Probe("pg3", 0, false)
	rec.VRRPTransition("master")
	rec.Events(snap.Events)
	rec.Events(snap.Events) // counted once
	s, nerr := New(SourceFunc(func() (Snapshot, error) { return snap, err }), rec, Options{})
	if nerr != nil {
		t.Fatal(nerr)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestRoutes(t *testing.T) {
	noWriter := cluster()
	noWriter.Writer, noWriter.NoWriterReason = "", "primary down, failover off"
	detached := cluster()
	detached.Datapath.Attached = false
	tests := []struct {
		name         string
		snap         Snapshot
		err          error
		method, path string
		wantCode     int
		wantIn       string
	}{
		{"healthz", cluster(), nil, "GET", "/healthz", 200, "ok"},
		{"ready", cluster(), nil, "GET", "/readyz", 200, "writer pg1"},
		{"no writer", noWriter, nil, "GET", "/readyz", 503, "no writer known: primary down, failover off"},
		{"detached", detached, nil, "GET", "/readyz", 503, "datapath not attached"},
		{"snapshot error", cluster(), errors.New("boom"), "GET", "/readyz", 503, "snapshot: boom"},
		{"stats", cluster(), nil, "GET", "/stats", 200, `<tr id="member-pg3" class="row-bad">`},
		{"css", cluster(), nil, "GET", "/assets/style.css", 200, "font"},
		{"root", cluster(), nil, "GET", "/", 200, "<title>xlb on 172.20.0.21</title>"},
		{"post metrics", cluster(), nil, "POST", "/metrics", 405, ""},
		{"post stats", cluster(), nil, "POST", "/stats", 405, ""},
		{"delete readyz", cluster(), nil, "DELETE", "/readyz", 405, ""},
		{"unknown", cluster(), nil, "GET", "/v1/backends", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTestServer(t, tt.snap, tt.err)
			code, body := get(t, tt.method, srv.URL+tt.path)
			if code != tt.wantCode || !strings.Contains(body, tt.wantIn) {
				t.Errorf("%s %s = %d %q, want %d containing %q", tt.method, tt.path, code, body, tt.wantCode, tt.wantIn)
			}
		})
	}
}

func TestStatsPage(t *testing.T) {
	srv := newTestServer(t, cluster(), nil)
	code, body := get(t, "GET", srv.URL+"/stats")
	if code != 200 {
		t.Fatalf("GET /stats = %d", code)
	}
	for _, want := range []string{
		`<meta http-equiv="refresh" content="2">`,
		`<td class="state bad">down</td>`,
		`<td class="err">connecting to pg3: refused</td>`,
		`8.0 KiB`,             // pg2's lag in bytes
		`1.5s`,                // pg2's lag in time
		`failed: target lags`, // the switchover
		`<span class="ok">master</span>`,
		`owns it`,
		`fragment`,
		`<th>bytes in</th><th>bytes out</th>`,
		`<td class="num">2.9 KiB</td><td class="num">5.9 KiB</td>`, // pg1's bytes in and out
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/stats lacks %q", want)
		}
	}
	if strings.Contains(body, "<script") || strings.Contains(body, "http://") || strings.Contains(body, "https://") {
		t.Errorf("/stats has a script or an absolute link (no JavaScript, no CDN)")
	}
	_, body = get(t, "GET", srv.URL+"/stats?refresh=0")
	if strings.Contains(body, `http-equiv="refresh"`) {
		t.Errorf("/stats?refresh=0 still refreshes")
	}
}

func TestMetricsLint(t *testing.T) {
	rec := NewRecorder([]string{"pg1"})
	problems, err := testutil.CollectAndLint(collector{src: SourceFunc(func() (Snapshot, error) { return cluster(), nil })})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("collector: %s: %s", p.Metric, p.Text)
	}
	if problems, err = testutil.CollectAndLint(rec); err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("recorder: %s: %s", p.Metric, p.Text)
	}
}

func TestMetricValues(t *testing.T) {
	srv := newTestServer(t, cluster(), nil)
	_, body := get(t, "GET", srv.URL+"/metrics")
	for _, want := range []string{
		`xlb_member_up{member="pg1"} 1`,
		`xlb_member_up{member="pg3"} 0`,
		`xlb_member_role{member="pg2",role="replica"} 1`,
		`xlb_member_replay_lag_bytes{member="pg2"} 8192`,
		`xlb_member_replay_lag_seconds{member="pg2"} 1.5`,
		`xlb_service_drops_total{reason="no_flow",service="rw"} 2`,
		`xlb_global_drops_total{reason="fragment"} 5`,
		`xlb_backend_bytes_total{backend="172.20.0.10:5432",direction="in",member="pg1"} 3000`,
		`xlb_backend_bytes_total{backend="172.20.0.10:5432",direction="out",member="pg1"} 6000`,
		`xlb_failovers_total{outcome="success"} 1`,
		`xlb_switchovers_total{outcome="failure"} 1`,
		`xlb_last_outage_seconds 0.8`,
		`xlb_vrrp_state{state="master"} 1`,
		`xlb_vrrp_transitions_total{state="master"} 1`,
		`xlb_probe_failures_total{member="pg3"} 1`,
		`xlb_probe_duration_seconds_count{member="pg1"} 1`,
		`xlb_flow_map_capacity 262144`,
		`xlb_datapath_attached{interface="eth0",mode="native"} 1`,
		`go_goroutines `,
		`process_start_time_seconds `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Every name MetricNames lists is in the scrape, and every xlb_ family
	// in the scrape is listed.
	var got []string
	for _, l := range strings.Split(body, "\n") {
		if name, ok := strings.CutPrefix(l, "# TYPE "); ok && strings.HasPrefix(name, "xlb_") {
			got = append(got, strings.Fields(name)[0])
		}
	}
	if diff := cmp.Diff(MetricNames(), got); diff != "" {
		t.Errorf("metric families (-MetricNames +scrape):\n%s", diff)
	}
}

// TestPromtool runs promtool check metrics on a scrape.
func TestPromtool(t *testing.T) {
	promtool := requireTool(t, "promtool")
	srv := newTestServer(t, cluster(), nil)
	_, body := get(t, "GET", srv.URL+"/metrics")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// requireTool returns the path of the program name; it skips t when it is
// missing, and fails it instead under XLB_REQUIRE_PRIVILEGED=1 (CI installs
// every tool the tests use).
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("XLB_REQUIRE_PRIVILEGED") == "1" {
		t.Fatalf("%s not found (make test installs it: deploy/lab/lab-deps.sh test)", name)
	}
	t.Skipf("%s not found", name)
	return ""
}

// TestRecorderEvents counts each event once, also when the controller's
// list drops its oldest ones.
func TestRecorderEvents(t *testing.T) {
	ev := func(min int, kind, err string) control.Event {
		return control.Event{Time: t0.Add(time.Duration(min) * time.Minute), Kind: kind, Err: err}
	}
	rec := NewRecorder(nil)
	rec.Events([]control.Event{ev(1, "failover", ""), ev(2, "switchover", "")})
	rec.Events([]control.Event{ev(2, "switchover", ""), ev(3, "failover", "boom")}) // ev 1 dropped
	rec.Events([]control.Event{ev(3, "failover", "boom"), ev(4, "failover", "")})
	got := map[string]float64{}
	for _, k := range []string{"failover", "switchover"} {
		for _, o := range []string{"success", "failure"} {
			got[k+" "+o] = testutil.ToFloat64(rec.events[k].WithLabelValues(o))
		}
	}
	want := map[string]float64{"failover success": 2, "failover failure": 1, "switchover success": 1, "switchover failure": 0}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counted events (-want +got):\n%s", diff)
	}
}
