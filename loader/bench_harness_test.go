package loader_test

import (
	"bytes"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/xlb-dev/xlb/deploy/lab"
	"github.com/xlb-dev/xlb/loader"
)

// resizer is an XDP program that changes the frame's length by delta with
// helper (bpf_xdp_adjust_head or bpf_xdp_adjust_tail) and returns XDP_TX,
// or XDP_DROP when the helper fails.
func resizer(t *testing.T, helper asm.BuiltinFunc, delta int32) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.XDP,
		AttachType: ebpf.AttachXDP, // as the harness's: a tail call needs the same
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R2, delta),
			helper.Call(),
			asm.JNE.Imm(asm.R0, 0, "fail"),
			asm.Mov.Imm(asm.R0, int32(xdpTX)),
			asm.Return(),
			asm.Mov.Imm(asm.R0, int32(xdpDrop)).WithSymbol("fail"),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("loading resizer: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// TestBenchHarnessFrameLength runs programs that grow the frame at the
// front (as an encapsulation does) and shrink it at the tail (as a RST
// does) through the harness many times: the harness must restore the
// frame's start and length every repeat, or the grown frame's start walks
// into the headroom and the program fails after a dozen repeats.
func TestBenchHarnessFrameLength(t *testing.T) {
	lab.RequirePrivileged(t)
	h, err := loader.NewBenchHarness()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	in := clientPkt(50000, 3000, ack|psh, []byte("0123456789abcdefghij")).build()
	if len(in) != loader.BenchPacketLen {
		t.Fatalf("test packet is %d bytes", len(in))
	}
	for _, tt := range []struct {
		name  string
		prog  *ebpf.Program
		check func(out []byte) bool
	}{
		{"grown at the front", resizer(t, asm.FnXdpAdjustHead, -20), func(out []byte) bool { return len(out) == len(in)+20 && bytes.Equal(out[20:], in) }},
		{"shrunk at the tail", resizer(t, asm.FnXdpAdjustTail, -20), func(out []byte) bool { return bytes.Equal(out, in[:len(in)-20]) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := h.Set(tt.prog, in, false); err != nil {
				t.Fatal(err)
			}
			out := make([]byte, len(in)+256)
			opts := ebpf.RunOptions{Data: in, DataOut: out, Repeat: 1}
			v, err := h.Program().Run(&opts)
			if err != nil {
				t.Fatal(err)
			}
			if v != xdpTX || !tt.check(opts.DataOut) {
				t.Fatalf("one run: verdict %s, output %x", verdictName[v], opts.DataOut)
			}
			// 1000 repeats on the same buffer: every one must succeed (the
			// last verdict shows whether the headroom ran out).
			v, _, err = h.Run(in, 0, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if v != xdpTX {
				t.Fatalf("after 1000 repeats: verdict %s, want TX", verdictName[v])
			}
		})
	}
}
