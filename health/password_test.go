package health

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPasswordFrom(t *testing.T) {
	const secret = "s3cret:pw"
	dir := t.TempDir()
	writeMode := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	write := func(name, content string) string { return writeMode(name, content, 0o600) }
	tests := []struct {
		name    string
		file    string
		env     map[string]string
		names   []string
		want    string
		wantErr error // matched with errors.Is; nil means success
		errHas  string
	}{
		{name: "file", file: write("plain", secret), want: secret},
		{name: "file with newline", file: write("nl", secret+"\n"), want: secret},
		{name: "file with crlf", file: write("crlf", secret+"\r\n"), want: secret},
		{name: "file keeps spaces", file: write("sp", " "+secret+" \n"), want: " " + secret + " "},
		{name: "file wins over env", file: write("win", secret), env: map[string]string{"XLB_TEST_PW": "other"}, names: []string{"XLB_TEST_PW"}, want: secret},
		{name: "empty file", file: write("empty", "\n"), wantErr: ErrNoPassword, errHas: "empty"},
		{name: "group readable", file: writeMode("group", secret, 0o640), wantErr: ErrPasswordFileMode, errHas: "chmod 600"},
		{name: "world readable", file: writeMode("world", secret, 0o604), wantErr: ErrPasswordFileMode, errHas: "chmod 600"},
		{name: "owner read only", file: writeMode("ro", secret, 0o400), want: secret},
		{name: "missing file", file: filepath.Join(dir, "missing"), wantErr: fs.ErrNotExist, errHas: filepath.Join(dir, "missing")},
		{name: "first env", env: map[string]string{"XLB_TEST_PW": secret, "XLB_TEST_PW2": "other"}, names: []string{"XLB_TEST_PW", "XLB_TEST_PW2"}, want: secret},
		{name: "second env", env: map[string]string{"XLB_TEST_PW2": secret}, names: []string{"XLB_TEST_PW", "XLB_TEST_PW2"}, want: secret},
		{name: "empty env skipped", env: map[string]string{"XLB_TEST_PW": "", "XLB_TEST_PW2": secret}, names: []string{"XLB_TEST_PW", "XLB_TEST_PW2"}, want: secret},
		{name: "no env", names: []string{"XLB_TEST_PW", "XLB_TEST_PW2"}, wantErr: ErrNoPassword, errHas: "XLB_TEST_PW, XLB_TEST_PW2"},
		{name: "nothing", wantErr: ErrNoPassword},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, n := range []string{"XLB_TEST_PW", "XLB_TEST_PW2"} {
				t.Setenv(n, tt.env[n])
			}
			got, err := PasswordFrom(tt.file, tt.names...)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("PasswordFrom (-want +got):\n%s", diff)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("PasswordFrom error = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.errHas) {
				t.Errorf("error %q does not name %q", err, tt.errHas)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q carries the secret", err)
			}
		})
	}
}

func TestPasswordFromUnreadable(t *testing.T) {
	// A directory cannot be read as a file, also for root.
	dir := t.TempDir()
	_, err := PasswordFrom(dir)
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("PasswordFrom(directory) = %v, want an error naming %s", err, dir)
	}
}
