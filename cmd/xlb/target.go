package main

import (
	"os"

	"github.com/urfave/cli/v2"
)

var labHostFlag = &cli.StringFlag{Name: "lab", Usage: "ask the daemon on this LB host of the lab (lb1, lb2) instead of --socket", EnvVars: []string{"XLB_LAB"}}

// socketOf returns the control socket a command talks to: with --lab, that
// LB host's socket in the lab named by --prefix; else --socket when given;
// else the default socket, unless nothing is there and the default lab
// runs, whose lb1 answers then (so `xlb backends` works after `make lab`).
func socketOf(c *cli.Context) string {
	if lb := c.String("lab"); lb != "" {
		return labSocket(c, c.String("prefix"), lb)
	}
	if c.IsSet("socket") || exists(defaultSocket) {
		return c.String("socket")
	}
	if s := defaultLabSocket(); exists(s) {
		return s
	}
	return c.String("socket")
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// mustClient returns a client for socketOf(c).
func mustClient(c *cli.Context) *client { return newClient(socketOf(c)) }
