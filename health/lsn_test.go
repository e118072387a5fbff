package health

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in      string
		want    LSN
		wantStr string // String of the result; empty means in
		wantErr bool
	}{
		{in: "0/0", want: 0},
		{in: "0/3000060", want: 0x3000060},
		{in: "16/B374D848", want: 0x16_B374D848},
		{in: "FFFFFFFF/FFFFFFFF", want: math.MaxUint64},
		{in: "1/0", want: 1 << 32},
		{in: "a/b", want: 0xa_0000000b, wantStr: "A/B"},
		{in: "00000000/00000001", want: 1, wantStr: "0/1"},
		{in: "", wantErr: true},
		{in: "0", wantErr: true},
		{in: "/0", wantErr: true},
		{in: "0/", wantErr: true},
		{in: "/", wantErr: true},
		{in: "123456789/0", wantErr: true},
		{in: "0/123456789", wantErr: true},
		{in: "0/0 ", wantErr: true},
		{in: " 0/0", wantErr: true},
		{in: "0/0/0", wantErr: true},
		{in: "+1/0", wantErr: true},
		{in: "-1/0", wantErr: true},
		{in: "0x1/0", wantErr: true},
		{in: "g/0", wantErr: true},
		{in: "0/1_0", wantErr: true},
		{in: "0\x00/0", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseLSN(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseLSN(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseLSN(%q) (-want +got):\n%s", tt.in, diff)
			}
			wantStr := tt.wantStr
			if wantStr == "" {
				wantStr = tt.in
			}
			if diff := cmp.Diff(wantStr, got.String()); diff != "" {
				t.Errorf("String (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLSNJSON(t *testing.T) {
	type doc struct {
		LSN LSN `json:"lsn"`
	}
	b, err := json.Marshal(doc{0x16_B374D848})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(`{"lsn":"16/B374D848"}`, string(b)); diff != "" {
		t.Errorf("Marshal (-want +got):\n%s", diff)
	}
	var got doc
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(doc{0x16_B374D848}, got); diff != "" {
		t.Errorf("Unmarshal (-want +got):\n%s", diff)
	}
	if err := json.Unmarshal([]byte(`{"lsn":"16"}`), &got); err == nil {
		t.Errorf("Unmarshal of a malformed LSN succeeded")
	}
}

// FuzzParseLSN checks that whatever ParseLSN accepts formats back to a
// string it parses to the same LSN, and that it accepts only the
// characters of PostgreSQL's pg_lsn.
func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{"0/0", "0/3000060", "FFFFFFFF/FFFFFFFF", "a/b", "00000000/00000001", "", "/", "123456789/0", "0/0/0", "+1/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLSN(s)
		if err != nil {
			return
		}
		if len(s) < 3 || len(s) > 17 {
			t.Errorf("ParseLSN(%q) accepted a string of length %d", s, len(s))
		}
		for _, c := range s {
			if !(c == '/' || '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				t.Errorf("ParseLSN(%q) accepted %q", s, c)
			}
		}
		back, err := ParseLSN(l.String())
		if err != nil {
			t.Fatalf("ParseLSN(%q).String() = %q does not parse: %v", s, l.String(), err)
		}
		if back != l {
			t.Errorf("ParseLSN(%q) = %d, but its String %q parses to %d", s, l, l.String(), back)
		}
	})
}
