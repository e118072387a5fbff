package health

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// ErrNoPassword means PasswordFrom found no password: no file and no
// environment variable set, or an empty one.
var ErrNoPassword = errors.New("no password")

// ErrPasswordFileMode means a password file's group or others may access
// it: PasswordFrom refuses it, as libpq refuses such a password file.
var ErrPasswordFileMode = errors.New("group or others may access the password file (chmod 600)")

// PasswordFrom returns the probes' password. When file is not empty it
// reads it from that file, without trailing newlines; otherwise it returns
// the value of the first of envNames that is set and not empty (say
// XLB_PG_PASSWORD, PGPASSWORD). Errors name the file or the variables,
// never the secret; it returns an error wrapping ErrNoPassword when the
// file is empty or no variable is set, an error wrapping
// ErrPasswordFileMode when its group or others may access it, and the os
// error (naming the file) when the file cannot be read.
func PasswordFrom(file string, envNames ...string) (string, error) {
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return "", fmt.Errorf("reading password file: %w", err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return "", fmt.Errorf("reading password file: %w", err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return "", fmt.Errorf("reading password file %s (mode %v): %w", file, perm, ErrPasswordFileMode)
		}
		b, err := io.ReadAll(f)
		if err != nil {
			return "", fmt.Errorf("reading password file %s: %w", file, err)
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			return "", fmt.Errorf("reading password file %s: %w: the file is empty", file, ErrNoPassword)
		}
		return pw, nil
	}
	for _, name := range envNames {
		if v := os.Getenv(name); v != "" {
			return v, nil
		}
	}
	if len(envNames) == 0 {
		return "", fmt.Errorf("looking up the password: %w: no file and no environment variable given", ErrNoPassword)
	}
	return "", fmt.Errorf("looking up the password: %w: no file given and none of %s set", ErrNoPassword, strings.Join(envNames, ", "))
}
