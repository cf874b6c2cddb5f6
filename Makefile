# portspace: `make test` is what CI runs (.ci/run) on a clean clone.
GO      ?= go
GOFLAGS ?=
export GOFLAGS

# STATICCHECK is pinned: the same version everywhere (CI, every engineer).
STATICCHECK_VERSION ?= v0.8.2
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

# RACE_PKGS are the package directories with concurrency of their own
# (goroutines, locks shared between callers, cross-process locks); their
# tests, and their subpackages' tests, run under the race detector instead
# of the plain run. A directory that does not exist yet is skipped, so a
# package is listed here before it lands. Add yours with its reason:
#   dial            cooperative UDP lock, held-port tables shared by dials
#   internal/bench  parallel dialers, listeners, worker processes
#   lease           lease stores shared by dialers and proxies
#   proxy           one goroutine pair per relayed connection
#   steer           shared steering state updated while traffic flows
#   gateway         datapath goroutines over one NAT engine
#   internal/progress  a line updated from many goroutines
#   internal/steerlink netlink requests while steer's state changes
#   internal/gwtest, internal/natbench  gateway test rigs and NAT load
#                   generators with a goroutine per flow source
#   stun, natprobe  servers and probes reading sockets in goroutines
#   punch           simultaneous sends and receives during hole punching
# internal/doccheck's TestRacePkgsCoverGoroutines fails for a package that
# starts goroutines and is missing here.
RACE_PKGS ?= dial internal/bench lease proxy steer gateway internal/progress \
	internal/steerlink internal/gwtest internal/natbench stun natprobe punch

RACE_DIRS    = $(foreach p,$(RACE_PKGS),$(if $(wildcard $(p)/*.go),./$(p)/...))
RACE_IMPORTS = $(if $(RACE_DIRS),$(shell $(GO) list $(RACE_DIRS)))
UNIT_PKGS    = $(filter-out $(RACE_IMPORTS),$(shell $(GO) list ./...))

.PHONY: test fmt-check vet vet-darwin staticcheck unit race bench-smoke build bench

## test: gofmt, go vet (for linux and for darwin, so the portable
## fallbacks keep compiling), staticcheck, the whole test suite (the
## privileged tier runs when root, and fails rather than skips under
## CI=true) with the RACE_PKGS under the race detector, and every benchmark
## once.
test: fmt-check vet vet-darwin staticcheck unit race bench-smoke

fmt-check:
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

vet-darwin:
	GOOS=darwin $(GO) vet ./...

staticcheck:
	$(STATICCHECK) ./...

## unit: every package's tests except the RACE_PKGS (those run in race).
unit:
	$(GO) test -count=1 -timeout 30m $(UNIT_PKGS)

## race: the RACE_PKGS' tests under the race detector.
race:
	$(if $(RACE_DIRS),$(GO) test -count=1 -race -timeout 30m $(RACE_DIRS),@echo "race: no RACE_PKGS present")

## bench-smoke runs each benchmark for one iteration so none of them rots.
bench-smoke:
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./...

## build: the portspace binary in ./bin.
build:
	$(GO) build -o bin/portspace ./cmd/portspace

## bench: every Go benchmark with allocation counts. The published figures
## and the commands that reproduce them are in docs/bench-dial.md,
## docs/nat.md, docs/nat-logging.md, docs/packet.md and docs/portalloc.md.
bench:
	$(GO) test -count=1 -run '^$$' -bench . -benchmem ./...
