# fourover6 — see README.md. The two commands for a fresh machine (as root):
#   make demo    build, start everything in network namespaces, show traffic
#   make test    every test: lint, unit, fuzz seeds, end-to-end (go test -race)

SHELL   := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO      ?= go
BIN     := bin
TOOLS   := $(CURDIR)/.tools/bin
CMDS    := 4over6-controller 4over6-dataplane 4over6ctl 4over6-client
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
BUILD_DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
VERSIONPKG := github.com/fourover6/fourover6/cmd/internal/version
LDFLAGS := -X $(VERSIONPKG).Version=$(VERSION) -X $(VERSIONPKG).Commit=$(COMMIT) -X $(VERSIONPKG).Date=$(BUILD_DATE)
GOFILES  = $(shell find bench cmd controlplane dataplane proto test -name '*.go')

BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
STATICCHECK_VERSION        := v0.8.2

.PHONY: all build test unit lint proto tools deps deps-demo deps-bench demo demo-down fuzz clean bench docs

all: build

## build: the four binaries in $(BIN), and what packaging needs, generated
## from them (not checked in): man pages in $(BIN)/man/man1 (4over6ctl) and
## man8 (the daemons, the client), and bash, zsh and fish completions in
## $(BIN)/completion. The man pages are dated SOURCE_DATE_EPOCH (default: the
## last commit), so a rebuild gives the same files.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null)
build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ $(addprefix ./cmd/,$(CMDS))
	@rm -rf '$(BIN)/man' '$(BIN)/completion'
	@mkdir -p '$(BIN)/completion/bash' '$(BIN)/completion/zsh' '$(BIN)/completion/fish'
	@set -e; for c in $(CMDS); do \
	  SOURCE_DATE_EPOCH='$(SOURCE_DATE_EPOCH)' '$(BIN)'/$$c man '$(BIN)/man' >/dev/null; \
	  '$(BIN)'/$$c completion bash > '$(BIN)'/completion/bash/$$c; \
	  '$(BIN)'/$$c completion zsh > '$(BIN)'/completion/zsh/_$$c; \
	  '$(BIN)'/$$c completion fish > '$(BIN)'/completion/fish/$$c.fish; \
	done

## test: lint, then every package's tests with the race detector, as root
## (end-to-end tests build the binaries themselves and run them in
## namespaces they create). FOUROVER6_REQUIRE_ROOT turns "skip: needs root"
## into a failure, so nothing is silently left out.
## The bench harness is a module of its own (bench/go.mod): its chart
## library stays out of the product's module. Both are tested and linted.
test: deps lint
	FOUROVER6_REQUIRE_ROOT=1 $(GO) test -race -count=1 -timeout 15m ./...
	cd bench && FOUROVER6_REQUIRE_ROOT=1 $(GO) test -race -count=1 -timeout 10m ./...

## lint: gofmt, go vet, staticcheck and go mod tidy in both modules, buf lint.
lint: tools
	@bad=$$(gofmt -l $(GOFILES)); if [ -n "$$bad" ]; then echo "gofmt would change:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	cd bench && $(GO) vet ./...
	$(TOOLS)/staticcheck ./...
	cd bench && $(TOOLS)/staticcheck ./...
	$(GO) mod tidy -diff
	cd bench && $(GO) mod tidy -diff
	$(TOOLS)/buf lint

## proto: regenerate the checked-in gRPC code with local plugins.
proto: tools
	PATH=$(TOOLS):$$PATH $(TOOLS)/buf generate

tools: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc $(TOOLS)/staticcheck
$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
$(TOOLS)/buf:
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

## deps: what the tests need (apt-get, when missing); deps-demo: only what
## the demo needs; deps-bench: what only make bench needs on top of deps
## (the reference tunnels' wireguard-tools and openvpn).
deps:
	@bash test/deps.sh test
deps-demo:
	@bash test/deps.sh demo
deps-bench:
	@bash test/deps.sh bench

## demo: everything on embedded defaults in three namespaces, with sockets
## and state of its own (never a host's installed fourover6); tears down at
## the end unless KEEP=1 (then `make demo-down` cleans up).
demo: deps-demo build
	GO=$(GO) bash test/demo.sh up

demo-down:
	bash test/demo.sh down

## fuzz: run each fuzz target for FUZZTIME (seed corpora run in make test).
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecoder -fuzztime $(FUZZTIME) ./dataplane/wire
	$(GO) test -run '^$$' -fuzz FuzzCheckIPv4 -fuzztime $(FUZZTIME) ./dataplane/packet
	$(GO) test -run '^$$' -fuzz FuzzCheck -fuzztime $(FUZZTIME) ./dataplane/policy
	$(GO) test -run '^$$' -fuzz FuzzRanges -fuzztime $(FUZZTIME) ./dataplane/policy
	$(GO) test -run '^$$' -fuzz FuzzPercentFlag -fuzztime $(FUZZTIME) ./cmd/4over6ctl
	$(GO) test -run '^$$' -fuzz FuzzParseClientAddr -fuzztime $(FUZZTIME) ./cmd/4over6ctl

