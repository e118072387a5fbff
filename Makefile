# xlb — see README.md. Targets run as root on Debian 12.
GO ?= go
BPF_SRC := $(wildcard bpf/*.c bpf/*.h)
# DEPS installs the Debian packages a target needs when missing (one list for
# every target and .ci/run; fast when all are present): $(DEPS) GROUP.
DEPS := sh deploy/lab/lab-deps.sh
# RACE_PKGS: packages whose tests make test runs under the race detector
# (go test -race); every other package (the end-to-end tests/, whose daemons
# are built without it) runs plainly. XLB_E2E_RACE=1 builds those daemons
# with -race too (slower: keep it out of timing tests).
RACE_PKGS := ./cmd/... ./control/... ./deploy/... ./health/ ./loader/ ./vip/

.PHONY: all generate build lab-build test bench lab fuzz clean compose compose-base compose-down

all: build

## generate: rebuild the BPF objects (loader/*_bpfel.go/.o) with bpf2go and clang
##   (installs clang llvm libbpf-dev as root when missing; names the apt-get line otherwise)
generate:
	@command -v clang >/dev/null && command -v llvm-strip >/dev/null && [ -e /usr/include/bpf/bpf_helpers.h ] || $(DEPS) generate || \
		{ echo "make generate: needs clang, llvm and libbpf-dev: apt-get install -y clang llvm libbpf-dev" >&2; exit 1; }
	cd loader && $(GO) generate ./...

## build: build bin/xlb, the product (no clang needed: generated objects are committed)
build:
	$(GO) build -o bin/xlb ./cmd/xlb

## lab-build: build bin/xlb and bin/xlb-lab, the lab's commands (up|down|status|exec|demo|drill|chaos)
lab-build: build
	$(GO) build -o bin/xlb-lab ./cmd/xlb-lab

## test: every test; privileged ones need root (CI sets XLB_REQUIRE_PRIVILEGED=1). The compose
##   lab's tests run last, on their own: Docker builds and containers would otherwise share the
##   cores with the timing-sensitive netns tests. As root it first installs the packages the
##   tests run (deploy/lab/lab-deps.sh test) and mounts bpffs; without root it names what is
##   missing and goes on (the privileged tests skip).
test:
	@if [ "$$(id -u)" = 0 ]; then \
		$(DEPS) test || { echo "make test: installing the tests' packages failed" >&2; exit 1; }; \
		mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf; \
	else \
		$(DEPS) --check test || echo "make test: not root: privileged tests skip, and what is missing stays missing" >&2; \
	fi
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m $(RACE_PKGS)
	$(GO) test -count=1 -timeout 30m $$($(GO) list ./... | grep -v '/tests/compose$$' | grep -v -x -F "$$($(GO) list $(RACE_PKGS))")
	$(GO) test -count=1 -timeout 30m ./tests/compose/

## bench: as root: datapath benchmarks (Program.Run, ns/packet), then pgbench in a lab of its own,
##   PostgreSQL directly vs xlb VIP:3000 vs HAProxy (tests/bench; JSON in tests/bench/out/latest.json)
bench:
	@if [ "$$(id -u)" != 0 ]; then echo "make bench: needs root (BPF, network namespaces)" >&2; exit 1; fi
	$(GO) test -run '^$$' -bench Datapath -benchtime 2000000x -count 3 ./loader/
	@$(DEPS) bench || { echo "make bench: installing the lab's packages and haproxy failed" >&2; exit 1; }
	$(GO) build -o bin/xlb ./cmd/xlb
	$(GO) build -o bin/xlb-bench ./tests/bench
	bin/xlb-bench -xlb bin/xlb -out tests/bench/out/latest.json

## fuzz: run the datapath fuzzer for a while (the seed corpus runs in make test)
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDatapath -fuzztime 60s ./loader/

## lab: as root on Debian 12: install what the lab needs, build bin/xlb and bin/xlb-lab,
##   rebuild the lab (two LB hosts), run the demo
lab:
	@if [ "$$(id -u)" != 0 ]; then echo "make lab: needs root (network namespaces, BPF)" >&2; exit 1; fi
	@command -v $(GO) >/dev/null || { echo "make lab: $(GO) not found: install Go (version in go.mod)" >&2; exit 1; }
	@echo "make lab: checking packages (deploy/lab/lab-deps.sh)"
	@$(DEPS) lab || { echo "make lab: installing the lab's packages failed" >&2; exit 1; }
	@echo "make lab: building bin/xlb and bin/xlb-lab"
	@$(MAKE) --no-print-directory lab-build || { echo "make lab: building bin/xlb and bin/xlb-lab failed" >&2; exit 1; }
	@echo "make lab: removing any earlier lab (bin/xlb-lab down)"
	@bin/xlb-lab down || { echo "make lab: bin/xlb-lab down failed" >&2; exit 1; }
	@echo "make lab: bringing the lab up with two LB hosts (bin/xlb-lab up --lbs 2 --demo)"
	@bin/xlb-lab up --lbs 2 --demo || { echo "make lab: bin/xlb-lab up --lbs 2 --demo failed; it tore down what it built" >&2; exit 1; }

## compose-base: as root: build the compose lab's base image offline from Debian's packages
##   (mmdebstrap + docker import, tagged xlb-base:<hash of deploy/compose/base.sh>; reused when present)
compose-base:
	@bash deploy/compose/base.sh

## compose: as root: the compose lab (deploy/compose): build xlb and the images, write per-lab
##   passwords (deploy/compose/secrets, 0600), up -d, wait for health, run the demo.
##   XLB_BASE_IMAGE=debian:bookworm-slim picks a public base; without a registry the offline one is built.
compose:
	@bash deploy/compose/lab.sh up
	@bash deploy/compose/lab.sh demo

## compose-down: remove the compose lab: containers, network, volumes, its pins, its secrets
compose-down:
	@bash deploy/compose/lab.sh down

clean:
	rm -rf bin deploy/compose/lb/xlb
