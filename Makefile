# tsfm-wb: every target bootstraps what it needs. On a fresh machine: `make run`, `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed

# Keep caches and tool state inside the repo (git-ignored), never in $HOME.
CACHE := $(CURDIR)/.cache
export MPLBACKEND := Agg
export MPLCONFIGDIR := $(CACHE)/matplotlib
export IPYTHONDIR := $(CACHE)/ipython
export KERAS_HOME := $(CACHE)/keras
export TF_CPP_MIN_LOG_LEVEL := 3
export TF_ENABLE_ONEDNN_OPTS := 0
export CUDA_VISIBLE_DEVICES :=
export PYTHONHASHSEED := 0
export PYDEVD_DISABLE_FILE_VALIDATION := 1

# The reader notebooks nbval runs top to bottom in a Jupyter kernel (the tour, the EDA, the front door; outputs are
# data-dependent, hence --nbval-lax). Every notebook, these included, is executed by `make nbtest`.
NBVAL_NBS := nbs/index.ipynb nbs/lab/16_eda.ipynb nbs/60_front_door.ipynb

.PHONY: help install run test export check-export nbtest pytest nbval lab docs bench lab-bench lab-rules fuzz clean lock api-pin serve serve-models matrix

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(STAMP): requirements.lock setup.py settings.ini
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@mkdir -p $(CACHE)
	@touch $(STAMP)

install: $(STAMP) ## create .venv (Python 3.11) with the pinned dependencies; a no-op when nothing changed

PROFILE ?= quick
run: install ## the main job: quick benchmark matrix (12 spline-LSTM runs + edge gate + TSFM eval) -> reports/index.html
	$(PY) -m tsfm_wb.experiments.matrix --config configs/matrix.yaml --profile quick

matrix: install ## make matrix PROFILE=full [DASK=local|tcp://host:8786] [WORKERS=N]; resumes finished runs
	$(PY) -m tsfm_wb.experiments.matrix --config configs/matrix.yaml --profile $(PROFILE) $(if $(DASK),--dask $(DASK)) $(if $(WORKERS),--workers $(WORKERS))

export: install ## notebooks -> tsfm_wb/ (nbdev_export)
	$(BIN)/nbdev_export

check-export: install ## fail if tsfm_wb/ is not what the notebooks export
	bash .ci/check_export.sh

nbtest: install ## run every notebook's cells (as nbdev_test does) and render the book into _docs/; fails on any error or undocumented name
	$(PY) .ci/render_docs.py --force

PYTEST_WORKERS ?= 2
pytest: install ## pytest tests/ on PYTEST_WORKERS processes (pytest-xdist, idle workers steal queued tests; 0 = in this process)
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist worksteal tests

nbval: install ## run the reader notebooks top to bottom with nbval
	$(BIN)/pytest -q --nbval-lax -p no:cacheprovider $(NBVAL_NBS)

test: install ## all tests: export sync, notebook tests, pytest, nbval
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory check-export && \
	$(MAKE) --no-print-directory nbtest && \
	$(MAKE) --no-print-directory pytest && \
	$(MAKE) --no-print-directory nbval && \
	times > $(CACHE)/test-times.txt && \
	echo "make test: all passed in $$(( $$(date +%s) - start )) s, $$(tail -1 $(CACHE)/test-times.txt | awk -F'[ms ]+' \
	  '{printf "%.0f", $$1 * 60 + $$2 + $$3 * 60 + $$4}') s of CPU (wall time on a shared machine varies; CPU time less)"

lab: install ## JupyterLab on the repository (inline plots; also as root, as these machines run)
	env -u MPLBACKEND $(BIN)/jupyter lab --notebook-dir=$(CURDIR) $(if $(filter 0,$(shell id -u)),--allow-root)

docs: install ## the book as static HTML in _docs/ (sidebar, offline search); DOCS_ARGS=--force re-executes all
	$(PY) .ci/render_docs.py $(DOCS_ARGS)

