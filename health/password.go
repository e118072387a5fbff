package health

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrNoPassword means PasswordFrom found no password: no file and no
// environment variable set, or an empty one.
var ErrNoPassword = errors.New("no password")

// PasswordFrom returns the probes' password. When file is not empty it
// reads it from that file, without trailing newlines; otherwise it returns
// the value of the first of envNames that is set and not empty (say
// XLB_PG_PASSWORD, PGPASSWORD). Errors name the file or the variables,
// never the secret; it returns an error wrapping ErrNoPassword when the
// file is empty or no variable is set, and the os error (naming the file)
// when the file cannot be read.
func PasswordFrom(file string, envNames ...string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("reading password file: %w", err)
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
