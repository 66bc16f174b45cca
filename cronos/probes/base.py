"""The probe contract (modelled on zmap's ``probe_module_t``).

A probe is a pure state machine for one measurement (one target, port, state,
try). It never opens a socket, reads a clock or sleeps: the engine feeds it

* ``start(now)`` once, returning the segments to send (the stimulus);
* ``on_packet(ts, seg, outgoing)`` for every captured segment of its flow,
  ``ts`` being the kernel capture timestamp (seconds, float) and
  ``outgoing`` True for segments we sent (their capture time is the exact
  send time);
* ``on_timer(now)`` whenever ``deadline`` has passed.

Each returns the segments to send now. When ``done`` is True the engine
calls ``result()`` for the Observation and forgets the probe.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ProbeStateError
from ..model import Method, Observation
from ..packet import Segment


@dataclass(frozen=True)
class ProbeConfig:
    """Everything a probe needs to know, frozen and passed down."""

    target: str
    port: int
    src_ip: str
    src_port: int
    isn: int  # our initial sequence number (keyed hash: see scan.core)
    timeout_s: float = 60.0  # stop after this long without a timed packet
    window_s: float = 180.0  # hard cap on the listening window
    try_index: int = 1
    payload: bytes = b"GET / HTTP/1.0\r\n\r\n"  # FIN_WAIT1 stimulus
    sack: bool = False  # offer SACK in the closing probes
    ttl: int = 64


class Probe:
    """Base class: state bookkeeping shared by every probe."""

    method: Method
    #: TCP states this probe walks through -> states it may move to (h11 style).
    TRANSITIONS: dict[str, frozenset[str]] = {}
    INITIAL = "INIT"

    def __init__(self, cfg: ProbeConfig):
        self.cfg = cfg
        self.state = self.INITIAL
        self.deadline: float | None = None
        self.done = False
        self.aborted = False
        self.t_end: float | None = None  # when listening ended

    # -- contract -----------------------------------------------------------
    def start(self, now: float) -> list[Segment]:
        raise NotImplementedError

    def on_packet(self, ts: float, seg: Segment, outgoing: bool) -> list[Segment]:
        raise NotImplementedError

    def on_timer(self, now: float) -> list[Segment]:
        raise NotImplementedError

    def result(self) -> Observation:
        raise NotImplementedError

    def abort(self, now: float) -> None:
        """The user interrupted the scan: finish with what was measured."""
        if not self.done:
            self.aborted = True
            self._finish(now)

    @property
    def timed_count(self) -> int:
        """Packets of the timed series seen so far (SYN-ACKs or the server's FINs)."""
        raise NotImplementedError

    def stop_early(self, now: float, note: str) -> None:
        """The verdict cannot change any more (engine's early stop): finish now,
        status unchanged, ``Time`` = what was listened."""
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------
    def _finish(self, t_end: float) -> None:
        """Stop listening at ``t_end``: state DONE, no more timer."""
        if self.state != "DONE":
            self._goto("DONE")
        self.t_end = t_end
        self.done = True
        self.deadline = None

    def _goto(self, new: str) -> None:
        allowed = self.TRANSITIONS.get(self.state, frozenset())
        if new not in allowed:
            raise ProbeStateError(
                f"{type(self).__name__}: illegal transition {self.state} -> {new}"
            )
        self.state = new

    def is_reply(self, seg: Segment) -> bool:
        """A segment from the target's port to ours."""
        c = self.cfg
        return seg.src == c.target and seg.sport == c.port and seg.dport == c.src_port

    def is_ours(self, seg: Segment) -> bool:
        c = self.cfg
        return seg.dst == c.target and seg.dport == c.port and seg.sport == c.src_port

    def seg(
        self,
        flags: int,
        seq: int,
        ack: int = 0,
        payload: bytes = b"",
        options=(),
        window: int = 65535,
    ) -> Segment:
        c = self.cfg
        return Segment(
            src=c.src_ip,
            dst=c.target,
            sport=c.src_port,
            dport=c.port,
            seq=seq & 0xFFFFFFFF,
            ack=ack & 0xFFFFFFFF,
            flags=flags,
            window=window,
            payload=payload,
            options=tuple(options),
            ttl=c.ttl,
        )
