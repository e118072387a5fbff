package vip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Config's zero fields.
const (
	// DefaultAdvertInterval is 50 ms: a backup of priority 100 declares a
	// silent master dead after 3 × 50 ms + 156 × 50 ms / 256 ≈ 180 ms, so
	// the VIP answers from it within 0.25 s, while a master still has 3
	// chances to be heard (keepalived's fastest is 10 ms, its default 1 s).
	// See the package documentation for the measurements.
	DefaultAdvertInterval = 50 * time.Millisecond
	// DefaultGARPCount is how many gratuitous ARPs a new master sends.
	DefaultGARPCount = 5
	// DefaultGARPInterval is the pause between them.
	DefaultGARPInterval = 150 * time.Millisecond
	// DefaultSchedPriority is the SCHED_FIFO priority of the advertising
	// thread: under a load that keeps every core busy, normal scheduling
	// delayed advertisements by up to 177 ms, nearly the 180 ms a backup
	// waits; real-time scheduling kept it under 80 ms. The thread
	// works a few microseconds per interval, so it takes nothing from
	// the rest.
	DefaultSchedPriority = 10
)

// ipTOS is the TOS byte of advertisements: IP precedence "internetwork
// control", as keepalived sends them.
const ipTOS = 0xc0

// Config configures one virtual router on one interface.
type Config struct {
	// Interface carries the advertisements and gets the VIP.
	Interface string
	// VRID is the virtual router's ID, 1–255, shared by every peer of the
	// VIP and unique on the link.
	VRID uint8
	// Priority is this node's, 1–254: the highest wins. 255 (the owner of
	// a real address) is not for a VIP that moves.
	Priority uint8
	// AdvertInterval is how often the master advertises, a whole number of
	// centiseconds; 0 means DefaultAdvertInterval.
	AdvertInterval time.Duration
	// Preempt lets this node take over from a master of lower priority.
	// RFC 5798 and keepalived default to it; a daemon's configuration
	// should too.
	Preempt bool
	// VIP is the address to hold, with the prefix length it gets on
	// Interface (say /32).
	VIP netip.Prefix
	// UnicastPeers are the other nodes' addresses; none means multicast
	// to 224.0.0.18.
	UnicastPeers []netip.Addr
	// SourceAddr is this node's primary address on Interface, the
	// advertisements' source and the tie-breaker; Dial fills it with the
	// interface's first IPv4 address when it is zero.
	SourceAddr netip.Addr
	// GARPCount gratuitous ARPs, GARPInterval apart, announce a new
	// master; 0 means DefaultGARPCount and DefaultGARPInterval.
	GARPCount    int
	GARPInterval time.Duration
	// GARPRepeatAfter sends the burst a second time this long after the
	// first (keepalived's garp_master_delay), for switches and hosts that
	// missed it while links settled; default 5 s, negative: no second burst.
	GARPRepeatAfter time.Duration
	// GARPRefresh, when positive, sends one gratuitous ARP this often for
	// as long as the node is master (keepalived's garp_master_refresh), so
	// no cache stays stale after a split brain; 0: off.
	GARPRefresh time.Duration
	// OnMaster is called when this node has become master and holds the
	// VIP; OnBackup when it has become backup (also once at startup) or
	// stopped as master, and no longer holds it. They are called one at a time, in
	// order, on a goroutine of their own so that a slow one never delays
	// an advertisement; Run returns after the last has returned.
	OnMaster func()
	OnBackup func()
	// SchedPriority is the SCHED_FIFO priority (1–99) of the thread that
	// sends and receives advertisements; 0 means DefaultSchedPriority and
	// -1 leaves it under the normal scheduler. Only Dial applies it.
	SchedPriority int
	// WhileMaster, when set, is called on the advertising thread each
	// time this node advertises as master holding the VIP, so every
	// AdvertInterval. It must return within microseconds: renewing a
	// datapath lease of about 3 × AdvertInterval suits it, and such a
	// lease lapses soon after advertisements stop, whatever stopped them.
	WhileMaster func()
	// Logger gets state changes and errors; nil means slog.Default().
	Logger *slog.Logger
	// Resume starts as master (see MachineConfig.Resume); the daemon sets it
	// when its VIP lease from before a restart still runs.
	Resume bool
}

