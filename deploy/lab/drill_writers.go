package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DrillTable is the table Writers insert into: one row per INSERT, id
// unique over a drill (WriterID), ts the server's clock_timestamp() when
// the row was written. Every lab namespace shares the host's clock, so ts
// compares with the drill's own time.Now.
const DrillTable = "drill"

// CreateDrillTable (re)creates DrillTable through VIP:PortRW, empty.
func (r *Running) CreateDrillTable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := r.Connect(ctx, VIP, PortRW)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, q := range []string{
		"DROP TABLE IF EXISTS " + DrillTable,
		"CREATE TABLE " + DrillTable + " (id bigint PRIMARY KEY, trial int NOT NULL, client int NOT NULL, ts timestamptz NOT NULL)",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("creating table %s through VIP:%d: %w", DrillTable, PortRW, err)
		}
	}
	return nil
}

// WriterID returns the row id of a writer's seq'th INSERT (seq from 1):
// unique over tags (trials) below 9,000,000, clients below 1,000 and seq
// below 1e9.
func WriterID(tag, client int, seq int64) int64 {
	return int64(tag)*1_000_000_000_000 + int64(client)*1_000_000_000 + seq
}

// Writer pacing of the drill: a failed session is replaced after
// reconnectPause, so the first INSERT after a failover is at most this
// late; connectTimeout and statementTimeout bound a dial and an INSERT on
// a server that vanished without a word (a cut link).
const (
	reconnectPause   = 10 * time.Millisecond
	connectTimeout   = 2 * time.Second
	statementTimeout = 5 * time.Second
)

// insertSQL inserts a row and returns the server's address and timeline
// (the first 8 hex digits of the current WAL file's name).
const insertSQL = "INSERT INTO " + DrillTable + " (id, trial, client, ts) VALUES ($1, $2, $3, clock_timestamp()) " +
	"RETURNING host(inet_server_addr()), ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"

// readSQL is a reader's statement: which server answered.
const readSQL = "SELECT host(inet_server_addr())"

// ClientOptions says how a set of Clients behaves.
type ClientOptions struct {
	// Clients is how many sessions run side by side.
	Clients int
	// Tag marks the rows of writers (DrillTable's trial, and ids
	// WriterID(Tag, client, seq)).
	Tag int
	// Port is PortRW (INSERTs into DrillTable) or PortRO (reads, readSQL).
	Port int
	// Naive clients set no timeout at all, as applications rarely do: a
	// dial or a statement blocks until the server, the network or Stop
	// ends it. Careful ones bound each by ConnectTimeout and
	// StatementTimeout.
	Naive                            bool
	ConnectTimeout, StatementTimeout time.Duration
	// Pace is a pause between statements (0: none).
	Pace time.Duration
}

// Clients are client sessions in the lab's client namespace, each
// running statements through VIP:Port one after another (autocommit) and
// recording every one the server answered: INSERTs into DrillTable
// (writers) or readSQL (readers). A session that fails is closed and
// replaced after reconnectPause, until Stop.
type Clients struct {
	opts   ClientOptions
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	acks []Ack
	ops  []Op
	errs map[string]int
}

// Writers are the Clients of the drill: careful writers through VIP:PortRW.
type Writers = Clients

// Ack is a statement the server answered: for a writer an INSERT whose
// COMMIT (autocommit) returned success to the client.
type Ack struct {
	ID     int64      `json:"id,omitempty"` // 0 for a read
	Client int        `json:"client"`
	Server netip.Addr `json:"server"`             // inet_server_addr() of the session
	TLI    uint32     `json:"timeline,omitempty"` // the server's timeline when it ran an INSERT
	Conn   time.Time  `json:"session_start"`      // the session was established
	Sent   time.Time  `json:"sent"`               // the statement left the client
	At     time.Time  `json:"at"`                 // its answer arrived
}

