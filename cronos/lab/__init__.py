"""The lab: real target TCP stacks in network namespaces, for Cron-OS to scan.

Public API: ``Lab`` (``create``, ``load``, ``list``, ``destroy``),
``cleanup_stale``, ``PROFILES``/``Profile``, and for profile authors
``LabContext``/``LabTarget`` (contract in ``cronos.lab.core``).
"""

from __future__ import annotations

from .core import PORTS, STATES, LabContext, LabTarget
from .lab import Lab, cleanup_stale
from .profiles import DEFAULT_PROFILES, PROFILES, Profile

__all__ = [
    "DEFAULT_PROFILES",
    "PORTS",
    "PROFILES",
    "STATES",
    "Lab",
    "LabContext",
    "LabTarget",
    "Profile",
    "cleanup_stale",
]
