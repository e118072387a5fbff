package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// userHZ is the unit of the times in /proc/<pid>/stat: USER_HZ, 100 on
// every Linux architecture Go supports.
const userHZ = 100

// procCPU returns the CPU time pid has used: utime+stime of every thread
// (/proc/<pid>/stat sums the thread group) plus cutime+cstime of its
// waited-for children. Its resolution is one tick (10 ms).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("reading cpu time of pid %d: %w", pid, err)
	}
	return parseProcCPU(string(b))
}

// parseProcCPU sums fields 14 to 17 (utime, stime, cutime, cstime) of a
// /proc/<pid>/stat line. The command name (field 2) may hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseProcCPU(s string) (time.Duration, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parsing /proc stat %q: no command name", s)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3
	if len(f) < 15 {
		return 0, fmt.Errorf("parsing /proc stat %q: %d fields after the name, want at least 15", s, len(f))
	}
	var ticks int64
	for _, v := range f[11:15] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parsing /proc stat field %q: %w", v, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// bpfStatsSysctl is the global switch that BPF_ENABLE_STATS is the scoped
// alternative to.
const bpfStatsSysctl = "/proc/sys/kernel/bpf_stats_enabled"

// enableBPFStats turns on BPF run-time statistics until the returned
// closer is closed, and says how: "BPF_ENABLE_STATS" (an fd: stats stay on
// while it is open and revert when it closes, even if this process dies)
// or, when the kernel refuses that, "sysctl" (kernel.bpf_stats_enabled set
// to 1; Close restores the old value).
func enableBPFStats() (io.Closer, string, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err == nil {
		return c, "BPF_ENABLE_STATS", nil
	}
	old, rerr := os.ReadFile(bpfStatsSysctl)
	if rerr != nil {
		return nil, "", errors.Join(fmt.Errorf("enabling bpf stats: %w", err), fmt.Errorf("reading %s: %w", bpfStatsSysctl, rerr))
	}
	if werr := os.WriteFile(bpfStatsSysctl, []byte("1\n"), 0o644); werr != nil {
		return nil, "", errors.Join(fmt.Errorf("enabling bpf stats: %w", err), fmt.Errorf("writing %s: %w", bpfStatsSysctl, werr))
	}
	return sysctlRestorer(old), "sysctl", nil
}

type sysctlRestorer []byte

func (old sysctlRestorer) Close() error {
	if err := os.WriteFile(bpfStatsSysctl, old, 0o644); err != nil {
		return fmt.Errorf("restoring %s: %w", bpfStatsSysctl, err)
	}
	return nil
}

// xdpProgramID returns the ID of the XDP program attached to dev in ns,
// from `ip -details -json link show`.
func xdpProgramID(ns *lab.Namespace, dev string) (ebpf.ProgramID, error) {
	out, err := ns.Output("ip", "-details", "-json", "link", "show", "dev", dev)
	if err != nil {
		return 0, err
	}
	return parseXDPProgID(out)
}

// ipLinkXDP is the xdp object of `ip -details -json link show`: one
// program as prog, or (several attach modes at once) a list in attached.
type ipLinkXDP struct {
	Prog *struct {
		ID uint32 `json:"id"`
	} `json:"prog"`
	Attached []struct {
		Prog *struct {
			ID uint32 `json:"id"`
		} `json:"prog"`
	} `json:"attached"`
}

// parseXDPProgID returns the ID of the XDP program in ip's JSON for one
// link (ip lists a program under both prog and attached). It returns an
// error when none or several are attached.
func parseXDPProgID(out string) (ebpf.ProgramID, error) {
	var links []struct {
		Name string     `json:"ifname"`
		XDP  *ipLinkXDP `json:"xdp"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return 0, fmt.Errorf("decoding ip link's json: %w", err)
	}
	if len(links) != 1 {
		return 0, fmt.Errorf("ip link show: %d links, want 1", len(links))
	}
	x := links[0].XDP
	var ids []uint32
	add := func(id uint32) {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	if x != nil && x.Prog != nil {
		add(x.Prog.ID)
	}
	if x != nil {
		for _, a := range x.Attached {
			if a.Prog != nil {
				add(a.Prog.ID)
			}
		}
	}
	if len(ids) != 1 {
		return 0, fmt.Errorf("xdp programs on %s: %v, want exactly one", links[0].Name, ids)
	}
	return ebpf.ProgramID(ids[0]), nil
}
