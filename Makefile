# One command each, on a fresh machine: `make bench` (the main job), `make test` (the suite) and `make docs` (the site
# in site/). Each sets up .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.diffsolve-installed
EXTRAS ?= dev,triton,diffusers,plots,jax,docs

.PHONY: setup bench test test-fast docs clean

setup: $(STAMP)

# torch is pinned first so that no later requirement pulls a newer (CUDA) build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	# k-diffusion is a cross-check peer only; its declared requirements pull torchvision (and a CUDA torch), and the
	# tests load just its sampling module, so it is installed without them.
	$(PY) -m pip install --quiet --no-deps 'k-diffusion==0.1.1.post1'
	touch $(STAMP)

bench: setup
	$(VENV)/bin/diffsolve bench $(ARGS)

test: setup
	$(PY) -m pytest -n 2 --durations=15 $(ARGS)

# Everything but the tests marked slow (each about 0.75 s or more): the quick check while editing, under 90 s.
test-fast: setup
	$(PY) -m pytest -n 2 -m "not slow" $(ARGS)

# The documentation site, strict: a warning, a broken link or a missing reference fails the build (tests/docs runs
# the same build). The solver table and the command-line reference are generated from the code (docs/hooks.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build site *.egg-info
