package postgres

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseConnInfo(t *testing.T) {
	tests := []struct {
		in   string
		want connInfo
	}{
		{"", nil},
		{"host=a port=5432", connInfo{{"host", "a"}, {"port", "5432"}}},
		{"  host = a\tport=\n5432  ", connInfo{{"host", "a"}, {"port", "5432"}}},
		{`user=x passfile='/var/lib/my pg/pgpass' application_name=pg2`,
			connInfo{{"user", "x"}, {"passfile", "/var/lib/my pg/pgpass"}, {"application_name", "pg2"}}},
		{`password='it\'s a \\ secret' options=''`, connInfo{{"password", `it's a \ secret`}, {"options", ""}}},
		{`application_name=a\ b`, connInfo{{"application_name", "a b"}}},
		{"host=a host=b", connInfo{{"host", "b"}}},
		{"postgresql://rep:p%40ss@h1:5433,h2/db?application_name=pg2&sslmode=require",
			connInfo{{"user", "rep"}, {"password", "p@ss"}, {"host", "h1,h2"}, {"port", "5433,"}, {"dbname", "db"},
				{"application_name", "pg2"}, {"sslmode", "require"}}},
		{"postgres://[::1]:5432", connInfo{{"host", "::1"}, {"port", "5432"}}},
		{"postgresql://", nil},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseConnInfo(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parseConnInfo(%q) (-want +got):\n%s", tt.in, diff)
			}
			again, err := parseConnInfo(got.String())
			if err != nil {
				t.Fatalf("parsing %q: %v", got.String(), err)
			}
			if diff := cmp.Diff(got, again); diff != "" {
				t.Errorf("round trip through %q (-want +got):\n%s", got.String(), diff)
			}
		})
	}
}

func TestParseConnInfoErrors(t *testing.T) {
	for _, in := range []string{"host", "host a", "=a", "ho'st=a", "postgresql://h?a%20b=c", "password='secret", "postgresql://[::1", "postgresql://h/?x", "postgresql://h/%zz"} {
		t.Run(in, func(t *testing.T) {
			_, err := parseConnInfo(in)
			if !errors.Is(err, errConnInfo) {
				t.Fatalf("parseConnInfo(%q) = %v, want errConnInfo", in, err)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q quotes the value", err)
			}
		})
	}
}

func TestConnInfoSetDel(t *testing.T) {
	c, err := parseConnInfo("hostaddr=10.0.0.1 host=old port=1 user=rep passfile=/p application_name=pg3")
	if err != nil {
		t.Fatal(err)
	}
	c.set("host", "127.0.0.1")
	c.set("port", "5433")
	c.del("hostaddr")
	c.set("sslmode", "prefer")
	if got, want := c.String(), "host=127.0.0.1 port=5433 user=rep passfile=/p application_name=pg3 sslmode=prefer"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestDropPassword(t *testing.T) {
	tests := []struct {
		in, want string
		err      error
	}{
		{"host=a user=rep passfile=/p", "host=a user=rep passfile=/p", nil},
		{"host=a password=secret passfile=/p user=rep", "host=a passfile=/p user=rep", nil},
		{"host=a password=secret user=rep", "host=a password=secret user=rep", errPasswordInConnInfo},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			c, err := parseConnInfo(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			err = dropPassword(&c)
			if !errors.Is(err, tt.err) {
				t.Fatalf("dropPassword = %v, want %v", err, tt.err)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q quotes the password", err)
			}
			if diff := cmp.Diff(tt.want, c.String()); diff != "" {
				t.Errorf("after dropPassword (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzConnInfo checks that whatever parses formats back to the same pairs.
func FuzzConnInfo(f *testing.F) {
	for _, s := range []string{"host=a port=1", `a='b c' d=\'`, "postgresql://u:p@h:1/d?x=y", `x='\\'`, "a=\tb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseConnInfo(s)
		if err != nil {
			return
		}
		again, err := parseConnInfo(c.String())
		if err != nil {
			t.Fatalf("parsing %q (from %q): %v", c.String(), s, err)
		}
		if len(c) == 0 && len(again) == 0 {
			return
		}
		if diff := cmp.Diff(c, again); diff != "" {
			t.Errorf("round trip of %q through %q (-want +got):\n%s", s, c.String(), diff)
		}
	})
}
