package vip

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// State is a VRRP router's state (RFC 5798 §6.4).
type State int

// The states of RFC 5798 §6.4. Initialize is also where a stopped machine
// rests.
const (
	Initialize State = iota
	Backup
	Master
)

var stateNames = [...]string{Initialize: "initialize", Backup: "backup", Master: "master"}

// String returns "initialize", "backup" or "master".
func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return fmt.Sprintf("state(%d)", int(s))
	}
	return stateNames[s]
}

// MarshalText returns the state's name, so that JSON carries "master".
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses a name MarshalText returned. It returns
// ErrUnknownState for any other text.
func (s *State) UnmarshalText(b []byte) error {
	for i, n := range stateNames {
		if string(b) == n {
			*s = State(i)
			return nil
		}
	}
	return fmt.Errorf("parsing state %q: %w", b, ErrUnknownState)
}

// ErrUnknownState means a state name is none of State's.
var ErrUnknownState = errors.New("vip: unknown state")

// EventKind is what happened to a Machine.
type EventKind int

// The events of RFC 5798 §6.4.
const (
	// Startup starts the machine from Initialize.
	Startup EventKind = iota + 1
	// AdvertReceived is a valid advertisement for the machine's VRID that
	// another router sent.
	AdvertReceived
	// TimerFired is the runtime waking at Deadline; the machine fires
	// whichever timer is due, if any.
	TimerFired
	// Shutdown stops the machine: a master resigns.
	Shutdown
)

// Event is one input to a Machine. From, Priority and Interval describe
// the advertisement of an AdvertReceived event.
type Event struct {
	Kind EventKind
	// From is the sender's primary address: the IP source.
	From     netip.Addr
	Priority uint8
	Interval time.Duration
}

// Action is one thing the runtime must do after a Machine handled an
// event, in the order returned.
type Action int

// The actions a Machine asks for.
const (
	// SendAdvert sends an advertisement with the machine's priority.
	SendAdvert Action = iota + 1
	// SendResign sends an advertisement with priority 0: the master gives
	// up, and backups take over after their Skew_Time.
	SendResign
	// BecomeMaster takes the VIP: adds it, announces it with gratuitous
	// ARP and starts answering for it.
	BecomeMaster
	// BecomeBackup gives the VIP up if held and stops answering for it.
	BecomeBackup
	// BecomeInitialize is BecomeBackup for a machine that stopped.
	BecomeInitialize
)

var actionNames = [...]string{
	SendAdvert: "send-advert", SendResign: "send-resign", BecomeMaster: "become-master",
	BecomeBackup: "become-backup", BecomeInitialize: "become-initialize",
}

// String returns the action's name, such as "send-advert".
func (a Action) String() string {
	if a <= 0 || int(a) >= len(actionNames) {
		return fmt.Sprintf("action(%d)", int(a))
	}
	return actionNames[a]
}

// MachineConfig is what a Machine needs to know about its own router.
type MachineConfig struct {
	// Addr is the router's primary address, the source of its
	// advertisements; on equal priority the higher one stays master.
	Addr netip.Addr
	// Priority is 1–254, or 255 for the owner of the addresses, who
	// becomes master at once.
	Priority uint8
	// AdvertInterval is how often a master advertises.
	AdvertInterval time.Duration
	// Preempt lets a backup with a higher priority than the master's take
	// over (RFC 5798 Preempt_Mode, whose default is true). Without it a
	// backup only takes over when the master falls silent or resigns.
	Preempt bool
	// Resume starts as master instead of backup: a restarted daemon whose
	// predecessor was master moments ago (its VIP lease still runs) keeps
	// the VIP, so a restart is not a failover. A higher-priority master's
	// next advertisement still takes it over, as the RFC says.
	Resume bool
}

// ErrConfig means a configuration field is out of range.
var ErrConfig = errors.New("vip: invalid configuration")

