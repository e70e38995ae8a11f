# `make test` installs everything the tests need (idempotently) and runs them.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := gcc libc6-dev libatomic1 libxen-dev xenstore-utils edid-decode libdrm-dev \
	vncsnapshot tigervnc-viewer xvfb x11-apps imagemagick chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test lint typecheck pytest deps apt venv bench bench-hostile clean demo guest-files \
	test-guest run-guest xen-tools test-xen demo-xen

# tests/xen boots real Xen under QEMU for about 10 minutes, most of it waiting on emulated
# CPUs: it runs beside the rest of the suite (pytest, then the hostile bench), and `make test`
# fails if either does. Its output follows the rest, in .cache/test-xen.log.
test: deps lint typecheck guest-files xen-tools
	@mkdir -p .cache; \
	$(VENV)/bin/pytest -q -rA -m xen tests/xen > .cache/test-xen.log 2>&1 & xen=$$!; \
	$(MAKE) --no-print-directory pytest bench-hostile; rest=$$?; \
	wait $$xen; xen_rc=$$?; \
	echo "== tests/xen (real Xen under QEMU)"; cat .cache/test-xen.log; \
	test $$rest = 0 && test $$xen_rc = 0

# The arm64 guest of tests/virtio/test_vhost_user_guest.py: QEMU 10, kernel, busybox and modetest fetched
# with apt into a private cache (about 200 MB, once); pytest skips that test without it.
GUEST_CACHE := .cache/guest

guest-files: apt
	sh tools/guest/fetch.sh $(GUEST_CACHE)

test-guest: deps guest-files
	$(VENV)/bin/pytest -q tests/virtio/test_vhost_user_guest.py

# The same guest by hand, against `pvdisplay vhost-user-gpu --socket-path $(GPU_SOCKET)`
# started beforehand with --scanout $(GPU_SCANOUT) (docs/virtio-gpu.md). Ctrl-A X quits.
GPU_SOCKET := /tmp/gpu.sock
GPU_SCANOUT := 1280x800

run-guest: guest-files
	sh tools/guest/run.sh $(GUEST_CACHE) $(GPU_SOCKET) $(GPU_SCANOUT)

# Real Xen under QEMU TCG (tools/xen/rig.py, docs/real-xen.md): Xen 4.17, a PV dom0 running
# `pvdisplay backend --hv xen`, PV guests with Linux's xen-drm-front. tools/xen/fetch.sh
# fetches with apt into .cache/xen once (about 500 MB, needs mmdebstrap and cpio here);
# every run repacks the working tree in seconds and boots.
xen-tools:
	@command -v mmdebstrap >/dev/null && command -v cpio >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends mmdebstrap cpio; }

test-xen: deps xen-tools
	$(VENV)/bin/pytest -q -rA -m xen tests/xen

demo-xen: deps xen-tools
	python3 tools/xen/rig.py demo

deps: apt venv

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The stamp is keyed on pyproject.toml so a dependency change reinstalls, and on the
# version's one place so the installed metadata follows it.
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml src/pvdisplay/__init__.py
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

lint: venv
	$(VENV)/bin/ruff check --no-cache src tests bench tools
	$(VENV)/bin/ruff format --check src tests bench tools
	$(VENV)/bin/lint-imports

typecheck: venv
	$(VENV)/bin/mypy

pytest: deps
	$(VENV)/bin/pytest -q -m "not xen"

bench: deps
	$(PY) -m bench

# Every attack of tests/hostile with its figures (crashes, hangs, leaks, honest flip rate),
# about a minute; part of `make test`.
bench-hostile: deps
	$(PY) -m bench hostile

# DEMO_ARGS: more options for the demo, e.g. DEMO_ARGS='--listen 127.0.0.1:8090'.
demo: deps
	$(VENV)/bin/pvdisplay demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
