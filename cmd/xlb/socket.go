package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// removeStaleSocket removes what a daemon that is gone left at path, so
// the API can listen there: only a Unix socket is removed; nothing there
// is fine; anything else (a file, a directory, a symbolic link) is a
// *ConfigError naming socket, and left alone.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return &ConfigError{Field: "socket", Err: fmt.Errorf("checking %s: %w", path, err)}
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return &ConfigError{Field: "socket", Err: fmt.Errorf("%s is a %s, not a socket: not removing it", path, fileKind(fi.Mode()))}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	return nil
}

// fileKind names a file's type for messages.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "regular file"
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "file of another kind"
}
