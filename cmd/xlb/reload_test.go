package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestReloadFields(t *testing.T) {
	base, err := parseConfig([]byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		edit      func(string) string
		wantFixed []string
		wantLive  []string
	}{
		{"same", func(s string) string { return s }, nil, nil},
		{"node added", func(s string) string { return s + "  - name: pg3\n    address: 172.20.0.12:5432\n" }, nil, []string{"nodes"}},
		{"probe and lag", func(s string) string { return s + "probe:\n  fall: 5\nmax_read_lag: 5s\n" }, nil, []string{"probe", "max_read_lag"}},
		{"vip", func(s string) string { return strings.Replace(s, "vip: 172.20.0.100", "vip: 172.20.0.101", 1) }, []string{"vip"}, nil},
		{"http and vrrp", func(s string) string { return s + "http:\n  listen: \"\"\nvrrp:\n  priority: 10\n" }, []string{"vrrp", "http"}, nil},
		{"password file", func(s string) string { return strings.Replace(s, "/nonexistent", "/elsewhere", 1) }, []string{"postgres"}, nil},
		{"allowlist", func(s string) string { return s + "allow_sources:\n  rw: [172.20.0.0/24]\n" }, nil, []string{"allow_sources"}},
		{"conntrack and state file", func(s string) string { return s + "conntrack:\n  idle_timeout: 1h\nstate_file: /tmp/x.json\n" },
			[]string{"conntrack", "state_file"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := parseConfig([]byte(tt.edit(goodConfig)))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantFixed, changed(fixedFields, base, nc)); diff != "" {
				t.Errorf("fixed fields changed (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantLive, changed(liveFields, base, nc)); diff != "" {
				t.Errorf("live fields changed (-want +got):\n%s", diff)
			}
		})
	}
}
