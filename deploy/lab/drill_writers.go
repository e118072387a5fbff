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

// Ack is an INSERT the server acknowledged: its COMMIT (autocommit)
// returned success to the client.
type Ack struct {
	ID     int64      `json:"id"`
	Client int        `json:"client"`
	Server netip.Addr `json:"server"` // inet_server_addr() of the session
	Sent   time.Time  `json:"sent"`   // the INSERT left the client
	At     time.Time  `json:"at"`     // its acknowledgement arrived
}

// WriterID returns the row id of a writer's seq'th INSERT (seq from 1):
// unique over tags (trials) below 9,000,000, clients below 1,000 and seq
// below 1e9.
func WriterID(tag, client int, seq int64) int64 {
	return int64(tag)*1_000_000_000_000 + int64(client)*1_000_000_000 + seq
}

// Writer pacing: a failed session is replaced after reconnectPause, so the
// first INSERT after a failover is at most this late; connectTimeout and
// statementTimeout bound a dial and an INSERT on a server that vanished
// without a word (a cut link).
const (
	reconnectPause   = 10 * time.Millisecond
	connectTimeout   = 2 * time.Second
	statementTimeout = 5 * time.Second
)

const insertSQL = "INSERT INTO " + DrillTable + " (id, trial, client, ts) VALUES ($1, $2, $3, clock_timestamp()) RETURNING host(inet_server_addr())"

// Writers are client sessions in the lab's client namespace, each
// inserting rows into DrillTable through VIP:PortRW one after another
// (autocommit) and recording every acknowledged one. A session that fails
// is closed and replaced after reconnectPause, until Stop.
type Writers struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	acks []Ack
	errs map[string]int
}

// StartWriters starts clients writers; their rows carry tag as the trial
// and ids WriterID(tag, client, seq). They run until Stop or ctx ends.
func (r *Running) StartWriters(ctx context.Context, clients, tag int) *Writers {
	ctx, cancel := context.WithCancel(ctx)
	w := &Writers{cancel: cancel, errs: map[string]int{}}
	for c := range clients {
		w.wg.Add(1)
		go w.run(ctx, r, tag, c)
	}
	return w
}

func (w *Writers) run(ctx context.Context, r *Running, tag, client int) {
	defer w.wg.Done()
	var seq int64
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, connectTimeout)
		conn, err := r.connect(cctx, VIP, PortRW, writerApp)
		cancel()
		if err != nil {
			w.failed("connect", err)
			pause(ctx, reconnectPause)
			continue
		}
		for ctx.Err() == nil {
			seq++
			id := WriterID(tag, client, seq)
			qctx, cancel := context.WithTimeout(ctx, statementTimeout)
			sent := time.Now()
			var server string
			err := conn.QueryRow(qctx, insertSQL, id, tag, client).Scan(&server)
			at := time.Now()
			cancel()
			if err != nil {
				w.failed("insert", err)
				break
			}
			addr, _ := netip.ParseAddr(server)
			w.mu.Lock()
			w.acks = append(w.acks, Ack{ID: id, Client: client, Server: addr, Sent: sent, At: at})
			w.mu.Unlock()
		}
		cctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		conn.Close(cctx)
		cancel()
		pause(ctx, reconnectPause)
	}
}

// failed counts err by the step and a coarse class, for the report.
func (w *Writers) failed(step string, err error) {
	class := "connection"
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe):
		class = "SQLSTATE " + pe.Code
	case errors.Is(err, context.DeadlineExceeded):
		class = "timeout"
	case errors.Is(err, context.Canceled):
		return // Stop
	}
	w.mu.Lock()
	w.errs[step+": "+class]++
	w.mu.Unlock()
}

// pause waits d or until ctx ends: the pace of reconnects, not a wait for
// a condition.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Acks returns the acknowledgements so far, in the order they arrived.
func (w *Writers) Acks() []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acks)
}

// Errors returns how many sessions failed, by step and class.
func (w *Writers) Errors() map[string]int {
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
func (w *Writers) WaitAck(ctx context.Context, after time.Time, ok func(Ack) bool) (Ack, error) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	from := 0
	for {
		w.mu.Lock()
		acks := w.acks[from:]
		from = len(w.acks)
		w.mu.Unlock()
		if a, found := firstAck(acks, after, ok); found {
			return a, nil
		}
		select {
		case <-ctx.Done():
			return Ack{}, fmt.Errorf("waiting for an acknowledged INSERT after %s: %w (%d acknowledged in all)",
				after.Format("15:04:05.000"), ctx.Err(), from)
		case <-tick.C:
		}
	}
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
func (w *Writers) Stop() []Ack {
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
