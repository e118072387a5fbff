package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// ErrNotRunning means no daemon answers on the control socket.
var ErrNotRunning = errors.New("xlb is not running (no answer on the control socket)")

// ErrNoAnswer means the daemon took the request but did not answer in time.
var ErrNoAnswer = errors.New("no answer from xlb in time")

// client talks to the daemon's control API.
type client struct {
	socket string
	http   *http.Client
}

func newClient(socket string) *client {
	return &client{socket: socket, http: &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}}
}

// do sends a request and decodes the JSON answer into out. It returns an
// error wrapping ErrNotRunning when nothing listens on the socket.
func (c *client) do(method, path string, out any) error {
	req, err := http.NewRequest(method, "http://xlb"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return fmt.Errorf("%s %s: %w within %v", method, path, ErrNoAnswer, c.http.Timeout)
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrNotRunning, c.socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", method, path, strings.TrimSpace(string(body)))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decoding answer: %w", err)
	}
	return nil
}
