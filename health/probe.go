package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// ApplicationName is the application_name of every probe connection, so a
// DBA sees xlb's sessions in pg_stat_activity.
const ApplicationName = "xlb"

var (
	// ErrClosed is the Err of a probe by a closed Prober.
	ErrClosed = errors.New("prober closed")
	// ErrPrivilege is the Err of a probe of a replica whose
	// pg_stat_wal_receiver the probing role may not read: it needs
	// pg_monitor (or pg_read_all_stats). Without it a replica would look
	// as if it were not streaming.
	ErrPrivilege = errors.New("role cannot read pg_stat_wal_receiver (grant it pg_monitor)")
)

// Target is one PostgreSQL node to probe.
type Target struct {
	Name     string
	Addr     netip.AddrPort
	User     string
	Database string
	Password string
	// TLS says how connections are protected (default: sslmode prefer).
	TLS TLS
}

// Observation is one probe's result. Fields after Latency are set only
// when Err is nil; those marked replica are zero on a primary.
type Observation struct {
	Node string
	Addr netip.AddrPort
	// Time is when the probe finished.
	Time time.Time
	// Err is nil when the node was reachable and answered the probe query.
	Err error
	// Latency is the round trip of the probe query, without connecting.
	Latency time.Duration
	// InRecovery is pg_is_in_recovery(): true on a replica.
	InRecovery bool
	// Timeline is the node's current timeline. On a primary it is the
	// timeline in the name of the WAL segment being written
	// (pg_walfile_name(pg_current_wal_lsn())), which advances the moment a
	// promotion ends; pg_control_checkpoint()'s would wait for the
	// checkpoint after it, which can take minutes. On a replica it is the
	// timeline of the WAL last received (pg_stat_wal_receiver.received_tli)
	// while a WAL receiver runs and has received any, else the timeline of
	// the last restartpoint (pg_control_checkpoint()): received_tli is
	// where the replica is going, and follows a new primary's timeline as
	// soon as it streams from it.
	Timeline uint32
	// WALLSN is a primary's pg_current_wal_lsn().
	WALLSN LSN
	// ReceiveLSN is a replica's pg_last_wal_receive_lsn(): WAL received
	// and flushed.
	ReceiveLSN LSN
	// ReplayLSN is a replica's pg_last_wal_replay_lsn().
	ReplayLSN LSN
	// ReplayLag is a replica's delay in applying what it received: zero
	// when it has replayed all of it, else now() -
	// pg_last_xact_replay_timestamp(), the age of the last transaction it
	// replayed.
	ReplayLag time.Duration
	// Streaming reports whether a replica's WAL receiver is streaming
	// (pg_stat_wal_receiver.status = 'streaming').
	Streaming bool
	// Upstream is where a replica's WAL receiver is connected,
	// "sender_host:sender_port" of pg_stat_wal_receiver with the host
	// resolved to an address ("172.20.0.10:5432", comparable with
	// Target.Addr.String()); empty when it has none.
	Upstream string
	// SystemID is pg_control_system().system_identifier: the same on every
	// node of one cluster (set by initdb, kept by base backups).
	SystemID uint64
	// Standbys are a primary's WAL senders (pg_stat_replication).
	Standbys []Standby
}

// Standby is one WAL sender of a primary, as pg_stat_replication shows it.
type Standby struct {
	// AppName is the standby's application_name: the name that
	// synchronous_standby_names must use.
	AppName string `json:"a"`
	// Addr is the standby's address (client_addr).
	Addr netip.Addr `json:"c"`
	// State is the sender's state ("streaming", "catchup", …).
	State string `json:"s"`
}

// TimelineSQL is the SQL expression of a primary's timeline (int8): the
// timeline in the name of the WAL segment it writes, which advances the
// moment a promotion ends (pg_control_checkpoint() waits for the next
// checkpoint). It fails during recovery. The probes and package
// control/postgres read a primary's timeline with it.
const TimelineSQL = `('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8`

// probeSQL is the probe: one statement, so one round trip with the simple
// protocol, valid on a primary and on a replica. Functions that fail
// during recovery (pg_current_wal_lsn, pg_walfile_name) only run in the
// CASE branch of a primary; pg_is_in_recovery() runs once.
const probeSQL = `WITH s AS MATERIALIZED (SELECT pg_is_in_recovery() AS rec),
wr AS MATERIALIZED (SELECT pid, status, received_tli, sender_host, sender_port FROM pg_stat_wal_receiver)
SELECT s.rec,
	CASE WHEN s.rec
		THEN coalesce(nullif((SELECT received_tli FROM wr), 0), (pg_control_checkpoint()).timeline_id)::int8
		ELSE ` + TimelineSQL + `
	END,
	CASE WHEN s.rec THEN NULL ELSE pg_current_wal_lsn()::text END,
	CASE WHEN s.rec THEN pg_last_wal_receive_lsn()::text END,
	CASE WHEN s.rec THEN pg_last_wal_replay_lsn()::text END,
	CASE WHEN s.rec AND pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()
		THEN coalesce((extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000000)::int8, 0)
		ELSE 0
	END,
	coalesce((SELECT status = 'streaming' FROM wr), false),
	(SELECT sender_host FROM wr),
	(SELECT sender_port FROM wr),
	coalesce((SELECT pid IS NOT NULL AND status IS NULL FROM wr), false),
	(pg_control_system()).system_identifier,
	CASE WHEN s.rec THEN '[]' ELSE (SELECT coalesce(json_agg(json_build_object(
		'a', application_name, 'c', host(client_addr), 's', state)), '[]')::text FROM pg_stat_replication) END
FROM s`

