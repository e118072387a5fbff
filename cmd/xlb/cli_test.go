package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestPrintBackends(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	rows := []BackendView{
		{Member: "pg1", Host: "172.20.0.10:5432", Role: "primary", State: "up", Timeline: 2, WALLSN: "0/3000000",
			Pools: []string{"3000"}, LastCheck: now.Add(-100 * time.Millisecond)},
		{Member: "pg2", Host: "172.20.0.11:5432", Role: "replica", State: "up", Timeline: 2, ReplayLSN: "0/2FFE000",
			LagMS: 1500, LagBytes: 8192, Synchronous: true, Pools: []string{"3001"}, LastCheck: now.Add(-200 * time.Millisecond)},
	}
	var b bytes.Buffer
	printBackends(&b, rows, now)
	lines := strings.Split(b.String(), "\n")
	for _, want := range [][]string{
		{"MEMBER", "LAG", "LAG BYTES", "SYNC"},
		{"pg1", "primary", "0/3000000", "-", "3000"},
		{"pg2", "replica", "0/2FFE000", "1.5s", "8.0 KiB", "sync", "3001"},
	} {
		found := false
		for _, l := range lines {
			ok := true
			for _, w := range want {
				ok = ok && strings.Contains(l, w)
			}
			found = found || ok
		}
		if !found {
			t.Errorf("no line with %q in:\n%s", want, b.String())
		}
	}
}

func TestCompletion(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"xlb", "--generate-bash-completion"}, []string{"backends", "status", "config", "completion"}},
		{[]string{"xlb", "backends", "--generate-bash-completion"}, []string{"drain", "enable"}},
		{[]string{"xlb", "config", "--generate-bash-completion"}, []string{"check"}},
	}
	// urfave/cli's completion reads os.Args (to tell flags from commands).
	defer func(a []string) { os.Args = a }(os.Args)
	for _, tt := range tests {
		os.Args = tt.args
		var out bytes.Buffer
		if code := runWith(tt.args, &out, &out); code != 0 {
			t.Fatalf("%v: exit %d: %s", tt.args, code, out.String())
		}
		words := strings.Fields(out.String())
		for _, w := range tt.want {
			if !strings.Contains(" "+strings.Join(words, " ")+" ", " "+w) {
				t.Errorf("%v offers %q, want %q among them", tt.args, words, w)
			}
		}
	}
	var script bytes.Buffer
	if code := runWith([]string{"xlb", "completion", "bash"}, &script, &script); code != 0 {
		t.Fatalf("xlb completion bash: exit %d: %s", code, script.String())
	}
	cmd := exec.Command("bash", "-n")
	cmd.Stdin = &script
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("bash -n on the completion script: %v\n%s", err, out)
	}
}
