# Two commands for a newcomer: `make demo` (install, fetch data, run `compress all`) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= default

.PHONY: demo test test-slow lint setup data clean

demo: setup data
	$(BIN)/compress --config $(CONFIG) all

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Fashion-MNIST from Debian's package when we may install it; otherwise `compress` downloads it.
data:
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } || \
	  echo "dataset-fashion-mnist not installed; compress will download Fashion-MNIST into data/"

clean:
	rm -rf $(VENV) runs
