package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/xlb-dev/xlb/control"
)

// TestLoadState: a whole file is read; a missing one is an empty state; a
// torn, empty or otherwise unreadable one is set aside as
// state.json.corrupt-<time> (its bytes kept) and an empty state returned
// for a rebuild, never an error.
func TestLoadState(t *testing.T) {
	whole := `{"timeline":3,"system_id":7414620384751625000}` + "\n"
	tests := []struct {
		name        string
		write       func(path string) error
		want        control.Durable
		wantRebuild bool
	}{
		{"whole", func(p string) error { return os.WriteFile(p, []byte(whole), 0o600) },
			control.Durable{Timeline: 3, SystemID: 7414620384751625000}, false},
		{"missing", func(string) error { return nil }, control.Durable{}, false},
		{"torn mid-JSON", func(p string) error { return os.WriteFile(p, []byte(whole[:len(whole)/2]), 0o600) }, control.Durable{}, true},
		{"empty", func(p string) error { return os.WriteFile(p, nil, 0o600) }, control.Durable{}, true},
		{"zeros (a block never written)", func(p string) error { return os.WriteFile(p, make([]byte, 512), 0o600) }, control.Durable{}, true},
		{"two objects", func(p string) error { return os.WriteFile(p, []byte(whole+whole), 0o600) }, control.Durable{}, true},
		{"unknown field", func(p string) error { return os.WriteFile(p, []byte(`{"timeline":3,"primary":"pg1"}`), 0o600) }, control.Durable{}, true},
		{"wrong type", func(p string) error { return os.WriteFile(p, []byte(`{"timeline":"3"}`), 0o600) }, control.Durable{}, true},
		{"a directory", func(p string) error { return os.Mkdir(p, 0o700) }, control.Durable{}, true},
	}
	now := time.Date(2026, 12, 8, 2, 30, 0, 123, time.UTC)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "state.json")
			if err := tt.write(path); err != nil {
				t.Fatal(err)
			}
			var before []byte
			if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
				before, _ = os.ReadFile(path)
			}
			got, rebuild := loadState(path, now)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("loadState (-want +got):\n%s", diff)
			}
			if rebuild != tt.wantRebuild {
				t.Errorf("rebuild %t, want %t", rebuild, tt.wantRebuild)
			}
			aside, _ := filepath.Glob(path + ".corrupt-*")
			if !tt.wantRebuild {
				if len(aside) != 0 {
					t.Errorf("set aside %v, want nothing", aside)
				}
				return
			}
			if len(aside) != 1 || !strings.HasSuffix(aside[0], ".corrupt-20261208T023000.000000123Z") {
				t.Fatalf("set aside %v, want one state.json.corrupt-20261208T023000.000000123Z", aside)
			}
			if _, err := os.Lstat(path); !os.IsNotExist(err) {
				t.Errorf("%s still there after setting it aside (%v)", path, err)
			}
			if before != nil {
				kept, err := os.ReadFile(aside[0])
				if err != nil || string(kept) != string(before) {
					t.Errorf("set-aside file holds %q (%v), want the torn bytes %q", kept, err, before)
				}
			}
		})
	}
}

// TestSaveState: the file is whole after a save (mode 0600, no temporary
// left), a save over a torn file replaces it, and loadState reads back
// what was saved.
func TestSaveState(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "state.json")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(`{"timeli`), 0o644); err != nil {
		t.Fatal(err)
	}
	want := control.Durable{Timeline: 4, SystemID: 42}
	if err := saveState(path, want); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "*.tmp*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	got, rebuild := loadState(path, time.Now())
	if rebuild {
		t.Fatal("a saved state reads as torn")
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("read back (-want +got):\n%s", diff)
	}
	// A state directory that cannot be made is an error, not a panic.
	if err := saveState(filepath.Join(path, "x", "state.json"), want); err == nil {
		t.Error("saving under a regular file: no error")
	}
}