// Op is a dial or statement of Clients that failed, took a second or
// more, or was still blocked at Stop (Abandoned, End the time of Stop).
type Op struct {
	Client int    `json:"client"`
	Naive  bool   `json:"naive"`
	Step   string `json:"step"` // connect, insert, read
	// Server is the session's server as its last answer said; invalid
	// before the session's first answer.
	Server    netip.Addr `json:"server"`
	Start     time.Time  `json:"start"`
	End       time.Time  `json:"end"`
	Err       string     `json:"error,omitempty"`
	Timeout   bool       `json:"timeout,omitempty"` // ended by the client's own timeout
	Abandoned bool       `json:"abandoned,omitempty"`
}

// StartWriters starts clients careful writers (the drill's); their rows
// carry tag as the trial and ids WriterID(tag, client, seq). They run
// until Stop or ctx ends.
func (r *Running) StartWriters(ctx context.Context, clients, tag int) *Writers {
	return r.StartClients(ctx, ClientOptions{Clients: clients, Tag: tag, Port: PortRW,
		ConnectTimeout: connectTimeout, StatementTimeout: statementTimeout})
}

// StartClients starts opts.Clients sessions; they run until Stop or ctx
// ends.
func (r *Running) StartClients(ctx context.Context, opts ClientOptions) *Clients {
	ctx, cancel := context.WithCancel(ctx)
	w := &Clients{opts: opts, cancel: cancel, errs: map[string]int{}}
	for c := range opts.Clients {
		w.wg.Add(1)
		go w.run(ctx, r, c)
	}
	return w
}

// bound returns ctx bounded by d, unless the clients are naive or d is 0.
func (w *Clients) bound(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if w.opts.Naive || d == 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

func (w *Clients) run(ctx context.Context, r *Running, client int) {
	defer w.wg.Done()
	app, step := writerApp, "insert"
	if w.opts.Port != PortRW {
		app, step = readerApp, "read"
	}
	var seq int64
	for ctx.Err() == nil {
		cctx, cancel := w.bound(ctx, w.opts.ConnectTimeout)
		start := time.Now()
		conn, err := r.connect(cctx, VIP, w.opts.Port, app, w.opts.Naive)
		cancel()
		if err != nil {
			w.record(ctx, Op{Client: client, Step: "connect", Start: start}, err)
			pause(ctx, reconnectPause)
			continue
		}
		var server netip.Addr
		connected := time.Now()
		for ctx.Err() == nil {
			qctx, cancel := w.bound(ctx, w.opts.StatementTimeout)
			var id int64
			var addr string
			var tli int64
			sent := time.Now()
			if w.opts.Port == PortRW {
				seq++
				id = WriterID(w.opts.Tag, client, seq)
				err = conn.QueryRow(qctx, insertSQL, id, w.opts.Tag, client).Scan(&addr, &tli)
			} else {
				err = conn.QueryRow(qctx, readSQL).Scan(&addr)
			}
			at := time.Now()
			cancel()
			if err != nil || at.Sub(sent) >= time.Second {
				w.record(ctx, Op{Client: client, Step: step, Server: server, Start: sent, End: at}, err)
			}
			if err != nil {
				break
			}
			server, _ = netip.ParseAddr(addr)
			w.mu.Lock()
			w.acks = append(w.acks, Ack{ID: id, Client: client, Server: server, TLI: uint32(tli), Conn: connected, Sent: sent, At: at})
			w.mu.Unlock()
			pause(ctx, w.opts.Pace)
		}
		cctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		conn.Close(cctx)
		cancel()
		pause(ctx, reconnectPause)
	}
}

// record keeps op (ended by err, nil when it only took long) and counts
// err by the step and a coarse class, for the report. An op that Stop
// cut short is kept as abandoned and not counted as a failure.
func (w *Clients) record(ctx context.Context, op Op, err error) {
	if op.End.IsZero() {
		op.End = time.Now()
	}
	op.Naive = w.opts.Naive
	class := ""
	if err != nil {
		op.Err = err.Error()
		class = "connection"
		var pe *pgconn.PgError
		switch {
		case ctx.Err() != nil:
			op.Abandoned, class = true, ""
		case errors.As(err, &pe):
			class = "SQLSTATE " + pe.Code
		case errors.Is(err, context.DeadlineExceeded):
			op.Timeout, class = true, "timeout"
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ops = append(w.ops, op)
	if class != "" {
		w.errs[op.Step+": "+class]++
	}
}

// pause waits d or until ctx ends: the pace of reconnects, not a wait for
// a condition.
func pause(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Ops returns the failed, slow and abandoned dials and statements so far.
func (w *Clients) Ops() []Op {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.ops)
}

// Acks returns the acknowledgements so far, in the order they arrived.
func (w *Clients) Acks() []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acks)
}

// Errors returns how many sessions failed, by step and class.
func (w *Clients) Errors() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]int, len(w.errs))
	for k, v := range w.errs {
		out[k] = v
	}
	return out
}