// withDefaults returns c with its zero fields defaulted, or ErrConfig,
// wrapped, for a field out of range.
func (c Config) withDefaults() (Config, error) {
	if c.AdvertInterval == 0 {
		c.AdvertInterval = DefaultAdvertInterval
	}
	if c.GARPRepeatAfter == 0 {
		c.GARPRepeatAfter = 5 * time.Second
	}
	if c.GARPCount == 0 {
		c.GARPCount = DefaultGARPCount
	}
	if c.GARPInterval == 0 {
		c.GARPInterval = DefaultGARPInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.SchedPriority == 0 {
		c.SchedPriority = DefaultSchedPriority
	}
	switch {
	case c.VRID == 0:
		return c, fmt.Errorf("checking vrid 0 (want 1–255): %w", ErrConfig)
	case c.Priority == priorityResign || c.Priority == priorityOwner:
		return c, fmt.Errorf("checking priority %d (want 1–254): %w", c.Priority, ErrConfig)
	case c.AdvertInterval%centisecond != 0 || c.AdvertInterval < MinAdvertInterval || c.AdvertInterval > MaxAdvertInterval:
		return c, fmt.Errorf("checking advertisement interval %v (want whole centiseconds, %v–%v): %w", c.AdvertInterval, MinAdvertInterval, MaxAdvertInterval, ErrConfig)
	case !c.VIP.IsValid() || !c.VIP.Addr().Is4():
		return c, fmt.Errorf("checking vip %v (want an IPv4 prefix): %w", c.VIP, ErrConfig)
	case c.SchedPriority < -1 || c.SchedPriority > 99:
		return c, fmt.Errorf("checking sched priority %d (want -1, 0 or 1–99): %w", c.SchedPriority, ErrConfig)
	case c.GARPCount < 0 || c.GARPInterval < 0:
		return c, fmt.Errorf("checking gratuitous arp count %d, interval %v: %w", c.GARPCount, c.GARPInterval, ErrConfig)
	}
	for _, p := range c.UnicastPeers {
		if !p.Is4() {
			return c, fmt.Errorf("checking unicast peer %v: %w", p, ErrConfig)
		}
	}
	return c, nil
}

// Header holds the IPv4 header fields of a VRRP packet.
type Header struct {
	Src, Dst netip.Addr
	TTL      int
}

// Conn carries VRRP messages on one interface: Dial's is a raw IPv4 socket
// for protocol 112.
type Conn interface {
	// ReadFrom reads one packet into b and returns its VRRP message, a
	// slice of b, and its IPv4 header. Past the read deadline it returns
	// an error matching os.ErrDeadlineExceeded.
	ReadFrom(b []byte) ([]byte, Header, error)
	// WriteTo sends msg in an IPv4 packet with h's addresses and TTL.
	WriteTo(msg []byte, h Header) error
	SetReadDeadline(t time.Time) error
}

// Addresser puts an address on the interface and takes it off.
type Addresser interface {
	// AddAddress adds p; it returns nil when p is there already.
	AddAddress(p netip.Prefix) error
	// DelAddress removes p; it returns nil when p is not there.
	DelAddress(p netip.Prefix) error
}

// Announcer tells the link that this node now holds an address.
type Announcer interface {
	// Announce sends one gratuitous ARP for ip.
	Announce(ip netip.Addr) error
}

// ErrRunning means Run was called on an instance that runs or ran already.
var ErrRunning = errors.New("vip: instance already ran")

// Instance runs one virtual router: the Machine, fed by the advertisements
// Conn receives and by its timers, and the VIP added, announced and
// removed as the machine decides.
type Instance struct {
	cfg  Config
	log  *slog.Logger
	conn Conn
	addr Addresser
	ann  Announcer
	dsts []netip.Addr // where advertisements go
	m    *Machine     // owned by Run's goroutine

	ran atomic.Bool // set by the first Run
	// holds is whether the VIP is on the interface by our doing; Run's
	// goroutine only.
	holds     bool
	addFailed bool   // the last add failed: retried every interval, logged once
	sendErr   error  // the last send's, to log a failure once rather than every interval
	garp      func() // stops the running announcements and waits for them
	// realtime, when set, puts the calling thread under the real-time
	// scheduler; Dial sets it.
	realtime func() error

	mu     sync.Mutex
	status Status

	nmu            sync.Mutex
	queue          []func()
	nwake          chan struct{}
	lastReannounce time.Time     // last re-announcement after a lower-priority master
	wantPrio       atomic.Uint32 // SetPriority's value, applied by the loop; 0: none
}

// New returns an instance that speaks through conn, puts the VIP on the
// interface with addr and announces it with ann. cfg.SourceAddr must be
// set. It returns ErrConfig, wrapped, for a field out of range. Close
// closes conn, addr and ann when they are io.Closers.
func New(cfg Config, conn Conn, addr Addresser, ann Announcer) (*Instance, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m, err := NewMachine(MachineConfig{Addr: cfg.SourceAddr, Priority: cfg.Priority, AdvertInterval: cfg.AdvertInterval, Preempt: cfg.Preempt, Resume: cfg.Resume})
	if err != nil {
		return nil, err
	}
	in := &Instance{
		cfg: cfg, conn: conn, addr: addr, ann: ann, m: m,
		log:   cfg.Logger.With("vrid", cfg.VRID, "interface", cfg.Interface),
		dsts:  []netip.Addr{MulticastGroup},
		nwake: make(chan struct{}, 1),
	}
	if len(cfg.UnicastPeers) > 0 {
		in.dsts = slices.Clone(cfg.UnicastPeers)
	}
	in.status = Status{
		Interface: cfg.Interface, VRID: cfg.VRID, VIP: cfg.VIP, Source: cfg.SourceAddr,
		Priority: cfg.Priority, Preempt: cfg.Preempt, AdvertInterval: cfg.AdvertInterval,
		Peers: slices.Clone(cfg.UnicastPeers), MasterAdvertInterval: cfg.AdvertInterval,
	}
	return in, nil
}

// SetPriority asks for a new priority (1–254), applied at the next event
// of the election loop (within an advertisement interval). xlb lowers its
// priority while its datapath is detached or no backend answers, as
// keepalived's track weight does.
func (in *Instance) SetPriority(p uint8) {
	in.wantPrio.Store(uint32(p))
}

// Status returns a snapshot of the instance's state. It is safe to call
// from any goroutine, before, during and after Run.
func (in *Instance) Status() Status {
	in.mu.Lock()
	defer in.mu.Unlock()
	s := in.status
	s.Peers = slices.Clone(s.Peers)
	return s
}

// Close closes the instance's socket, netlink handle and ARP socket. Call
// it after Run has returned.
func (in *Instance) Close() error {
	var errs []error
	for _, c := range []any{in.conn, in.addr, in.ann} {
		if c, ok := c.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

// Run takes part in the election until ctx ends, then resigns: a master
// sends a priority-0 advertisement, so that the best backup takes over
// after its Skew_Time, and removes the VIP. It first removes a VIP a
// killed predecessor may have left on the interface. It returns nil after
// a clean stop, an error wrapping the socket's when reading fails (after
// resigning all the same), and ErrRunning when called a second time.
func (in *Instance) Run(ctx context.Context) error {
	return in.run(ctx, nil)
}

// run is Run that also returns, like a killed process, as soon as kill
// ends: no resignation, the VIP left where it is, no callback.
func (in *Instance) run(ctx, kill context.Context) error {
	if !in.ran.CompareAndSwap(false, true) {
		return ErrRunning
	}
	if kill == nil {
		kill = context.Background()
	}
	loop, stop := context.WithCancel(ctx)
	defer stop()
	defer context.AfterFunc(kill, stop)()
	// Wake a blocked read when the loop must end: the loop checks loop.Err
	// after setting its own deadline, so this one is never lost.
	defer context.AfterFunc(loop, func() { in.conn.SetReadDeadline(time.Now()) })()

	notified := make(chan struct{})
	go in.notifier(kill.Done(), notified)

	// The loop runs on a thread of its own, under the real-time scheduler
	// when Dial could arrange it, so that a busy machine does not delay
	// advertisements into a takeover. The thread ends with the goroutine.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if in.realtime != nil {
			if err := in.realtime(); err != nil {
				in.log.Warn("running vrrp under the normal scheduler", "err", err)
			}
		}
		errc <- in.loop(loop)
	}()
	rerr := <-errc
	if kill.Err() != nil {
		in.stopGARP()
		<-notified // the notifier drops what it has not called yet
		return rerr
	}
	in.handle(time.Now(), Event{Kind: Shutdown})
	in.closeQueue()
	<-notified
	if rerr != nil {
		in.log.Error("vrrp stopped", "err", rerr)
	}
	return rerr
}

// loop starts the machine and feeds it advertisements and timer events
// until ctx ends or reading fails.
func (in *Instance) loop(ctx context.Context) error {
	// Startup makes a backup, which removes the VIP: one a killed
	// predecessor left goes too.
	in.handle(time.Now(), Event{Kind: Startup})
	buf := make([]byte, 1500)
	for {
		if err := in.conn.SetReadDeadline(in.m.Deadline()); err != nil {
			return fmt.Errorf("setting read deadline: %w", err)
		}
		if ctx.Err() != nil {
			return nil
		}
		msg, h, err := in.conn.ReadFrom(buf)
		now := time.Now()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			in.handle(now, Event{Kind: TimerFired})
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("reading advertisements on %s: %w", in.cfg.Interface, err)
		}
		in.receive(now, msg, h)
	}
}

