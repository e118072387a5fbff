package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/xlb-dev/xlb/control"
)

// defaultStateFile keeps what the controller must not forget across
// restarts (the newest timeline, the cluster's system identifier).
const defaultStateFile = "/var/lib/xlb/state.json"

// loadState reads the state file at path. A missing file is an empty
// state. A file that cannot be read or parsed (torn by a crash, emptied by
// a full disk) is set aside as <path>.corrupt-<time>, logged, and an empty
// state returned with rebuild true: the caller rebuilds it from
// PostgreSQL's own state (rebuildState). It never fails: a daemon that
// stopped here would be restarted into the same file forever.
func loadState(path string, now time.Time) (d control.Durable, rebuild bool) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return d, false
	}
	if err == nil {
		err = decodeState(b, &d)
	}
	if err == nil {
		return d, false
	}
	aside := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405.000000000Z"))
	if rerr := os.Rename(path, aside); rerr != nil {
		slog.Error("state file unreadable, and setting it aside failed: rebuilding the state from postgresql; it is overwritten at the next save",
			"file", path, "err", err, "rename_err", rerr)
		return control.Durable{}, true
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		slog.Warn("setting the state file aside", "err", err)
	}
	slog.Error("state file unreadable: set aside, rebuilding the state from postgresql",
		"file", path, "set_aside", aside, "err", err)
	return control.Durable{}, true
}

// decodeState parses a state file: one JSON object, known fields only,
// nothing after it.
func decodeState(b []byte, d *control.Durable) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(d); err != nil {
		return fmt.Errorf("parsing state: %w", err)
	}
	if dec.More() {
		return errors.New("parsing state: data after the object")
	}
	return nil
}

// saveState writes d to path so that a crash at any point leaves either
// the old file or the new one, whole: a temporary file written and
// fsynced, renamed over path, and the directory fsynced so the rename
// itself survives a power loss. The file's mode is 0600.
func saveState(path string, d control.Durable) error {
	b, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing state %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("renaming state into place: %w", err)
	}
	return syncDir(dir)
}

// syncDir fsyncs the directory dir, so that a rename in it is durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing state directory: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing state directory %s: %w", dir, err)
	}
	return nil
}
