# jobstream — run `make help` for the targets.
GO      ?= go
BIN     := bin/jobstream
PKGS    := ./...

.DEFAULT_GOAL := help

.PHONY: help build run test vet fmt bench bench-long chaos clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

build: ## build bin/jobstream
	$(GO) build -o $(BIN) ./ops/jobstream

run: build ## run the whole pipeline locally (jobstream dev): Postgres, broker, reader, workers, a demo batch
	./$(BIN) dev

test: vet ## run every test against a real Postgres and the embedded broker
	$(GO) test -count=1 -timeout 15m $(PKGS)

vet: ## go vet and gofmt check
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fmt: ## format the code
	gofmt -w $$(git ls-files '*.go')

bench: ## measure against pg_recvlogical, LISTEN/NOTIFY, polling, River and the database alone (the whole pipeline too), how cost grows with the jobs, GPU step modes, the console, plus the Go micro-benchmarks (~40 min); prints one table, writes BENCHMARKS.md
	$(GO) run ./ops/bench -runs 3 -out BENCHMARKS.md

bench-long: ## how cost grows, with a backlog of 1,000,000 jobs inserted before the workers start (about an hour); writes BENCHMARKS-long.md
	$(GO) run ./ops/bench -only scale -long -runs 1 -out BENCHMARKS-long.md

chaos: ## kill -9 the reader, workers, broker and Postgres at random while 2,000 jobs flow; 2,000 more on a 3-node broker whose leaders and coordinators move; then user actions and faults against the reference model; check nothing is lost or done twice (SEED=n replays a schedule)
	$(GO) test ./ops/chaos -run '^(TestChaos|TestChaosCluster|TestModel)$$' -count=1 -v -timeout 60m -args -chaos.full $(if $(SEED),-chaos.seed $(SEED))

clean: ## remove build output and the dev stack's folder
	rm -rf bin .jobstream
