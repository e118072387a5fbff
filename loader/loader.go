package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultPinPath is where the daemon pins its maps and links.
const DefaultPinPath = "/sys/fs/bpf/xlb"

// Service names a VIP port: RW (the primary) or RO (the replicas).
type Service uint8

const (
	RW Service = Service(xlbXlbServiceXLB_SVC_RW)
	RO Service = Service(xlbXlbServiceXLB_SVC_RO)
)

// Services lists every service.
var Services = []Service{RW, RO}

func (s Service) String() string {
	switch s {
	case RW:
		return "rw"
	case RO:
		return "ro"
	}
	return "svc" + strconv.Itoa(int(s))
}

// Sentinel errors.
var (
	// ErrSNATOverlap means the SNAT port range overlaps the host's
	// ephemeral ports (net.ipv4.ip_local_port_range).
	ErrSNATOverlap = errors.New("snat port range overlaps ip_local_port_range")
	// ErrTooManyBackends means every backend id is in use.
	ErrTooManyBackends = errors.New("too many backends")
	// ErrUnknownBackend means the backend was never given to the datapath.
	ErrUnknownBackend = errors.New("unknown backend")
	// ErrLayoutMismatch means maps pinned by another xlb build (or another
	// SNAT range) are in the pin path: this build would misread them.
	ErrLayoutMismatch = errors.New("pinned maps have another layout")
	// ErrVLAN means the interface carries VLANs, which the datapath does not
	// handle (tagged frames would be answered untagged).
	ErrVLAN = errors.New("vlan interfaces are not supported")
)

// PortRange is an inclusive range of ports.
type PortRange struct {
	Min, Max uint16
}

// Config holds the datapath's runtime settings, written into the program
// before load.
type Config struct {
	VIP       netip.Addr // the virtual IP clients connect to
	PortRW    uint16     // read/write service port, default 3000
	PortRO    uint16     // read-only service port, default 3001
	SNATAddr  netip.Addr // this node's own address, source of backend connections
	SNATPorts PortRange  // SNAT source ports; must not overlap ip_local_port_range
	// PinPath is the bpffs directory for maps and links; empty disables
	// pinning (each Load gets fresh maps).
	PinPath string
	// ClosedTimeout is how long a closed flow (FIN both ways, or a RST)
	// lingers before its SNAT port is taken back; default 10 s.
	ClosedTimeout time.Duration
	// HalfOpenTimeout is how long a flow that never got the client's ACK
	// keeps its SNAT port; default 10 s. When a SYN finds no free port, the
	// oldest half-open flow among the probed ports loses its port at once.
	HalfOpenTimeout time.Duration
	// IdleTimeout is how long an idle established flow keeps its SNAT port
	// against a new flow that needs it; default 24 h.
	IdleTimeout time.Duration
	// SkipPortCheck skips the ip_local_port_range check (for Program.Run tests
	// that never open sockets).
	SkipPortCheck bool
	// Lease makes VIP ownership depend on a lease the daemon renews
	// (RenewLease): while it lapses, XDP drops ARP for the VIP and new flows.
	// Off, the node always owns the VIP (one LB, no election).
	Lease bool
	// MaxFlows is the size of the flow table (entries, 48 bytes each): a
	// power of two from MinMaxFlows to MaxMaxFlows, default
	// DefaultMaxFlows. Keep it about twice the flows expected: a lookup
	// probes 16 entries from a tuple's hash.
	MaxFlows uint32
}

// Bounds of Config.MaxFlows.
const (
	MinMaxFlows     = 1 << 10
	DefaultMaxFlows = 1 << 18
	MaxMaxFlows     = 1 << 24
)

func (c *Config) setDefaults() {
	if c.PortRW == 0 {
		c.PortRW = 3000
	}
	if c.PortRO == 0 {
		c.PortRO = 3001
	}
	if c.SNATPorts == (PortRange{}) {
		c.SNATPorts = PortRange{20000, 29999}
	}
	if c.ClosedTimeout == 0 {
		c.ClosedTimeout = 10 * time.Second
	}
	if c.HalfOpenTimeout == 0 {
		c.HalfOpenTimeout = 10 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 24 * time.Hour
	}
	if c.MaxFlows == 0 {
		c.MaxFlows = DefaultMaxFlows
	}
}