// receive checks a packet as RFC 5798 §7.1 asks and hands a valid
// advertisement for our VRID to the machine.
func (in *Instance) receive(now time.Time, msg []byte, h Header) {
	switch {
	case h.Src == in.cfg.SourceAddr:
		return // our own, looped back
	case h.TTL != TTL:
		in.log.Debug("dropped advertisement", "from", h.Src, "reason", "ttl", "ttl", h.TTL)
		return
	case len(in.cfg.UnicastPeers) > 0 && !slices.Contains(in.cfg.UnicastPeers, h.Src):
		in.log.Debug("dropped advertisement", "from", h.Src, "reason", "not a peer")
		return
	}
	a, err := Unmarshal(msg, h.Src, h.Dst)
	if err != nil {
		in.log.Debug("dropped advertisement", "from", h.Src, "err", err)
		return
	}
	if a.VRID != in.cfg.VRID {
		return
	}
	if a.Priority != priorityResign && !slices.Contains(a.Addresses, in.cfg.VIP.Addr()) {
		in.log.Debug("advertisement lacks vip", "from", h.Src, "addresses", a.Addresses)
	}
	in.handle(now, Event{Kind: AdvertReceived, From: h.Src, Priority: a.Priority, Interval: a.Interval})
}

// handle runs ev through the machine, carries out its actions and updates
// the status.
func (in *Instance) handle(now time.Time, ev Event) {
	if p := uint8(in.wantPrio.Load()); p != 0 && p != in.m.Priority() {
		in.log.Info("vrrp priority", "from", in.m.Priority(), "to", p)
		in.m.SetPriority(p)
	}
	prev := in.m.State()
	if prev == Master && !in.holds && ev.Kind == TimerFired {
		in.takeVIP() // the add failed: retry every interval
	}
	acts := in.m.Handle(now, ev)
	for _, a := range acts {
		switch a {
		case SendAdvert:
			in.send(in.m.Priority())
		case SendResign:
			in.send(priorityResign)
		case BecomeMaster:
			in.takeVIP()
			in.enqueue(in.cfg.OnMaster)
		case BecomeBackup:
			in.releaseVIP()
			in.enqueue(in.cfg.OnBackup)
		case BecomeInitialize:
			in.releaseVIP()
			if prev == Master {
				in.enqueue(in.cfg.OnBackup)
			}
		}
	}
	if in.cfg.WhileMaster != nil && in.holds && in.m.State() == Master && slices.Contains(acts, SendAdvert) {
		in.cfg.WhileMaster()
	}
	if ev.Kind == AdvertReceived && prev == Master && in.m.State() == Master && in.holds &&
		ev.Priority != priorityResign && now.Sub(in.lastReannounce) >= time.Second {
		// Another master (a healed split brain) yields to us: it had the
		// VIP, so the LAN's caches may point at it. Announce again, as
		// keepalived's garp_lower_prio_repeat does; at most once a second.
		in.log.Info("lower-priority master seen: announcing the vip again", "peer", ev.From, "peer_priority", ev.Priority)
		in.send(in.m.Priority())
		in.reannounce(now)
	}
	if s := in.m.State(); s != prev {
		args := []any{"from", prev, "to", s, "event", eventName(ev.Kind)}
		if ev.Kind == AdvertReceived {
			args = append(args, "peer", ev.From, "peer_priority", ev.Priority)
		}
		in.log.Info("vrrp state", args...)
	}
	in.mu.Lock()
	in.m.Status(&in.status)
	in.status.HoldsVIP = in.holds
	in.mu.Unlock()
}

