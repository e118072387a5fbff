package main

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRemoveStaleSocket: a socket a dead daemon left is removed; nothing
// there is fine; a file, a directory or a link is refused with the field
// named (exit 2) and left where it is.
func TestRemoveStaleSocket(t *testing.T) {
	tests := []struct {
		name    string
		make    func(t *testing.T, path string)
		wantErr string // "" = no error, path gone
	}{
		{"nothing there", func(*testing.T, string) {}, ""},
		{"stale socket", func(t *testing.T, p string) {
			ln, err := net.Listen("unix", p)
			if err != nil {
				t.Fatal(err)
			}
			ln.(*net.UnixListener).SetUnlinkOnClose(false)
			ln.Close()
		}, ""},
		{"regular file", func(t *testing.T, p string) {
			if err := os.WriteFile(p, []byte("precious"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "is a regular file, not a socket"},
		{"directory", func(t *testing.T, p string) {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "is a directory, not a socket"},
		{"symbolic link to a file", func(t *testing.T, p string) {
			target := p + ".target"
			if err := os.WriteFile(target, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
		}, "is a symbolic link, not a socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "xlb.sock")
			tt.make(t, path)
			err := removeStaleSocket(path)
			_, statErr := os.Lstat(path)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("removeStaleSocket = %v, want nil", err)
				}
				if !errors.Is(statErr, os.ErrNotExist) {
					t.Fatalf("%s still there (%v)", path, statErr)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != "socket" || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("removeStaleSocket = %v, want a *ConfigError naming socket and saying %q", err, tt.wantErr)
			}
			if statErr != nil {
				t.Fatalf("%s removed although refused (%v)", path, statErr)
			}
		})
	}
}
