# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
DATA   ?= $(abspath ../shared/data)
PY      = $(VENV)/bin/python
export LOOKALIKE_DATA := $(DATA)

.PHONY: setup demo test check bench clean

$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c .ci/constraints.txt -e ".[all,test]"
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

# The server tests' real Milvus 2.3.5 standalone server, in a virtualenv of its own (the `milvus`
# package pins an old pymilvus), kept outside the checkout. Without a package registry the install
# fails softly: the server tests then skip (or fail, with LOOKALIKE_REQUIRE_SERVER=1 as in CI).
SERVER_REQ   = "milvus==2.3.5" "pymilvus==2.3.7" "setuptools<70" "marshmallow<4"
SERVER_VENV ?= $(HOME)/.cache/lookalike/milvus-server-2.3.5
export LOOKALIKE_MILVUS_SERVER_PYTHON ?= $(SERVER_VENV)/bin/python

$(SERVER_VENV)/.installed:
	@$(PYTHON) -m venv $(SERVER_VENV) && \
	  $(SERVER_VENV)/bin/pip install -q --disable-pip-version-check $(SERVER_REQ) && touch $@ || \
	  echo "Milvus server virtualenv could not be installed; the server tests will not run" >&2

test: setup $(SERVER_VENV)/.installed
	$(PY) -m pytest -q

# Lint and type-check the three packages, the tests and the benchmarks, and run the unit tests as
# they run without the sample data. mypy reads the packages under their installed names
# (lookalike.*) through a tree of links: it does not follow the editable install's import hook.
# It checks the bodies of unannotated functions too (most tests), in two runs: mypy takes a package
# (-p) or files, not both.
TYPECHECK = .cache/typecheck
MYPY      = MYPYPATH=$(TYPECHECK) $(VENV)/bin/mypy --namespace-packages --explicit-package-bases --check-untyped-defs
check: setup
	$(VENV)/bin/ruff check schemas ingest query tests bench
	@mkdir -p $(TYPECHECK)/lookalike && for d in schemas ingest query; do ln -sfn ../../../$$d $(TYPECHECK)/lookalike/$$d; done
	$(MYPY) -p lookalike
	$(MYPY) tests bench
	LOOKALIKE_DATA=/nonexistent LOOKALIKE_REQUIRE_DATA= $(PY) -m pytest -q -p no:cacheprovider tests/test_units.py tests/test_schemas.py tests/test_filters.py

bench: setup
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_query.py

clean:
	rm -rf lookalike.db lookalike.heads lookalike.reports demo-out
