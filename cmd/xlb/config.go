package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/xlb-dev/xlb/health"
	"github.com/xlb-dev/xlb/loader"
)

// Config is xlb run's configuration file; deploy/xlb.example.yaml documents
// every field.
type Config struct {
	Interface             string          `yaml:"interface"`
	XDPMode               string          `yaml:"xdp_mode"`
	VIP                   string          `yaml:"vip"`
	NodeAddress           string          `yaml:"node_address"`
	Ports                 PortsConfig     `yaml:"ports"`
	SNATPorts             string          `yaml:"snat_ports"`
	Conntrack             ConntrackConfig `yaml:"conntrack"`
	AllowSources          AllowConfig     `yaml:"allow_sources"`
	PinPath               string          `yaml:"pin_path"`
	Socket                string          `yaml:"socket"`
	StateFile             string          `yaml:"state_file"`
	Postgres              PostgresConfig  `yaml:"postgres"`
	Probe                 ProbeConfig     `yaml:"probe"`
	MaxReadLag            *Duration       `yaml:"max_read_lag"` // nil: 30 s; 0: no limit
	ReadFallbackToPrimary *bool           `yaml:"read_fallback_to_primary"`
	Failover              *bool           `yaml:"failover"`
	MaxLagOnFailover      *int64          `yaml:"max_lag_on_failover"`
	Synchronous           bool            `yaml:"synchronous"`
	VRRP                  VRRPConfig      `yaml:"vrrp"`
	Nodes                 []NodeConfig    `yaml:"nodes"`
	HTTP                  HTTPConfig      `yaml:"http"`

	// Parsed forms, filled by validate.
	vip, nodeAddr netip.Addr
	snat          loader.PortRange
	allowRW       []netip.Prefix
	allowRO       []netip.Prefix
	mode          loader.Mode
	nodes         []netip.AddrPort
	path          string // the file LoadConfig read
}

// PortsConfig holds the VIP's service ports.
type PortsConfig struct {
	RW uint16 `yaml:"rw"`
	RO uint16 `yaml:"ro"`
}

// ConntrackConfig holds the flow timeouts and the flow table's size.
type ConntrackConfig struct {
	HalfOpenTimeout Duration `yaml:"half_open_timeout"`
	ClosedTimeout   Duration `yaml:"closed_timeout"`
	IdleTimeout     Duration `yaml:"idle_timeout"`
	// MaxFlows is the flow table's size in entries (a power of two;
	// 48 bytes each); default 262144.
	MaxFlows uint32 `yaml:"max_flows"`
}

// AllowConfig lists, per service, the client prefixes that may open flows
// (CIDR); empty allows everyone.
type AllowConfig struct {
	RW []string `yaml:"rw"`
	RO []string `yaml:"ro"`
}

// PostgresConfig holds how probes log in.
type PostgresConfig struct {
	User              string `yaml:"user"`
	Database          string `yaml:"database"`
	PasswordFile      string `yaml:"password_file"`
	AdminUser         string `yaml:"admin_user"`
	AdminPasswordFile string `yaml:"admin_password_file"`
	// TLS (sslmode, sslrootcert, sslcert, sslkey) protects the probes'
	// connections and the administrative ones alike.
	TLS health.TLS `yaml:",inline"`
}

// ProbeConfig holds the probe timing and hysteresis.
type ProbeConfig struct {
	Interval Duration `yaml:"interval"`
	Timeout  Duration `yaml:"timeout"`
	Fall     int      `yaml:"fall"`
	Rise     int      `yaml:"rise"`
	// FloodGrace: how long timed-out probes of a node that still answers
	// its clients through a SYN flood are forgiven (control.Config).
	FloodGrace Duration `yaml:"flood_grace"`
}

// VRRPConfig is the VIP election between LB nodes (VRRPv3).
type VRRPConfig struct {
	Enabled        bool     `yaml:"enabled"`
	VRID           int      `yaml:"vrid"`
	Priority       int      `yaml:"priority"`
	AdvertInterval Duration `yaml:"advert_interval"`
	Preempt        *bool    `yaml:"preempt"`
	UnicastPeers   []string `yaml:"unicast_peers"`
	GARPRefresh    Duration `yaml:"garp_refresh"`

	peers []netip.Addr
}

