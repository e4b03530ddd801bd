# Two promises of the README: `make demo` and `make test` work on a fresh machine.
# Both create .venv when missing and install the project into it; a complete .venv is reused
# (the stamp below is newer than every file that decides what gets installed).
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
# DALI's CUDA flavour matches the torch build pinned in constraints.txt (CUDA 13.0).
DALI     ?= cuda13
SYNTH    := data/synth/train.csv

.PHONY: setup demo test lint format clean
setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(DALI),dev]'
	@touch $(STAMP)

$(SYNTH): | $(STAMP)
	$(VENV)/bin/mgm-prepare synth --out data/synth --num 32 --seed 0

demo: $(STAMP) $(SYNTH)
	$(PY) train.py --cfg configs/demo.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) data/synth runs
