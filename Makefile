# modtools: `make figures` (the main job) and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROFILE ?= quick
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data browser figures test lab app bench notebooks clean

setup: $(STAMP) data browser

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

# Debian's Chromium for the browser test of the app (where apt-get and root are available; else the test is skipped).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null)) || \
	   echo "could not install chromium; the browser test will be skipped"; \
	else echo "no /usr/bin/chromium: the browser test will be skipped (apt-get install chromium)"; fi

figures: setup
	$(PY) -m modtools run-all --profile $(PROFILE)

test: setup
	$(PY) -m pytest -q

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

# The Module Foundry as a web app: Voilà serves notebook 90 on 127.0.0.1 (no code cells shown).
APP_PORT ?= 8866
app: setup
	MODTOOLS_APP=1 $(VENV)/bin/voila notebooks/90_module_foundry.ipynb --no-browser --Voila.ip=127.0.0.1 \
	  --port=$(APP_PORT) --strip_sources=True

bench: setup
	$(PY) -m modtools.bench $(BENCH_ARGS)   # BENCH_ARGS=--quick: every benchmark in a few minutes

# Regenerate the .ipynb notebooks from their paired percent scripts (the reviewable source).
notebooks: setup
	$(VENV)/bin/jupytext --sync notebooks/*.py

clean:
	rm -rf runs .pytest_cache
