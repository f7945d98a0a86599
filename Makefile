# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
DATA   ?= $(abspath ../shared/data)
PY      = $(VENV)/bin/python
export LOOKALIKE_DATA := $(DATA)

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# The editable install is re-pointed at this checkout every time (cheap), so a venv kept outside
# the checkout (VENV=..., as CI does) serves every clone.
setup: $(VENV)/.installed
	@$(PY) -m pip install -q --no-deps -e . >/dev/null

# Ingest the CelebA sample and the people gallery into the embedded database (lookalike.db),
# then find the lookalikes of every face in a group photo.
demo: setup
	$(VENV)/bin/lookalike ingest $(DATA)/celeba
	$(VENV)/bin/lookalike ingest $(DATA)/people
	$(VENV)/bin/lookalike stats
	@if $(VENV)/bin/lookalike query --help >/dev/null 2>&1; then \
	  $(VENV)/bin/lookalike query $(DATA)/groups/photos/obama_and_biden.jpg -k 5 --out demo-out && \
	  echo "picture: $(CURDIR)/demo-out/result.png"; fi

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_query.py

clean:
	rm -rf lookalike.db demo-out ingest-report.txt