// NodeConfig is one PostgreSQL node.
type NodeConfig struct {
	Name     string `yaml:"name"`
	Address  string `yaml:"address"`
	Priority int    `yaml:"priority"`
}

// Duration is a time.Duration written as "500ms" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (like 500ms)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// ConfigError is a bad configuration value; xlb exits with code 2.
type ConfigError struct {
	Field string
	Err   error
}

func (e *ConfigError) Error() string { return fmt.Sprintf("config: %s: %v", e.Field, e.Err) }
func (e *ConfigError) Unwrap() error { return e.Err }

func fieldErr(field, format string, args ...any) error {
	return &ConfigError{Field: field, Err: fmt.Errorf(format, args...)}
}

// LoadConfig reads, defaults and validates the configuration at path, and
// checks that its interface exists. Its errors are *ConfigError naming the
// field.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, &ConfigError{Field: "--config", Err: err}
	}
	c, err := parseConfig(b)
	if err != nil {
		return nil, err
	}
	if err := checkLink(c.Interface); err != nil {
		return nil, err
	}
	c.path = path
	return c, nil
}

// checkLink checks that the interface names a link of this network
// namespace: xlb run attaches to it, and xlb config check is run where
// xlb runs.
func checkLink(name string) error {
	if _, err := net.InterfaceByName(name); err != nil {
		return &ConfigError{Field: "interface", Err: fmt.Errorf("%q: no such link in this network namespace: %w", name, err)}
	}
	return nil
}

func parseConfig(b []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		// KnownFields refused a key, or a value is bad: name the key
		// from the document's own tree when one is unknown.
		var doc yaml.Node
		if yerr := yaml.Unmarshal(b, &doc); yerr == nil {
			if field, line := unknownField(&doc, reflect.TypeFor[Config](), ""); field != "" {
				return nil, &ConfigError{Field: field, Err: fmt.Errorf("unknown field (line %d)", line)}
			}
		}
		return nil, &ConfigError{Field: "(file)", Err: err}
	}
	c.setDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) setDefaults() {
	if c.Interface == "" {
		c.Interface = "eth0"
	}
	if c.XDPMode == "" {
		c.XDPMode = "auto"
	}
	if c.Ports.RW == 0 {
		c.Ports.RW = 3000
	}
	if c.Ports.RO == 0 {
		c.Ports.RO = 3001
	}
	if c.SNATPorts == "" {
		c.SNATPorts = "20000-29999"
	}
	if c.PinPath == "" {
		c.PinPath = loader.DefaultPinPath
	}
	if c.Conntrack.HalfOpenTimeout == 0 {
		c.Conntrack.HalfOpenTimeout = Duration(10 * time.Second)
	}
	if c.Conntrack.ClosedTimeout == 0 {
		c.Conntrack.ClosedTimeout = Duration(10 * time.Second)
	}
	if c.Conntrack.IdleTimeout == 0 {
		c.Conntrack.IdleTimeout = Duration(24 * time.Hour)
	}
	if c.Conntrack.MaxFlows == 0 {
		c.Conntrack.MaxFlows = loader.DefaultMaxFlows
	}
	if c.Socket == "" {
		c.Socket = defaultSocket
	}
	if c.StateFile == "" {
		c.StateFile = defaultStateFile
	}
	if c.Postgres.TLS.SSLMode == "" {
		c.Postgres.TLS.SSLMode = "prefer"
	}
	if c.Probe.Interval == 0 {
		c.Probe.Interval = Duration(500 * time.Millisecond)
	}
	if c.Probe.Timeout == 0 {
		c.Probe.Timeout = Duration(300 * time.Millisecond)
	}
	if c.Probe.Fall == 0 {
		c.Probe.Fall = 3
	}
	if c.Probe.Rise == 0 {
		c.Probe.Rise = 2
	}
	if c.Probe.FloodGrace == 0 {
		c.Probe.FloodGrace = Duration(30 * time.Second)
	}
	if c.MaxReadLag == nil {
		d := Duration(30 * time.Second)
		c.MaxReadLag = &d
	}
	if c.ReadFallbackToPrimary == nil {
		t := true
		c.ReadFallbackToPrimary = &t
	}
	if c.Failover == nil {
		t := true
		c.Failover = &t
	}
	if c.VRRP.VRID == 0 {
		c.VRRP.VRID = 51
	}
	if c.VRRP.Priority == 0 {
		c.VRRP.Priority = 100
	}
	if c.VRRP.AdvertInterval == 0 {
		c.VRRP.AdvertInterval = Duration(50 * time.Millisecond)
	}
	if c.VRRP.Preempt == nil {
		t := true
		c.VRRP.Preempt = &t
	}
	if c.MaxLagOnFailover == nil {
		n := int64(1 << 20)
		c.MaxLagOnFailover = &n
	}
	c.HTTP.setDefaults()
}

