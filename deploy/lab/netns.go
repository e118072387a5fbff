package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/vishvananda/netns"
)

// Namespace is a named network namespace (ip netns).
type Namespace struct {
	Name string
}

// NewNamespace creates the namespace name, with loopback up. It returns an
// error when it already exists.
func NewNamespace(name string) (*Namespace, error) {
	if err := run("ip", "netns", "add", name); err != nil {
		return nil, err
	}
	ns := &Namespace{Name: name}
	if err := ns.Run("ip", "link", "set", "lo", "up"); err != nil {
		ns.Delete()
		return nil, err
	}
	return ns, nil
}

// Delete removes the namespace; its interfaces go with it.
func (ns *Namespace) Delete() error {
	return run("ip", "netns", "delete", ns.Name)
}

// Run runs a command in the namespace and returns an error with its output
// when it fails.
func (ns *Namespace) Run(name string, args ...string) error {
	_, err := ns.Output(name, args...)
	return err
}

// Output runs a command in the namespace and returns its stdout.
func (ns *Namespace) Output(name string, args ...string) (string, error) {
	return output(context.Background(), append([]string{"ip", "netns", "exec", ns.Name, name}, args...)...)
}

// OutputContext is Output bounded by ctx: the command is killed when ctx
// ends.
func (ns *Namespace) OutputContext(ctx context.Context, name string, args ...string) (string, error) {
	return output(ctx, append([]string{"ip", "netns", "exec", ns.Name, name}, args...)...)
}

// Command returns an unstarted command that runs in the namespace.
func (ns *Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Do runs f on an OS thread that has entered the namespace, for syscalls
// that act in the caller's namespace (netlink, BPF_PROG_TEST_RUN).
func (ns *Namespace) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is not unlocked if switching back fails, so the runtime
		// throws it away instead of reusing it in the wrong namespace.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("getting current netns: %w", err)
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(ns.Name)
		if err != nil {
			errc <- fmt.Errorf("opening netns %s: %w", ns.Name, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("entering netns %s: %w", ns.Name, err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leaving netns %s: %w", ns.Name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Start starts cmd directly in the namespace: the child is forked from a
// thread inside it, so cmd.Process is the program itself (no ip or runuser
// in between) and can be signalled by PID. Only the network namespace is
// entered; the mount namespace stays the caller's.
func (ns *Namespace) Start(cmd *exec.Cmd) error {
	return ns.Do(cmd.Start)
}

// netnsDir is where ip netns keeps its named namespaces.
const netnsDir = "/run/netns"

// NamespaceExists reports whether a namespace called name exists.
func NamespaceExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// Namespaces returns the names of the namespaces starting with prefix,
// sorted. No namespace at all is not an error.
func Namespaces(prefix string) ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

func run(args ...string) error {
	_, err := output(context.Background(), args...)
	return err
}

func output(ctx context.Context, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("running %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
