package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/xlb-dev/xlb/deploy/lab"
)

var labHostFlag = &cli.StringFlag{Name: "lab", Usage: "ask the daemon on this LB host of the lab (lb1, lb2) instead of --socket", EnvVars: []string{"XLB_LAB"}}

// socketOf returns the control socket a command talks to: with --lab, that
// LB host's socket in the lab named by --prefix; else --socket when given;
// else the default socket, unless nothing is there and the default lab
// runs, whose lb1 answers then (so `xlb backends` works after `make lab`).
func socketOf(c *cli.Context) string {
	if lb := c.String("lab"); lb != "" {
		return lab.Socket(c.String("prefix"), lb)
	}
	if c.IsSet("socket") {
		return c.String("socket")
	}
	if _, err := os.Stat(defaultSocket); err != nil {
		if s := lab.Socket(lab.Prefix, "lb1"); exists(s) {
			return s
		}
	}
	return c.String("socket")
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// mustClient returns a client for socketOf(c). An unknown --lab host is
// reported by the failing request, naming the socket.
func mustClient(c *cli.Context) *client {
	if lb := c.String("lab"); lb != "" {
		if _, err := lab.LabHosts(lb); err != nil {
			fmt.Fprintf(c.App.ErrWriter, "xlb: --lab %s: %v\n", lb, err)
		}
	}
	return newClient(socketOf(c))
}
