# Everything from nothing: a venv, CPU torch first (pip takes the local CPU build
# instead of a multi-GB CUDA one), then the project with its train and dev extras (so
# `make run` can train and `make test` runs everything); redis-server from apt if absent.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= data/default
BUNDLE ?= bundles/default
BIND   ?= 127.0.0.1:8000
REDIS_URL ?= redis://127.0.0.1:6379/0
WORKERS ?= 2
# Seconds the default bundle's epochs may take (about 30 s on 2 idle cores, all of them): on a
# busy machine `make run` still serves within about two minutes. 0 trains every epoch.
TRAIN_BUDGET ?= 90

# A real KServe ModelServer for the tests that put recguard in front of one (tests/harness/kserve_model.py),
# in a venv of its own: kserve 0.21 pins psutil and python-dateutil below what the project's venv holds.
KSERVE_VENV := .venv-kserve

.PHONY: install redis-server chromium kserve run test clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[train,dev]"
	touch $@

install: $(VENV)/.installed redis-server

redis-server:
	@command -v redis-server >/dev/null || { \
		echo "installing redis-server"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

$(DATA)/holdout.jsonl: | $(VENV)/.installed
	@echo "generating the synthetic shop in $(DATA) (a few seconds)"
	$(BIN)/recguard generate --out $(DATA)

# A data directory generated before the logs were declared in dataset.toml is generated again.
$(BUNDLE)/manifest.json: $(DATA)/holdout.jsonl
	@test -f $(DATA)/dataset.toml || { echo "$(DATA) has no dataset.toml: generating it again"; \
		$(BIN)/recguard generate --out $(DATA); }
	@echo "training $(BUNDLE) (the default shop: about 35 s on 2 idle cores; $(if $(filter-out 0,$(TRAIN_BUDGET)),at most $(TRAIN_BUDGET) s of epochs on a busy machine,every epoch however long))"
	$(BIN)/recguard train --data $(DATA) --out $(BUNDLE) $(if $(filter-out 0,$(TRAIN_BUDGET)),--time-budget $(TRAIN_BUDGET))

run: install $(BUNDLE)/manifest.json
	@$(BIN)/python -c "import redis,sys; redis.Redis.from_url('$(REDIS_URL)').ping()" 2>/dev/null || { \
		echo "no Redis at $(REDIS_URL): starting a local redis-server"; \
		mkdir -p var && redis-server --daemonize yes --bind 127.0.0.1 --port 6379 \
			--dir $(CURDIR)/var --appendonly yes --logfile $(CURDIR)/var/redis.log; }
	$(BIN)/recguard serve --bundle $(BUNDLE) --bind $(BIND) --workers $(WORKERS) --redis $(REDIS_URL)

# The dashboard test renders the page in a real headless browser.
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

kserve: $(KSERVE_VENV)/.installed

$(KSERVE_VENV)/.installed:
	@echo "installing KServe 0.21 into $(KSERVE_VENV) for the KServe upstream tests (about a minute)"
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet kserve==0.21.0
	touch $@

# Two pytest workers, a test file each at a time (its module fixtures built once) and the Redis
# Cluster's tests on one of them (tests/conftest.py groups them); each worker has its own
# redis-server. The 15 slowest tests close the output: a test that got slow shows there before
# the suite does.
test: install chromium kserve
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15

clean:
	rm -rf $(VENV) $(KSERVE_VENV) data bundles var
