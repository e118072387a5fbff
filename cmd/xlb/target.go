package main

import (
	"github.com/urfave/cli/v2"
)

// socketOf returns the control socket a command talks to: --socket, or
// XLB_SOCKET, or the default socket. (A lab's daemons answer on sockets of
// their own, which xlb-lab up prints.)
func socketOf(c *cli.Context) string { return c.String("socket") }

// mustClient returns a client for socketOf(c).
func mustClient(c *cli.Context) *client { return newClient(socketOf(c)) }
