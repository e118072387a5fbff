// Package sdnotify speaks systemd's notification protocol (sd_notify(3)):
// one datagram of newline-separated KEY=VALUE assignments to the Unix
// socket named by $NOTIFY_SOCKET ("READY=1", "WATCHDOG=1", "STOPPING=1",
// "STATUS=…"). It is the few lines xlb needs, not a binding of libsystemd.
//
// # Operation
//
// Under a unit with Type=notify, systemd sets NOTIFY_SOCKET (a path, or
// an abstract socket written with a leading '@'), and with WatchdogSec=
// also WATCHDOG_USEC and WATCHDOG_PID. Outside systemd none is set and
// Notify returns ErrNoSocket, which callers ignore.
package sdnotify
