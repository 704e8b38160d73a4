# relayd: `make run` starts the daemon on etc/relay.ini, `make test` runs the
# whole suite, `make bench` runs the benchmarks. Each creates .venv first
# (test and bench after the system packages, gcc among them: the native UDP
# relay is built with the venv when a C compiler is there).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= etc/relay.ini

.PHONY: run test bench venv system-deps clean

$(VENV)/.installed: setup.cfg setup.py pyproject.toml relayd/udp/_fastrelay.c relayd/journal/_framing.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/twistd -n relayd --config $(CONFIG)

system-deps:
	sh tests/system-deps.sh

test: system-deps venv
	$(PY) -m twisted.trial -j2 tests

bench: system-deps venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) _trial_temp* var tests/interop/pyenv
