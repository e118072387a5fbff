package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// Where a lab started by Up keeps what outlives the process that built it.
const (
	// StateRoot holds one directory per lab prefix: the state file, the
	// LB nodes' configuration and logs, the probe password and the
	// PostgreSQL clusters.
	StateRoot = "/run/xlb-lab"
	// BPFFS is where bpffs is mounted; the lab pins under it.
	BPFFS = "/sys/fs/bpf"
	// SocketDir holds the control sockets of the lab's daemons.
	SocketDir = "/run/xlb"

	stateFile = "state.json"
)

// Paths of a lab, all derived from its prefix so Down finds them from a
// fresh process.

// StateDir returns the state directory of the lab with prefix.
func StateDir(prefix string) string { return filepath.Join(StateRoot, prefix) }

// Socket returns the control socket of the daemon on LB host lb.
func Socket(prefix, lb string) string { return filepath.Join(SocketDir, prefix+lb+".sock") }

// DaemonPinDir returns the bpffs directory where the daemon on LB host lb
// pins its maps and links.
func DaemonPinDir(prefix, lb string) string { return filepath.Join(BPFFS, prefix+lb) }

// PassPinDir returns the bpffs directory where the lab pins the
// pass-through XDP links on the LB hosts' bridge-side peers.
func PassPinDir(prefix string) string { return filepath.Join(BPFFS, prefix+"lab") }

// lbHosts are the lab's LB hosts, in the order Options.LBs takes them.
var lbHosts = []string{"lb1", "lb2"}

// labNamespaces returns every namespace a lab with prefix can have, the
// bridge last (hosts go first when deleting).
func labNamespaces(prefix string) []string {
	names := make([]string, 0, len(Hosts)+1)
	for _, h := range Hosts {
		names = append(names, prefix+h.Name)
	}
	return append(names, prefix+SwitchName)
}

var prefixRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,19}$`)

// validatePrefix refuses a prefix that would escape the lab's directories
// or make namespace and pin names unwieldy.
func validatePrefix(prefix string) error {
	if !prefixRe.MatchString(prefix) {
		return fmt.Errorf("lab prefix %q: want 1 to 20 characters of A-Z a-z 0-9 _ . - starting with a letter or digit", prefix)
	}
	return nil
}

// state is what Up records in the state file for Down, Status, Exec and
// Demo.
type state struct {
	Prefix  string    `json:"prefix"`
	Created time.Time `json:"created"`
	// Binary is the xlb binary the daemons run; Demo runs its CLI.
	Binary string `json:"binary"`
	// LBs are the LB hosts of the lab; Daemons those running xlb.
	LBs     []string `json:"lbs"`
	Daemons []string `json:"daemons"`
	// Namespaces are the namespaces Up creates, bridge last.
	Namespaces []string `json:"namespaces"`
	// Processes are the detached processes Up started, in start order.
	Processes []process `json:"processes"`
	PinDirs   []string  `json:"pin_dirs"`
	Sockets   []string  `json:"sockets"`
}

// process is a process the lab started and Down stops.
type process struct {
	Name string `json:"name"` // "pg1", "xlb lb1"
	Host string `json:"host"`
	PID  int    `json:"pid"`
	// StartTime is the process's start in clock ticks since boot (field 22
	// of /proc/<pid>/stat); with it Down never signals a reused PID.
	StartTime uint64 `json:"start_time"`
	// Signal asks it to stop: "SIGINT" for a postmaster (fast shutdown),
	// "SIGTERM" for a daemon.
	Signal string `json:"signal"`
}

// errNoState means no state file exists for the prefix.
var errNoState = errors.New("no lab state")

// readState reads the state file of the lab with prefix. It returns an
// error wrapping errNoState when there is none.
func readState(prefix string) (*state, error) {
	name := filepath.Join(StateDir(prefix), stateFile)
	b, err := os.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading %s: %w", name, errNoState)
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", name, err)
	}
	return &s, nil
}

// write replaces the state file atomically (mode 0600), so a Down that
// runs while Up is being killed reads either the old or the new record.
func (s *state) write() error {
	dir := StateDir(s.Prefix)
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding lab state: %w", err)
	}
	tmp, err := os.CreateTemp(dir, stateFile+".*")
	if err != nil {
		return fmt.Errorf("writing lab state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("writing lab state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing lab state: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFile)); err != nil {
		return fmt.Errorf("writing lab state: %w", err)
	}
	return nil
}

// addProcess records a started process and rewrites the state file.
func (s *state) addProcess(name, host string, pid int, signal string) error {
	st, _, _ := procStat(pid)
	s.Processes = append(s.Processes, process{Name: name, Host: host, PID: pid, StartTime: st, Signal: signal})
	return s.write()
}
