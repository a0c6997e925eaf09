# acrouter — see README.md. `make test` is what CI runs.
SHELL := /bin/bash
GO ?= go
BIN := bin/acrouter
PKGS := ./...
# An execution count, not a duration: a duration races Go's fuzz coordinator at
# the deadline and fails a target that found nothing (go.dev/issue/75804, fixed
# in Go 1.27; we build with 1.26).
FUZZTIME ?= 100000x

.PHONY: all build test unit lint fmt-check vet fuzz interop demo bench soak clean
INTEROP_TIMEOUT ?= 20m

all: build

build:
	$(GO) build -o $(BIN) ./cmd/acrouter

# Every test: format, vet, unit and in-process tests with the race detector,
# a short run of every fuzz target and, when run as root on Debian, the interop
# suite against a real SoftEther VPN Server in private network namespaces.
test: lint unit fuzz
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) interop; \
	else echo "interop: skipped (needs root; run 'sudo make interop')"; fi

unit:
	$(GO) test -race -count=1 $(PKGS)

lint: fmt-check vet

fmt-check:
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null; find . -name '*.go' -newer go.mod 2>/dev/null) 2>/dev/null | sort -u); \
	if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# Runs each fuzz target for FUZZTIME executions (bounded).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for t in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
	    echo "fuzz $$pkg $$t ($(FUZZTIME))"; \
	    $(GO) test -run='^$$' -fuzz="^$$t$$" -fuzztime=$(FUZZTIME) $$pkg; \
	  done; \
	done

# Interop suite against a real SoftEther VPN Server (Debian package) in private
# network namespaces. Needs root; installs what it needs with apt-get.
interop:
	bash lab/lab.sh install
	bash lab/proxy.sh install
	@command -v chromium >/dev/null || { echo "installing chromium (status page test)"; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
	$(GO) test -tags interop -count=1 -v -timeout $(INTEROP_TIMEOUT) ./lab/

# The main job end to end: a real SoftEther server, acrouter as an unprivileged
# user, a client that gets a lease and reaches a LAN service. Needs root.
demo: build
	bash lab/demo.sh

# Performance against SoftEther's SecureNAT (and a VPN Bridge cascade, and a
# plain veth) on the same real server, in one run; writes bench/RESULTS.md.
# Needs root; about 10 minutes.
bench: build
	bash bench/bench.sh

# Bounded soak (SOAK_DURATION, default 10m) of mixed traffic through a real
# SoftEther server: fails on >0.1% failed operations or RSS/fd/thread/goroutine
# growth beyond the bounds stated in lab/soak_test.go. Needs root; not in `make test`.
SOAK_DURATION ?= 10m
soak:
	bash lab/lab.sh install
	SOAK_DURATION=$(SOAK_DURATION) $(GO) test -tags 'interop soak' -count=1 -v -run '^TestSoak$$' -timeout 45m ./lab/

clean:
	rm -rf bin