## install: the four binaries to $(BINDIR), the systemd units to $(UNITDIR)
## (4over6-client@.service is a template: instance NAME reads
## $(SYSCONFDIR)/fourover6/client-NAME.yaml), the daemons' example
## configurations to $(SYSCONFDIR)/fourover6 (an existing configuration is
## never overwritten) and the client's to $(DOCDIR)/examples, man pages to
## $(MANDIR)/man1 and man8, and shell completions. DESTDIR stages the tree for
## a package, e.g. make install DESTDIR=/tmp/pkg PREFIX=/usr UNITDIR=/lib/systemd/system
PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(SYSCONFDIR)/systemd/system
DATADIR     ?= $(PREFIX)/share
MANDIR      ?= $(DATADIR)/man
DOCDIR      ?= $(DATADIR)/doc/fourover6
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR  ?= $(DATADIR)/zsh/site-functions
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d
# The units and examples name the default paths; these put the real ones in.
DISTSED = -e 's|/usr/local/bin/|$(BINDIR)/|g' -e 's|/etc/fourover6/|$(SYSCONFDIR)/fourover6/|g' \
	-e 's|/usr/local/share/doc/fourover6/|$(DOCDIR)/|g'
.PHONY: install
install: build
	install -d -m 0755 '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(UNITDIR)' '$(DESTDIR)$(SYSCONFDIR)/fourover6' \
	  '$(DESTDIR)$(MANDIR)/man1' '$(DESTDIR)$(MANDIR)/man8' '$(DESTDIR)$(DOCDIR)/examples' \
	  '$(DESTDIR)$(BASHCOMPDIR)' '$(DESTDIR)$(ZSHCOMPDIR)' '$(DESTDIR)$(FISHCOMPDIR)'
	install -m 0755 $(addprefix $(BIN)/,$(CMDS)) '$(DESTDIR)$(BINDIR)/'
	@set -e; for u in 4over6-controller.service 4over6-dataplane.service 4over6-client@.service; do \
	  unit='$(DESTDIR)$(UNITDIR)'/$$u; c=$${u%%@*}; c=$${c%.service}; \
	  sed $(DISTSED) cmd/$$c/dist/$$u > "$$unit.tmp"; \
	  chmod 0644 "$$unit.tmp"; mv "$$unit.tmp" "$$unit"; echo "installed $$unit"; \
	done
	@set -e; for d in controller dataplane; do \
	  conf='$(DESTDIR)$(SYSCONFDIR)/fourover6'/$$d.yaml; \
	  if [ -e "$$conf" ]; then echo "kept existing $$conf"; \
	  else install -m 0644 cmd/4over6-$$d/dist/$$d.yaml "$$conf"; echo "installed $$conf"; fi; \
	done
	sed $(DISTSED) cmd/4over6-client/dist/client.yaml > '$(DESTDIR)$(DOCDIR)/examples/client.yaml'
	chmod 0644 '$(DESTDIR)$(DOCDIR)/examples/client.yaml'
	install -m 0644 $(BIN)/man/man1/*.1 '$(DESTDIR)$(MANDIR)/man1/'
	install -m 0644 $(BIN)/man/man8/*.8 '$(DESTDIR)$(MANDIR)/man8/'
	install -m 0644 $(BIN)/completion/bash/* '$(DESTDIR)$(BASHCOMPDIR)/'
	install -m 0644 $(BIN)/completion/zsh/* '$(DESTDIR)$(ZSHCOMPDIR)/'
	install -m 0644 $(BIN)/completion/fish/* '$(DESTDIR)$(FISHCOMPDIR)/'
	@echo 'then: systemctl daemon-reload && systemctl enable --now 4over6-controller 4over6-dataplane'
	@echo 'a client: cp $(DOCDIR)/examples/client.yaml $(SYSCONFDIR)/fourover6/client-NAME.yaml, set its server, then systemctl enable --now 4over6-client@NAME'

## bench: build, then measure throughput and RTT (ours on default flags and
## per TUN backend, raw IPv6, the kernel's encapsulation, wireguard-go and
## OpenVPN), fairness between clients, a reconnect storm, scale, controller
## allocations and micro-benchmarks in namespaces of its own (about ten
## minutes); prints a table and saves bench/results/<timestamp>.{json,md,png}
## and latest.*. BENCHFLAGS passes flags, e.g. BENCHFLAGS='-only throughput'.
## wireguard-go is built from the Go module proxy into the user cache
## directory on first use (BENCHFLAGS='-cache DIR' puts it elsewhere).
BENCHFLAGS ?=
bench: deps deps-bench build
	cd bench && $(GO) build -trimpath -o ../$(BIN)/4over6-loadgen ./loadgen
	cd bench && $(GO) run . -bin ../$(BIN) -out results -src .. $(BENCHFLAGS)

## docs: regenerate the command reference in docs/cli from the binaries
## themselves (a test fails when it is out of date).
docs: build
	rm -rf docs/cli && mkdir -p docs/cli
	$(BIN)/4over6ctl docs docs/cli >/dev/null
	$(BIN)/4over6-controller docs docs/cli >/dev/null
	$(BIN)/4over6-dataplane docs docs/cli >/dev/null
	$(BIN)/4over6-client docs docs/cli >/dev/null

clean:
	rm -rf $(BIN)
