"""Probe plug-ins: pure state machines, one per measured TCP state.

``PROBES`` is the one explicit registry (zmap's ``probe_modules`` table):
method letter -> probe class. Every class follows ``base.Probe``.
"""

from __future__ import annotations

from ..model import Method
from .base import Probe, ProbeConfig
from .closing import FinWaitProbe, LastAckProbe
from .syn import SynProbe

PROBES: dict[Method, type[Probe]] = {
    Method.SYN_RCVD: SynProbe,
    Method.LAST_ACK: LastAckProbe,
    Method.FIN_WAIT1: FinWaitProbe,
}

__all__ = ["PROBES", "Probe", "ProbeConfig"]
