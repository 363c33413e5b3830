# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Everything is installed into .venv (pip upgraded first: old pip resolvers loop on the dagster family).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: venv system-deps kustomize demo dev dev-stop test test-fast checks-demo lint bench clean deploy-render image-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e '.[dev,spark]'
	rm -f $(VENV)/.installed-*
	touch $@

# Debian packages the tests and local tooling need (deploy/local/debian-packages.txt); a no-op when present.
system-deps:
	deploy/local/install-debian-packages.sh

# The pinned kustomize that renders deploy/k8s in the tests, built by `go install` from the Go module proxy
# into ~/.cache/ingest_platform (deploy/local/kustomize/install.sh; the tests also call it on first use).
kustomize:
	deploy/local/kustomize/install.sh

demo: venv
	$(BIN)/ingest-platform demo

# The Dagster UI on http://127.0.0.1:3000 with the demo's data flowing (broker, topics, a steady producer,
# `dagster dev` with the project's dagster.yaml), state in .dev/. Ctrl-C or `make dev-stop` stops it all.
DEV_PORT ?= 3000
dev: venv
	$(BIN)/ingest-platform dev up --port $(DEV_PORT)

dev-stop:
	$(BIN)/ingest-platform dev down

test: venv system-deps kustomize
	$(BIN)/dagster definitions validate -w workspace.yaml
	$(BIN)/python -m pytest
	$(MAKE) checks-demo

# The asset checks of the demo lake, through Dagster's check machinery (ERROR failures exit non-zero).
checks-demo: venv
	rm -rf .demo/ci-lake
	INGEST_CATALOG= $(BIN)/ingest-platform demo --lake-root .demo/ci-lake --scale 0.2
	INGEST_CATALOG= INGEST_LAKE_ROOT=.demo/ci-lake $(BIN)/ingest-platform checks

test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

# Regenerates the deployment files that have one source each (ingest_platform/deployment/render.py): the
# spark-defaults ConfigMap and pod templates from deploy/spark/profiles/k8s.yaml, the PrometheusRule from
# deploy/prometheus/rules/, the Grafana dashboard ConfigMap from deploy/grafana/. The suite fails when stale.
deploy-render: venv
	$(BIN)/python -m ingest_platform.deployment.render

# The code image's install steps (deploy/docker/install.sh) in a clean folder, with the offline Spark check.
image-check: venv
	$(BIN)/python -m pytest -q ingest_platform_tests/test_image_install.py

lint: venv
	$(BIN)/ruff check ingest_platform ingest_platform_tests benchmarks

bench: venv
	$(BIN)/python benchmarks/ingest_bench.py

clean:
	rm -rf $(VENV) .demo .dev lake *.egg-info
