# mailcapture build, test and benchmark entry points.
GO      ?= go
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
GOFILES  = $(shell git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './data/*')

.PHONY: all build test test-deps bench fuzz soak stress lint clean

all: build

## build: the mailcapture binary in bin/
build:
	$(GO) build -buildvcs=auto -ldflags "$(LDFLAGS)" -o bin/mailcapture ./cmd/mailcapture

## test-deps: the Debian packages the integration tests need (idempotent)
test-deps:
	./scripts/test-deps.sh

## test: lint, then every test with the race detector
test: test-deps lint
	$(GO) test -race -count=1 -timeout 30m ./...

## fuzz: every fuzz target for FUZZTIME each (the committed seed corpora
## also run in make test)
FUZZTIME ?= 30s
FUZZ_TARGETS = mimeinfo:FuzzParse imapstore:FuzzSession front:FuzzPreauthCommand pop3:FuzzServerSession pop3:FuzzClient relay:FuzzRecipientRouting managesieve:FuzzSession sieve:FuzzCompile
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; \
	  echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) ./$$pkg; \
	done

## bench: the benchmarks, each printing its figures against its target
bench: test-deps
	$(GO) test -p 1 -run '^$$' -bench . -benchtime 1x -timeout 60m ./...

## soak: serve under mixed load for SOAKTIME (500 IMAP sessions, 20 SMTP
## senders, two captures), then every invariant checked; make test runs a
## short one
SOAKTIME ?= 10m
soak: test-deps
	MAILCAPTURE_SOAK=$(SOAKTIME) $(GO) test -count=1 -run '^TestSoak$$' -v -timeout 60m ./cmd/mailcapture

## stress: the multi-client IMAP consistency checker against a private
## Dovecot and against the local server, STRESSTIME each (10 clients on 5
## users); make test runs 10s each
STRESSTIME ?= 2m
stress: test-deps
	IMAPCHECK_TIME=$(STRESSTIME) $(GO) test -count=1 -run '^TestStress$$' -v -timeout 60m ./imapcheck

## lint: gofmt and go vet
lint:
	@unformatted="$$(gofmt -l $(GOFILES))"; \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin
