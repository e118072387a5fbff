package loader_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/control/web"
	"github.com/xlb-dev/xlb/loader"
)

// BenchmarkScrapeMillionFlows fills a table of 2^22 entries (max_flows
// 2^22) with a million live flows, as BenchmarkDatapathMillionFlows does
// (63 backends, 32768 SNAT ports, SYNs from the harness), serves /metrics
// with control/web on loopback from a source that reads the datapath as
// the daemon's snapshot does (Stats and Usage), and runs rounds of 50
// concurrent scrapes (5 per b.N, 600 ms apart, longer than a shared
// snapshot lives, so each round reads the table again). It reports the
// scrapes' time and the process's memory: the peak VmRSS (VmHWM, reset
// before the first scrape) and RssAnon (sampled every 2 ms) above what
// they were before the first scrape, and what the Go heap allocated per
// round. VmRSS includes the maps' memory mappings that the first read
// makes (flow_map's 192 MiB, snat_map's 64 MiB: file pages of memory the
// kernel holds anyway), once per process.
//
// Run as root, once (the fill takes a few seconds):
//
//	go test -run '^$' -bench ScrapeMillionFlows -benchtime 1x ./loader/
func BenchmarkScrapeMillionFlows(b *testing.B) {
	const (
		fill     = 1 << 20
		scrapers = 50
		rounds   = 5 // per b.N
	)
	fx, backends := millionFixture(b, 1<<22)
	h, err := loader.NewBenchHarness()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	synPkt := clientPkt(1, 3000, syn, nil)
	synPkt.tcpOpts = []byte{2, 4, 5, 0xb4, 1, 1, 4, 2, 1, 3, 3, 7, 1, 1, 1, 1, 1, 1, 1, 1}
	if err := h.Set(fx.dp.Program(), synPkt.build(), true); err != nil {
		b.Fatal(err)
	}
	for done := 0; done < fill; done += 1 << 16 {
		err := fx.ns.Do(func() error {
			_, _, err := h.Run(synPkt.build(), fx.ifindex, 1<<16)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}

	// The daemon's snapshot, datapath part: the counters and the table's use.
	src := web.SourceFunc(func() (web.Snapshot, error) {
		st, serr := fx.dp.Stats()
		use, uerr := fx.dp.Usage()
		s := web.Snapshot{Time: time.Now(), Version: "bench", Datapath: web.Datapath{Attached: true, Interface: "lb0", Mode: "native",
			Entries: use.Entries, Capacity: use.Capacity, Flows: use.Flows, Active: use.Active,
			SNATInUse: use.SNATInUse, SNATPorts: use.SNATPorts}}
		for _, svc := range loader.Services {
			s.Services = append(s.Services, web.Service{Name: svc.String(), Active: use.ActiveByService[svc],
				Counters: benchCounters(st.Services[svc])})
		}
		for i, be := range backends {
			s.Members = append(s.Members, web.Member{Name: fmt.Sprintf("pg%d", i+1), Addr: be.String(), Role: "replica",
				Health: "up", State: "up", Active: use.ActiveByBackend[be], Counters: benchCounters(st.Backends[be])})
		}
		if serr != nil {
			return s, serr
		}
		return s, uerr
	})
	srv, err := web.New(src, web.NewRecorder(nil), web.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	addr, err := listenBench(ctx, srv.Handler())
	if err != nil {
		b.Fatal(err)
	}
	url := "http://" + addr + "/metrics"
	hc := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: scrapers}}

	runtime.GC()
	base := procStatus(b)
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil { // resets VmHWM
		b.Fatal(err)
	}
	var peakAnon sync.Map
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // RssAnon's peak
		defer close(sampled)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		var peak int
		for {
			select {
			case <-stop:
				peakAnon.Store("kB", peak)
				return
			case <-t.C:
				peak = max(peak, procStatus(b)["RssAnon"])
			}
		}
	}()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	var (
		sum, worst, total time.Duration
		flows             int
	)
	b.ResetTimer()
	for range b.N * rounds {
		b.StopTimer()
		time.Sleep(600 * time.Millisecond) // the last round's snapshot expires
		b.StartTimer()
		start := time.Now()
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		gate := make(chan struct{})
		for range scrapers {
			wg.Go(func() {
				<-gate
				t0 := time.Now()
				resp, err := hc.Get(url)
				var body []byte
				if err == nil {
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d: %.200s", resp.StatusCode, body)
					}
				}
				took := time.Since(t0)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				sum += took
				worst = max(worst, took)
				flows = metricValue(body, "xlb_flow_map_entries")
			})
		}
		close(gate)
		wg.Wait()
		total += time.Since(start)
		if len(errs) > 0 {
			b.Fatalf("%d of %d scrapes failed, first: %v", len(errs), scrapers, errs[0])
		}
	}
	b.StopTimer()
	runtime.ReadMemStats(&ms1)
	close(stop)
	<-sampled
	after := procStatus(b)
	anon, _ := peakAnon.Load("kB")
	if flows < fill*99/100 {
		b.Fatalf("/metrics shows %d flow_map entries after %d SYNs, want at least 99%%", flows, fill)
	}
	t0 := time.Now()
	if _, err := fx.dp.Usage(); err != nil {
		b.Fatal(err)
	}
	usage := time.Since(t0)

	mb := func(kB int) float64 { return float64(kB) / 1024 }
	b.ReportMetric(float64(sum.Microseconds())/1000/float64(b.N*rounds*scrapers), "ms/scrape")
	b.ReportMetric(float64(worst.Microseconds())/1000, "max-ms/scrape")
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N*rounds), "ms/round")
	b.ReportMetric(mb(after["VmHWM"]-base["VmRSS"]), "rss-growth-MB")
	b.ReportMetric(mb(anon.(int)-base["RssAnon"]), "anon-growth-MB")
	b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/(1<<20)/float64(b.N*rounds), "alloc-MB/round")
	b.ReportMetric(float64(usage.Microseconds())/1000, "usage-ms")
	b.ReportMetric(float64(flows), "flows")
	b.Logf("%d rounds of %d scrapes, %d flows: VmRSS %d MiB before, peak %d MiB (RssAnon %d -> peak %d MiB, RssFile %d, RssShmem %d MiB after)",
		b.N*rounds, scrapers, flows, base["VmRSS"]>>10, after["VmHWM"]>>10, base["RssAnon"]>>10, anon.(int)>>10,
		after["RssFile"]>>10, after["RssShmem"]>>10)
}

func benchCounters(c loader.Counters) web.Counters {
	return web.Counters{Packets: c.Packets, Bytes: c.Bytes, BytesOut: c.BytesOut, NewFlows: c.NewFlows, RSTs: c.RSTs, Drops: c.Drops}
}

// procStatus returns the kB fields of /proc/self/status (VmRSS, VmHWM,
// RssAnon, RssFile, RssShmem...).
func procStatus(tb testing.TB) map[string]int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if f := strings.Fields(v); ok && len(f) == 2 && f[1] == "kB" {
			out[k], _ = strconv.Atoi(f[0])
		}
	}
	return out
}

// metricValue returns the value of an unlabelled metric in a scrape.
func metricValue(body []byte, name string) int {
	for l := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return int(f)
		}
	}
	return -1
}
