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
	toolkit "github.com/prometheus/exporter-toolkit/web"
	"golang.org/x/net/netutil"
)

//go:embed assets
var assets embed.FS

// Options tune the server.
type Options struct {
	// Refresh is how often /stats reloads itself (meta refresh); default 2 s.
	Refresh time.Duration
	// SnapshotMaxAge is how long one snapshot serves every request (see
	// Share); default DefaultSnapshotMaxAge, negative: only concurrent
	// requests share one.
	SnapshotMaxAge time.Duration
}

// Server is the HTTP face of one LB host. It only reads.
type Server struct {
	src     Source
	reg     *prometheus.Registry
	page    *template.Template
	refresh time.Duration
}

// New returns a server showing what src builds, with rec's event counters
// and the Go and process collectors in /metrics. Its requests share src's
// snapshots (Share with o.SnapshotMaxAge): src builds one at a time,
// whatever the number of readers.
func New(src Source, rec *Recorder, o Options) (*Server, error) {
	if o.Refresh <= 0 {
		o.Refresh = 2 * time.Second
	}
	src = Share(src, o.SnapshotMaxAge)
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

// ListenOptions tune Listen; zero fields take the defaults.
type ListenOptions struct {
	// WebConfigFile is a web configuration file of Prometheus'
	// exporter-toolkit (TLS, client certificates, basic auth users,
	// response headers), as every exporter's --web.config.file; re-read
	// as it changes. Empty: plain HTTP for anyone who reaches addr.
	WebConfigFile string
	// MaxConns bounds the open connections (DefaultMaxConns; more wait
	// in the listen backlog), MaxInFlight the requests handled at a time
	// (DefaultMaxInFlight), QueueWait how long a request over that waits
	// for its turn before a 503 (DefaultQueueWait).
	MaxConns, MaxInFlight int
	QueueWait             time.Duration
}

// Listen listens on addr and serves h until ctx ends, with the web
// configuration, the limits and the timeouts of o; it returns once the
// socket is bound, with its address. It returns an error naming the file
// when o.WebConfigFile cannot be read or is not valid.
func Listen(ctx context.Context, addr string, h http.Handler, o ListenOptions) (net.Addr, error) {
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.QueueWait <= 0 {
		o.QueueWait = DefaultQueueWait
	}
	if err := toolkit.Validate(o.WebConfigFile); err != nil {
		return nil, fmt.Errorf("reading web config %s: %w", o.WebConfigFile, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           LimitInFlight(h, o.MaxInFlight, o.QueueWait),
		ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout, WriteTimeout: writeTimeout,
		IdleTimeout: idleTimeout, MaxHeaderBytes: maxHeaderBytes,
	}
	systemd := false
	flags := &toolkit.FlagConfig{WebListenAddresses: &[]string{addr}, WebSystemdSocket: &systemd, WebConfigFile: &o.WebConfigFile}
	log := slog.Default().With("server", "http")
	go func() {
		if err := toolkit.Serve(netutil.LimitListener(ln, o.MaxConns), srv, flags, log); err != nil && !errors.Is(err, http.ErrServerClosed) {
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