// Prober probes one target over a persistent connection, reconnecting
// when it breaks. Its methods may be called from several goroutines; they
// run one at a time.
type Prober struct {
	target  Target
	timeout time.Duration

	mu     sync.Mutex
	conn   *pgx.Conn
	closed bool
}

// NewProber returns a prober of t that bounds every probe, connecting
// included, by timeout. It does not connect yet.
func NewProber(t Target, timeout time.Duration) *Prober {
	return &Prober{target: t, timeout: timeout}
}

// Probe connects when there is no connection, runs the probe query and
// returns what it saw. It returns within the prober's timeout (or earlier
// when ctx ends); a failure is in the Observation's Err. A connection that
// broke or timed out is closed, and the next Probe opens a new one.
func (p *Prober) Probe(ctx context.Context) Observation {
	obs, _ := p.probe(ctx)
	return obs
}

// probe is Probe; retry reports that it failed on a connection that an
// earlier probe opened and that broke before the timeout, so that a new
// connection may well succeed at once.
func (p *Prober) probe(ctx context.Context) (obs Observation, retry bool) {
	obs = Observation{Node: p.target.Name, Addr: p.target.Addr}
	p.mu.Lock()
	defer p.mu.Unlock()
	defer func() { obs.Time = time.Now() }()
	if p.closed {
		obs.Err = ErrClosed
		return obs, false
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()

	reused := p.conn != nil
	if !reused {
		conn, err := p.connect(ctx)
		if err != nil {
			obs.Err = fmt.Errorf("connecting to %s (%v): %w", p.target.Name, p.target.Addr, err)
			return obs, false
		}
		p.conn = conn
	}

	start := time.Now()
	err := p.query(ctx, &obs)
	if err == nil {
		obs.Latency = time.Since(start)
		return obs, false
	}
	obs = Observation{Node: p.target.Name, Addr: p.target.Addr}
	if errors.Is(err, ErrPrivilege) {
		obs.Err = fmt.Errorf("probing %s (%v): %w", p.target.Name, p.target.Addr, err)
		return obs, false
	}
	obs.Err = fmt.Errorf("querying %s (%v): %w", p.target.Name, p.target.Addr, err)
	timedOut := ctx.Err() != nil
	if timedOut || p.conn.IsClosed() {
		// The connection is gone, or in an unknown state after a
		// cancelled query: start afresh. ctx may be done already; Close
		// then just drops the socket.
		p.conn.Close(ctx)
		p.conn = nil
	}
	return obs, reused && !timedOut && p.conn == nil
}

// connect opens a connection to the target (see ConnConfig).
func (p *Prober) connect(ctx context.Context) (*pgx.Conn, error) {
	t := p.target
	return Connect(ctx, t.Addr.Addr().String(), t.Addr.Port(),
		Login{User: t.User, Database: t.Database, Password: t.Password, TLS: t.TLS}, p.timeout)
}

// query runs probeSQL on p.conn and fills obs.
func (p *Prober) query(ctx context.Context, obs *Observation) error {
	var (
		timeline             int64
		wal, receive, replay *string
		lagMicros            int64
		senderHost           *string
		senderPort           *int32
		hidden               bool
		sysid                int64
		standbys             string
	)
	err := p.conn.QueryRow(ctx, probeSQL).Scan(&obs.InRecovery, &timeline, &wal, &receive, &replay,
		&lagMicros, &obs.Streaming, &senderHost, &senderPort, &hidden, &sysid, &standbys)
	if err != nil {
		return err
	}
	obs.SystemID = uint64(sysid)
	if err := json.Unmarshal([]byte(standbys), &obs.Standbys); err != nil {
		return fmt.Errorf("reading pg_stat_replication: %w", err)
	}
	if hidden {
		return ErrPrivilege
	}
	obs.Timeline = uint32(timeline)
	obs.ReplayLag = time.Duration(lagMicros) * time.Microsecond
	for _, l := range []struct {
		s   *string
		dst *LSN
	}{{wal, &obs.WALLSN}, {receive, &obs.ReceiveLSN}, {replay, &obs.ReplayLSN}} {
		if l.s == nil {
			continue
		}
		if *l.dst, err = ParseLSN(*l.s); err != nil {
			return err
		}
	}
	if senderHost != nil && senderPort != nil {
		obs.Upstream = net.JoinHostPort(resolve(ctx, *senderHost), strconv.Itoa(int(*senderPort)))
	}
	return nil
}

// resolve returns host's first address, or host itself when it is an
// address already or does not resolve (in time): a replica's
// primary_conninfo may name its primary by name.
func resolve(ctx context.Context, host string) string {
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap().String()
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip4", host)
	if err != nil || len(addrs) == 0 {
		return host
	}
	return addrs[0].Unmap().String()
}

// Close closes the prober's connection; later probes return ErrClosed. It
// waits for a probe under way, at most the prober's timeout.
func (p *Prober) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.conn == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	err := p.conn.Close(ctx)
	p.conn = nil
	if err != nil {
		return fmt.Errorf("closing connection to %s: %w", p.target.Name, err)
	}
	return nil
}
