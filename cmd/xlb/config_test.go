package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/xlb-dev/xlb/loader"
)

const goodConfig = `
interface: eth0
vip: 172.20.0.100
node_address: 172.20.0.21
postgres:
  user: ramos
  database: ramos-test-db
  password_file: /nonexistent
nodes:
  - name: pg1
    address: 172.20.0.10:5432
  - name: pg2
    address: 172.20.0.11:5432
`

func TestConfigDefaults(t *testing.T) {
	c, err := parseConfig([]byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	got := struct {
		Mode     loader.Mode
		RW, RO   uint16
		SNAT     loader.PortRange
		Interval time.Duration
		Fall     int
		Rise     int
		Socket   string
		Fallback bool
	}{c.mode, c.Ports.RW, c.Ports.RO, c.snat, time.Duration(c.Probe.Interval), c.Probe.Fall, c.Probe.Rise, c.Socket, *c.ReadFallbackToPrimary}
	want := got
	want.Mode, want.RW, want.RO = loader.ModeAuto, 3000, 3001
	want.SNAT = loader.PortRange{Min: 20000, Max: 29999}
	want.Interval, want.Fall, want.Rise = 500*time.Millisecond, 3, 2
	want.Socket, want.Fallback = defaultSocket, true
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("defaults (-want +got):\n%s", diff)
	}
}

func TestExampleConfigParses(t *testing.T) {
	b, err := os.ReadFile("../../deploy/xlb.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseConfig(b); err != nil {
		t.Fatalf("deploy/xlb.example.yaml: %v", err)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name, replace, with, field string
	}{
		{"bad vip", "vip: 172.20.0.100", "vip: 300.1.1.1", "vip"},
		{"ipv6 vip", "vip: 172.20.0.100", "vip: ::1", "vip"},
		{"missing node address", "node_address: 172.20.0.21", "", "node_address"},
		{"node address is the vip", "node_address: 172.20.0.21", "node_address: 172.20.0.100", "node_address"},
		{"bad mode", "interface: eth0", "interface: eth0\nxdp_mode: turbo", "xdp_mode"},
		{"snat range reversed", "interface: eth0", "interface: eth0\nsnat_ports: 3000-2000", "snat_ports"},
		{"snat not a range", "interface: eth0", "interface: eth0\nsnat_ports: lots", "snat_ports"},
		{"half-open timeout too long", "interface: eth0", "interface: eth0\nconntrack:\n  half_open_timeout: 5m", "conntrack.half_open_timeout"},
		{"idle timeout too short", "interface: eth0", "interface: eth0\nconntrack:\n  idle_timeout: 5s", "conntrack.idle_timeout"},
		{"max flows not a power of two", "interface: eth0", "interface: eth0\nconntrack:\n  max_flows: 300000", "conntrack.max_flows"},
		{"max flows too small", "interface: eth0", "interface: eth0\nconntrack:\n  max_flows: 512", "conntrack.max_flows"},
		{"allow source not a cidr", "interface: eth0", "interface: eth0\nallow_sources:\n  rw: [10.0.0.0/8, nope]", "allow_sources.rw[1]"},
		{"allow source with host bits", "interface: eth0", "interface: eth0\nallow_sources:\n  ro: [10.1.2.3/8]", "allow_sources.ro[0]"},
		{"allow source ipv6", "interface: eth0", "interface: eth0\nallow_sources:\n  ro: [\"::/0\"]", "allow_sources.ro[0]"},
		{"same ports", "interface: eth0", "interface: eth0\nports:\n  rw: 3000\n  ro: 3000", "ports.ro"},
		{"bad duration", "interface: eth0", "interface: eth0\nprobe:\n  interval: fast", "(file)"},
		{"timeout zero after defaults", "interface: eth0", "interface: eth0\nprobe:\n  timeout: -1s", "probe.timeout"},
		{"unknown field", "interface: eth0", "interface: eth0\nvipp: 1.2.3.4", "vipp"},
		{"unknown nested field", "  user: ramos\n", "  user: ramos\n  sslmod: require\n", "postgres.sslmod"},
		{"unknown field in a list", "    address: 172.20.0.11:5432\n", "    address: 172.20.0.11:5432\n    priorty: 3\n", "nodes[1].priorty"},
		{"unknown field in a section", "interface: eth0", "interface: eth0\nvrrp:\n  enabled: true\n  prio: 5", "vrrp.prio"},
		{"interface escapes /proc", "interface: eth0", "interface: ../../../../etc", "interface"},
		{"interface with a slash", "interface: eth0", "interface: a/b", "interface"},
		{"interface too long", "interface: eth0", "interface: abcdefghijklmnop", "interface"},
		{"interface dot-dot", "interface: eth0", "interface: \"..\"", "interface"},
		{"interface alias", "interface: eth0", "interface: eth0:1", "interface"},
		{"interface with a space", "interface: eth0", "interface: \"eth 0\"", "interface"},
		{"no user", "  user: ramos\n", "", "postgres.user"},
		{"bad sslmode", "  user: ramos\n", "  user: ramos\n  sslmode: maybe\n", "postgres.sslmode"},
		{"verify-full without a CA", "  user: ramos\n", "  user: ramos\n  sslmode: verify-full\n", "postgres.sslrootcert"},
		{"missing CA file", "  user: ramos\n", "  user: ramos\n  sslmode: verify-ca\n  sslrootcert: /nonexistent/ca.pem\n", "postgres.sslrootcert"},
		{"cert without key", "  user: ramos\n", "  user: ramos\n  sslcert: /nonexistent/c.pem\n", "postgres.sslkey"},
		{"node without name", "  - name: pg2\n", "  - name: \"\"\n", "nodes[1].name"},
		{"duplicate name", "  - name: pg2\n", "  - name: pg1\n", "nodes[1].name"},
		{"bad node address", "address: 172.20.0.11:5432", "address: pg2", "nodes[1].address"},
		{"duplicate address", "address: 172.20.0.11:5432", "address: 172.20.0.10:5432", "nodes[1].address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(goodConfig, tt.replace) {
				t.Fatalf("test broken: %q not in config", tt.replace)
			}
			_, err := parseConfig([]byte(strings.Replace(goodConfig, tt.replace, tt.with, 1)))
			ce, ok := err.(*ConfigError)
			if !ok {
				t.Fatalf("got %v, want a *ConfigError", err)
			}
			if ce.Field != tt.field {
				t.Fatalf("field %q (%v), want %q", ce.Field, err, tt.field)
			}
			if strings.Contains(tt.name, "unknown") && !strings.Contains(err.Error(), "unknown field (line ") {
				t.Errorf("error %q does not say unknown field and its line", err)
			}
		})
	}
}

