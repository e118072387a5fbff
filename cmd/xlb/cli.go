package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/xlb-dev/xlb/control"
	"github.com/xlb-dev/xlb/control/web"
)

var socketFlag = &cli.StringFlag{Name: "socket", Value: defaultSocket, Usage: "control socket of the daemon", EnvVars: []string{"XLB_SOCKET"}}
var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print JSON for programs"}

var backendsCommand = &cli.Command{
	Name:  "backends",
	Usage: "list the PostgreSQL members, their roles and pools",
	Flags: []cli.Flag{socketFlag, jsonFlag},
	Action: func(c *cli.Context) error {
		var v []BackendView
		if err := mustClient(c).do("GET", "/v1/backends", &v); err != nil {
			return err
		}
		if c.Bool("json") {
			return writeJSON(c.App.Writer, v)
		}
		if len(v) > 0 && v[0].LBHost != "" {
			fmt.Fprintf(c.App.Writer, "asked xlb on %s (%s)\n", v[0].LBHost, socketOf(c))
		}
		printBackends(c.App.Writer, v, time.Now())
		return nil
	},
	Subcommands: []*cli.Command{
		{Name: "drain", Usage: "stop new flows to a member (existing flows stay)", ArgsUsage: "MEMBER", Flags: []cli.Flag{socketFlag},
			Action: func(c *cli.Context) error { return memberAction(c, "drain") }},
		{Name: "enable", Usage: "undo drain", ArgsUsage: "MEMBER", Flags: []cli.Flag{socketFlag},
			Action: func(c *cli.Context) error { return memberAction(c, "enable") }},
	},
}

func memberAction(c *cli.Context, action string) error {
	if c.NArg() != 1 {
		return fmt.Errorf("usage: xlb backends %s MEMBER", action)
	}
	name := c.Args().First()
	if err := mustClient(c).do("POST", "/v1/backends/"+name+"/"+action, nil); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%s: %sd\n", name, strings.TrimSuffix(action, "e"))
	return nil
}

var switchoverCommand = &cli.Command{
	Name:  "switchover",
	Usage: "hand the primary role to a replica without losing a commit",
	Flags: []cli.Flag{socketFlag, jsonFlag, &cli.StringFlag{Name: "to", Required: true, Usage: "the replica to promote"}},
	Action: func(c *cli.Context) error {
		var ev control.Event
		cl := mustClient(c)
		// At least as long as the daemon may take: a switchover whose
		// promotion was sent completes whatever happens to this request.
		cl.http.Timeout = switchoverWait + actionTimeout + 5*time.Second
		if err := cl.do("POST", "/v1/switchover?to="+url.QueryEscape(c.String("to")), &ev); err != nil {
			if errors.Is(err, ErrNoAnswer) {
				return fmt.Errorf("%w; `xlb status` shows how the switchover ended", err)
			}
			return err
		}
		if c.Bool("json") {
			return writeJSON(c.App.Writer, ev)
		}
		fmt.Fprintf(c.App.Writer, "switched over from %s to %s in %v\n", ev.From, ev.To, ev.Took.Round(time.Millisecond))
		fmt.Fprintf(c.App.Writer, "%s is fenced (read-only, out of every pool) until it rejoins: run `xlb pg rejoin` on its host\n", ev.From)
		return nil
	},
}

var statusCommand = &cli.Command{
	Name:  "status",
	Usage: "show the datapath: mode, interface, VIP, counters, drops by reason",
	Flags: []cli.Flag{socketFlag, jsonFlag},
	Action: func(c *cli.Context) error {
		var v StatusView
		if err := mustClient(c).do("GET", "/v1/status", &v); err != nil {
			return err
		}
		if c.Bool("json") {
			return writeJSON(c.App.Writer, v)
		}
		printStatus(c.App.Writer, v)
		return nil
	},
}

func writeJSON(w io.Writer, v any) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(v)
}

func printBackends(w io.Writer, rows []BackendView, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tHOST\tROLE\tSTATE\tTL\tREPLAY LSN\tLAG\tLAG BYTES\tSYNC\tPOOLS\tFLOWS\tPACKETS\tBYTES\tLAST CHECK")
	for _, r := range rows {
		lsn := r.ReplayLSN
		if r.Role == "primary" {
			lsn = r.WALLSN
		}
		lag, lagBytes, sync := "-", "-", "-"
		if r.Role == "replica" {
			lag = (time.Duration(r.LagMS) * time.Millisecond).String()
			lagBytes = web.HumanBytes(r.LagBytes)
		}
		if r.Synchronous {
			sync = "sync"
		}
		pools := strings.Join(r.Pools, ",")
		if pools == "" {
			pools = "-"
		}
		check := "never"
		if !r.LastCheck.IsZero() {
			check = now.Sub(r.LastCheck).Round(time.Millisecond).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", r.Member, r.Host, r.Role, r.State,
			r.Timeline, dash(lsn), lag, lagBytes, sync, pools, r.Flows, r.Packets, web.HumanBytes(r.Bytes), check)
	}
	tw.Flush()
	for _, r := range rows {
		if r.LastError != "" {
			fmt.Fprintf(w, "%s: %s\n", r.Member, r.LastError)
		}
	}
}