func eventName(k EventKind) string {
	switch k {
	case Startup:
		return "startup"
	case AdvertReceived:
		return "advert"
	case TimerFired:
		return "timer"
	case Shutdown:
		return "shutdown"
	}
	return "unknown"
}

// send sends an advertisement with priority prio to every destination.
func (in *Instance) send(prio uint8) {
	a := Advertisement{VRID: in.cfg.VRID, Priority: prio, Interval: in.cfg.AdvertInterval, Addresses: []netip.Addr{in.cfg.VIP.Addr()}}
	var errs []error
	for _, dst := range in.dsts {
		b, err := a.Marshal(in.cfg.SourceAddr, dst)
		if err == nil {
			err = in.conn.WriteTo(b, Header{Src: in.cfg.SourceAddr, Dst: dst, TTL: TTL})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("sending advertisement to %v: %w", dst, err))
		}
	}
	err := errors.Join(errs...)
	switch {
	case err != nil && in.sendErr == nil:
		in.log.Warn("sending advertisements", "err", err)
	case err == nil && in.sendErr != nil:
		in.log.Info("sending advertisements again")
		if in.m.State() == Master && in.holds {
			// The link came back (it was down: sends failed). A peer may
			// have taken the VIP meanwhile: announce it again.
			in.sendErr = nil
			in.reannounce(time.Now())
		}
	}
	in.sendErr = err
}

