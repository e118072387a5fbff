package loader

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGeneratedFresh rebuilds the BPF objects from bpf/ with the
// //go:generate lines of gen.go into a temporary directory and fails when
// the committed *_bpfel.go/.o differ: run `make generate` and commit.
func TestGeneratedFresh(t *testing.T) {
	if _, err := exec.LookPath("clang"); err != nil {
		if os.Getenv("XLB_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("clang is missing; make test (or make generate) installs it: deploy/lab/lab-deps.sh")
		}
		t.Skip("clang is missing")
	}
	f, err := os.Open("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := t.TempDir()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "//go:generate go tool bpf2go ")
		if !ok {
			continue
		}
		args, err := splitArgs(line)
		if err != nil {
			t.Fatal(err)
		}
		args = append([]string{"tool", "bpf2go", "-go-package", "loader", "-output-dir", out}, args...)
		cmd := exec.Command("go", args...)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no bpf2go lines in gen.go")
	}
	gen, err := filepath.Glob(filepath.Join(out, "*_bpfel.*"))
	if err != nil || len(gen) == 0 {
		t.Fatalf("nothing generated (%v)", err)
	}
	committed, _ := filepath.Glob("*_bpfel.*")
	if len(committed) != len(gen) {
		t.Errorf("committed %v, generated %d files", committed, len(gen))
	}
	for _, g := range gen {
		want, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Base(g))
		if err != nil {
			t.Errorf("%s is not committed: run make generate", filepath.Base(g))
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale relative to bpf/: run make generate and commit", filepath.Base(g))
		}
	}
}

// splitArgs splits a go:generate command line, honouring double quotes.
func splitArgs(s string) ([]string, error) {
	var (
		args []string
		cur  strings.Builder
		inQ  bool
		have bool
	)
	for _, r := range s {
		switch {
		case r == '"':
			inQ = !inQ
			have = true
		case r == ' ' && !inQ:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args, nil
}
