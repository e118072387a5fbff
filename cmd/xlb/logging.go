package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/urfave/cli/v2"
)

var logLevelFlag = &cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: []string{"XLB_LOG_LEVEL"}}

// setupLogging makes slog's default logger write format ("text" or "json")
// to w from level up. A bad value is a *ConfigError naming the flag.
func setupLogging(w io.Writer, format, level string) error {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return &ConfigError{Field: "--log-level", Err: fmt.Errorf("%q: want debug, info, warn or error", level)}
	}
	o := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "json":
		slog.SetDefault(slog.New(slog.NewJSONHandler(w, o)))
	case "text":
		slog.SetDefault(slog.New(slog.NewTextHandler(w, o)))
	default:
		return &ConfigError{Field: "--log-format", Err: fmt.Errorf("%q: want text or json", format)}
	}
	return nil
}
