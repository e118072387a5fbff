package health

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a server certificate for ip signed by ca, and its key,
// PEM-encoded.
func (ca *testCA) issue(t *testing.T, ip net.IP) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: ip.String()},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{ip}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// TestTLS probes a server whose pg_hba.conf admits TCP over TLS only
// (hostssl), with a certificate for 127.0.0.1 from a CA made here:
// verify-full with that CA works and the session is encrypted; prefer (the
// default) works too; disable is refused by the server; another CA, or a
// certificate for another address, fails with a message naming the
// setting. The administrative connection builder is the same one
// (ConnConfig), so control/postgres's actions get the same TLS.
func TestTLS(t *testing.T) {
	lab.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ca := newTestCA(t, "xlb test CA")
	cert, key := ca.issue(t, net.IPv4(127, 0, 0, 1))
	port, err := lab.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	pg, err := lab.StartPostgres(ctx, nil, lab.PostgresConfig{Port: port, TLS: &lab.ServerTLS{CertPEM: cert, KeyPEM: key}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Close(); err != nil {
			t.Errorf("stopping postgres: %v", err)
		}
	})
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", ca.pem)
	otherCA := write("other-ca.pem", newTestCA(t, "another CA").pem)
	target := Target{Name: "pg1", Addr: pg.Addr(), User: lab.User, Database: lab.Database, Password: lab.ProcessSecrets().Password}
	super := superConn(ctx, t, pg)

	tests := []struct {
		name    string
		tls     TLS
		errHas  string // "" for a good probe
		checkSL bool
	}{
		{name: "verify-full", tls: TLS{SSLMode: "verify-full", SSLRootCert: caFile}},
		{name: "verify-ca", tls: TLS{SSLMode: "verify-ca", SSLRootCert: caFile}},
		{name: "prefer", tls: TLS{}},
		{name: "disable", tls: TLS{SSLMode: "disable"}, errHas: "no encryption"},
		{name: "wrong CA", tls: TLS{SSLMode: "verify-full", SSLRootCert: otherCA}, errHas: "not signed by a CA in sslrootcert " + otherCA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.tls.Check(); err != nil {
				t.Fatalf("Check: %v", err)
			}
			tg := target
			tg.TLS = tt.tls
			p := NewProber(tg, 5*time.Second)
			defer p.Close()
			o := p.Probe(ctx)
			if tt.errHas != "" {
				if o.Err == nil || !strings.Contains(o.Err.Error(), tt.errHas) {
					t.Fatalf("probe error %v, want one saying %q", o.Err, tt.errHas)
				}
				t.Logf("probe error: %v", o.Err)
				return
			}
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			// The probe's session is the only one of xlb's: it is encrypted.
			var ssl bool
			var version string
			err := super.QueryRow(ctx, `SELECT s.ssl, coalesce(s.version, '') FROM pg_stat_ssl s
				JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1`, ApplicationName).Scan(&ssl, &version)
			if err != nil {
				t.Fatal(err)
			}
			if !ssl {
				t.Errorf("the probe's session is not encrypted")
			}
			t.Logf("probe session: ssl %v, %s", ssl, version)
		})
	}

	// CheckRole, over TLS: the lab's probe role has pg_monitor, a role
	// without it is refused with ErrPrivilege, the admin role is a
	// superuser.
	t.Run("CheckRole", func(t *testing.T) {
		tg := target
		tg.TLS = TLS{SSLMode: "verify-full", SSLRootCert: caFile}
		if super, err := CheckRole(ctx, tg, 5*time.Second); err != nil || super {
			t.Errorf("CheckRole(%s) = %v, %v; want no superuser, nil", tg.User, super, err)
		}
		if _, err := super.Exec(ctx, "CREATE ROLE nomon LOGIN PASSWORD 'nomon-pw'; GRANT CONNECT ON DATABASE \"ramos-test-db\" TO nomon"); err != nil {
			t.Fatal(err)
		}
		nomon := tg
		nomon.User, nomon.Password = "nomon", "nomon-pw"
		_, err := CheckRole(ctx, nomon, 5*time.Second)
		if !errors.Is(err, ErrPrivilege) || !strings.Contains(err.Error(), "pg_monitor") {
			t.Errorf("CheckRole(nomon) = %v, want ErrPrivilege naming pg_monitor", err)
		}
		admin := tg
		admin.User, admin.Password, admin.Database = lab.AdminUser, lab.ProcessSecrets().AdminPassword, "postgres"
		if super, err := CheckRole(ctx, admin, 5*time.Second); err != nil || !super {
			t.Errorf("CheckRole(%s) = %v, %v; want superuser, nil", admin.User, super, err)
		}
	})

	// A certificate that names another address fails verify-full, and
	// says so, but passes verify-ca.
	t.Run("certificate for another address", func(t *testing.T) {
		tg := target
		tg.Addr = pg.Addr()
		// Dial 127.0.0.1 by the name "localhost": the certificate names
		// only the address.
		conn, err := Connect(ctx, "localhost", pg.Addr().Port(), Login{User: tg.User, Database: tg.Database,
			Password: tg.Password, TLS: TLS{SSLMode: "verify-full", SSLRootCert: caFile}}, 5*time.Second)
		if err == nil {
			conn.Close(ctx)
			t.Fatal("verify-full to localhost with a certificate for 127.0.0.1 connected")
		}
		if !strings.Contains(err.Error(), "does not name localhost") {
			t.Errorf("error %v, want one saying the certificate does not name localhost", err)
		}
		conn, err = Connect(ctx, "localhost", pg.Addr().Port(), Login{User: tg.User, Database: tg.Database,
			Password: tg.Password, TLS: TLS{SSLMode: "verify-ca", SSLRootCert: caFile}}, 5*time.Second)
		if err != nil {
			t.Fatalf("verify-ca to localhost: %v", err)
		}
		conn.Close(ctx)
	})
}
