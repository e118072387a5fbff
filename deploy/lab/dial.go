package lab

import (
	"context"
	"net"
)

// DialContext dials from inside the namespace. A socket belongs to the
// namespace it was created in, so the connection keeps talking from there
// whichever thread uses it later; pgx takes this as its DialFunc.
func (ns *Namespace) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return ns.dial(ctx, net.Dialer{}, network, addr)
}

// dial dials with d from inside the namespace.
func (ns *Namespace) dial(ctx context.Context, d net.Dialer, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
