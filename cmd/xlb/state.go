package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/xlb-dev/xlb/control"
)

// defaultStateFile keeps what the controller must not forget across
// restarts (the newest timeline, the cluster's system identifier).
const defaultStateFile = "/var/lib/xlb/state.json"

// loadState reads the state file; a missing file is an empty state.
func loadState(path string) (control.Durable, error) {
	var d control.Durable
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return d, nil
	}
	if err != nil {
		return d, fmt.Errorf("reading state: %w", err)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return d, fmt.Errorf("reading state %s: %w", path, err)
	}
	return d, nil
}

// saveState writes d to path atomically (a temporary file renamed over it),
// mode 0600.
func saveState(path string, d control.Durable) {
	b, err := json.Marshal(d)
	if err == nil {
		err = os.MkdirAll(filepath.Dir(path), 0o700)
	}
	if err == nil {
		tmp := path + ".tmp"
		if err = os.WriteFile(tmp, b, 0o600); err == nil {
			err = os.Rename(tmp, path)
		}
	}
	if err != nil {
		slog.Error("saving state", "file", path, "err", err)
	}
}