func printStatus(w io.Writer, v StatusView) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "xlb\t%s, up %s\n", v.Version, v.Uptime)
	fmt.Fprintf(tw, "datapath\txdp %s on %s, pinned at %s\n", v.Mode, v.Interface, v.PinPath)
	fmt.Fprintf(tw, "vip\t%s (rw :%d, ro :%d), from %s ports %s\n", v.VIP, v.PortRW, v.PortRO, v.NodeAddress, v.SNATPorts)
	fmt.Fprintf(tw, "writer\t%s\n", orNone(v.Writer))
	fmt.Fprintf(tw, "readers\t%s\n", orNone(v.Readers))
	fmt.Fprintf(tw, "flows\t%d active\n", v.Flows)
	if r := v.VRRP; r != nil {
		line := fmt.Sprintf("%s (vrid %d, priority %d, advert %v)", r.State, r.VRID, r.Priority, r.AdvertInterval)
		if r.Master.IsValid() {
			line += fmt.Sprintf(", master %v (priority %d)", r.Master, r.MasterPriority)
		}
		if !r.LastAdvert.IsZero() {
			line += fmt.Sprintf(", last advert %v ago from %v", time.Since(r.LastAdvert).Round(time.Millisecond), r.LastAdvertFrom)
		}
		fmt.Fprintf(tw, "vrrp\t%s\n", line)
	} else {
		fmt.Fprintf(tw, "vrrp\toff (single LB: this node owns the vip)\n")
	}
	fmt.Fprintf(tw, "timeline\t%d\n", v.Control.Timeline)
	if v.LeaseError != "" {
		fmt.Fprintf(tw, "vip lease\tfailing: %s\n", v.LeaseError)
	}
	if v.Control.DatapathError != "" {
		fmt.Fprintf(tw, "datapath\tfailing: %s\n", v.Control.DatapathError)
	}
	for _, w := range v.Control.Warnings {
		fmt.Fprintf(tw, "warning\t%s\n", w)
	}
	if v.Control.NoWriterReason != "" {
		fmt.Fprintf(tw, "no writer\t%s\n", v.Control.NoWriterReason)
	}
	if v.Control.Synchronous {
		fmt.Fprintf(tw, "synchronous\tstandbys %s; promotable %s\n", orNone(v.Control.SyncStandbys), orNone(v.Control.PromotableNodes))
	}
	for _, e := range v.Control.Events {
		line := fmt.Sprintf("%s %s -> %s in %v", e.Kind, e.From, e.To, e.Took.Round(time.Millisecond))
		if e.Err != "" {
			line += " FAILED: " + e.Err
		}
		if e.LostLSN > 0 {
			line += fmt.Sprintf(" (up to %d bytes of WAL lost)", e.LostLSN)
		}
		fmt.Fprintf(tw, "event\t%s %s\n", e.Time.Format(time.TimeOnly), line)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tPACKETS\tBYTES\tNEW FLOWS\tRSTS\tDROPS")
	for _, s := range []string{"rw", "ro"} {
		c := v.Services[s]
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\n", s, c.Packets, web.HumanBytes(c.Bytes), c.NewFlows, c.RSTs, c.DropTotal())
	}
	fmt.Fprintf(tw, "total\t%d\t%s\t%d\t%d\t%d\n", v.Total.Packets, web.HumanBytes(v.Total.Bytes), v.Total.NewFlows, v.Total.RSTs, v.Total.DropTotal())
	tw.Flush()
	printByReason(w, "drops by reason:", v.Total.Drops)
	printByReason(w, "SNAT ports taken back:", v.Total.Expired)
}

// printByReason prints counts by reason under title, sorted by reason;
// nothing when there are none.
func printByReason(w io.Writer, title string, counts map[string]uint64) {
	if len(counts) == 0 {
		return
	}
	fmt.Fprintln(w, "\n"+title)
	for _, r := range slices.Sorted(maps.Keys(counts)) {
		fmt.Fprintf(w, "  %-16s %d\n", r, counts[r])
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
