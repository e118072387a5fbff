// Package vip elects the owner of a virtual IP between LB nodes (VRRPv3),
// adds and removes the address with netlink and announces it with
// gratuitous ARP.
package vip
