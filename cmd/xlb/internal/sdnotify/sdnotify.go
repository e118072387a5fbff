package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrNoSocket means NOTIFY_SOCKET is not set: no service manager listens.
var ErrNoSocket = errors.New("sdnotify: NOTIFY_SOCKET not set")

// Notify sends state, newline-separated assignments such as "READY=1", to
// the socket in $NOTIFY_SOCKET. It returns ErrNoSocket when that is unset.
func Notify(state string) error {
	return NotifySocket(os.Getenv("NOTIFY_SOCKET"), state)
}

// NotifySocket sends state to the socket at path; a path starting with '@'
// names an abstract socket. It returns ErrNoSocket when path is empty.
func NotifySocket(path, state string) error {
	if path == "" {
		return ErrNoSocket
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("dialing notify socket: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("notifying %q: %w", strings.ReplaceAll(state, "\n", " "), err)
	}
	return nil
}

// WatchdogInterval returns the interval at which the service manager wants
// "WATCHDOG=1" (half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
// recommends), or 0 when no watchdog is set for this process.
func WatchdogInterval() time.Duration {
	usec, err := strconv.ParseUint(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec == 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}
