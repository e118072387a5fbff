package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/xlb-dev/xlb/loader"
)

// KernelError is a kernel that lacks a feature the datapath needs; xlb
// exits with code 2, like for a bad configuration: restarting cannot help.
type KernelError struct{ Err *loader.MissingError }

func (e *KernelError) Error() string { return e.Err.Error() }
func (e *KernelError) Unwrap() error { return e.Err }

// checkKernel runs loader.CheckKernel at start. It returns a *KernelError
// naming what the kernel lacks; a probe that could not run (no CAP_BPF,
// say) is only logged, as loading the datapath reports that more
// precisely.
func checkKernel() error {
	err := loader.CheckKernel()
	var me *loader.MissingError
	if errors.As(err, &me) {
		return &KernelError{Err: me}
	}
	if err != nil {
		slog.Warn("kernel feature check incomplete", "err", err)
	}
	return nil
}

// kernelLine says, for xlb config check, whether this host's kernel has
// what the datapath needs.
func kernelLine() string {
	err := loader.CheckKernel()
	var me *loader.MissingError
	switch {
	case errors.As(err, &me):
		return "kernel: NOT usable here: " + me.Error()
	case err != nil:
		return fmt.Sprintf("kernel: not checked (%v)", err)
	}
	return "kernel: has every feature the datapath needs (Linux " + loader.MinKernel + "+)"
}
