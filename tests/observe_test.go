package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// requireTool returns the path of the program name; it skips t when it is
// missing, and fails it under XLB_REQUIRE_PRIVILEGED=1 (CI installs it).
func requireTool(t *testing.T, name string) string {
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

// nsHTTP returns an HTTP client that connects from inside ns.
func nsHTTP(ns *lab.Namespace) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true}}
}

func fetch(ctx context.Context, c *http.Client, u string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return string(b), err
}

// poll calls f every interval until it returns nil or d passed; it returns
// how long that took and f's last error.
func poll(d, interval time.Duration, f func() error) (time.Duration, error) {
	start := time.Now()
	for {
		err := f()
		if err == nil || time.Since(start) > d {
			return time.Since(start), err
		}
		time.Sleep(interval)
	}
}

// TestObservability brings up a lab with two LB hosts and checks their HTTP
// face with real tools: both /metrics scrapes pass promtool; a Prometheus
// in the client namespace scrapes both, and a headless Chromium shows lb1's
// /stats; when replica pg3 stops, its xlb_member_up series goes to 0 in
// Prometheus within two scrapes of the daemons seeing it down, and its row
// on the page turns down on a refresh the page does by itself. The page's
// screenshot goes to tests/out/stats-lb1.png.
func TestObservability(t *testing.T) {
	promtool := requireTool(t, "promtool")
	prometheus := requireTool(t, "prometheus")
	chromium := requireTool(t, "chromium")
	v := upVRRPLab(t, false)
	client := v.client
	hc := nsHTTP(client)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	lbs := map[string]string{}
	for _, lb := range []string{"lb1", "lb2"} {
		lbs[lb] = net.JoinHostPort(hostAddr(lb), fmt.Sprint(lab.HTTPPort))
	}

	t.Run("promtool", func(t *testing.T) {
		for lb, addr := range lbs {
			body, err := fetch(ctx, hc, "http://"+addr+"/metrics")
			if err != nil {
				t.Fatalf("%s: %v", lb, err)
			}
			cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
			cmd.Stdin = strings.NewReader(body)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("%s: promtool check metrics: %v\n%s", lb, err, out)
			}
			if !strings.Contains(body, `xlb_member_up{member="pg3"} 1`) {
				t.Errorf("%s: pg3 not up in /metrics", lb)
			}
		}
		for lb, addr := range lbs {
			if body, err := fetch(ctx, hc, "http://"+addr+"/readyz"); lb == "lb1" && err != nil {
				t.Errorf("%s /readyz: %v %s", lb, err, body)
			}
		}
	})

	const scrape = time.Second
	prom := startPrometheus(t, ctx, client, prometheus, scrape, slices.Sorted(mapValues(lbs)))
	if _, err := poll(30*time.Second, 200*time.Millisecond, func() error {
		for _, addr := range lbs {
			if err := prom.want(ctx, fmt.Sprintf(`up{instance=%q}`, addr), 1); err != nil {
				return err
			}
			if err := prom.want(ctx, fmt.Sprintf(`xlb_member_up{instance=%q,member="pg3"}`, addr), 1); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("prometheus never scraped both LB hosts with pg3 up: %v", err)
	}

	browser := startBrowser(t, ctx, chromium, client, slices.Collect(mapValues(lbs)))
	statsURL := "http://" + lbs["lb1"] + "/stats?refresh=1"
	if err := chromedp.Do(browser, chromedp.Navigate(statsURL), chromedp.WaitVisible(chromedp.CSS("#member-pg3"))); err != nil {
		t.Fatalf("loading %s in chromium: %v", statsURL, err)
	}
	rows, err := chromedp.Run(browser, chromedp.Evaluate[[]string](
		`[...document.querySelectorAll("#members tbody tr")].map(r => r.id + "=" + r.querySelector("td.state").textContent)`))
	if err != nil {
		t.Fatalf("reading the members table: %v", err)
	}
	want := []string{"member-pg1=up", "member-pg2=up", "member-pg3=up"}
	if !slices.Equal(rows, want) {
		t.Fatalf("stats page rows %q, want %q", rows, want)
	}

	t.Log("stopping pg3")
	stopped := time.Now()
	if err := v.lab.Postgres["pg3"].Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	// The daemons see it down first (probe fall), then Prometheus.
	seen, err := poll(20*time.Second, 50*time.Millisecond, func() error {
		for lb, addr := range lbs {
			body, err := fetch(ctx, hc, "http://"+addr+"/metrics")
			if err != nil {
				return err
			}
			if !strings.Contains(body, `xlb_member_up{member="pg3"} 0`) {
				return fmt.Errorf("%s still has pg3 up", lb)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("daemons never reported pg3 down: %v", err)
	}
	t.Logf("both daemons report pg3 down %v after the stop", seen.Round(time.Millisecond))
	inProm, err := poll(10*time.Second, 50*time.Millisecond, func() error {
		for _, addr := range lbs {
			if err := prom.want(ctx, fmt.Sprintf(`xlb_member_up{instance=%q,member="pg3"}`, addr), 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("prometheus never showed pg3 down: %v", err)
	}
	t.Logf("prometheus shows pg3 down on both LB hosts %v later (scrape interval %v)", inProm.Round(time.Millisecond), scrape)
	// In scrapes, not wall time (a loaded machine delays queries): every
	// sample Prometheus took after the daemon marked pg3 down is 0, and
	// the first of them came within two scrape intervals.
	for lb, addr := range lbs {
		body, err := fetch(ctx, hc, "http://"+addr+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		var changed float64
		if _, err := fmt.Sscanf(metricLine(body, `xlb_member_last_change_timestamp_seconds{member="pg3"}`), "%g", &changed); err != nil || changed == 0 {
			t.Fatalf("%s: pg3's last change time: %v (%g)", lb, err, changed)
		}
		samples, err := prom.samples(ctx, fmt.Sprintf(`xlb_member_up{instance=%q,member="pg3"}[2m]`, addr))
		if err != nil {
			t.Fatal(err)
		}
		// The first 0: the daemon may have said so at a scrape just
		// before its last change time (a later pool or fencing change
		// moves that time on), so count from whichever came first.
		first := slices.IndexFunc(samples, func(s sample) bool { return s.v == 0 })
		if first < 0 {
			t.Fatalf("%s: no sample shows pg3 down (it went down at %f): %v", lb, changed, samples)
		}
		after := samples[first:]
		for _, s := range after {
			if s.v != 0 {
				t.Errorf("%s: sample at %f, after pg3 went down at %f, is %g", lb, s.t, after[0].t, s.v)
			}
		}
		if d := after[0].t - changed; d > 2*scrape.Seconds() {
			t.Errorf("%s: first scrape after pg3 went down came %.2fs later, want within two scrapes", lb, d)
		}
		t.Logf("%s: pg3 down at %.3f; the next scrape, %.3fs later, has 0", lb, changed, after[0].t-changed)
	}

	// The page reloads itself (meta refresh, 1 s): no navigation here.
	took, err := poll(10*time.Second, 100*time.Millisecond, func() error {
		tctx, cancel := context.WithTimeout(browser, 2*time.Second)
		defer cancel()
		state, err := chromedp.Run(tctx, chromedp.Text(chromedp.CSS("#member-pg3 td.state")))
		if err != nil {
			return err
		}
		if state != "down" {
			return fmt.Errorf("pg3 is %q", state)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("stats page never showed pg3 down: %v", err)
	}
	t.Logf("stats page shows pg3 down %v after the stop (waited %v for its own refresh, every 1 s)", time.Since(stopped).Round(time.Millisecond), took.Round(time.Millisecond))
	png, err := chromedp.Run(browser, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("out", 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join("out", "stats-lb1.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: tests/%s (%d bytes)", shot, len(png))
}

func mapValues(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

// promServer is a Prometheus running in the client namespace.
type promServer struct {
	hc   *http.Client
	addr string
}

// startPrometheus runs Debian's prometheus in ns, listening on ns's
// loopback only, scraping targets every interval; cleanup stops it.
func startPrometheus(t *testing.T, ctx context.Context, ns *lab.Namespace, bin string, interval time.Duration, targets []string) *promServer {
	t.Helper()
	dir := t.TempDir()
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = fmt.Sprintf("%q", tg)
	}
	conf := fmt.Sprintf("global:\n  scrape_interval: %v\n  scrape_timeout: %v\nscrape_configs:\n  - job_name: xlb\n    static_configs:\n      - targets: [%s]\n",
		interval, interval*8/10, strings.Join(quoted, ", "))
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	const listen = "127.0.0.1:9090"
	cmd := ns.Command(context.Background(), bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+listen, "--log.level=warn")
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting prometheus: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("prometheus log:\n%s", b)
		}
	})
	p := &promServer{hc: nsHTTP(ns), addr: listen}
	if _, err := poll(30*time.Second, 100*time.Millisecond, func() error {
		_, err := fetch(ctx, p.hc, "http://"+listen+"/-/ready")
		return err
	}); err != nil {
		t.Fatalf("prometheus not ready: %v", err)
	}
	return p
}

// want queries expr now and returns nil when it has exactly one sample
// and that sample is v.
func (p *promServer) want(ctx context.Context, expr string, v float64) error {
	body, err := fetch(ctx, p.hc, "http://"+p.addr+"/api/v1/query?query="+url.QueryEscape(expr))
	if err != nil {
		return err
	}
	var r struct {
		Status string
		Data   struct {
			Result []struct {
				Value [2]any
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return fmt.Errorf("decoding %s: %w", body, err)
	}
	if r.Status != "success" || len(r.Data.Result) != 1 {
		return fmt.Errorf("%s: %s", expr, body)
	}
	if got := fmt.Sprint(r.Data.Result[0].Value[1]); got != fmt.Sprint(v) {
		return fmt.Errorf("%s = %s, want %v", expr, got, v)
	}
	return nil
}

// sample is one value Prometheus stored, at Unix time t.
type sample struct{ t, v float64 }

// samples runs the range-vector query expr (one series) and returns its
// samples, oldest first.
func (p *promServer) samples(ctx context.Context, expr string) ([]sample, error) {
	body, err := fetch(ctx, p.hc, "http://"+p.addr+"/api/v1/query?query="+url.QueryEscape(expr))
	if err != nil {
		return nil, err
	}
	var r struct {
		Data struct {
			Result []struct {
				Values [][2]any
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", body, err)
	}
	if len(r.Data.Result) != 1 {
		return nil, fmt.Errorf("%s: want one series: %s", expr, body)
	}
	var out []sample
	for _, v := range r.Data.Result[0].Values {
		var s sample
		ts, ok := v[0].(float64)
		if !ok {
			return nil, fmt.Errorf("%s: timestamp %v", expr, v[0])
		}
		s.t = ts
		if _, err := fmt.Sscanf(fmt.Sprint(v[1]), "%g", &s.v); err != nil {
			return nil, fmt.Errorf("%s: value %v: %w", expr, v[1], err)
		}
		out = append(out, s)
	}
	return out, nil
}

// metricLine returns the value of the series named exactly series in a
// Prometheus text scrape, or "".
func metricLine(body, series string) string {
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			return v
		}
	}
	return ""
}

// startBrowser starts headless chromium in this namespace with every
// request going through a proxy on loopback that forwards only to allowed
// (the lab's LB hosts, dialled from ns) and refuses anything else.
func startBrowser(t *testing.T, ctx context.Context, bin string, ns *lab.Namespace, allowed []string) context.Context {
	t.Helper()
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.Out.URL = r.In.URL },
		Transport: &http.Transport{DialContext: ns.DialContext},
	}
	proxy := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect || !slices.Contains(allowed, r.URL.Host) {
			http.Error(w, "the test proxy only reaches the lab's LB hosts", http.StatusForbidden)
			return
		}
		rp.ServeHTTP(w, r)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go proxy.Serve(ln)
	t.Cleanup(func() { proxy.Close() })

	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]),
		chromedp.ExecPath(bin), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1600, 1000),
		chromedp.ProxyServer("http://"+ln.Addr().String()),
		chromedp.Flag("proxy-bypass-list", "<-loopback>"),
		// No name resolves: nothing leaves for the internet even if
		// something in the browser tried.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"),
	)
	actx, cancelA := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelB()
		cancelA()
	})
	return bctx
}
