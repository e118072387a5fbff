package loader_test

import (
	"fmt"
	"testing"

	"github.com/xlb-dev/xlb/deploy/lab"
	"github.com/xlb-dev/xlb/loader"
)

// TestLoadsAtEveryConfig loads the datapath at the edges of what its
// configuration allows: the verifier follows the program with the
// configuration's constants, so a SNAT range or flag it was never loaded
// with could make it too complex to load (the limit is a million
// instructions explored; a range of 65535 ports explores the most).
func TestLoadsAtEveryConfig(t *testing.T) {
	lab.RequirePrivileged(t)
	ranges := []loader.PortRange{{Min: 20000, Max: 20000}, {Min: 20000, Max: 20014}, {Min: 20000, Max: 20015},
		{Min: 20000, Max: 29999}, {Min: 1, Max: 65535}}
	for _, r := range ranges {
		for _, lease := range []bool{false, true} {
			for _, flows := range []uint32{loader.MinMaxFlows, loader.DefaultMaxFlows} {
				t.Run(fmt.Sprintf("ports %d-%d lease %v flows %d", r.Min, r.Max, lease, flows), func(t *testing.T) {
					dp, err := loader.Load(loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: r, SkipPortCheck: true,
						Lease: lease, MaxFlows: flows})
					if err != nil {
						t.Fatal(err)
					}
					if err := dp.Close(); err != nil {
						t.Fatal(err)
					}
				})
			}
		}
	}
}
