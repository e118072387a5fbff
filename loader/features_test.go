package loader_test

import (
	"testing"

	"github.com/xlb-dev/xlb/deploy/lab"
	"github.com/xlb-dev/xlb/loader"
)

// TestCheckKernel runs the start-up feature check on this machine's
// kernel, which has every feature (CI's kernels are 6.x).
func TestCheckKernel(t *testing.T) {
	lab.RequirePrivileged(t)
	if err := loader.CheckKernel(); err != nil {
		t.Fatalf("CheckKernel: %v", err)
	}
}