// WaitAck polls the acknowledgements every 5 ms until one arrived after
// after and satisfies ok (nil: any), and returns the earliest such one
// seen. It returns an error when ctx ends first.
func (w *Clients) WaitAck(ctx context.Context, after time.Time, ok func(Ack) bool) (Ack, error) {
	return waitAcks(ctx, after, ok, w)
}

// since returns the acknowledgements from the *from'th on and moves
// *from past them.
func (w *Clients) since(from *int) []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	acks := w.acks[*from:]
	*from = len(w.acks)
	return acks
}

// firstAck returns the earliest acknowledgement in acks that arrived after
// after and satisfies ok (nil: any).
func firstAck(acks []Ack, after time.Time, ok func(Ack) bool) (Ack, bool) {
	var best Ack
	found := false
	for _, a := range acks {
		if !a.At.After(after) || (ok != nil && !ok(a)) {
			continue
		}
		if !found || a.At.Before(best.At) {
			best, found = a, true
		}
	}
	return best, found
}

// Stop stops the writers, waits for them and returns every
// acknowledgement. An INSERT in flight at Stop is abandoned: its outcome
// is unknown, so it is not counted.
func (w *Clients) Stop() []Ack {
	w.cancel()
	w.wg.Wait()
	return w.Acks()
}

// MissingOn returns the ids among ids that the DrillTable of host lacks,
// read straight from host's PostgreSQL (not through the VIP).
func (r *Running) MissingOn(ctx context.Context, host string, ids []int64) ([]int64, error) {
	var missing []int64
	err := r.onNode(ctx, host, func(ctx context.Context, conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, "SELECT a.id FROM unnest($1::bigint[]) AS a(id) "+
			"WHERE NOT EXISTS (SELECT 1 FROM "+DrillTable+" d WHERE d.id = a.id) ORDER BY a.id", ids)
		if err != nil {
			return err
		}
		missing, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("looking for %d acknowledged rows on %s: %w", len(ids), host, err)
	}
	return missing, nil
}

// WrittenAfter returns the ids of the rows of DrillTable on host written
// (ts, the server's clock) after t, read straight from host's PostgreSQL.
func (r *Running) WrittenAfter(ctx context.Context, host string, t time.Time) ([]int64, error) {
	var ids []int64
	err := r.onNode(ctx, host, func(ctx context.Context, conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, "SELECT id FROM "+DrillTable+" WHERE ts > $1 ORDER BY id", t)
		if err != nil {
			return err
		}
		ids, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the rows written on %s after %s: %w", host, t.Format("15:04:05.000"), err)
	}
	return ids, nil
}

// WriterSessionsAfter returns how many sessions of Writers host's
// PostgreSQL has that began after t (pg_stat_activity.backend_start, the
// server's clock). A session that waits for a synchronous standby keeps
// its row invisible to WrittenAfter but shows here.
func (r *Running) WriterSessionsAfter(ctx context.Context, host string, t time.Time) (int, error) {
	var n int
	err := r.onNode(ctx, host, func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND backend_start > $2",
			writerApp, t).Scan(&n)
	})
	if err != nil {
		return 0, fmt.Errorf("counting writer sessions on %s: %w", host, err)
	}
	return n, nil
}
