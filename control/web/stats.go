package web

import (
	"bytes"
	"fmt"
	"html/template"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/xlb-dev/xlb/control"
)

// maxEvents is how many failovers and switchovers the page lists.
const maxEvents = 10

// pageData is what stats.html renders.
type pageData struct {
	Snapshot
	Err       string
	Refresh   int // seconds
	Uptime    time.Duration
	Events    []control.Event // newest first, at most maxEvents
	Drops     []dropRow
	Total     Counters
	FlowFill  float64 // percent
	SNATFill  float64 // percent
	VIPOwner  bool
	VRRPState string
}

type dropRow struct {
	Reason string
	Global uint64
	RW, RO uint64
	Total  uint64
}

// stats renders the page. ?refresh=N (1 to 3600 s; 0 turns it off) sets
// the reload interval.
func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	snap, err := s.src.Snapshot()
	d := pageData{Snapshot: snap, Refresh: int(s.refresh / time.Second)}
	if v := r.URL.Query().Get("refresh"); v != "" {
		if n, perr := strconv.Atoi(v); perr == nil && n >= 0 && n <= 3600 {
			d.Refresh = n
		}
	}
	if err != nil {
		d.Err = err.Error()
	}
	if !snap.Started.IsZero() {
		d.Uptime = snap.Time.Sub(snap.Started).Round(time.Second)
	}
	for i := len(snap.Events) - 1; i >= 0 && len(d.Events) < maxEvents; i-- {
		d.Events = append(d.Events, snap.Events[i])
	}
	reasons := map[string]*dropRow{}
	row := func(r string) *dropRow {
		if reasons[r] == nil {
			reasons[r] = &dropRow{Reason: r}
		}
		return reasons[r]
	}
	for r, n := range snap.Global.Drops {
		row(r).Global += n
		row(r).Total += n
	}
	d.Total = Counters{Drops: map[string]uint64{}}
	for _, sv := range snap.Services {
		for r, n := range sv.Drops {
			if sv.Name == "rw" {
				row(r).RW += n
			} else {
				row(r).RO += n
			}
			row(r).Total += n
		}
		d.Total.Packets += sv.Packets
		d.Total.Bytes += sv.Bytes
		d.Total.BytesOut += sv.BytesOut
		d.Total.NewFlows += sv.NewFlows
		d.Total.RSTs += sv.RSTs
	}
	for _, r := range slices.Sorted(maps.Keys(reasons)) {
		d.Drops = append(d.Drops, *reasons[r])
		d.Total.Drops[r] = reasons[r].Total
	}
	if c := snap.Datapath.Capacity; c > 0 {
		d.FlowFill = 100 * float64(snap.Datapath.Entries) / float64(c)
	}
	if c := snap.Datapath.SNATPorts; c > 0 {
		d.SNATFill = 100 * float64(snap.Datapath.SNATInUse) / float64(c)
	}
	d.VIPOwner = snap.Datapath.Attached
	d.VRRPState = "off (single LB host)"
	if v := snap.VRRP; v != nil {
		d.VIPOwner = v.HoldsVIP
		d.VRRPState = v.State
	}
	var b bytes.Buffer
	if err := s.page.Execute(&b, d); err != nil {
		slog.Error("rendering stats page", "err", err)
		http.Error(w, "rendering the page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}

var pageFuncs = template.FuncMap{
	"ago": func(t, now time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return humanDuration(now.Sub(t)) + " ago"
	},
	"since": func(t, now time.Time) string {
		if t.IsZero() {
			return "since start"
		}
		return humanDuration(now.Sub(t))
	},
	"dur":   humanDuration,
	"bytes": HumanBytes,
	"join":  func(s []string) string { return strings.Join(s, ", ") },
	"pct":   func(f float64) string { return fmt.Sprintf("%.1f%%", f) },
	"num":   func(n uint64) string { return groupDigits(n) },
	"clock": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
	"stateClass": func(s string) string {
		switch s {
		case "up", "master":
			return "ok"
		case "down", "fenced", "conflict":
			return "bad"
		default:
			return "warn"
		}
	},
}

// humanDuration prints d rounded for people: 350ms, 4.2s, 3m12s, 2h5m.
func humanDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	default:
		return d.Round(time.Minute).String()
	}
}

// HumanBytes prints b in binary units: 512 B, 1.5 KiB, 3.2 GiB.
func HumanBytes(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// groupDigits prints n with thin spaces between thousands: 1 234 567.
func groupDigits(n uint64) string {
	s := strconv.FormatUint(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteString("\u202f")
		}
		b.WriteRune(c)
	}
	return b.String()
}
