package control

import "context"

// Promoter acts on PostgreSQL nodes for failover and switchover. xlb's
// runs SQL over pgx (cmd/xlb); tests use a fake.
type Promoter interface {
	// Promote makes replica n a primary (pg_promote) and returns once it
	// accepts writes.
	Promote(ctx context.Context, n Node) error
	// Follow points replica n at primary p: primary_conninfo to p,
	// recovery_target_timeline latest, reload; n's replication slot is
	// created on p first when missing.
	Follow(ctx context.Context, n, p Node) error
	// SetSynchronous sets synchronous_standby_names on primary p to
	// ANY 1 (names), or clears it when names is empty, and reloads.
	SetSynchronous(ctx context.Context, p Node, names []string) error
	// StopWrites makes primary p refuse writes (default_transaction_read_only,
	// client sessions terminated) and returns its WAL position after that.
	StopWrites(ctx context.Context, p Node) (lsn uint64, err error)
}