func (c *Config) validate() error {
	if !c.VIP.Is4() {
		return fmt.Errorf("vip %v: need an IPv4 address", c.VIP)
	}
	if !c.SNATAddr.Is4() {
		return fmt.Errorf("snat address %v: need an IPv4 address", c.SNATAddr)
	}
	if c.VIP == c.SNATAddr {
		return fmt.Errorf("snat address %v: must differ from the vip", c.SNATAddr)
	}
	if c.PortRW == c.PortRO {
		return fmt.Errorf("ports: rw and ro are both %d", c.PortRW)
	}
	if c.SNATPorts.Min == 0 || c.SNATPorts.Min > c.SNATPorts.Max {
		return fmt.Errorf("snat ports %d-%d: not a range", c.SNATPorts.Min, c.SNATPorts.Max)
	}
	if c.MaxFlows < MinMaxFlows || c.MaxFlows > MaxMaxFlows || c.MaxFlows&(c.MaxFlows-1) != 0 {
		return fmt.Errorf("max flows %d: %w", c.MaxFlows, ErrMaxFlows)
	}
	return nil
}

// ErrMaxFlows means Config.MaxFlows is not a power of two within bounds.
var ErrMaxFlows = fmt.Errorf("want a power of two from %d to %d", MinMaxFlows, MaxMaxFlows)

// Datapath is the loaded XDP program and its maps.
type Datapath struct {
	cfg  Config
	objs xlbObjects

	mu    sync.Mutex
	ids   map[netip.AddrPort]uint32             // backend -> id
	pools map[Service][]netip.AddrPort          // last SetBackends per service
	cuts  map[netip.AddrPort]xlbXlbBackendFlags // CutService's bits per backend
	links map[string]link.Link                  // attached interfaces
	// nl is a netlink handle in the namespace of the first Attach, for
	// managed neighbour entries; nil before.
	nl *netlink.Handle

	memOnce    sync.Once
	flowMem    *ebpf.Memory // flow_map's memory mapping (flowMemory)
	flowMemErr error
	snatMem    *ebpf.Memory // snat_map's (snatSlot)
	snatMemErr error
	rwOnce     sync.Once
	flowRW     []byte // flow_map mapped writable (flowWords)
	flowRWErr  error
	snatRWOnce sync.Once
	snatRW     []byte // snat_map mapped writable (snatWords)
	snatRWErr  error
}

