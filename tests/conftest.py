"""What every test module shares: the ``netns`` mark and the lab fixtures.

* ``@pytest.mark.netns`` (or ``pytestmark = pytest.mark.netns``): the test
  needs root, network namespaces and raw sockets. It is skipped, with the
  reason, when not root or when a program the lab needs is missing.
* ``@pytest.mark.root``: the test needs root for something else (dropping
  privileges with ``setpriv``, say); skipped when not root.
* ``lab`` (module scope): a lab of real TCP stacks built once per module from
  the module's ``LAB_PROFILES`` (default ``KERNEL_LAB``) and ``LAB_IMPAIR``,
  removed after the module's last test; the removal is checked (no namespace,
  interface, process or state file of the lab left).
* ``make_lab``: build a lab inside a test (``make_lab(["slirp"], impair=...)``);
  every lab made is removed when the test ends, whatever happened.

Helpers for running ``cron-os`` and comparing live measurements by shape are
in ``helpers.py`` (``from helpers import ...``).
"""

from __future__ import annotations

import os
import shutil

import pytest

#: The lab of a module that names no ``LAB_PROFILES``.
KERNEL_LAB = ("linux-synack2", "linux-synack3", "linux-orphan2", "linux-rto20")
LAB_TOOLS = ("ip", "nft", "tcpdump", "ethtool", "sysctl", "ss")


def _netns_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, raw sockets)"
    missing = [t for t in LAB_TOOLS if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (make test installs them)"
    return None


def pytest_collection_modifyitems(config, items):
    netns_reason = _netns_skip_reason()
    root = os.geteuid() == 0
    for item in items:
        if "netns" in item.keywords and netns_reason:
            item.add_marker(pytest.mark.skip(reason=netns_reason))
        elif "root" in item.keywords and not root:
            item.add_marker(pytest.mark.skip(reason="needs root"))


@pytest.fixture(scope="module")
def lab(request):
    from cronos.lab import Lab

    from helpers import lab_leftovers

    profiles = list(getattr(request.module, "LAB_PROFILES", KERNEL_LAB))
    impair = getattr(request.module, "LAB_IMPAIR", None)
    with Lab.create(profiles, impair=impair) as built:
        yield built
    assert lab_leftovers(built.id) == [], f"lab {built.id} not completely removed"


@pytest.fixture
def make_lab():
    from cronos.lab import Lab

    from helpers import lab_leftovers

    made = []

    def make(profiles, **kw):
        built = Lab.create(list(profiles), **kw)
        made.append(built)
        return built

    yield make
    problems = []
    for built in made:
        try:
            built.destroy()
        except Exception as exc:  # every lab is removed before reporting
            problems.append(str(exc))
        problems += lab_leftovers(built.id)
    assert problems == [], problems
