# Two commands on a fresh machine: `make demo` runs the dummy job end to end on the embedded default,
# `make test` runs every check CI runs. Both install what they need, idempotently.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The virtual environment is rebuilt whenever pyproject.toml changes: the runtime dependencies alone for
# `make demo` and `make serve` (RUNTIME), with the dev extra (linters, test servers, browser) for the rest.
HASH    := $(shell cat pyproject.toml | sha256sum | cut -c1-12)
STAMP   := $(VENV)/.installed-$(HASH)
RUNTIME := $(VENV)/.runtime-$(HASH)
# GraphiQL's browser files, served by the app so the page works without a public CDN.
GRAPHIQL := $(VENV)/share/wml-graphiql/.installed
# The JavaScript client libraries of the README's graphql-ws snippet (tests/test_readme.py runs it).
JSCLIENT := $(VENV)/share/wml-js-client/.installed

.PHONY: demo test check serve system-deps demo-deps podman-setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* $(VENV)/.runtime-*
	touch $@ $(RUNTIME)

$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	rm -f $(VENV)/.runtime-*
	touch $@

demo: $(RUNTIME) demo-deps
	$(BIN)/wml demo

serve: $(RUNTIME) $(GRAPHIQL) demo-deps
	$(BIN)/wml serve

system-deps:
	scripts/system-deps

# bubblewrap: local workers run in its sandbox, and local:// refuses to start without it.
demo-deps:
	scripts/system-deps --demo

# podman + runc, a containers.conf, the busybox base image, the dummy-job image and the side-car image
# (container backend; the side-car image's wheels come from the virtual environment's pip).
podman-setup: system-deps | $(STAMP)
	scripts/podman-setup
	scripts/sidecar-image

$(BIN)/helm: scripts/get-helm | $(STAMP)
	scripts/get-helm

$(GRAPHIQL): scripts/get-graphiql | $(RUNTIME)
	scripts/get-graphiql $(VENV)
	touch $@

$(JSCLIENT): scripts/get-js-client | $(RUNTIME)
	scripts/get-js-client $(VENV)
	touch $@

test: $(STAMP) system-deps podman-setup $(BIN)/helm $(GRAPHIQL) $(JSCLIENT)
	scripts/check

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache .import_linter_cache

# Benchmarks (bench/README.md): measurements against raw baselines, under ten minutes on 2 cores.
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python bench/run_all.py
