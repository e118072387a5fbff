package web

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

//go:embed assets
var assets embed.FS

// Options tune the server.
type Options struct {
	// Refresh is how often /stats reloads itself (meta refresh); default 2 s.
	Refresh time.Duration
}

// Server is the HTTP face of one LB host. It only reads.
type Server struct {
	src     Source
	reg     *prometheus.Registry
	page    *template.Template
	refresh time.Duration
}

// New returns a server showing what src builds, with rec's event counters
// and the Go and process collectors in /metrics.
func New(src Source, rec *Recorder, o Options) (*Server, error) {
	if o.Refresh <= 0 {
		o.Refresh = 2 * time.Second
	}
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collector{src: src},
		rec,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	page, err := template.New("stats.html").Funcs(pageFuncs).ParseFS(assets, "assets/stats.html")
	if err != nil {
		return nil, fmt.Errorf("parsing the stats page: %w", err)
	}
	return &Server{src: src, reg: reg, page: page, refresh: o.Refresh}, nil
}

// Handler returns the routes: GET /healthz, /readyz, /metrics, /stats
// and its /assets/; / redirects to /stats. Other methods get 405.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /stats", s.stats)
	mux.Handle("GET /assets/", http.FileServerFS(assets))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/stats", http.StatusFound)
	})
	return mux
}

// readyz answers 200 when the datapath is attached and a writer is known,
// 503 naming what is missing otherwise.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	snap, err := s.src.Snapshot()
	var why []string
	if err != nil {
		why = append(why, "snapshot: "+err.Error())
	}
	if !snap.Datapath.Attached {
		why = append(why, "datapath not attached")
	}
	if snap.Writer == "" {
		reason := "no writer known"
		if snap.NoWriterReason != "" {
			reason += ": " + snap.NoWriterReason
		}
		why = append(why, reason)
	}
	if len(why) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		for _, y := range why {
			fmt.Fprintln(w, y)
		}
		return
	}
	fmt.Fprintf(w, "ready: writer %s, datapath %s on %s\n", snap.Writer, snap.Datapath.Mode, snap.Datapath.Interface)
}

// Listen listens on addr and serves h until ctx ends; it returns once the
// socket is bound, with its address.
func Listen(ctx context.Context, addr string, h http.Handler) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("http server", "addr", addr, "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	return ln.Addr(), nil
}
