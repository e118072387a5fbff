package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// blocked is an idle session whose client is blocked in a read of its
// socket, with no deadline, as an application waiting for a reply or an
// idle pooled connection's reader is: only the network can end the read.
type blocked struct {
	name string
	err  chan error
	at   chan time.Time
}

// block starts reading conn's socket; the read ends only when the
// connection fails (or the test closes it).
func block(t *testing.T, name string, conn *pgx.Conn) *blocked {
	t.Helper()
	b := &blocked{name: name, err: make(chan error, 1), at: make(chan time.Time, 1)}
	nc := conn.PgConn().Conn()
	// libpq and most drivers leave TCP keepalive at the kernel's default
	// (2 hours); Go's dialer turns it on after 15 s, which would end the
	// hang this test is about by itself.
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		t.Fatalf("%s: connection is a %T, want *net.TCPConn", name, nc)
	}
	if err := tc.SetKeepAlive(false); err != nil {
		t.Fatalf("%s: turning keepalive off: %v", name, err)
	}
	go func() {
		buf := make([]byte, 512)
		n, err := nc.Read(buf)
		b.at <- time.Now()
		if err == nil {
			// The server's last words (an ErrorResponse): the client
			// sees an error and then the end of the stream.
			err = &serverMessage{buf[:n]}
		}
		b.err <- err
	}()
	return b
}

// serverMessage is what the server sent to an idle session before it went.
type serverMessage struct{ b []byte }

func (m *serverMessage) Error() string { return fmt.Sprintf("the server sent %q", m.b) }

// ended waits up to d for the session's read to fail and returns when it
// did. A read still blocked after d hangs: the failure this file tests.
func (b *blocked) ended(t *testing.T, d time.Duration) time.Time {
	t.Helper()
	select {
	case at := <-b.at:
		err := <-b.err
		var msg *serverMessage
		if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) && !errors.As(err, &msg) {
			t.Fatalf("%s: the read ended with %v, want a reset, end of stream or the server's error", b.name, err)
		}
		t.Logf("%s: connection ended: %v", b.name, err)
		return at
	case <-time.After(d):
		t.Fatalf("%s: still blocked %v after the fault: the client hangs", b.name, d)
	}
	return time.Time{}
}

// stillBlocked fails the test when the session ended.
func (b *blocked) stillBlocked(t *testing.T) {
	t.Helper()
	select {
	case <-b.at:
		t.Fatalf("%s: a session on a healthy server was cut: %v", b.name, <-b.err)
	default:
	}
}

// readerOn opens connections to VIP:3001 until one lands on host.
func readerOn(ctx context.Context, r *lab.Running, host string) (*pgx.Conn, error) {
	want := lab.HostAddr(host).String()
	for range 60 {
		conn, err := r.Connect(ctx, lab.VIP, lab.PortRO)
		if err != nil {
			return nil, err
		}
		got, err := serverOf(ctx, conn)
		if err == nil && got == want {
			return conn, nil
		}
		conn.Close(ctx)
	}
	return nil, fmt.Errorf("no read connection landed on %s in 60 tries", host)
}

// maxReset bounds fault -> client error: the node must first be found
// down (a partition takes three timed-out probes), then its clients are
// reset within milliseconds. A client that hangs waits forever.
const maxReset = 10 * time.Second

// TestCutFlowsResetBlockedClients holds sessions that only read — one on
// VIP:3001 that landed on the replica pg3, one on VIP:3000 (the primary
// pg1) — and does each fault first to pg3, then to pg1. Each session must
// fail as soon as its server leaves the pool, although it never sends a
// packet (its server's own FIN or RST, if any, reaches the LB after the
// flow is gone), and the other must stay untouched.
func TestCutFlowsResetBlockedClients(t *testing.T) {
	for _, f := range lab.Faults {
		t.Run(string(f), func(t *testing.T) {
			r := upLab(t, lab.Options{})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()

			rconn, err := readerOn(ctx, r, "pg3")
			if err != nil {
				t.Fatal(err)
			}
			defer rconn.Close(context.Background())
			wconn, err := r.Connect(ctx, lab.VIP, lab.PortRW)
			if err != nil {
				t.Fatal(err)
			}
			defer wconn.Close(context.Background())
			if got, err := serverOf(ctx, wconn); err != nil || got != lab.HostAddr("pg1").String() {
				t.Fatalf("VIP:3000 session on %q (%v), want pg1", got, err)
			}
			reader := block(t, "reader on pg3 via :3001", rconn)
			writer := block(t, "session on pg1 via :3000", wconn)

			t0, err := r.Inject(ctx, "pg3", f)
			if err != nil {
				t.Fatal(err)
			}
			at := reader.ended(t, maxReset)
			t.Logf("%s of pg3: its reader failed %v after the fault", f, at.Sub(t0).Round(time.Millisecond))
			writer.stillBlocked(t)

			t0, err = r.Inject(ctx, "pg1", f)
			if err != nil {
				t.Fatal(err)
			}
			at = writer.ended(t, maxReset)
			t.Logf("%s of pg1: its session failed %v after the fault", f, at.Sub(t0).Round(time.Millisecond))
		})
	}
}

// upLab brings up a lab of its own (one LB unless opts says otherwise),
// taken down in cleanup also when the test fails, and returns it opened.
func upLab(t *testing.T, opts lab.Options) *lab.Running {
	t.Helper()
	lab.RequirePrivileged(t)
	bin, err := xlbBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts.Prefix = lab.TestPrefix()
	opts.Binary = bin
	if opts.XDPMode == "" {
		opts.XDPMode = "generic"
	}
	opts.Out = tlog{t}
	t.Cleanup(func() {
		checkNoRace(t, opts.Prefix)
		if err := lab.Down(opts.Prefix, nil); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	if _, err := lab.Up(ctx, opts); err != nil {
		t.Fatal(err)
	}
	r, err := lab.Open(opts.Prefix)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
