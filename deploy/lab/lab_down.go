package lab

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"
)

// Down stops and removes the lab with prefix, from any process: the
// processes recorded in its state file (SIGINT to a postmaster, SIGTERM to
// a daemon; SIGKILL after a bounded wait), any other process still inside
// its namespaces, the namespaces, its bpffs pin directories, its control
// sockets and its state directory. It writes one line per step to out (nil
// discards them). It is idempotent: with nothing up it does nothing and
// returns nil. An unreadable state file does not stop it; what the prefix
// names is removed anyway.
func Down(prefix string, out io.Writer) error {
	if err := validatePrefix(prefix); err != nil {
		return err
	}
	if out == nil {
		out = io.Discard
	}
	st, err := readState(prefix)
	switch {
	case errors.Is(err, errNoState):
		st = &state{Prefix: prefix}
	case err != nil:
		fmt.Fprintf(out, "lab: ignoring the state file: %v\n", err)
		st = &state{Prefix: prefix}
	}
	namespaces, pins, sockets := leftovers(st)
	_, dirErr := os.Stat(StateDir(prefix))
	if len(namespaces) == 0 && len(pins) == 0 && len(sockets) == 0 && errors.Is(dirErr, fs.ErrNotExist) {
		fmt.Fprintf(out, "lab: nothing of lab %s is up\n", prefix)
		return nil
	}

	var errs []error
	// Daemons first, so no probe or promotion races the databases going.
	var daemons, others []process
	for _, p := range st.Processes {
		if p.Signal == "SIGTERM" {
			daemons = append(daemons, p)
		} else {
			others = append(others, p)
		}
	}
	for _, group := range [][]process{daemons, others} {
		var running []string
		for _, p := range group {
			if p.running() {
				running = append(running, fmt.Sprintf("%s (pid %d)", p.Name, p.PID))
			}
		}
		if len(running) == 0 {
			continue
		}
		fmt.Fprintf(out, "lab: stopping %s\n", strings.Join(running, ", "))
		if err := stopProcesses(group, 15*time.Second); err != nil {
			errs = append(errs, err)
		}
	}

	for _, ns := range namespaces {
		pids, err := namespacePIDs(ns)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing processes in %s: %w", ns, err))
			continue
		}
		if len(pids) == 0 {
			continue
		}
		fmt.Fprintf(out, "lab: stopping %d processes left in %s: %v\n", len(pids), ns, pids)
		procs := make([]process, 0, len(pids))
		for _, pid := range pids {
			start, _, err := procStat(pid)
			if err != nil {
				continue // gone meanwhile
			}
			procs = append(procs, process{Name: "process in " + ns, PID: pid, StartTime: start, Signal: "SIGTERM"})
		}
		if err := stopProcesses(procs, 5*time.Second); err != nil {
			errs = append(errs, err)
		}
	}

	if len(namespaces) > 0 {
		fmt.Fprintf(out, "lab: deleting namespaces %s\n", strings.Join(namespaces, " "))
		for _, ns := range namespaces {
			if err := (&Namespace{Name: ns}).Delete(); err != nil && NamespaceExists(ns) {
				errs = append(errs, fmt.Errorf("deleting namespace %s: %w", ns, err))
			}
		}
	}

	fmt.Fprintf(out, "lab: removing pins, sockets and %s\n", StateDir(prefix))
	for _, dir := range pins {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("removing pins %s: %w", dir, err))
		}
	}
	for _, s := range sockets {
		if err := os.Remove(s); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing socket %s: %w", s, err))
		}
	}
	if err := os.RemoveAll(StateDir(prefix)); err != nil {
		errs = append(errs, fmt.Errorf("removing %s: %w", StateDir(prefix), err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("taking lab %s down: %w", prefix, err)
	}
	fmt.Fprintf(out, "lab: %s is down\n", prefix)
	return nil
}

// leftovers returns the namespaces (hosts first, bridge last), pin
// directories and sockets of the lab that exist, from the state and from
// the names the prefix gives.
func leftovers(st *state) (namespaces, pins, sockets []string) {
	nsNames := slices.Clone(st.Namespaces)
	for _, ns := range labNamespaces(st.Prefix) {
		if !slices.Contains(nsNames, ns) {
			nsNames = append(nsNames, ns)
		}
	}
	sw := st.Prefix + SwitchName
	slices.SortStableFunc(nsNames, func(a, b string) int { // the bridge last
		switch {
		case a == sw && b != sw:
			return 1
		case b == sw && a != sw:
			return -1
		}
		return 0
	})
	for _, ns := range nsNames {
		if NamespaceExists(ns) {
			namespaces = append(namespaces, ns)
		}
	}
	pinNames := append(slices.Clone(st.PinDirs), PassPinDir(st.Prefix))
	sockNames := slices.Clone(st.Sockets)
	for _, lb := range lbHosts {
		pinNames = append(pinNames, DaemonPinDir(st.Prefix, lb))
		sockNames = append(sockNames, Socket(st.Prefix, lb))
	}
	pins, sockets = existing(pinNames), existing(sockNames)
	return namespaces, pins, sockets
}

// existing returns the paths of names that exist, each once.
func existing(names []string) []string {
	var out []string
	for _, n := range names {
		if _, err := os.Lstat(n); err == nil && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// Inventory is what exists of a lab.
type Inventory struct {
	Prefix   string `json:"prefix"`
	StateDir string `json:"state_dir"`
	// Recorded is true when a state file exists (Up ran and Down did not).
	Recorded bool      `json:"recorded"`
	Created  time.Time `json:"created,omitzero"`
	// Up is true when the state file exists and every namespace and
	// process it records is there.
	Up         bool              `json:"up"`
	Namespaces []NamespaceStatus `json:"namespaces"`
	Processes  []ProcessStatus   `json:"processes"`
	PinDirs    []string          `json:"pin_dirs"`
	Sockets    []string          `json:"sockets"`
}

// NamespaceStatus is an existing namespace of a lab and the processes in
// it.
type NamespaceStatus struct {
	Name string `json:"name"`
	PIDs []int  `json:"pids"`
}

// ProcessStatus is a process the lab recorded.
type ProcessStatus struct {
	Name    string `json:"name"`
	Host    string `json:"host"`
	PID     int    `json:"pid"`
	Running bool   `json:"running"`
}

// Empty reports whether nothing of the lab exists.
func (s *Inventory) Empty() bool {
	return !s.Recorded && len(s.Namespaces) == 0 && len(s.PinDirs) == 0 && len(s.Sockets) == 0
}

// Status reports what exists of the lab with prefix: its state file,
// namespaces with the PIDs inside, recorded processes, pin directories
// and sockets. Nothing up is no error.
func Status(prefix string) (*Inventory, error) {
	if err := validatePrefix(prefix); err != nil {
		return nil, err
	}
	st, err := readState(prefix)
	recorded := err == nil
	if errors.Is(err, errNoState) {
		st = &state{Prefix: prefix}
	} else if err != nil {
		return nil, err
	}
	s := &Inventory{Prefix: prefix, StateDir: StateDir(prefix), Recorded: recorded, Created: st.Created,
		Namespaces: []NamespaceStatus{}, Processes: []ProcessStatus{}}
	namespaces, pins, sockets := leftovers(st)
	s.PinDirs, s.Sockets = append([]string{}, pins...), append([]string{}, sockets...)
	for _, ns := range namespaces {
		pids, err := namespacePIDs(ns)
		if err != nil {
			return nil, fmt.Errorf("listing processes in %s: %w", ns, err)
		}
		s.Namespaces = append(s.Namespaces, NamespaceStatus{Name: ns, PIDs: append([]int{}, pids...)})
	}
	s.Up = recorded
	for _, p := range st.Processes {
		ps := ProcessStatus{Name: p.Name, Host: p.Host, PID: p.PID, Running: p.running()}
		s.Up = s.Up && ps.Running
		s.Processes = append(s.Processes, ps)
	}
	for _, ns := range st.Namespaces {
		s.Up = s.Up && NamespaceExists(ns)
	}
	return s, nil
}
