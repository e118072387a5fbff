package loader

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"
)

// BenchPacketLen is the length of every packet the bench harness restores.
const BenchPacketLen = 74

// BenchHarness measures an XDP program with BPF_PROG_TEST_RUN and Repeat.
// The kernel runs a program again on its own output, so a rewriting program
// would from the second run on see backend-bound traffic; the harness's own
// program restores the input packet before every run (optionally with a new
// client tuple, for new-flow runs) and tail-calls the program under test.
// It also resets the frame's length, so a target may change it: a frame
// that shrank is grown back at the tail, one that grew is cut back at the
// front (an encapsulation prepends its header; cutting the tail would move
// the frame's start into the headroom every repeat).
// Measure the harness with NewPassProgram as the target for its floor.
type BenchHarness struct {
	objs xlbBenchObjects
}

// NewBenchHarness loads the harness.
func NewBenchHarness() (*BenchHarness, error) {
	var h BenchHarness
	if err := loadXlbBenchObjects(&h.objs, nil); err != nil {
		return nil, fmt.Errorf("loading bench harness: %w", err)
	}
	return &h, nil
}

// Set makes target the program under test and pkt (BenchPacketLen bytes)
// its input. With vary, every run gets a new client address and port.
func (h *BenchHarness) Set(target *ebpf.Program, pkt []byte, vary bool) error {
	if len(pkt) != BenchPacketLen {
		return fmt.Errorf("bench packet is %d bytes, want %d", len(pkt), BenchPacketLen)
	}
	v := xlbBenchBenchPkt{}
	if vary {
		v.Vary = 1
	}
	for i := range v.Words {
		v.Words[i] = binary.NativeEndian.Uint64(pkt[8*i:])
	}
	v.Tail = binary.NativeEndian.Uint16(pkt[BenchPacketLen-2:])
	if err := h.objs.BenchPktMap.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("setting bench packet: %w", err)
	}
	if err := h.objs.BenchJmpMap.Put(uint32(0), target); err != nil {
		return fmt.Errorf("setting bench target: %w", err)
	}
	return nil
}

// Program returns the harness program to run.
func (h *BenchHarness) Program() *ebpf.Program { return h.objs.XlbBench }

// Close releases the harness.
func (h *BenchHarness) Close() error { return h.objs.Close() }

// NewPassProgram loads the XDP program that passes every packet.
func NewPassProgram() (*ebpf.Program, error) {
	var objs xlbPassObjects
	if err := loadXlbPassObjects(&objs, nil); err != nil {
		return nil, fmt.Errorf("loading pass program: %w", err)
	}
	return objs.XlbPass, nil
}

// Run runs the harness repeat times on in, as received on ifindex, in one
// BPF_PROG_TEST_RUN, and returns the last verdict and the kernel's time per
// run. (ebpf.Program.Run drops that time, and Program.Benchmark takes no
// context; timing the syscall from outside would also count the ~24 ms the
// kernel spends swapping the XDP dispatcher around a repeated run.)
func (h *BenchHarness) Run(in []byte, ifindex uint32, repeat int) (uint32, time.Duration, error) {
	ctx := [6]uint32{0, uint32(len(in)), 0, ifindex, 0, 0} // struct xdp_md
	attr := progRunAttr{
		ProgFD:     uint32(h.objs.XlbBench.FD()),
		DataSizeIn: uint32(len(in)),
		DataIn:     uint64(uintptr(unsafe.Pointer(&in[0]))),
		Repeat:     uint32(repeat),
		CtxSizeIn:  uint32(unsafe.Sizeof(ctx)),
		CtxIn:      uint64(uintptr(unsafe.Pointer(&ctx[0]))),
	}
	// The kernel stops a run with EINTR when a signal is pending (the Go
	// runtime's preemption signal, on a busy machine): run it again, a
	// bounded number of times (the repeats done so far stay done).
	var errno unix.Errno
	for range 100 {
		_, _, errno = unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		if errno != unix.EINTR {
			break
		}
	}
	runtime.KeepAlive(in)
	runtime.KeepAlive(&ctx)
	if errno != 0 {
		return 0, 0, fmt.Errorf("running bench harness: %w", errno)
	}
	return attr.Retval, time.Duration(attr.Duration), nil
}

// progRunAttr is the BPF_PROG_TEST_RUN member of union bpf_attr.
type progRunAttr struct {
	ProgFD      uint32
	Retval      uint32
	DataSizeIn  uint32
	DataSizeOut uint32
	DataIn      uint64
	DataOut     uint64
	Repeat      uint32
	Duration    uint32
	CtxSizeIn   uint32
	CtxSizeOut  uint32
	CtxIn       uint64
	CtxOut      uint64
	Flags       uint32
	CPU         uint32
	BatchSize   uint32
	_           uint32
}
