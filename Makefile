# modtools: `make figures` (the main job) and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROFILE ?= quick
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data figures test lab bench notebooks clean

setup: $(STAMP) data

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	# torchattacks only cross-checks our PGD in one test; its pinned requests~=2.25 would downgrade the Jupyter stack
	$(PY) -m pip install --quiet --no-deps torchattacks==3.5.1 || echo "torchattacks not installed; its cross-check is skipped"
	touch $(STAMP)

# Debian's dataset-fashion-mnist, where apt-get and root are available; otherwise set MODTOOLS_DATA.
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ] || [ -n "$$MODTOOLS_DATA" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || \
	   echo "could not install dataset-fashion-mnist; see README (Data)"; \
	else echo "Fashion-MNIST not found under $(FMNIST): see README (Data) for MODTOOLS_DATA"; fi

figures: setup
	$(PY) -m modtools run-all --profile $(PROFILE)

test: setup
	$(PY) -m pytest -q

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

bench: setup
	$(PY) -m modtools.bench

# Regenerate the .ipynb notebooks from their paired percent scripts (the reviewable source).
notebooks: setup
	$(VENV)/bin/jupytext --sync notebooks/*.py

clean:
	rm -rf runs .pytest_cache
