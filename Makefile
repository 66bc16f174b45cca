# Cron-OS: two commands set everything up on a fresh Debian machine (as root).
#   make demo   - build the lab of real TCP stacks, scan it, print the report, tear it down
#   make test   - run every test (unit + real-namespace integration)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
APT_PKGS := nmap nftables iproute2 ethtool tcpdump iptables slirp4netns \
            libnetfilter-queue-dev python3-venv python3-dev gcc libc6-dev procps psmisc \
            chromium libxml2-utils liblwip-dev golang-go golang-gvisor-gvisor-dev \
            user-mode-linux busybox-static cpio
STAMP_APT := $(VENV)/.apt-done
STAMP_PIP := $(VENV)/.pip-done

.PHONY: demo test deps lint fuzz bench-accuracy bench-early bench-scale clean

deps: $(STAMP_PIP)

$(STAMP_APT):
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@touch $@

$(STAMP_PIP): $(STAMP_APT) pyproject.toml cronos/analysis/_kernel.c
	$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(PY) -m pip install -q -e '.[dev,lab]'
	@touch $@

demo: deps
	$(VENV)/bin/cron-os demo

test: deps
	$(VENV)/bin/ruff check .
	@# the live tests one after the other, as alone; the unit tests beside them
	@# at nice 19, so that they never delay a target's timer (README, "make test")
	@unit=$$(mktemp /tmp/cronos-unit-tests.XXXXXX); trap 'rm -f "$$unit"' EXIT; \
	nice -n 19 $(VENV)/bin/pytest -q -p no:cacheprovider -m "not netns" >"$$unit" 2>&1 & pid=$$!; \
	$(VENV)/bin/pytest -q -p no:cacheprovider -m netns; live=$$?; \
	wait $$pid; unit_rc=$$?; echo "== unit tests (no namespace) =="; cat "$$unit"; \
	test $$live -eq 0 -a $$unit_rc -eq 0

lint: deps
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench-accuracy: deps
	$(PY) bench/accuracy.py

bench-early: deps
	$(PY) bench/early.py

bench-scale: deps
	$(PY) bench/scale.py

fuzz: deps
	$(VENV)/bin/pip install -q atheris
	$(PY) bench/fuzz.py -runs=1000000

clean:
	-$(VENV)/bin/cron-os cleanup
	rm -rf $(VENV) build *.egg-info
