"""The scan core: every probe of a scan, without any I/O (h11's ``Connection``).

``ScanCore`` owns what turns jobs and captured packets into observations:
flows by 4-tuple, our keyed-hash ISNs (ZMap's validation: a SYN-ACK must
acknowledge ``isn_for(flow) + 1``), one probe per flow, one timer heap for
their deadlines and the early-stop rechecks, the per-flow packet budget, and
the reuse of a repeated reply's parse. It never opens a socket, reads a
clock or sleeps: time is the argument of every call.

    core = ScanCore(CoreConfig(...), early_stop)
    send(core.start(job, now, src_ip, src_port))  # our SYN
    send(core.receive(ts, ip_bytes) or [])        # each captured packet
    send(core.expire(now))                        # timers and early checks due
    for done in core.results(): ...               # finished flows, in order
    core.next_deadline                            # when to call expire again

Two drivers: the live engine (``cronos.net.engine``: sockets, capture,
firewall, rate) and the replay of a capture (``cronos.scan.replay``), which
feeds the recorded packets and timestamps to the same core, so that live and
replayed fingerprints agree by construction. ``cronos.scan.sim`` drives it
against scripted peers in simulated time (tests and benches).

Timers fire at their own time, not at the time ``expire`` is called: a
probe's retransmission schedule does not drift with the caller's lateness,
and a replay (which fires them exactly) takes the same decisions.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import secrets
import struct
from dataclasses import dataclass, field, replace

from ..analysis.early import step as early_step
from ..model import Method, Observation
from ..packet import (
    ACK,
    SYN,
    Segment,
    own_segment,
    parse_icmp6,
    parse_ip,
    peek_flow,
    repeat_key,
    tcp_checksum_ok,
)
from ..probes import PROBES, Probe, ProbeConfig

FlowKey = tuple[str, int, str, int]  # our address, our port, target, target port

MAX_ICMP_NOTES = 4  # per flow: a peer cannot grow a note without bound

# heap entry kinds: a probe's deadline, a look after a reply, a recheck the
# early stopper asked for
_TIMER, _EARLY, _RECHECK = 0, 1, 2


def isn_for(key: bytes, src: str, sport: int, dst: str, dport: int) -> int:
    """Keyed hash of the flow: our ISN, checkable on every reply."""
    msg = f"{src}|{sport}|{dst}|{dport}".encode()
    return struct.unpack("!I", hmac.new(key, msg, hashlib.sha256).digest()[:4])[0]


@dataclass(frozen=True)
class Job:
    """One measurement to make."""

    target: str
    port: int
    method: Method
    try_index: int = 1


@dataclass(frozen=True)
class CoreConfig:
    timeout_s: float = 60.0
    window_s: float = 180.0
    payload: bytes = b"GET / HTTP/1.0\r\n\r\n"
    sack: bool = False
    key: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    # segments one probe may receive: 1 MiB of data is ~720; beyond, the peer floods
    flow_budget: int = 2048


@dataclass
class CoreStats:
    probes: int = 0
    packets_in: int = 0  # the targets' segments given to a probe
    bad_checksum: int = 0
    invalid: int = 0  # SYN-ACKs of our flows not acknowledging our ISN
    early_stops: int = 0
    icmp: int = 0  # ICMPv6 errors about our flows


@dataclass(frozen=True)
class Finished:
    """A probe that is done: its flow (to release its port and firewall rule)
    and what it measured."""

    flow: FlowKey
    observation: Observation


class _Flow:
    __slots__ = ("probe", "key", "timed_seen", "verdict_s", "pkts", "events", "partial",
                 "last_in", "early_at", "armed", "icmp", "t0")  # fmt: skip

    def __init__(self, probe: Probe, key: FlowKey, t0: float = 0.0):
        self.probe = probe
        self.t0 = t0  # when the probe started
        self.key = key
        self.timed_seen = 0  # timed packets when the early stopper last looked
        self.verdict_s: float | None = None
        self.pkts = 0  # segments received from the peer
        self.events = 0  # packets and timers fed to the probe (its only inputs)
        self.partial = None  # (events, probe.result()) at the last early-stop look
        self.last_in: tuple[bytes, Segment] | None = None  # (repeat_key, Segment) of the last reply
        self.early_at: float | None = None  # capture time of the newest reply to look at
        self.armed: float | None = None  # the deadline last pushed on the heap
        self.icmp: list[str] = []  # ICMPv6 errors about this flow, noted in its observation


class ScanCore:
    """Flows, timers, validation and early stop for any number of probes."""

    def __init__(self, cfg: CoreConfig, early_stop=None):
        self.cfg = cfg
        # cronos.analysis.early.EarlyStopper: asked after each timed packet and at the
        # times it names; stops a probe once its verdict cannot change
        self.early_stop = early_stop
        self.stats = CoreStats()
        self._flows: dict[FlowKey, _Flow] = {}
        self._heap: list[tuple[float, int, int, FlowKey]] = []
        self._seq = itertools.count()
        self._done: list[Finished] = []

    # -- starting ---------------------------------------------------------------
    def probe_config(self, job: Job, src_ip: str, src_port: int) -> ProbeConfig:
        return ProbeConfig(
            target=job.target,
            port=job.port,
            src_ip=src_ip,
            src_port=src_port,
            isn=isn_for(self.cfg.key, src_ip, src_port, job.target, job.port),
            timeout_s=self.cfg.timeout_s,
            window_s=self.cfg.window_s,
            try_index=job.try_index,
            payload=self.cfg.payload,
            sack=self.cfg.sack,
        )

    def start(self, job: Job, now: float, src_ip: str, src_port: int) -> list[Segment]:
        """A new probe for ``job`` from ``src_ip:src_port``; the segments to send.

        The caller reserves the port and keeps it until the flow is finished."""
        return self.launch(self.probe_config(job, src_ip, src_port), job.method, now)

    def launch(self, cfg: ProbeConfig, method: Method, now: float) -> list[Segment]:
        """A probe with the caller's configuration (its ISN included, not
        checked against the key); the segments to send."""
        probe = PROBES[method](cfg)
        key = (cfg.src_ip, cfg.src_port, cfg.target, cfg.port)
        if key in self._flows:
            raise ValueError(f"flow {key} is already running")
        flow = self._flows[key] = _Flow(probe, key, now)
        self.stats.probes += 1
        out = probe.start(now)
        self._arm(flow)
        return out

    def adopt(self, cfg: ProbeConfig, method: Method, now: float) -> None:
        """A probe whose stimulus is already on the wire (a replayed capture):
        what it would send at ``now`` is dropped."""
        self.launch(cfg, method, now)

    def probe(self, flow: FlowKey) -> Probe | None:
        """The running probe of ``flow`` (None once it is finished)."""
        f = self._flows.get(flow)
        return None if f is None else f.probe

    # -- packets ------------------------------------------------------------------
    def receive(
        self, ts: float, data: bytes | Segment, *, csum_not_ready: bool = False
    ) -> list[Segment] | None:
        """One captured packet (IPv4 bytes, or a Segment already parsed) at its
        capture time ``ts``; the segments to send.

        None: not one of our flows' packets (another flow, a corrupt or
        invalid reply, beyond the flow's budget), so not part of the
        measurement (and not to be written to a ``-w`` file).
        ``csum_not_ready``: the device has not computed the checksum yet
        (PACKET_AUXDATA), so it cannot be checked."""
        if isinstance(data, Segment):
            return self._receive_segment(ts, data)
        key = peek_flow(data)
        if key is None:
            if len(data) > 48 and data[0] >> 4 == 6 and data[6] == 58:
                return self._icmp6(ts, data)
            return None
        flow = self._flows.get(key)
        if flow is not None:  # our own segment: its capture time is the send time
            return self._feed(flow, ts, own_segment(data), True)
        flow = self._flows.get((key[2], key[3], key[0], key[1]))
        if flow is None:
            return None  # not one of our flows: never parsed
        rkey = repeat_key(data)
        if rkey is not None and flow.last_in is not None and flow.last_in[0] == rkey:
            # a copy of the last reply (a retransmission): same Segment
            if not csum_not_ready and not tcp_checksum_ok(data):
                self.stats.bad_checksum += 1
                return None
            seg = flow.last_in[1]
        else:
            seg = parse_ip(data, verify_checksum=not csum_not_ready)
            if seg is None:
                return None
            if not seg.checksum_ok:
                self.stats.bad_checksum += 1
                return None
            if not self._valid_reply(flow, seg):
                return None
            if rkey is not None:
                flow.last_in = (rkey, seg)
        return self._reply(flow, ts, seg)

    def _icmp6(self, ts: float, data: bytes) -> list[Segment] | None:
        """An ICMPv6 error quoting one of our segments: noted in the flow's
        observation (at most ``MAX_ICMP_NOTES``), nothing else changes. []
        when it was about one of our flows (so a ``-w`` file keeps it)."""
        err = parse_icmp6(data)
        flow = None if err is None else self._flows.get(err.flow)
        if flow is None:
            return None
        self.stats.icmp += 1
        if len(flow.icmp) < MAX_ICMP_NOTES:
            at = (ts - flow.t0) * 1000
            mtu = f", MTU {err.mtu}" if err.mtu is not None else ""
            flow.icmp.append(f"ICMPv6 {err.kind} (code {err.code}{mtu}) from {err.reporter} "
                             f"at +{at:.0f} ms")  # fmt: skip
        return []

    def _receive_segment(self, ts: float, seg: Segment) -> list[Segment] | None:
        flow = self._flows.get((seg.src, seg.sport, seg.dst, seg.dport))
        if flow is not None:
            return self._feed(flow, ts, seg, True)
        flow = self._flows.get((seg.dst, seg.dport, seg.src, seg.sport))
        if flow is None or not self._valid_reply(flow, seg):
            return None
        return self._reply(flow, ts, seg)

    def _valid_reply(self, flow: _Flow, seg: Segment) -> bool:
        if (
            seg.flags & (SYN | ACK) == SYN | ACK
            and seg.ack != (flow.probe.cfg.isn + 1) & 0xFFFFFFFF
        ):
            self.stats.invalid += 1
            return False
        return True

    def _reply(self, flow: _Flow, ts: float, seg: Segment) -> list[Segment] | None:
        self.stats.packets_in += 1
        flow.pkts += 1
        if flow.pkts > self.cfg.flow_budget:  # a flooding peer: stop listening to it
            budget = self.cfg.flow_budget
            flow.probe.stop_early(ts, f"packet budget: more than {budget} packets, stopped")
            self._finish(flow)
            return None
        out = self._feed(flow, ts, seg, False)
        if self.early_stop is not None and not flow.probe.done:
            if flow.early_at is None:  # one look per burst, at its newest packet
                heapq.heappush(self._heap, (ts, next(self._seq), _EARLY, flow.key))
            flow.early_at = ts
        return out

    def _feed(self, flow: _Flow, ts: float, seg: Segment, outgoing: bool) -> list[Segment]:
        flow.events += 1
        out = flow.probe.on_packet(ts, seg, outgoing)
        self._after_event(flow)
        return out

    # -- time ---------------------------------------------------------------------
    @property
    def next_deadline(self) -> float | None:
        """When ``expire`` has something to do (None: nothing until a packet)."""
        while self._heap:
            when, _, kind, key = self._heap[0]
            flow = self._flows.get(key)
            if flow is not None and (kind != _TIMER or flow.probe.deadline == when):
                return when
            heapq.heappop(self._heap)  # stale: finished, or its deadline moved
        return None

    def expire(self, now: float) -> list[Segment]:
        """Fire every timer and early-stop look due at ``now``, each at its own
        time, in time order; the segments to send."""
        out: list[Segment] = []
        while self._heap and self._heap[0][0] <= now:
            when, _, kind, key = heapq.heappop(self._heap)
            flow = self._flows.get(key)
            if flow is None:
                continue
            if kind == _EARLY:
                at, flow.early_at = flow.early_at, None
                self._look_early(flow, when if at is None else at)
                continue
            if kind == _RECHECK:  # at its own time (a replay does the same)
                self._look_early(flow, when, force=True)
                continue
            if flow.probe.deadline != when:
                continue  # stale entry; a fresh one was pushed when the deadline moved
            flow.events += 1
            out += flow.probe.on_timer(when)
            d = flow.probe.deadline
            if d is not None and d <= when:  # a probe bug must not spin the loop
                flow.probe.stop_early(when, "internal: the probe's timer did not advance")
            self._after_event(flow)
        return out

    def _look_early(self, flow: _Flow, now: float, force: bool = False) -> None:
        probe = flow.probe
        if probe.done or (not force and probe.timed_count == flow.timed_seen):
            return
        flow.timed_seen = probe.timed_count
        # a recheck with no packet nor timer since reuses the partial observation
        if flow.partial is None or flow.partial[0] != flow.events:
            flow.partial = (flow.events, probe.result())
        verdict_s, recheck = early_step(self.early_stop, probe, now, flow.partial[1])
        if verdict_s is not None:
            flow.verdict_s = verdict_s
            self.stats.early_stops += 1
        elif recheck is not None:
            heapq.heappush(self._heap, (recheck, next(self._seq), _RECHECK, flow.key))
        if probe.done:
            self._finish(flow)

    # -- ending -------------------------------------------------------------------
    def results(self) -> list[Finished]:
        """The probes finished since the last call, in the order they finished."""
        done, self._done = self._done, []
        return done

    def abort_all(self, now: float) -> None:
        """Interrupted (or done): every running probe reports what it measured."""
        for flow in list(self._flows.values()):
            flow.probe.abort(now)
            self._finish(flow)

    def __len__(self) -> int:
        """Probes running."""
        return len(self._flows)

    def _after_event(self, flow: _Flow) -> None:
        if flow.probe.done:
            self._finish(flow)
        else:
            self._arm(flow)

    def _arm(self, flow: _Flow) -> None:
        d = flow.probe.deadline
        if d is not None and d != flow.armed:
            flow.armed = d
            heapq.heappush(self._heap, (d, next(self._seq), _TIMER, flow.key))

    def _finish(self, flow: _Flow) -> None:
        if self._flows.pop(flow.key, None) is None:
            return
        obs = flow.probe.result()
        if flow.icmp:
            obs = replace(obs, note="; ".join(x for x in (obs.note, *flow.icmp) if x))
        if flow.verdict_s is not None:
            obs = replace(obs, verdict_s=round(flow.verdict_s, 3))
        self._done.append(Finished(flow.key, obs))