func (c *Config) validate() error {
	var err error
	if err := loader.CheckInterfaceName(c.Interface); err != nil {
		return &ConfigError{Field: "interface", Err: err}
	}
	if c.vip, err = netip.ParseAddr(c.VIP); err != nil || !c.vip.Is4() {
		return fieldErr("vip", "%q is not an IPv4 address", c.VIP)
	}
	if c.nodeAddr, err = netip.ParseAddr(c.NodeAddress); err != nil || !c.nodeAddr.Is4() {
		return fieldErr("node_address", "%q is not an IPv4 address", c.NodeAddress)
	}
	if c.nodeAddr == c.vip {
		return fieldErr("node_address", "must differ from vip")
	}
	if c.mode, err = loader.ParseMode(c.XDPMode); err != nil {
		return fieldErr("xdp_mode", "%q: want auto, native or generic", c.XDPMode)
	}
	if c.Ports.RW == c.Ports.RO {
		return fieldErr("ports.ro", "same as ports.rw (%d)", c.Ports.RW)
	}
	if c.snat, err = parsePortRange(c.SNATPorts); err != nil {
		return fieldErr("snat_ports", "%v", err)
	}
	if d := time.Duration(c.Conntrack.HalfOpenTimeout); d < 100*time.Millisecond || d > time.Minute {
		return fieldErr("conntrack.half_open_timeout", "%v: want 100ms to 1m", d)
	}
	if d := time.Duration(c.Conntrack.ClosedTimeout); d < 0 || d > 10*time.Minute {
		return fieldErr("conntrack.closed_timeout", "%v: want 0 to 10m", d)
	}
	if d := time.Duration(c.Conntrack.IdleTimeout); d < time.Minute {
		return fieldErr("conntrack.idle_timeout", "%v: want at least 1m", d)
	}
	if n := c.Conntrack.MaxFlows; n < loader.MinMaxFlows || n > loader.MaxMaxFlows || n&(n-1) != 0 {
		return fieldErr("conntrack.max_flows", "%d: want a power of two from %d to %d", n, loader.MinMaxFlows, loader.MaxMaxFlows)
	}
	if c.allowRW, err = parsePrefixes("allow_sources.rw", c.AllowSources.RW); err != nil {
		return err
	}
	if c.allowRO, err = parsePrefixes("allow_sources.ro", c.AllowSources.RO); err != nil {
		return err
	}
	if c.Postgres.User == "" {
		return fieldErr("postgres.user", "required")
	}
	if c.Postgres.Database == "" {
		return fieldErr("postgres.database", "required")
	}
	if err := c.Postgres.TLS.Check(); err != nil {
		var fe *health.FieldError
		if errors.As(err, &fe) {
			return &ConfigError{Field: "postgres." + fe.Field, Err: fe.Err}
		}
		return &ConfigError{Field: "postgres", Err: err}
	}
	if c.Probe.Interval < Duration(10*time.Millisecond) {
		return fieldErr("probe.interval", "%v is too short (at least 10ms)", time.Duration(c.Probe.Interval))
	}
	if c.Probe.Timeout <= 0 || c.Probe.Timeout > c.Probe.Interval*10 {
		return fieldErr("probe.timeout", "%v: want more than 0 and at most 10 intervals", time.Duration(c.Probe.Timeout))
	}
	if c.Probe.Fall < 1 {
		return fieldErr("probe.fall", "%d: want at least 1", c.Probe.Fall)
	}
	if c.Probe.Rise < 1 {
		return fieldErr("probe.rise", "%d: want at least 1", c.Probe.Rise)
	}
	if c.Probe.FloodGrace < 0 {
		return fieldErr("probe.flood_grace", "%v: negative", time.Duration(c.Probe.FloodGrace))
	}
	if *c.MaxReadLag < 0 {
		return fieldErr("max_read_lag", "negative")
	}
	if *c.MaxLagOnFailover < 0 {
		return fieldErr("max_lag_on_failover", "negative (bytes; 0 = no limit)")
	}
	if c.VRRP.VRID < 1 || c.VRRP.VRID > 255 {
		return fieldErr("vrrp.vrid", "%d: want 1 to 255", c.VRRP.VRID)
	}
	if c.VRRP.Priority < 1 || c.VRRP.Priority > 254 {
		return fieldErr("vrrp.priority", "%d: want 1 to 254", c.VRRP.Priority)
	}
	if ai := time.Duration(c.VRRP.AdvertInterval); ai < 10*time.Millisecond || ai%(10*time.Millisecond) != 0 || ai > 40950*time.Millisecond {
		return fieldErr("vrrp.advert_interval", "%v: want whole centiseconds from 10ms to 40.95s", ai)
	}
	c.VRRP.peers = nil
	for i, p := range c.VRRP.UnicastPeers {
		a, err := netip.ParseAddr(p)
		if err != nil || !a.Is4() {
			return fieldErr(fmt.Sprintf("vrrp.unicast_peers[%d]", i), "%q is not an IPv4 address", p)
		}
		c.VRRP.peers = append(c.VRRP.peers, a)
	}
	if err := c.HTTP.validate(); err != nil {
		return err
	}
	if len(c.Nodes) == 0 {
		return fieldErr("nodes", "at least one node is required")
	}
	names := map[string]bool{}
	addrs := map[netip.AddrPort]bool{}
	c.nodes = nil
	for i, n := range c.Nodes {
		f := fmt.Sprintf("nodes[%d]", i)
		if n.Name == "" {
			return fieldErr(f+".name", "required")
		}
		if names[n.Name] {
			return fieldErr(f+".name", "%q used twice", n.Name)
		}
		names[n.Name] = true
		ap, err := netip.ParseAddrPort(n.Address)
		if err != nil || !ap.Addr().Is4() {
			return fieldErr(f+".address", "%q is not an IPv4 address:port", n.Address)
		}
		if addrs[ap] {
			return fieldErr(f+".address", "%v used twice", ap)
		}
		addrs[ap] = true
		c.nodes = append(c.nodes, ap)
	}
	return nil
}

// parsePrefixes parses IPv4 CIDRs; a bare address is a /32.
func parsePrefixes(field string, ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fieldErr(fmt.Sprintf("%s[%d]", field, i), "%q is not an IPv4 CIDR", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if !p.Addr().Is4() {
			return nil, fieldErr(fmt.Sprintf("%s[%d]", field, i), "%q is not an IPv4 CIDR", s)
		}
		if p != p.Masked() {
			return nil, fieldErr(fmt.Sprintf("%s[%d]", field, i), "%q has host bits set (did you mean %v?)", s, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}

func parsePortRange(s string) (loader.PortRange, error) {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		return loader.PortRange{}, fmt.Errorf("%q: want MIN-MAX", s)
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil || a == 0 || a > b {
		return loader.PortRange{}, fmt.Errorf("%q: want MIN-MAX with 0 < MIN <= MAX <= 65535", s)
	}
	return loader.PortRange{Min: uint16(a), Max: uint16(b)}, nil
}
