package loader

import (
	"errors"
	"strings"
	"testing"
)

// TestFeatureVersions checks that MinKernel is the newest Since of
// Features and that every Since parses.
func TestFeatureVersions(t *testing.T) {
	var newest uint32
	var name string
	for _, f := range Features {
		v := versionCode(f.Since)
		if v < versionCode("3.0") {
			t.Errorf("%s: Since %q is no release", f.Name, f.Since)
		}
		if v > newest {
			newest, name = v, f.Name
		}
	}
	if newest != versionCode(MinKernel) {
		t.Errorf("MinKernel %s, but the newest feature (%s) is of another release", MinKernel, name)
	}
}

// TestMissingError checks that the error names each missing feature with
// its release.
func TestMissingError(t *testing.T) {
	err := error(&MissingError{Missing: []Feature{{Name: "map flag X", Since: "5.5"}, {Name: "helper y", Since: "5.11"}}})
	for _, want := range []string{"map flag X (Linux 5.5)", "helper y (Linux 5.11)", "Linux " + MinKernel + " or newer"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	var me *MissingError
	if !errors.As(err, &me) || len(me.Missing) != 2 {
		t.Errorf("errors.As(%v, *MissingError) = %v", err, me)
	}
}
