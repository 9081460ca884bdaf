PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install install-test demo test

# A CPU torch first when none is importable: a plain `torch` requirement would pull a multi-GB CUDA build.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .

install-test:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"

demo: install
	$(PYTHON) scripts/plot_surface.py

# pytest exits 5 when it collected no test: that is a failure here too.
test: install-test
	$(PYTHON) -m pytest -q
