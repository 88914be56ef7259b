# The two commands of the README: `make demo` (set up, run the main job) and `make test`.
# Both create .venv on first use: torch 2.13.0 (CPU build) first, then robmon with its extras,
# then torchattacks without its dependencies (the reference the attack tests compare with).

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Torch on one thread: on small machines a second thread beside other work is far slower.
RUN := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test,postgres]"
	# the AutoAttack reference for tests and benchmarks only (its deps would pull torchvision)
	$(BIN)/python -m pip install --quiet --no-deps torchattacks==3.5.1
	touch $@

demo: setup
	$(RUN) $(BIN)/robmon demo

# two workers, one test file each at a time (files share their module fixtures)
test: setup
	$(RUN) $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .robmon .pytest_cache .ruff_cache
