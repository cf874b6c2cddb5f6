# portspace: `make test` is what CI runs (.ci/run) on a clean clone.
GO      ?= go
GOFLAGS ?=
export GOFLAGS

.PHONY: test fmt-check vet unit race bench-smoke build bench

## test: gofmt and go vet checks, the whole test suite (the privileged tier
## runs when root, and fails rather than skips under CI=true), the race
## detector over the concurrent packages, and every benchmark once.
test: fmt-check vet unit bench-smoke

fmt-check:
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

unit:
	$(GO) test -count=1 -timeout 30m ./...

race:
	$(GO) test -count=1 -race -timeout 30m ./...

## bench-smoke runs each benchmark for one iteration so none of them rots.
bench-smoke:
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./...

## build: the portspace binary in ./bin.
build:
	$(GO) build -o bin/portspace ./cmd/portspace

## bench: the published figures (see docs/benchmarks.md).
bench:
	$(GO) test -count=1 -run '^$$' -bench . -benchmem ./...
