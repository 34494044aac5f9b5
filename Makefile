# The README's two commands: `make demo` (set up, run a small real study, write a report) and
# `make test` (set up, lint, run the tests). Both work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
HPSEARCH := $(VENV)/bin/hpsearch
# torch/torchvision pinned to the releases this project is measured with (CPU or CUDA build)
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup data demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Real Fashion-MNIST from Debian's package when it is missing and apt can install it.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "$$HPSEARCH_DATA" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist' or set HPSEARCH_DATA=DIR (the four .gz files); hpsearch will try to download it otherwise."; \
	  fi; \
	fi

demo: setup data
	$(HPSEARCH) run studies/quick.toml --workers 2
	mkdir -p reports
	$(HPSEARCH) report quick -o reports/quick.html
	@echo "report written to reports/quick.html"

lint: setup
	$(VENV)/bin/ruff check hpsearch tests bench alembic

test: setup lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) hpsearch.db hpsearch-checkpoints hpsearch-logs reports
