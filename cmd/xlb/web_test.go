package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHTTPWebConfigFile validates http.web_config_file: empty or a usable
// exporter-toolkit web configuration passes; a relative path, a missing
// file and one naming a missing certificate are refused, naming the field.
func TestHTTPWebConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	auth := write("auth.yml", "basic_auth_users:\n  prometheus: $2y$10$X0h1gDsPszWURQaxFN.ZmOFkWa5iKKEkoOc6zDxa6aNGFTg5TXwhK\n")
	badTLS := write("tls.yml", "tls_server_config:\n  cert_file: missing.pem\n  key_file: missing.key\n")
	tests := []struct {
		name, file string
		ok         bool
	}{
		{"none", "", true},
		{"basic auth", auth, true},
		{"relative", "web.yml", false},
		{"missing", filepath.Join(dir, "absent.yml"), false},
		{"missing certificate", badTLS, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := HTTPConfig{WebConfigFile: tt.file}
			h.setDefaults()
			err := h.validate()
			var ce *ConfigError
			switch {
			case tt.ok && err != nil:
				t.Fatalf("validate: %v", err)
			case !tt.ok && (!errors.As(err, &ce) || ce.Field != "http.web_config_file" || !strings.Contains(err.Error(), tt.file)):
				t.Fatalf("validate: %v, want a ConfigError on http.web_config_file naming %q", err, tt.file)
			}
		})
	}
}