// Machine is the VRRP state machine of RFC 5798 §6.4 for one virtual
// router, without I/O: events in, actions out, and the time of each event
// given by the caller, so it runs the same under a test's clock as under
// the runtime's. It is not safe for concurrent use.
type Machine struct {
	cfg   MachineConfig
	state State
	since time.Time
	// deadline is the Adver_Timer in Master and the Master_Down_Timer in
	// Backup; zero in Initialize.
	deadline time.Time
	// masterInterval is Master_Adver_Interval: the master's advertised
	// interval in Backup, ours in Master.
	masterInterval time.Duration
	master         netip.Addr // the current master as far as known; invalid when unknown
	masterPriority uint8
	lastAdvert     time.Time // when the last advertisement from another router arrived
	lastFrom       netip.Addr
}

// NewMachine returns a machine in Initialize. It returns ErrConfig,
// wrapped, for a priority of 0, an interval a VRRPv3 message cannot carry
// or a primary address that is not IPv4.
func NewMachine(c MachineConfig) (*Machine, error) {
	switch {
	case c.Priority == priorityResign:
		return nil, fmt.Errorf("checking priority 0: %w", ErrConfig)
	case c.AdvertInterval < MinAdvertInterval || c.AdvertInterval > MaxAdvertInterval:
		return nil, fmt.Errorf("checking advertisement interval %v (want %v–%v): %w", c.AdvertInterval, MinAdvertInterval, MaxAdvertInterval, ErrConfig)
	case !c.Addr.Is4():
		return nil, fmt.Errorf("checking primary address %v: %w", c.Addr, ErrConfig)
	}
	return &Machine{cfg: c, masterInterval: c.AdvertInterval}, nil
}

// State returns the machine's state.
func (m *Machine) State() State { return m.state }

// Deadline returns when the machine's running timer is due: the runtime
// sends TimerFired then, or earlier with no effect. It returns the zero
// time in Initialize, where no timer runs.
func (m *Machine) Deadline() time.Time { return m.deadline }

// SkewTime returns Skew_Time: ((256 − Priority) × Master_Adver_Interval) / 256.
func (m *Machine) SkewTime() time.Duration {
	return time.Duration(256-int64(m.cfg.Priority)) * m.masterInterval / 256
}

// SetPriority changes the router's priority (1–254), as keepalived's
// tracking does: a master advertises the new one from its next
// advertisement, so a better backup with preemption takes over. Priority
// 255 (the owner's) cannot be set or left this way.
func (m *Machine) SetPriority(p uint8) {
	if p == 0 || p == priorityOwner || m.cfg.Priority == priorityOwner {
		return
	}
	m.cfg.Priority = p
	if m.state == Master {
		m.masterPriority = p
	}
}

// Priority returns the router's current priority.
func (m *Machine) Priority() uint8 { return m.cfg.Priority }

// MasterDownInterval returns Master_Down_Interval: 3 × Master_Adver_Interval
// + Skew_Time, how long a backup waits for a silent master.
func (m *Machine) MasterDownInterval() time.Duration {
	return 3*m.masterInterval + m.SkewTime()
}

// Handle applies ev, which happened at now, and returns what the runtime
// must do, in order.
func (m *Machine) Handle(now time.Time, ev Event) []Action {
	switch ev.Kind {
	case Startup:
		return m.startup(now)
	case AdvertReceived:
		return m.advert(now, ev)
	case TimerFired:
		return m.timer(now)
	case Shutdown:
		return m.shutdown(now)
	}
	return nil
}

func (m *Machine) startup(now time.Time) []Action {
	if m.state != Initialize {
		return nil
	}
	if m.cfg.Priority == priorityOwner || m.cfg.Resume {
		return m.becomeMaster(now)
	}
	m.masterInterval = m.cfg.AdvertInterval
	m.master = netip.Addr{}
	m.enter(now, Backup)
	m.deadline = now.Add(m.MasterDownInterval())
	return []Action{BecomeBackup}
}

