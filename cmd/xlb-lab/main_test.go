package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestExitCodes checks xlb-lab's exit codes for bad input, which need no
// lab: 2 for a bad flag value or argument, with the field named.
func TestExitCodes(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"bad fault", []string{"drill", "--fault", "melt"}, 2, "--fault"},
		{"drill takes flags only", []string{"drill", "extra"}, 2, "arguments"},
		{"bad chaos fault", []string{"chaos", "--faults", "melt"}, 2, "--faults"},
		{"exec without command", []string{"exec", "client"}, 1, "usage: xlb-lab exec"},
		{"missing xlb", []string{"up", "--xlb", "/nonexistent/xlb"}, 2, "--xlb"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(append([]string{"xlb-lab"}, tt.args...), &out, &errOut)
			if code != tt.code || !strings.Contains(errOut.String(), tt.want) {
				t.Errorf("xlb-lab %s: exit %d, stderr %q; want exit %d naming %q", strings.Join(tt.args, " "), code, errOut.String(), tt.code, tt.want)
			}
		})
	}
}

// TestXLBBinary checks how xlb-lab up finds the xlb binary the daemons
// run: --xlb made absolute.
func TestXLBBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "xlb")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	var got string
	app := &cli.App{
		Flags: []cli.Flag{xlbFlag},
		Action: func(c *cli.Context) error {
			var err error
			got, err = xlbBinary(c)
			return err
		},
	}
	if err := app.Run([]string{"xlb-lab", "--xlb", "xlb"}); err != nil {
		t.Fatal(err)
	}
	if got != bin {
		t.Errorf("xlbBinary with --xlb xlb in %s: %q, want %q", dir, got, bin)
	}
}
