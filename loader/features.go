package loader

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
)

// MinKernel is the oldest Linux release that has every kernel feature the
// datapath uses (the newest of Features' versions: managed neighbour
// entries, 5.16).
const MinKernel = "5.16"

// Feature is one kernel feature the datapath needs.
type Feature struct {
	// Name says what is needed, as a kernel developer names it.
	Name string
	// Since is the Linux release that brought it.
	Since string
	// probe returns nil when the running kernel has it, an error wrapping
	// ebpf.ErrNotSupported when it lacks it, another error when probing
	// failed. Nil for a feature that cannot be probed without touching
	// the host: CheckKernel compares the kernel's version with Since.
	probe func() error
}

// Features lists what the datapath (bpf/*.c) and the loader need from the
// kernel, in the order CheckKernel probes them.
var Features = []Feature{
	{"program type XDP", "4.8", func() error { return features.HaveProgramType(ebpf.XDP) }},
	{"v3 ISA (jmp32; clang -mcpu=v3)", "5.1", features.HaveV3ISA},
	{"map type array", "3.19", func() error { return features.HaveMapType(ebpf.Array) }},
	{"map type per-CPU array", "4.6", func() error { return features.HaveMapType(ebpf.PerCPUArray) }},
	{"map type hash", "3.19", func() error { return features.HaveMapType(ebpf.Hash) }},
	{"map type LPM trie (allowlists)", "4.11", func() error { return features.HaveMapType(ebpf.LPMTrie) }},
	{"map flag BPF_F_NO_PREALLOC", "4.6", func() error { return features.HaveMapFlag(features.BPF_F_NO_PREALLOC) }},
	{"map flag BPF_F_MMAPABLE (flow and SNAT tables read in place)", "5.5", func() error { return features.HaveMapFlag(features.BPF_F_MMAPABLE) }},
	{"XDP helper bpf_map_lookup_elem", "4.8", xdpHelper(asm.FnMapLookupElem)},
	{"XDP helper bpf_csum_diff", "4.8", xdpHelper(asm.FnCsumDiff)},
	{"XDP helper bpf_fib_lookup", "4.18", xdpHelper(asm.FnFibLookup)},
	{"XDP helper bpf_xdp_adjust_tail", "4.18", xdpHelper(asm.FnXdpAdjustTail)},
	{"XDP helper bpf_redirect", "4.14", xdpHelper(asm.FnRedirect)},
	{"XDP helper bpf_get_prandom_u32", "4.8", xdpHelper(asm.FnGetPrandomU32)},
	{"XDP helper bpf_ktime_get_coarse_ns", "5.11", xdpHelper(asm.FnKtimeGetCoarseNs)},
	{"atomic compare-and-exchange and fetch-or (BPF_CMPXCHG, BPF_OR|BPF_FETCH)", "5.12", haveAtomics},
	// Not probed (attaching or adding is the only test, and it would
	// touch an interface): the kernel's version is compared with Since.
	{"bpf_link for XDP (pinned link, restart without loss)", "5.9", nil},
	{"managed neighbour entries (NTF_EXT_MANAGED)", "5.16", nil},
}

// xdpHelper returns a probe for helper in XDP programs.
func xdpHelper(helper asm.BuiltinFunc) func() error {
	return func() error { return features.HaveProgramHelper(ebpf.XDP, helper) }
}

// haveAtomics loads an XDP program that compares-and-exchanges and
// fetch-ors a word on its stack, as the datapath does on the SNAT owner
// word and a flow's state.
func haveAtomics() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 0),
			asm.StoreMem(asm.R10, -8, asm.R0, asm.DWord),
			asm.Mov.Imm(asm.R1, 1),
			asm.CmpXchg.Mem(asm.R10, asm.R1, asm.DWord, -8),
			asm.Mov.Imm(asm.R1, 2),
			asm.FetchOr.Mem(asm.R10, asm.R1, asm.Word, -8),
			asm.Mov.Imm(asm.R0, 2), // XDP_PASS
			asm.Return(),
		},
	})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) || errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
		}
		return err
	}
	return prog.Close()
}

// MissingError lists the kernel features the running kernel lacks.
type MissingError struct {
	Missing []Feature
}

func (e *MissingError) Error() string {
	names := make([]string, len(e.Missing))
	for i, f := range e.Missing {
		names[i] = fmt.Sprintf("%s (Linux %s)", f.Name, f.Since)
	}
	return fmt.Sprintf("the kernel lacks what the datapath needs: %s; xlb needs Linux %s or newer", strings.Join(names, ", "), MinKernel)
}

// CheckKernel probes the running kernel for every entry of Features (by
// its version for those without a probe). It returns a *MissingError naming each feature the kernel
// lacks, an error wrapping the first probe that could not run (no
// CAP_BPF, say) otherwise, and nil when everything is there.
func CheckKernel() error {
	var missing []Feature
	var errs []error
	kernel, verr := features.LinuxVersionCode()
	if verr != nil {
		errs = append(errs, fmt.Errorf("reading the kernel's version: %w", verr))
	}
	for _, f := range Features {
		var err error
		switch {
		case f.probe != nil:
			err = f.probe()
		case verr == nil && kernel < versionCode(f.Since):
			err = ebpf.ErrNotSupported
		}
		switch {
		case err == nil:
		case errors.Is(err, ebpf.ErrNotSupported):
			missing = append(missing, f)
		default:
			errs = append(errs, fmt.Errorf("probing %s: %w", f.Name, err))
		}
	}
	if len(missing) > 0 {
		return &MissingError{Missing: missing}
	}
	return errors.Join(errs...)
}

// versionCode returns the LINUX_VERSION_CODE of a release "major.minor".
func versionCode(release string) uint32 {
	var major, minor uint32
	fmt.Sscanf(release, "%d.%d", &major, &minor)
	return major<<16 | minor<<8
}