func (m *Machine) advert(now time.Time, ev Event) []Action {
	if m.state == Initialize {
		return nil
	}
	m.lastAdvert, m.lastFrom = now, ev.From
	switch m.state {
	case Backup:
		switch {
		case ev.Priority == priorityResign:
			// The master resigned: take over after our skew, so the
			// highest-priority backup goes first.
			m.master = netip.Addr{}
			m.deadline = now.Add(m.SkewTime())
		case !m.cfg.Preempt || ev.Priority >= m.cfg.Priority:
			m.master, m.masterPriority = ev.From, ev.Priority
			m.masterInterval = ev.Interval
			m.deadline = now.Add(m.MasterDownInterval())
		default:
			// A lower-priority master and we preempt: let the
			// Master_Down_Timer run out.
			m.master, m.masterPriority = ev.From, ev.Priority
		}
		return nil
	case Master:
		switch {
		case ev.Priority == priorityResign:
			// Another master resigned: make sure its backups hear us.
			m.deadline = now.Add(m.cfg.AdvertInterval)
			return []Action{SendAdvert}
		case ev.Priority > m.cfg.Priority ||
			ev.Priority == m.cfg.Priority && ev.From.Compare(m.cfg.Addr) > 0:
			m.master, m.masterPriority = ev.From, ev.Priority
			m.masterInterval = ev.Interval
			m.enter(now, Backup)
			m.deadline = now.Add(m.MasterDownInterval())
			return []Action{BecomeBackup}
		}
	}
	return nil
}

func (m *Machine) timer(now time.Time) []Action {
	if m.state == Initialize || now.Before(m.deadline) {
		return nil
	}
	if m.state == Master {
		m.deadline = now.Add(m.cfg.AdvertInterval)
		return []Action{SendAdvert}
	}
	return m.becomeMaster(now)
}

func (m *Machine) becomeMaster(now time.Time) []Action {
	m.masterInterval = m.cfg.AdvertInterval
	m.master, m.masterPriority = m.cfg.Addr, m.cfg.Priority
	m.enter(now, Master)
	m.deadline = now.Add(m.cfg.AdvertInterval)
	return []Action{SendAdvert, BecomeMaster}
}

func (m *Machine) shutdown(now time.Time) []Action {
	prev := m.state
	if prev == Initialize {
		return nil
	}
	m.enter(now, Initialize)
	m.deadline = time.Time{}
	m.master = netip.Addr{}
	if prev == Master {
		return []Action{SendResign, BecomeInitialize}
	}
	return []Action{BecomeInitialize}
}

func (m *Machine) enter(now time.Time, s State) {
	m.state, m.since = s, now
}

// Status fills the election fields of s: State, Since, Master,
// MasterPriority, MasterAdvertInterval, LastAdvert and LastAdvertFrom.
func (m *Machine) Status(s *Status) {
	s.State, s.Since = m.state, m.since
	s.Priority = m.cfg.Priority
	s.Master, s.MasterPriority = m.master, m.masterPriority
	if !m.master.IsValid() {
		s.MasterPriority = 0
	}
	s.MasterAdvertInterval = m.masterInterval
	s.LastAdvert, s.LastAdvertFrom = m.lastAdvert, m.lastFrom
}

// Status is an instance's view of its virtual router, for `xlb status`.
type Status struct {
	Interface string       `json:"interface"`
	VRID      uint8        `json:"vrid"`
	VIP       netip.Prefix `json:"vip"`
	// Source is this node's primary address, its advertisements' source.
	Source   netip.Addr `json:"source"`
	Priority uint8      `json:"priority"`
	Preempt  bool       `json:"preempt"`
	// AdvertInterval is this node's configured advertisement interval.
	AdvertInterval time.Duration `json:"advert_interval_ns"`
	// Peers are the unicast peers; none means multicast to 224.0.0.18.
	Peers []netip.Addr `json:"peers,omitempty"`

	State State     `json:"state"`
	Since time.Time `json:"since,omitzero"`
	// Master is the current master's primary address (Source when this
	// node is master); invalid, and omitted, when no master is known.
	Master         netip.Addr `json:"master,omitzero"`
	MasterPriority uint8      `json:"master_priority,omitempty"`
	// MasterAdvertInterval is the master's advertised interval, from
	// which a backup computes Master_Down_Interval.
	MasterAdvertInterval time.Duration `json:"master_advert_interval_ns"`
	// LastAdvert is when the last advertisement from another router
	// arrived, and LastAdvertFrom who sent it.
	LastAdvert     time.Time  `json:"last_advert,omitzero"`
	LastAdvertFrom netip.Addr `json:"last_advert_from,omitzero"`
	// HoldsVIP reports whether the VIP is on the interface because this
	// instance put it there.
	HoldsVIP bool `json:"holds_vip"`
}