// Load loads the datapath with cfg. With cfg.PinPath it mounts bpffs when
// needed and re-opens maps pinned by an earlier run. It returns an error
// wrapping ErrSNATOverlap when the SNAT range meets the host's ephemeral ports.
func Load(cfg Config) (*Datapath, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if !cfg.SkipPortCheck {
		if err := CheckSNATRange(cfg.SNATPorts); err != nil {
			return nil, err
		}
	}
	spec, err := loadXlb()
	if err != nil {
		return nil, fmt.Errorf("loading spec: %w", err)
	}
	vars := []struct {
		name string
		val  any
	}{
		{xlbVarCfgVip, cfg.VIP.As4()},
		{xlbVarCfgPortRw, be16(cfg.PortRW)},
		{xlbVarCfgPortRo, be16(cfg.PortRO)},
		{xlbVarCfgSnatAddr, cfg.SNATAddr.As4()},
		{xlbVarCfgSnatPortMin, cfg.SNATPorts.Min},
		{xlbVarCfgSnatPortMax, cfg.SNATPorts.Max},
		{xlbVarCfgClosedTimeoutNs, uint64(cfg.ClosedTimeout.Nanoseconds())},
		{xlbVarCfgHalfOpenTimeoutNs, uint64(cfg.HalfOpenTimeout.Nanoseconds())},
		{xlbVarCfgIdleTimeoutNs, uint64(cfg.IdleTimeout.Nanoseconds())},
		{xlbVarCfgLease, boolByte(cfg.Lease)},
		{xlbVarCfgFlowMask, cfg.MaxFlows - 1},
	}
	for _, v := range vars {
		if err := spec.Variables[v.name].Set(v.val); err != nil {
			return nil, fmt.Errorf("setting %s: %w", v.name, err)
		}
	}
	spec.Maps["flow_map"].MaxEntries = cfg.MaxFlows
	// One SNAT slot per backend id and port.
	snat := spec.Maps["snat_map"]
	snat.MaxEntries = spec.Maps["backend_map"].MaxEntries * (uint32(cfg.SNATPorts.Max) - uint32(cfg.SNATPorts.Min) + 1)
	layout, err := layoutHash(spec)
	if err != nil {
		return nil, err
	}
	var opts ebpf.CollectionOptions
	if cfg.PinPath != "" {
		if err := ensurePinPath(cfg.PinPath); err != nil {
			return nil, err
		}
		if err := checkPinnedLayout(cfg.PinPath, layout); err != nil {
			return nil, err
		}
		opts.Maps.PinPath = cfg.PinPath
	} else {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	d := &Datapath{
		cfg:   cfg,
		ids:   make(map[netip.AddrPort]uint32),
		pools: make(map[Service][]netip.AddrPort),
		cuts:  make(map[netip.AddrPort]xlbXlbBackendFlags),
		links: make(map[string]link.Link),
	}
	if err := spec.LoadAndAssign(&d.objs, &opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading datapath: %+v", ve)
		}
		return nil, fmt.Errorf("loading datapath: %w", err)
	}
	if err := d.objs.LayoutMap.Put(uint32(0), layout); err != nil {
		d.Close()
		return nil, fmt.Errorf("writing layout version: %w", err)
	}
	if err := d.restore(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Program returns the XDP program, for Program.Run and benchmarks.
func (d *Datapath) Program() *ebpf.Program { return d.objs.XlbXdp }

// Close closes the program and maps and any link not pinned. Pinned maps
// and links stay in bpffs, so traffic keeps flowing; see Unpin.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, l := range d.links {
		errs = append(errs, l.Close())
	}
	d.links = map[string]link.Link{}
	if d.nl != nil {
		d.nl.Close()
		d.nl = nil
	}
	if d.flowRW != nil {
		errs = append(errs, unix.Munmap(d.flowRW))
		d.flowRW = nil
	}
	if d.snatRW != nil {
		errs = append(errs, unix.Munmap(d.snatRW))
		d.snatRW = nil
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// Unpin removes the pinned maps and links, so the datapath goes away with
// the last open handle: Close after Unpin detaches.
func (d *Datapath) Unpin() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg.PinPath == "" {
		return nil
	}
	var errs []error
	for _, l := range d.links {
		if err := l.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, m := range d.maps() {
		if err := m.Unpin(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CheckSNATRange returns an error wrapping ErrSNATOverlap when r meets the
// calling network namespace's ip_local_port_range.
func CheckSNATRange(r PortRange) error {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return fmt.Errorf("reading ip_local_port_range: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return fmt.Errorf("parsing ip_local_port_range %q", b)
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return fmt.Errorf("parsing ip_local_port_range %q", b)
	}
	if int(r.Min) <= hi && int(r.Max) >= lo {
		return fmt.Errorf("%w: snat %d-%d, ephemeral %d-%d", ErrSNATOverlap, r.Min, r.Max, lo, hi)
	}
	return nil
}

func ensurePinPath(dir string) error {
	if strings.HasPrefix(filepath.Clean(dir)+"/", "/sys/fs/bpf/") {
		if err := mountBPFFS("/sys/fs/bpf"); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating pin path: %w", err)
	}
	return nil
}

// be16 returns p in network order as the kernel sees a __be16.
func be16(p uint16) [2]byte {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return b
}

// wire32 returns the uint32 whose in-memory bytes are a's (a __be32 field).
func wire32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// wire16 returns the uint16 whose in-memory bytes are p in network order.
func wire16(p uint16) uint16 {
	b := be16(p)
	return binary.NativeEndian.Uint16(b[:])
}

func addrOf(w uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], w)
	return netip.AddrFrom4(b)
}

func portOf(w uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], w)
	return binary.BigEndian.Uint16(b[:])
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