// reannounce sends the gratuitous ARPs of a fresh takeover again.
func (in *Instance) reannounce(now time.Time) {
	in.lastReannounce = now
	in.startGARP()
}

// startGARP (re)starts the burst of gratuitous ARPs for the VIP.
func (in *Instance) startGARP() {
	in.stopGARP()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		in.announce(ctx)
	}()
	in.garp = func() { cancel(); <-done }
}

// takeVIP adds the VIP and starts announcing it.
func (in *Instance) takeVIP() {
	if err := in.addr.AddAddress(in.cfg.VIP); err != nil {
		if !in.addFailed {
			in.log.Error("adding vip", "vip", in.cfg.VIP, "err", err)
		}
		in.addFailed = true
		return
	}
	in.holds, in.addFailed = true, false
	in.startGARP()
}

// announce sends GARPCount gratuitous ARPs for the VIP, GARPInterval
// apart, until ctx ends.
func (in *Instance) announce(ctx context.Context) {
	if !in.burst(ctx) {
		return
	}
	if in.cfg.GARPRepeatAfter > 0 {
		if !sleepCtx(ctx, in.cfg.GARPRepeatAfter) || !in.burst(ctx) {
			return
		}
	}
	for in.cfg.GARPRefresh > 0 && sleepCtx(ctx, in.cfg.GARPRefresh) {
		in.garpOnce()
	}
}

// burst sends GARPCount gratuitous ARPs, GARPInterval apart; false when
// ctx ended first.
func (in *Instance) burst(ctx context.Context) bool {
	for i := range in.cfg.GARPCount {
		if i > 0 && !sleepCtx(ctx, in.cfg.GARPInterval) {
			return false
		}
		in.garpOnce()
	}
	return true
}

func (in *Instance) garpOnce() {
	if err := in.ann.Announce(in.cfg.VIP.Addr()); err != nil {
		in.log.Warn("sending gratuitous arp", "vip", in.cfg.VIP.Addr(), "err", err)
	}
}

// sleepCtx waits d; false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (in *Instance) stopGARP() {
	if in.garp != nil {
		in.garp()
		in.garp = nil
	}
}

// releaseVIP stops announcing the VIP and removes it.
func (in *Instance) releaseVIP() {
	in.stopGARP()
	if err := in.addr.DelAddress(in.cfg.VIP); err != nil {
		in.log.Error("removing vip", "vip", in.cfg.VIP, "err", err)
		return
	}
	in.holds = false
}

// enqueue queues f for the notifier goroutine; nil is skipped.
func (in *Instance) enqueue(f func()) {
	if f == nil {
		return
	}
	in.nmu.Lock()
	in.queue = append(in.queue, f)
	in.nmu.Unlock()
	select {
	case in.nwake <- struct{}{}:
	default:
	}
}

// closeQueue tells the notifier to return once the queue is empty.
func (in *Instance) closeQueue() {
	in.nmu.Lock()
	in.queue = append(in.queue, nil)
	in.nmu.Unlock()
	select {
	case in.nwake <- struct{}{}:
	default:
	}
}

// notifier calls the queued callbacks in order. It returns at the nil
// marker closeQueue queues, or, dropping the rest, when killed is closed.
func (in *Instance) notifier(killed <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		in.nmu.Lock()
		q := in.queue
		in.queue = nil
		in.nmu.Unlock()
		for _, f := range q {
			if f == nil {
				return
			}
			f()
		}
		select {
		case <-in.nwake:
		case <-killed:
			return
		}
	}
}
