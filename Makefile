# applianced — build, test, benchmark, lint, run the demo.
#   make dev     run the all-in-one demo on loopback (no root needed)
#   make test    install missing test dependencies, lint, run every test
#   make bench   run the benchmarks and print medians
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0-dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
GOTESTSUM := $(GO) run gotest.tools/gotestsum@v1.13.0
STATICCHECK := $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
BENCHSTAT := $(GO) run golang.org/x/perf/cmd/benchstat@latest
# Packages whose tests run with the race detector (all that have concurrency).
RACE_PKGS := ./...
TEST_TIMEOUT ?= 18m

.PHONY: all build dev test test-deps lint bench fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/applianced ./cmd/applianced

dev: build
	./bin/applianced dev

# test-deps installs the Debian packages the tests use, only those missing.
test-deps:
	@missing=$$(grep -v '^\s*#' test-deps.txt | sed 's/#.*//' | tr -s ' \t' '\n' | sort -u | \
		while read -r p; do [ -n "$$p" ] && ! dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' && echo "$$p"; done; true); \
	if [ -n "$$missing" ]; then \
		echo "installing test dependencies:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "make test-deps: run as root (or install: $$missing)"; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

# test runs every test, the install test on a booted Debian (test/e2e, tag
# e2e) included; gotestsum's last line counts passed, failed and skipped.
test: test-deps lint
	$(GOTESTSUM) --format testname -- -race -count=1 -tags e2e -timeout $(TEST_TIMEOUT) $(RACE_PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchtime 1s -count 5 ./... | tee bench.out
	$(BENCHSTAT) bench.out

# fuzz runs every fuzz target for FUZZTIME each.
# Minimizing each new input is capped at 10 runs: Go's default (60 s each)
# shows as 0 execs/s for minutes on targets that find many new inputs.
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 10x $$pkg || exit 1; \
		done; \
	done

clean:
	rm -rf bin dist bench.out

# deb builds dist/applianced_$(DEB_VERSION)_amd64.deb with a pinned nfpm
# (packaging/build): binary, hardened unit, conffile, man page, completion.
DEB_VERSION ?= 0.1.0~git$(shell git log -1 --format=%cd --date=format:%Y%m%d%H%M%S 2>/dev/null || date -u +%Y%m%d%H%M%S)
.PHONY: deb e2e
deb:
	$(GO) run ./packaging/build -version '$(DEB_VERSION)' -out dist

# e2e installs the .deb on a booted Debian 12 (debootstrap, cached under
# /var/cache/applianced-e2e; systemd-nspawn -b) and checks start, reload,
# upgrade, doctor and purge. Needs root.
e2e: test-deps
	$(GO) test -tags e2e -count=1 -timeout 15m -v ./test/e2e/