// TestConfigTLSFiles checks the TLS files' content and modes: a root
// certificate that holds no PEM certificate and a key its group may read
// are refused, naming the field; good files pass.
func TestConfigTLSFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ca := write("ca.pem", testCAPEM(t), 0o644)
	junk := write("junk.pem", "not a certificate\n", 0o644)
	cert := write("client.pem", testCAPEM(t), 0o644)
	openKey := write("open.key", "key\n", 0o640)
	key := write("client.key", "key\n", 0o600)
	tests := []struct {
		name, tls, field string
	}{
		{"good", "  sslmode: verify-full\n  sslrootcert: " + ca + "\n  sslcert: " + cert + "\n  sslkey: " + key + "\n", ""},
		{"junk CA", "  sslmode: verify-ca\n  sslrootcert: " + junk + "\n", "postgres.sslrootcert"},
		{"key readable by its group", "  sslcert: " + cert + "\n  sslkey: " + openKey + "\n", "postgres.sslkey"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseConfig([]byte(strings.Replace(goodConfig, "  user: ramos\n", "  user: ramos\n"+tt.tls, 1)))
			if tt.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Postgres.TLS.SSLRootCert != ca || c.Postgres.TLS.SSLKey != key {
					t.Errorf("TLS settings = %+v, want the files given", c.Postgres.TLS)
				}
				return
			}
			ce, ok := err.(*ConfigError)
			if !ok {
				t.Fatalf("got %v, want a *ConfigError", err)
			}
			if ce.Field != tt.field {
				t.Fatalf("field %q (%v), want %q", ce.Field, err, tt.field)
			}
		})
	}
	c, err := parseConfig([]byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.Postgres.TLS.SSLMode != "prefer" {
		t.Errorf("default sslmode %q, want prefer", c.Postgres.TLS.SSLMode)
	}
}

// testCAPEM returns a fresh self-signed CA certificate in PEM.
func testCAPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "xlb test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// TestRunExitCodes runs `xlb run` on bad input: exit 2 and the field named
// on stderr, before anything is loaded.
func TestRunExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(strings.Replace(goodConfig, "vip: 172.20.0.100", "vip: nope", 1)), 0o600)
	nopw := filepath.Join(dir, "nopw.yaml")
	os.WriteFile(nopw, []byte(strings.Replace(goodConfig, "interface: eth0", "interface: lo", 1)), 0o600)
	nolink := filepath.Join(dir, "nolink.yaml")
	os.WriteFile(nolink, []byte(strings.Replace(goodConfig, "interface: eth0", "interface: xlbnosuch0", 1)), 0o600)
	tests := []struct {
		name  string
		args  []string
		code  int
		field string
	}{
		{"bad config", []string{"xlb", "run", "--config", bad}, 2, "vip"},
		{"missing password file", []string{"xlb", "run", "--config", nopw}, 2, "postgres.password_file"},
		{"missing config file", []string{"xlb", "run", "--config", filepath.Join(dir, "none.yaml")}, 2, "--config"},
		{"no such interface", []string{"xlb", "run", "--config", nolink}, 2, "config: interface: \"xlbnosuch0\": no such link"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := run(tt.args, &stderr); code != tt.code {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tt.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.field) {
				t.Fatalf("stderr %q does not name %s", stderr.String(), tt.field)
			}
		})
	}
}

// TestMaxReadLag: absent means 30 s; 0 means no limit, as the example
// configuration says.
func TestMaxReadLag(t *testing.T) {
	for _, tt := range []struct {
		extra string
		want  time.Duration
	}{
		{"", 30 * time.Second},
		{"max_read_lag: 0\n", 0},
		{"max_read_lag: 5s\n", 5 * time.Second},
	} {
		c, err := parseConfig([]byte(goodConfig + tt.extra))
		if err != nil {
			t.Fatal(err)
		}
		if got := time.Duration(*c.MaxReadLag); got != tt.want {
			t.Errorf("%q: max_read_lag %v, want %v", tt.extra, got, tt.want)
		}
	}
}