TOLLAMA_URL ?=
serve: install ## the forecast service on 127.0.0.1:8000 (configs/runner.yaml); make serve TOLLAMA_URL=http://host:11435
	$(BIN)/tsfm-wb serve --config configs/runner.yaml --host 127.0.0.1 --port 8000 $(if $(TOLLAMA_URL),--tollama-url $(TOLLAMA_URL))

serve-models: install ## the embedded tollama-protocol model server on 127.0.0.1:11435 (statsforecast models + mock)
	$(BIN)/tsfm-wb serve-models --host 127.0.0.1 --port 11435

bench: install ## benchmarks: runner in-process, service under load over HTTP, kill -9 durability, lab n_jobs; results under reports/bench/
	$(PY) -m tsfm_wb.experiments.bench
	$(PY) -m tsfm_wb.experiments.served_bench
	$(PY) -m tsfm_wb.experiments.load
	$(PY) -m tsfm_wb.experiments.durability
	$(PY) -m tsfm_wb.lab.jobs_bench

# The lab's rolling-origin benchmark: two processes (one thread each: with TensorFlow's and numba's default pools two
# small-network fits on 2 cores ran ~4x slower), each series kept under $(LAB_BENCH)/series/ as it finishes, so an
# interrupted run resumes; the last call only gathers them into the report.
LAB_BENCH ?= reports/spline_lstm
LAB_SERIES_1 := seattle_temps sunspots realgdp passengers
LAB_SERIES_2 := nino seattle_tmax us_employment
lab-bench: install ## SplineLSTM vs statsforecast on 7 real series, 5 rolling windows (~40 min on 2 cores; tables and figures) -> reports/spline_lstm/
	export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1; \
	$(PY) -m tsfm_wb.lab.benchmark --series $(LAB_SERIES_1) --out $(LAB_BENCH) > /dev/null & p1=$$!; \
	$(PY) -m tsfm_wb.lab.benchmark --series $(LAB_SERIES_2) --out $(LAB_BENCH) > /dev/null; s2=$$?; wait $$p1 && [ $$s2 = 0 ] && \
	$(PY) -m tsfm_wb.lab.benchmark --series $(LAB_SERIES_1) $(LAB_SERIES_2) --out $(LAB_BENCH) | head -12

lab-rules: install ## the estimator's choice rules on development windows (before the scored ones; ~40 min) -> reports/spline_lstm/rules/
	export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1; \
	$(PY) -m tsfm_wb.lab.rules --series $(LAB_SERIES_1) --out $(LAB_BENCH)/rules > /dev/null & p1=$$!; \
	$(PY) -m tsfm_wb.lab.rules --series $(LAB_SERIES_2) --out $(LAB_BENCH)/rules > /dev/null; s2=$$?; wait $$p1 && [ $$s2 = 0 ] && \
	$(PY) -m tsfm_wb.lab.rules --series $(LAB_SERIES_1) $(LAB_SERIES_2) --out $(LAB_BENCH)/rules

FUZZ_EXAMPLES ?= 7000
fuzz: install ## long schemathesis run against the service (>= 20,000 requests); summary in reports/fuzz/
	$(PY) -m tsfm_wb.experiments.fuzz --examples $(FUZZ_EXAMPLES) --seed 7

lock: ## re-resolve requirements.in into requirements.lock (needs the registries)
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv && .lockvenv/bin/pip install -q -r requirements.in
	(echo "# Full pinned environment for Python 3.11 (pip freeze of requirements.in). Regenerate: make lock"; \
	 .lockvenv/bin/pip freeze --exclude-editable) > requirements.lock && rm -rf .lockvenv

clean: ## remove the venv, caches and generated docs (keeps artifacts/ and reports/)
	rm -rf $(VENV) $(CACHE) _docs _proc .pytest_cache .hypothesis *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

api-pin: install ## re-pin the public API snapshot (tests/public_api.json) after a deliberate change
	$(PY) -c "import importlib, json; from tsfm_wb._modidx import d; \
	import tsfm_wb; api = {m: sorted(importlib.import_module(m).__all__) for m in sorted(d['syms'])}; \
	api['tsfm_wb'] = sorted(tsfm_wb.__all__); \
	open('tests/public_api.json', 'w').write(json.dumps(api, indent=1, sort_keys=True) + '\n')"
