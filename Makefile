# The two set-up commands of the README: `make run` (the app) and `make test` (the tests).
# Both create .venv and install everything they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8501

.PHONY: run test bench lab install browser clean demo

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pin the CPU build first: a bare `torch` requirement can pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[app,sweep,lab,dev]'
	# the built-in image set (DATA.NAME: animal_mnist); --no-deps: the wheel declares tensorflow, never used
	$(PY) -m pip install -q --no-deps -c constraints.txt animal-mnist
	touch $(STAMP)

install: $(STAMP)

# Debian chromium for the real-browser test (needs root or sudo; skipped when already there)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

run: $(STAMP)
	# address, headless, telemetry and the file watcher come from .streamlit/config.toml (their one home)
	$(VENV)/bin/streamlit run app.py --server.port $(PORT)

demo: $(STAMP)
	$(PY) -m workbench train --config configs/synthetic.yaml

test: $(STAMP) browser
	$(PY) -m pytest -q

lab: $(STAMP)
	$(PY) lab/run.py

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) runs wandb ray_results .pytest_cache
