package health

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a position in the write-ahead log, PostgreSQL's pg_lsn: a byte
// offset into the WAL stream. Zero means none (a primary's replay LSN, a
// replica that has received nothing).
type LSN uint64

// String returns l as PostgreSQL writes a pg_lsn: the high and low 32 bits
// in upper-case hex without leading zeros, split by a slash ("0/3000060").
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l))
}

// ParseLSN parses a pg_lsn as PostgreSQL's input function does: one to
// eight hex digits, a slash, one to eight hex digits, nothing else. It
// returns an error quoting s when s is not one.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || !isLSNHalf(hi) || !isLSNHalf(lo) {
		return 0, fmt.Errorf("parsing LSN %q: want two groups of 1 to 8 hex digits split by a slash", s)
	}
	// isLSNHalf admits only what fits 32 bits.
	h, _ := strconv.ParseUint(hi, 16, 32)
	l, _ := strconv.ParseUint(lo, 16, 32)
	return LSN(h<<32 | l), nil
}

// isLSNHalf reports whether s is 1 to 8 hex digits.
func isLSNHalf(s string) bool {
	if len(s) < 1 || len(s) > 8 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// MarshalText returns l.String(), so LSNs read as PostgreSQL's in JSON.
func (l LSN) MarshalText() ([]byte, error) {
	return []byte(l.String()), nil
}

// UnmarshalText parses text with ParseLSN.
func (l *LSN) UnmarshalText(text []byte) error {
	v, err := ParseLSN(string(text))
	if err != nil {
		return err
	}
	*l = v
	return nil
}
