package lab

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// Secrets are the passwords of a lab's roles: User's, AdminUser's and
// ReplicationUser's. They are made for each lab by NewSecrets, never
// compiled into a binary: Up writes them to secrets.json (0600) in the
// lab's state directory, and everything that works on a running lab from
// another process (Exec, Demo, Drill, Open) reads them back from there with
// ReadSecrets. Clusters started outside a lab (the tests' loopback
// clusters) share the secrets of their process, ProcessSecrets.
type Secrets struct {
	// Password is User's, the application role's.
	Password string `json:"password"`
	// AdminPassword is AdminUser's, the role xlb promotes and rejoins as.
	AdminPassword string `json:"admin_password"`
	// ReplicationPassword is ReplicationUser's, the role replicas stream
	// as.
	ReplicationPassword string `json:"replication_password"`
}

// secretsFile is the name of the lab's secrets in its state directory.
const secretsFile = "secrets.json"

// NewSecrets returns fresh passwords: 24 random bytes each (crypto/rand),
// hex-encoded, so they need no quoting anywhere.
func NewSecrets() (Secrets, error) {
	var s Secrets
	for _, p := range []*string{&s.Password, &s.AdminPassword, &s.ReplicationPassword} {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return Secrets{}, fmt.Errorf("making a lab password: %w", err)
		}
		*p = fmt.Sprintf("%x", b)
	}
	return s, nil
}

var processSecrets = sync.OnceValue(func() Secrets {
	s, err := NewSecrets()
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return s
})

// ProcessSecrets returns the secrets made once for this process: the
// defaults of StartPostgres and StartReplica for clusters that are not part
// of a lab that Up built.
func ProcessSecrets() Secrets { return processSecrets() }

// write writes s to dir/secrets.json, readable by root only.
func (s Secrets) write(dir string) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encoding lab secrets: %w", err)
	}
	name := filepath.Join(dir, secretsFile)
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("writing lab secrets: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("writing lab secrets %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing lab secrets %s: %w", name, err)
	}
	return nil
}

// ReadSecrets returns the secrets of the lab with prefix, from its state
// directory. It returns an error wrapping errNoState when the lab has no
// state directory.
func ReadSecrets(prefix string) (Secrets, error) {
	if err := validatePrefix(prefix); err != nil {
		return Secrets{}, err
	}
	name := filepath.Join(StateDir(prefix), secretsFile)
	b, err := os.ReadFile(name)
	if errors.Is(err, os.ErrNotExist) {
		return Secrets{}, fmt.Errorf("reading %s: %w", name, errNoState)
	}
	if err != nil {
		return Secrets{}, fmt.Errorf("reading lab secrets: %w", err)
	}
	var s Secrets
	if err := json.Unmarshal(b, &s); err != nil {
		return Secrets{}, fmt.Errorf("decoding %s: %w", name, err)
	}
	if s.Password == "" || s.AdminPassword == "" || s.ReplicationPassword == "" {
		return Secrets{}, fmt.Errorf("reading %s: a password is missing", name)
	}
	return s, nil
}

// config returns c with s's passwords.
func (s Secrets) config(c PostgresConfig) PostgresConfig {
	c.Password, c.AdminPassword, c.ReplicationPassword = s.Password, s.AdminPassword, s.ReplicationPassword
	return c
}

// AppConn returns the application role's credentials on host:port, in
// Database.
func (s Secrets) AppConn(host netip.Addr, port int) ConnInfo {
	return ConnInfo{Host: host.String(), Port: port, User: User, Password: s.Password, Database: Database}
}

// AdminConn returns the administrative role's credentials on host:port,
// in the postgres database.
func (s Secrets) AdminConn(host netip.Addr, port int) ConnInfo {
	return ConnInfo{Host: host.String(), Port: port, User: AdminUser, Password: s.AdminPassword, Database: "postgres"}
}
