package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	// lo: a link every network namespace has.
	good := strings.Replace(strings.Replace(goodConfig, "/nonexistent", pw, 1), "interface: eth0", "interface: lo", 1)
	tests := []struct {
		name     string
		config   string
		wantCode int
		wantOut  string
	}{
		{"valid", good, 0, "valid: vip 172.20.0.100 on lo, 2 nodes, vrrp false, http :8080"},
		{"http off", good + "http:\n  listen: \"\"\n", 0, "http off"},
		{"bad vip", strings.Replace(good, "vip: 172.20.0.100", "vip: 300.1.1.1", 1), 2, "config: vip:"},
		{"unknown field", good + "colour: blue\n", 2, "config: colour: unknown field"},
		{"unknown nested field", good + "probe:\n  intervall: 1s\n", 2, "config: probe.intervall: unknown field (line"},
		{"no such interface", strings.Replace(good, "interface: lo", "interface: xlbnosuch0", 1), 2, "config: interface: \"xlbnosuch0\": no such link"},
		{"interface escapes /proc", strings.Replace(good, "interface: lo", "interface: ../../../etc", 1), 2, "config: interface:"},
		{"bad listen", good + "http:\n  listen: nowhere\n", 2, "config: http.listen:"},
		{"bad listen port", good + "http:\n  listen: \":99999\"\n", 2, "config: http.listen:"},
		{"missing password file", strings.Replace(goodConfig, "interface: eth0", "interface: lo", 1), 2, "config: postgres.password_file:"},
		{"bad duration", good + "probe:\n  interval: soon\n", 2, "is not a duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "xlb.yaml")
			if err := os.WriteFile(path, []byte(tt.config), 0o600); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			code := runWith([]string{"xlb", "config", "check", path}, &out, &out)
			if code != tt.wantCode || !strings.Contains(out.String(), tt.wantOut) {
				t.Errorf("xlb config check = %d %q, want %d containing %q", code, out.String(), tt.wantCode, tt.wantOut)
			}
		})
	}
}
