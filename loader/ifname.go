package loader

import (
	"errors"
	"fmt"
	"strings"
)

// ifNameMax is the longest interface name Linux accepts (IFNAMSIZ - 1).
const ifNameMax = 15

// ErrInterfaceName means a string cannot be the name of a network
// interface.
var ErrInterfaceName = errors.New("not a valid interface name")

// CheckInterfaceName returns an error wrapping ErrInterfaceName unless
// name is one Linux accepts for a network interface (dev_valid_name): 1 to
// 15 bytes, not "." or "..", no '/', ':', whitespace or control
// character. Such a name stays one path element wherever it is joined
// into a path (/proc/sys/net/ipv4/conf/<name>/...).
func CheckInterfaceName(name string) error {
	if name == "" || len(name) > ifNameMax || name == "." || name == ".." ||
		strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '/' || r == ':' }) {
		return fmt.Errorf("%q: %w (1 to %d bytes, no '/', ':' or space)", name, ErrInterfaceName, ifNameMax)
	}
	return nil
}
