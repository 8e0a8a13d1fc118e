# Two entry points: `make demo` and `make test`. Both bootstrap .venv idempotently (stamp files:
# a second run with nothing changed does no installs).
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
ROBOSUITE := robosuite==1.5.2
PYTEST_ARGS ?=

.PHONY: all venv demo test lint test-unit test-integration bench check clean FORCE

all: venv

venv: $(VENV)/.stamp-pkg

$(VENV)/.stamp-venv: tools/bootstrap_system.sh
	bash tools/bootstrap_system.sh $(PYTHON)
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade "pip>=23" wheel setuptools
	touch $@

$(VENV)/.stamp-deps: $(VENV)/.stamp-venv requirements/ros.txt requirements/runtime.txt requirements/dev.txt requirements/export.txt
	$(VPY) -m pip install -q -r requirements/ros.txt -r requirements/runtime.txt -r requirements/dev.txt -r requirements/export.txt
	$(VPY) -m pip install -q --no-deps $(ROBOSUITE)
	touch $@

$(VENV)/.stamp-iface: $(VENV)/.stamp-deps tools/build_interfaces.sh $(wildcard interfaces/controller_manager_msgs/*.* interfaces/controller_manager_msgs/*/*)
	bash tools/build_interfaces.sh $(VENV)
	touch $@

# The editable install also builds the C extension core/_fastpath (in place, git-ignored); if it
# is missing (a clean of ignored files), the install runs again.
KERNEL_SO := $(wildcard vla_runtime/core/_fastpath*.so)
$(VENV)/.stamp-pkg: $(VENV)/.stamp-iface setup.py setup.cfg package.xml vla_runtime/core/_fastpath.c $(if $(KERNEL_SO),,FORCE)
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

FORCE:

demo: venv
	$(VPY) -m vla_runtime.cli demo

check: venv
	$(VPY) -m vla_runtime.cli check config/sim_panda.yaml

# Lint first (ruff, configured in pyproject.toml): CI fails on a finding as on a failing test.
lint: venv
	$(VENV)/bin/ruff check .

# pytest exits 5 when it collected nothing: that is a failure here, never a green run.
test: venv lint
	@$(VPY) -m pytest test $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-unit: venv
	$(VPY) -m pytest test/unit $(PYTEST_ARGS)

test-integration: venv
	$(VPY) -m pytest test/integration $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info vla_runtime/core/_fastpath*.so

# ---- openpi-client (PyPI 0.1.2) in its own venv, for the openpi protocol test (it pins numpy < 2) ----
OPENPI_VENV := build/venv-openpi-client
.PHONY: openpi-client-env
openpi-client-env: $(OPENPI_VENV)/.stamp

$(OPENPI_VENV)/.stamp: requirements/openpi-client.txt
	test -x $(OPENPI_VENV)/bin/python || $(PYTHON) -m venv $(OPENPI_VENV)
	$(OPENPI_VENV)/bin/python -m pip install -q -r requirements/openpi-client.txt
	touch $@

# ---- LeRobot importer (issue #14): its own Python >= 3.12 environment, never used by the runtime ----
# `make lerobot-env` builds .venv-lerobot (stamp: a second run with nothing changed installs nothing);
# `make test-import` builds the tiny random-weight LeRobot policies, imports them with `vla-runtime import lerobot`
# into packages under build/lerobot_import/, records LeRobot's outputs beside each (verify --reference: LeRobot vs
# the importer's numpy loop) and runs the runtime's own parity tests on them. Not part of `make test`.
LEROBOT_VENV := .venv-lerobot
LEROBOT_PY   := $(LEROBOT_VENV)/bin/python
LEROBOT_OUT  := build/lerobot_import
LEROBOT_TYPES ?= act diffusion diffusion_ddim smolvla pi0 pi05

.PHONY: lerobot-env test-import lerobot-fixtures

lerobot-env: $(LEROBOT_VENV)/.stamp

$(LEROBOT_VENV)/.stamp: tools/lerobot/requirements.txt tools/lerobot/find_python.sh
	@py=$$(bash tools/lerobot/find_python.sh) || exit 1; \
	echo "lerobot-env: using $$py"; \
	test -x $(LEROBOT_PY) || "$$py" -m venv $(LEROBOT_VENV) || exit 1; \
	$(LEROBOT_PY) -m pip install -q --upgrade "pip>=24" && \
	nice -n 19 $(LEROBOT_PY) -m pip install -q -r tools/lerobot/requirements.txt
	touch $@

test-import: lerobot-env venv
	HF_HUB_OFFLINE=1 nice -n 19 $(LEROBOT_PY) -m tools.lerobot build-tiny --out $(LEROBOT_OUT)/checkpoints \
	  --only $(LEROBOT_TYPES)
	@set -e; for t in $(LEROBOT_TYPES); do \
	  tok=""; if [ -d $(LEROBOT_OUT)/checkpoints/$$t/paligemma_tokenizer ]; then \
	    tok="--tokenizer $(LEROBOT_OUT)/checkpoints/$$t/paligemma_tokenizer"; fi; \
	  nice -n 19 $(VPY) -m vla_runtime.cli import lerobot $(LEROBOT_OUT)/checkpoints/$$t \
	    --out $(LEROBOT_OUT)/packages/$$t --name tiny_$$t $$tok; \
	  HF_HUB_OFFLINE=1 nice -n 19 $(LEROBOT_PY) -m tools.lerobot verify $(LEROBOT_OUT)/checkpoints/$$t \
	    $(LEROBOT_OUT)/packages/$$t $$tok --reference $(LEROBOT_OUT)/packages/$$t/reference.npz; \
	done
	$(LEROBOT_PY) -m tools.lerobot check-fixtures test/fixtures/lerobot
	VLA_LEROBOT_PACKAGES=$(LEROBOT_OUT)/packages $(VPY) -m pytest test/unit/test_lerobot_parity.py -q \
	  -k "$(shell echo $(LEROBOT_TYPES) | sed 's/ / or /g')"

# Rebuild the committed CI fixtures (test/fixtures/lerobot/<type>/) from the tiny checkpoints.
lerobot-fixtures: lerobot-env
	HF_HUB_OFFLINE=1 nice -n 19 $(LEROBOT_PY) -m tools.lerobot fixtures --work $(LEROBOT_OUT) \
	  --dest test/fixtures/lerobot --only $(LEROBOT_TYPES)
