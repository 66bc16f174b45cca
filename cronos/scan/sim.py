"""A network in simulated time around a ``ScanCore``: scripted TCP peers.

The one driver of the core for tests and benches (h11's pair harness): it
does what the live engine does, with a clock of its own. Our segments are
seen by our capture ``capture_lag_s`` after the core emits them and reach
the peer ``one_way_s`` later; the peer's reach our capture ``one_way_s``
after it sends them; the core's timers are served ``timer_lag_s`` late (a
busy engine). Packets cross as IPv4 bytes (``wire=True``: built by
``packet.build_ip`` and parsed by the core as captured ones are) or as
Segments. ``captured`` is what a ``scan -w`` file would hold.

A ``Peer`` plans its segments when ours reach it (``on_segment``), may
cancel a planned one when it is due (``still_sends``: an ACK came), and may
have a clock of its own (``next_timer``/``on_timer``).
``StackPeer`` is a server with a retransmission schedule per state: it
answers a SYN with a SYN-ACK and sends it again at ``synack_gaps_s`` until
our ACK; after our FIN (LAST_ACK) or our request (FIN_WAIT1) it closes and
sends its FIN again at ``fin_gaps_s`` until it is acknowledged; an optional
RST ends each series. ``loss`` drops chosen packets on the way.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..model import Method, Observation
from ..packet import ACK, FIN, PSH, RST, SYN, Segment, build_ip
from ..probes import ProbeConfig
from .core import Job, ScanCore

MASK = 0xFFFFFFFF
PEER_TICK_S = 1e-4  # a peer's own timer is served at most this often
# event kinds, in the order they are served at equal times
_AT_US, _AT_PEER, _PEER_SENDS = 0, 1, 2


class Peer:
    """What a simulated host does with the segments that reach it."""

    address: str
    port: int

    def on_segment(self, t: float, seg: Segment) -> list[tuple[float, Segment]]:
        """Segments it plans to send, with their times (>= ``t``)."""
        raise NotImplementedError

    def still_sends(self, t: float, seg: Segment) -> bool:
        """Asked when a planned segment is due: False if what happened since
        (an ACK, a RST) cancelled it."""
        return True

    def next_timer(self) -> float | None:
        """When ``on_timer`` has something to do (a peer with a clock of its own)."""
        return None

    def on_timer(self, t: float) -> list[tuple[float, Segment]]:
        return []


@dataclass
class _Conn:
    client_isn: int
    fin_seq: int | None = None  # our FIN's sequence number once we closed
    established: bool = False
    fin_acked: bool = False
    reset: bool = False
    closing: bool = False


@dataclass
class StackPeer(Peer):
    """A TCP server timing its retransmissions like a given stack."""

    address: str
    port: int = 80
    synack_gaps_s: Sequence[float] = (1.0, 2.0, 4.0)
    synack_rst_s: float | None = None  # RST this long after the last SYN-ACK
    fin_gaps_s: Sequence[float] = (0.2, 0.4, 0.8)
    fin_rst_s: float | None = None
    isn: int = 5000
    body: bytes = b"HTTP/1.0 200 OK\r\n\r\nhello"  # the answer to a request
    app_delay_s: float = 0.001  # from our FIN or request to its close
    closed: bool = False  # a closed port: RST to every SYN
    ttl: int = 64
    window: int = 29200
    options: tuple = (("MSS", 1460), ("SAckOK", b""), ("NOP", None), ("WScale", 7))
    conns: dict[tuple[str, int], _Conn] = field(default_factory=dict)

    def _seg(self, to: Segment, flags: int, seq: int, ack: int, payload=b"", options=()):
        return Segment(self.address, to.src, self.port, to.sport, seq & MASK, ack & MASK, flags,
                       window=self.window, payload=payload, options=options, ttl=self.ttl,
                       df=True)  # fmt: skip

    def on_segment(self, t: float, seg: Segment) -> list[tuple[float, Segment]]:
        if seg.dst != self.address or seg.dport != self.port:
            return []
        key = (seg.src, seg.sport)
        conn = self.conns.get(key)
        if seg.flags & RST:
            if conn is not None:
                conn.reset = True
            return []
        if seg.flags & (SYN | ACK) == SYN:
            if self.closed:
                return [(t, self._seg(seg, RST | ACK, 0, seg.seq + 1))]
            if conn is None or conn.client_isn != seg.seq:
                conn = self.conns[key] = _Conn(seg.seq)
                return self._series(t, seg, self._synack(seg), self.synack_gaps_s,
                                    self.synack_rst_s, self.isn + 1)  # fmt: skip
            return [(t, self._synack(seg))]  # our SYN again: its SYN-ACK again
        if conn is None or conn.reset:
            return []
        return self._established(t, seg, conn)

    def _synack(self, seg: Segment) -> Segment:
        return self._seg(seg, SYN | ACK, self.isn, seg.seq + 1, options=self.options)

    def _series(self, t, to, first, gaps, rst_after, rst_seq) -> list[tuple[float, Segment]]:
        out = [(t, first)]
        for g in gaps:
            t += g
            out.append((t, first))
        if rst_after is not None:
            out.append((t + rst_after, self._seg(to, RST | ACK, rst_seq, first.ack)))
        return out

    def _established(self, t: float, seg: Segment, conn: _Conn) -> list[tuple[float, Segment]]:
        if seg.flags & ACK and seg.ack == (self.isn + 1) & MASK:
            conn.established = True
        fin = conn.fin_seq
        if fin is not None and seg.flags & ACK and (seg.ack - fin - 1) & MASK < 1 << 31:
            conn.fin_acked = True
        if not conn.established or conn.closing:
            return []
        sent = seg.seq + len(seg.payload)
        if seg.flags & FIN:  # LAST_ACK: it acknowledges our FIN, then closes
            conn.closing = True
            ack = sent + 1
            conn.fin_seq = (self.isn + 1) & MASK
            fin = self._seg(seg, FIN | ACK, conn.fin_seq, ack)
            t1 = t + self.app_delay_s
            return [(t, self._seg(seg, ACK, conn.fin_seq, ack))] + self._series(
                t1, seg, fin, self.fin_gaps_s, self.fin_rst_s, conn.fin_seq + 1
            )
        if seg.payload:  # FIN_WAIT1: it answers the request and closes first
            conn.closing = True
            t1 = t + self.app_delay_s
            data = self._seg(seg, PSH | ACK, self.isn + 1, sent, payload=self.body)
            conn.fin_seq = (self.isn + 1 + len(self.body)) & MASK
            fin = self._seg(seg, FIN | ACK, conn.fin_seq, sent)
            return [(t1, data)] + self._series(t1 + 0.0001, seg, fin, self.fin_gaps_s,
                                               self.fin_rst_s, conn.fin_seq + 1)  # fmt: skip
        return []

    def still_sends(self, t: float, seg: Segment) -> bool:
        conn = self.conns.get((seg.dst, seg.dport))
        if conn is None:
            return True  # a RST to a closed port
        if conn.reset:
            return False
        if seg.flags & SYN:
            return not conn.established
        if seg.flags & (FIN | RST) and conn.fin_seq is not None and conn.fin_acked:
            return False
        if seg.flags & RST and conn.fin_seq is None:  # the SYN-ACK series' RST
            return not conn.established
        return True


class SimNet:
    """One ``ScanCore`` and its peers on a simulated clock."""

    def __init__(
        self,
        core: ScanCore,
        peers: Sequence[Peer] = (),
        *,
        one_way_s: float = 0.015,
        capture_lag_s: float = 15e-6,
        timer_lag_s: float = 0.0,
        wire: bool = True,
        loss: Callable[[float, Segment, bool], bool] | None = None,
        capture_miss: Callable[[float, Segment], bool] | None = None,
    ):
        """``loss(t, seg, outgoing)``: True drops the segment on the path
        (ours after our capture saw it, the peer's before).
        ``capture_miss(t, seg)``: True when our capture misses one of our own
        segments (it still leaves)."""
        self.core = core
        self.peers = {(p.address, p.port): p for p in peers}
        self.one_way_s, self.capture_lag_s, self.timer_lag_s = one_way_s, capture_lag_s, timer_lag_s
        self.wire = wire
        self.loss = loss
        self.capture_miss = capture_miss
        self.now = 0.0
        self.sent: list[tuple[float, Segment]] = []  # what the core emitted, when
        self.captured: list[tuple[float, bytes]] = []  # our capture, both directions
        self.observations: list[Observation] = []
        self._events: list[tuple[float, int, int, Segment]] = []  # (t, kind, n, seg)
        self._peer_served: dict[int, float] = {}  # id(peer) -> last on_timer
        self._seq = itertools.count()

    # -- the scanner's side ------------------------------------------------------
    def start(self, job: Job, at: float, src_ip: str, src_port: int) -> None:
        self.run_until(at)
        self._emit(at, self.core.start(job, at, src_ip, src_port))

    def launch(self, cfg: ProbeConfig, method: Method, at: float) -> None:
        """A probe with a configuration of the caller's (its own ISN, say)."""
        self.run_until(at)
        self._emit(at, self.core.launch(cfg, method, at))

    def deliver(self, t: float, seg: Segment | bytes, *, wire: bool | None = None) -> list[Segment]:
        """A segment (or raw IPv4 bytes) reaching our capture at ``t`` from
        anywhere (a peer not simulated, a forger); what the core sent in
        reaction. ``wire``: as bytes or as a Segment (default: the net's)."""
        self.run_until(t)
        return self._capture_in(t, seg, wire)

    # -- the clock -----------------------------------------------------------------
    def run_until(self, until: float) -> None:
        """Serve every packet and timer due up to ``until``, in time order."""
        while True:
            d = self.core.next_deadline
            t_timer = None if d is None else d + self.timer_lag_s
            t_event = self._events[0][0] if self._events else None
            t_peer, peer = self._next_peer_timer()
            if (
                t_peer is not None
                and t_peer <= until
                and all(t is None or t_peer < t for t in (t_event, t_timer))
            ):
                self.now = t_peer
                for when, seg in peer.on_timer(t_peer):
                    self._push(max(when, t_peer), _PEER_SENDS, seg)
                self._peer_served[id(peer)] = t_peer
            elif (
                t_event is not None and t_event <= until and (t_timer is None or t_event <= t_timer)
            ):
                t, kind, _, seg = heapq.heappop(self._events)
                self.now = t
                self._serve(t, kind, seg)
            elif t_timer is not None and t_timer <= until:
                self.now = t_timer
                self._emit(t_timer, self.core.expire(t_timer))
            else:
                break
            self._collect()
        if until != float("inf"):
            self.now = max(self.now, until)

    def abort_all(self, now: float) -> None:
        """The user interrupted the scan at ``now``."""
        self.core.abort_all(now)
        self._collect()

    def run(self) -> list[Observation]:
        """Until nothing is left to happen (every probe done, every peer
        silent); the observations, in finishing order."""
        self.run_until(float("inf"))
        return self.observations

    # -- internals ------------------------------------------------------------------
    def _next_peer_timer(self) -> tuple[float | None, Peer | None]:
        """The earliest peer timer; a peer behind its schedule (a capped burst)
        is served again PEER_TICK_S later, not at the same instant."""
        best: tuple[float | None, Peer | None] = (None, None)
        for p in self.peers.values():
            t = p.next_timer()
            if t is None:
                continue
            last = self._peer_served.get(id(p))
            if last is not None:
                t = max(t, last + PEER_TICK_S)
            if best[0] is None or t < best[0]:
                best = (t, p)
        return best

    def _push(self, t: float, kind: int, seg: Segment) -> None:
        heapq.heappush(self._events, (t, kind, next(self._seq), seg))

    def _emit(self, t: float, segs: list[Segment]) -> None:
        for seg in segs:
            self.sent.append((t, seg))
            if self.capture_miss is None or not self.capture_miss(t, seg):
                self._push(t + self.capture_lag_s, _AT_US, seg)  # our own, captured
            if self.loss is None or not self.loss(t, seg, True):
                self._push(t + self.one_way_s, _AT_PEER, seg)
        self._collect()

    def _serve(self, t: float, kind: int, seg: Segment) -> None:
        if kind == _AT_US:
            self._capture_in(t, seg)
        elif kind == _AT_PEER:
            peer = self.peers.get((seg.dst, seg.dport))
            if peer is not None:
                for when, reply in peer.on_segment(t, seg):
                    self._push(when, _PEER_SENDS, reply)
        else:  # a peer's planned segment is due: it leaves, unless cancelled
            peer = self.peers.get((seg.src, seg.sport))
            cancelled = peer is not None and not peer.still_sends(t, seg)
            if not cancelled and (self.loss is None or not self.loss(t, seg, False)):
                self._push(t + self.one_way_s, _AT_US, seg)

    def _capture_in(
        self, t: float, seg: Segment | bytes, wire: bool | None = None
    ) -> list[Segment]:
        wire = self.wire if wire is None else wire
        data = seg if isinstance(seg, bytes) else build_ip(seg) if wire else seg
        out = self.core.receive(t, data)
        if out is None:
            return []
        if isinstance(data, bytes):
            self.captured.append((t, data))
        self._emit(t, out)
        return out

    def _collect(self) -> None:
        for done in self.core.results():
            self.observations.append(done.observation)
