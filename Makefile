# xlb — see README.md. Targets run as root on Debian 12.
GO ?= go
BPF_SRC := $(wildcard bpf/*.c bpf/*.h)

.PHONY: all generate build test bench lab fuzz clean compose compose-base compose-down

all: build

## generate: rebuild the BPF objects (loader/*_bpfel.go/.o) with bpf2go and clang
generate:
	cd loader && $(GO) generate ./...

## build: build bin/xlb (no clang needed: generated objects are committed)
build:
	$(GO) build -o bin/xlb ./cmd/xlb

## test: every test; privileged ones need root (CI sets XLB_REQUIRE_PRIVILEGED=1). The compose
##   lab's tests run last, on their own: Docker builds and containers would otherwise share the
##   cores with the timing-sensitive netns tests.
test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m $$($(GO) list ./... | grep -v '/tests/compose$$')
	$(GO) test -count=1 -timeout 30m ./tests/compose/

## bench: as root: datapath benchmarks (Program.Run, ns/packet), then pgbench in a lab of its own,
##   PostgreSQL directly vs xlb VIP:3000 vs HAProxy (tests/bench; JSON in tests/bench/out/latest.json)
bench:
	@if [ "$$(id -u)" != 0 ]; then echo "make bench: needs root (BPF, network namespaces)" >&2; exit 1; fi
	$(GO) test -run '^$$' -bench Datapath -benchtime 2000000x -count 3 ./loader/
	@sh deploy/lab/lab-deps.sh || { echo "make bench: installing the lab's packages failed" >&2; exit 1; }
	@sh tests/bench/bench-deps.sh || { echo "make bench: installing haproxy failed" >&2; exit 1; }
	$(GO) build -o bin/xlb ./cmd/xlb
	$(GO) build -o bin/xlb-bench ./tests/bench
	bin/xlb-bench -xlb bin/xlb -out tests/bench/out/latest.json

## fuzz: run the datapath fuzzer for a while (the seed corpus runs in make test)
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDatapath -fuzztime 60s ./loader/

## lab: as root on Debian 12: install what the lab needs, build bin/xlb, rebuild the lab, run the demo
lab:
	@if [ "$$(id -u)" != 0 ]; then echo "make lab: needs root (network namespaces, BPF)" >&2; exit 1; fi
	@command -v $(GO) >/dev/null || { echo "make lab: $(GO) not found: install Go (version in go.mod)" >&2; exit 1; }
	@echo "make lab: checking packages (deploy/lab/lab-deps.sh)"
	@sh deploy/lab/lab-deps.sh || { echo "make lab: installing the lab's packages failed" >&2; exit 1; }
	@echo "make lab: building bin/xlb"
	@$(MAKE) --no-print-directory build || { echo "make lab: building bin/xlb failed" >&2; exit 1; }
	@echo "make lab: removing any earlier lab (bin/xlb lab down)"
	@bin/xlb lab down || { echo "make lab: bin/xlb lab down failed" >&2; exit 1; }
	@echo "make lab: bringing the lab up with two LB hosts (bin/xlb lab up --lbs 2 --demo)"
	@bin/xlb lab up --lbs 2 --demo || { echo "make lab: bin/xlb lab up --lbs 2 --demo failed; it tore down what it built" >&2; exit 1; }

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
