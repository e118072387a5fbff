package loader

import (
	"errors"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestVLANConflict checks the attach-time VLAN refusal on link lists (this
// kernel has no 8021q, so no VLAN device can be made for real).
func TestVLANConflict(t *testing.T) {
	eth := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth0", Index: 2}}
	other := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth1", Index: 3}}
	vlanOnEth := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "eth0.10", Index: 4, ParentIndex: 2}, VlanId: 10}
	vlanOnOther := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "eth1.10", Index: 5, ParentIndex: 3}, VlanId: 10}
	tests := []struct {
		name   string
		target netlink.Link
		links  []netlink.Link
		want   bool // ErrVLAN
	}{
		{"plain, no vlans", eth, []netlink.Link{eth, other}, false},
		{"plain, vlan on another interface", eth, []netlink.Link{eth, other, vlanOnOther}, false},
		{"plain, carries a vlan", eth, []netlink.Link{eth, vlanOnEth}, true},
		{"a vlan device", vlanOnEth, []netlink.Link{eth, vlanOnEth}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := vlanConflict(tt.target, tt.links)
			if got := errors.Is(err, ErrVLAN); got != tt.want {
				t.Fatalf("vlanConflict: %v, want ErrVLAN %v", err, tt.want)
			}
		})
	}
}
