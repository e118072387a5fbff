package loader_test

import (
	"context"
	"net/http"

	"github.com/xlb-dev/xlb/control/web"
)

// listenBench serves h as the daemon does (web.Listen, defaults).
func listenBench(ctx context.Context, h http.Handler) (string, error) {
	a, err := web.Listen(ctx, "127.0.0.1:0", h, web.ListenOptions{})
	if err != nil {
		return "", err
	}
	return a.String(), nil
}
