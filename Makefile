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
