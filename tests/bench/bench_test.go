package main

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/cilium/ebpf"
)

// Summaries as pgbench 15.20 printed them in the lab.
const (
	pgbenchSelect = `pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 15 s
number of transactions actually processed: 85361
number of failed transactions: 0 (0.000%)
latency average = 0.275 ms
initial connection time = 72.068 ms
tps = 29051.923238 (without initial connection time)
`
	pgbenchConnect = `pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 15 s
number of transactions actually processed: 246
number of failed transactions: 3 (1.205%)
latency average = 98.152 ms
average connection time = 24.176 ms
tps = 81.502318 (including reconnection times)
`
)

func TestParsePgbench(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    runResult
		wantErr error
	}{
		{"select only", pgbenchSelect, runResult{TPS: 29051.923238, TPSBasis: "without initial connection time",
			LatencyAvgMS: 0.275, Transactions: 85361, ConnTimeMS: 72.068}, nil},
		{"connect per transaction", pgbenchConnect, runResult{TPS: 81.502318, TPSBasis: "including reconnection times",
			LatencyAvgMS: 98.152, Transactions: 246, Failed: 3, ConnTimeMS: 24.176}, nil},
		{"no tps", strings.ReplaceAll(pgbenchSelect, "tps =", "xps ="), runResult{}, errNoSummary},
		{"no latency", strings.ReplaceAll(pgbenchSelect, "latency average", "latency stddev"), runResult{}, errNoSummary},
		{"empty", "", runResult{}, errNoSummary},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePgbench(tt.out)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("parsePgbench: error %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("parsePgbench (-want +got):\n%s", d)
			}
		})
	}
}

func TestPgbenchArgs(t *testing.T) {
	tests := []struct {
		name string
		w    workload
		want string
	}{
		{"select only", workload{Clients: 8, Threads: 2, Duration: 15 * time.Second},
			"-h 172.20.0.100 -p 3000 -U ramos -n -S -c 8 -j 2 -T 15 ramos-test-db"},
		{"connect per transaction", workload{Clients: 8, Threads: 2, Duration: 10 * time.Second, Connect: true},
			"-h 172.20.0.100 -p 3000 -U ramos -n -S -c 8 -j 2 -T 10 -C ramos-test-db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := strings.Join(pgbenchArgs(tt.w, "172.20.0.100", 3000), " ")
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("pgbenchArgs (-want +got):\n%s", d)
			}
			if strings.Contains(got, "ramostest123") {
				t.Errorf("pgbenchArgs %q: the password is in argv", got)
			}
		})
	}
}

func TestParseProcCPU(t *testing.T) {
	tests := []struct {
		name    string
		stat    string
		want    time.Duration
		wantErr bool
	}{
		// utime 150, stime 40, cutime 7, cstime 3 ticks: 2 s.
		{"haproxy", "4242 (haproxy) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 40 7 3 20 0 2 0 12345 1000 200 18446744073709551615", 2 * time.Second, false},
		{"name with spaces and parens", "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 9", 30 * time.Millisecond, false},
		{"truncated", "7 (x) R 1 7 7 0", 0, true},
		{"no name", "7 x R", 0, true},
		{"not a number", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 a 2 0 0 20", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcCPU(tt.stat)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseProcCPU: error %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseProcCPU = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestProcCPUSelf(t *testing.T) {
	got, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if got < 0 {
		t.Errorf("procCPU(self) = %v, want >= 0", got)
	}
}

func TestParseXDPProgID(t *testing.T) {
	tests := []struct {
		name    string
		json    string
		want    ebpf.ProgramID
		wantErr bool
	}{
		{"native, listed twice", `[{"ifname":"eth0","xdp":{"mode":1,"prog":{"id":527,"name":"xlb_xdp"},"attached":[{"mode":1,"prog":{"id":527}}]}}]`, 527, false},
		{"prog only", `[{"ifname":"eth0","xdp":{"mode":2,"prog":{"id":9}}}]`, 9, false},
		{"attached only", `[{"ifname":"eth0","xdp":{"attached":[{"mode":2,"prog":{"id":11}}]}}]`, 11, false},
		{"two programs", `[{"ifname":"eth0","xdp":{"attached":[{"mode":1,"prog":{"id":11}},{"mode":2,"prog":{"id":12}}]}}]`, 0, true},
		{"none", `[{"ifname":"eth0"}]`, 0, true},
		{"no link", `[]`, 0, true},
		{"not json", `Device "eth0" does not exist.`, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseXDPProgID(tt.json)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseXDPProgID: error %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseXDPProgID = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestParseShowStat(t *testing.T) {
	const stat = "# pxname,svname,qcur,status,check_status,weight\n" +
		"pg_rw,FRONTEND,,OPEN,,\n" +
		"pg_rw,pg1,0,UP,L7OK,1\n" +
		"pg_rw,BACKEND,0,UP,,1\n" +
		"pg_ro,pg2,0,DOWN,L7RSP,1\n" +
		"pg_ro,pg3,0,UP,L7OK,1\n"
	got, err := parseShowStat(strings.NewReader(stat))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"pg1": "UP L7OK", "pg2": "DOWN L7RSP", "pg3": "UP L7OK"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("parseShowStat (-want +got):\n%s", d)
	}
	if allOK(got, []string{"pg1", "pg2", "pg3"}) {
		t.Error("allOK with pg2 DOWN = true, want false")
	}
	if !allOK(got, []string{"pg1", "pg3"}) {
		t.Error("allOK(pg1, pg3) = false, want true")
	}
	if _, err := parseShowStat(strings.NewReader("# pxname,svname\n")); err == nil {
		t.Error("parseShowStat without status columns: no error")
	}
}

func testHAProxyConfig() haproxyConfig {
	return haproxyConfig{
		Listen:  netip.MustParseAddr("172.20.0.21"),
		PortRW:  3000,
		PortRO:  3001,
		Primary: haproxyServer{"pg1", netip.MustParseAddrPort("172.20.0.10:5432")},
		Replicas: []haproxyServer{
			{"pg2", netip.MustParseAddrPort("172.20.0.11:5432")},
			{"pg3", netip.MustParseAddrPort("172.20.0.12:5432")},
		},
		User:        "ramos",
		StatsSocket: "/tmp/x/haproxy.sock",
	}
}

func TestHAProxyConfig(t *testing.T) {
	text, err := testHAProxyConfig().render()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"bind 172.20.0.21:3000\n    option pgsql-check user ramos\n    default-server inter 3s fall 3 rise 2\n    server pg1 172.20.0.10:5432 check\n",
		"bind 172.20.0.21:3001\n",
		"balance leastconn\n",
		"    server pg2 172.20.0.11:5432 check\n    server pg3 172.20.0.12:5432 check\n",
		"stats socket /tmp/x/haproxy.sock mode 600 level admin\n",
		"mode tcp\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("haproxy.cfg lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "daemon") || strings.Contains(text, "ramostest123") {
		t.Errorf("haproxy.cfg runs as a daemon or holds the password:\n%s", text)
	}
}

// TestHAProxyConfigValid has haproxy itself check the rendered file.
func TestHAProxyConfigValid(t *testing.T) {
	if _, err := exec.LookPath("haproxy"); err != nil {
		if os.Getenv("XLB_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("haproxy not installed; make bench installs it: deploy/lab/lab-deps.sh bench")
		}
		t.Skip("haproxy not installed (Debian package haproxy; make bench installs it)")
	}
	text, err := testHAProxyConfig().render()
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(name, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("haproxy", "-c", "-f", name).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, text)
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		xs   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{5}, 5},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		if got := median(tt.xs); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.xs, got, tt.want)
		}
	}
}

