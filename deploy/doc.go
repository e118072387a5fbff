// Package deploy holds what puts xlb on a host: the systemd unit
// (xlb.service), the example configuration (xlb.example.yaml), the Grafana
// dashboard (grafana/xlb.json) and, under lab/, the network-namespace lab.
// This package has no code of its own; its tests check those files with
// the tools that consume them (systemd-analyze, promtool).
//
// # systemd on these machines
//
// The tests verify the unit offline (systemd-analyze verify and security).
// Starting it needs systemd as PID 1, which the development and CI
// machines do not run (no /run/systemd/system): there the unit is checked,
// not started.
package deploy
