package loader

import (
	"errors"
	"testing"
)

func TestCheckInterfaceName(t *testing.T) {
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"eth0", true}, {"lo", true}, {"xlb-lb1.10", true}, {"abcdefghijklmno", true},
		{"", false}, {".", false}, {"..", false}, {"abcdefghijklmnop", false},
		{"../../etc", false}, {"a/b", false}, {"eth0:1", false}, {"eth 0", false},
		{"eth\t0", false}, {"eth0\n", false}, {"eth\x000", false}, {"eth\x7f", false},
	} {
		err := CheckInterfaceName(tt.name)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInterfaceName)) {
			t.Errorf("CheckInterfaceName(%q) = %v, want ok %t", tt.name, err, tt.ok)
		}
	}
	if err := EnableForwarding("../../../../tmp"); !errors.Is(err, ErrInterfaceName) {
		t.Errorf("EnableForwarding(../../../../tmp) = %v, want ErrInterfaceName", err)
	}
}