// rep returns a successful run; its round is its place in a row's Reps.
func rep(tps, lat float64, txns int64, cpu CPU) Rep {
	return Rep{runResult: runResult{TPS: tps, LatencyAvgMS: lat, Transactions: txns}, CPU: cpu}
}

func numberRounds(rows []*Row) {
	for _, r := range rows {
		for i := range r.Reps {
			r.Reps[i].Round = i + 1
		}
	}
}

func TestReportFinish(t *testing.T) {
	r := &Report{Rows: []*Row{
		{Target: "direct", Kind: "direct", Mode: "-S", Reps: []Rep{rep(100, 1, 1000, CPU{}), rep(120, 0.8, 1200, CPU{}), rep(110, 0.9, 1100, CPU{})}},
		{Target: "xlb", Kind: "xlb", Mode: "-S", Reps: []Rep{
			rep(99, 1, 990, CPU{XDPRunTimeS: 0.01, DaemonS: 0.01, HAProxyS: 0.5}),
			rep(105, 1, 1050, CPU{XDPRunTimeS: 0.01, DaemonS: 0.02}),
			{runResult: runResult{TPS: 1}, Error: "pgbench failed", CPU: CPU{XDPRunTimeS: 0.01}},
		}},
		{Target: "haproxy", Kind: "haproxy", Mode: "-S", Reps: []Rep{rep(66, 1.5, 660, CPU{HAProxyS: 0.4, XDPRunTimeS: 1}), rep(55, 1.6, 550, CPU{HAProxyS: 0.4})}},
		{Target: "hop", Kind: "hop", Mode: "-S", Reps: []Rep{rep(100, 1, 1000, CPU{}), rep(100, 1, 1000, CPU{})}},
	}}
	numberRounds(r.Rows)
	r.finish()
	x := r.Rows[1]
	if x.OK != 2 || x.TPSMedian != 102 || x.Transactions != 2040 {
		t.Errorf("xlb row: ok %d, median %v, transactions %d; want 2, 102, 2040", x.OK, x.TPSMedian, x.Transactions)
	}
	// A failed run's CPU still counts: the load balancer spent it.
	if d := cmp.Diff(0.06, x.LBCPUS, cmpopts.EquateApprox(0, 1e-9)); d != "" {
		t.Errorf("xlb LB CPU (-want +got):\n%s", d)
	}
	// Paired: xlb 99/100 and 105/120 (round 3 failed), haproxy 66/100 and 55/120.
	want := []Summary{{Mode: "-S", XLBVsDirect: 102.0 / 110, HAProxyVsDirect: 60.5 / 110,
		XLBVsDirectPaired: (0.99 + 0.875) / 2, HAProxyVsDirectPaired: (0.66 + 55.0/120) / 2,
		XLBVsHopPaired: (0.99 + 1.05) / 2, CPURatio: 0.06 / 0.8, CPURatioPerTxn: (0.06 / 2040) / (0.8 / 1210)}}
	if d := cmp.Diff(want, r.Summary, cmpopts.EquateApprox(0, 1e-9)); d != "" {
		t.Errorf("summary (-want +got):\n%s", d)
	}
	if !r.failed() {
		t.Error("failed() = false with a failed run")
	}
	var b bytes.Buffer
	r.writeTable(&b)
	for _, want := range []string{"0.93x", "err", "NOT met", "(met)", "plain routed hop through lb1 in the same round (median): 1.02x"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
