# The two set-up commands: `make demo` and `make test`. Each creates .venv when it is
# missing and installs the project with pip (pip takes torch from this machine's disk).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.slimforge-installed

.PHONY: demo test install bench bench-suite bench-runtime gpu-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/slimforge demo

# TEST_WORKERS pytest-xdist processes (one test file each at a time, so module fixtures run once),
# each with its share of the cores as torch threads (tests/conftest.py); TEST_WORKERS=0: one process
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -m "not bench" -n $(TEST_WORKERS) --dist loadfile

# the checks that need a CUDA device (tests marked gpu + the bf16 demo on cuda), one summary line
gpu-check: $(STAMP)
	$(PY) -m compress.testing.gpu_check

bench-runtime: $(STAMP)
	$(PY) benchmarks/bench_runtime.py --data ../shared/data

bench: $(STAMP)
	$(PY) benchmarks/bench_gp_prune_cifar.py --data ../shared/data

# pytest-benchmark suite (benchmarks/test_bench_suite.py); compare runs with BENCH_ARGS=--benchmark-compare
bench-suite: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest benchmarks -m bench --benchmark-enable --benchmark-only \
		--benchmark-group-by=group --benchmark-autosave $(BENCH_ARGS)

clean:
	rm -rf slimforge-out .pytest_cache
