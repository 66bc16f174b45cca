"""Probe plug-ins: pure state machines, one per measured TCP state.

``PROBES`` is the one explicit registry (zmap's ``probe_modules`` table):
method letter -> probe class. Every class follows ``base.Probe``.
"""

from __future__ import annotations

from ..model import Method
from .base import Probe, ProbeConfig
from .syn import SynProbe

PROBES: dict[Method, type[Probe]] = {Method.SYN_RCVD: SynProbe}

try:  # the closing-state probes (LAST_ACK, FIN_WAIT1)
    from .closing import FinWaitProbe, LastAckProbe

    PROBES[Method.LAST_ACK] = LastAckProbe
    PROBES[Method.FIN_WAIT1] = FinWaitProbe
except ImportError:  # pragma: no cover - until they exist
    pass

__all__ = ["PROBES", "Probe", "ProbeConfig"]
