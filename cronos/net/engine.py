"""The scan engine: one capture socket, one raw send path, a timer queue.

All probes of a scan run concurrently in one thread. The engine owns every
socket and the firewall table; probes only see (timestamp, segment) and
return segments to send. Replies are matched to probes by their flow
(our address/port, target address/port); a SYN-ACK must also acknowledge the
keyed-hash ISN of its flow (zmap's validation), so a forged or stray SYN-ACK
is not timed. Replies are dissected by scapy (``parse_ip``); a retransmission
that is a copy of the flow's last reply but for its checksums and TCP options
(``repeat_key``) gets that reply's Segment once its own checksum is checked:
at 10,000 hosts, three of every four SYN-ACKs are such copies.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import secrets
import selectors
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from .. import interrupts
from ..early import step as early_step
from ..model import Method, Observation
from ..packet import (
    ACK,
    SYN,
    Segment,
    build_ip,
    own_segment,
    parse_ip,
    peek_flow,
    repeat_key,
    tcp_checksum_ok,
)
from ..probes import PROBES, Probe, ProbeConfig
from . import bpf
from .capture import CaptureSet
from .firewall import RstGuard
from .rawsend import PortReservation, RawSender
from .route import RouteTable


@dataclass(frozen=True)
class Job:
    """One measurement to make."""

    target: str
    port: int
    method: Method
    try_index: int = 1


@dataclass(frozen=True)
class EngineConfig:
    timeout_s: float = 60.0
    window_s: float = 180.0
    max_in_flight: int = 1024  # probes listening at once
    max_rate_pps: float = 300.0  # packets we send per second
    payload: bytes = b"GET / HTTP/1.0\r\n\r\n"
    sack: bool = False
    key: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    interface: str | None = None  # -e: send and capture only there


@dataclass
class EngineStats:
    started: float = 0.0
    finished: float = 0.0
    probes: int = 0
    packets_in: int = 0
    packets_out: int = 0
    bad_checksum: int = 0
    kernel_drops: int = 0
    rst_dropped: int = 0
    send_errors: int = 0
    early_stops: int = 0
    copies: int = 0  # captured packets dropped as exact copies (bridge and port, ...)
    capture_filter: str = ""
    interfaces: tuple[str, ...] = ()  # where the capture listened


def isn_for(key: bytes, src: str, sport: int, dst: str, dport: int) -> int:
    """Keyed hash of the flow: our ISN, checkable on every reply."""
    msg = f"{src}|{sport}|{dst}|{dport}".encode()
    return struct.unpack("!I", hmac.new(key, msg, hashlib.sha256).digest()[:4])[0]


class _Running:
    __slots__ = ("probe", "reservation", "flow", "fw_flow", "timed_seen", "verdict_s", "pkts",
                 "events", "partial", "last_in")  # fmt: skip

    def __init__(self, probe: Probe, reservation: PortReservation, flow, fw_flow):
        self.probe = probe
        self.reservation = reservation
        self.flow = flow
        self.fw_flow = fw_flow
        self.timed_seen = 0  # timed packets when the early stopper last looked
        self.verdict_s: float | None = None
        self.pkts = 0  # segments received from the peer
        self.events = 0  # packets and timers fed to the probe (its only inputs)
        self.partial = None  # (events, probe.result()) at the last early-stop look
        self.last_in: tuple[bytes, Segment] | None = None  # (repeat_key, Segment) of the last reply


class Engine:
    """Run jobs concurrently; ``on_result`` gets each Observation as it completes."""

    BATCH = 64  # probes started between two looks at the capture socket
    # segments one probe may receive: 1 MiB of data is ~720; beyond, the peer floods
    FLOW_BUDGET = 2048

    def __init__(
        self,
        cfg: EngineConfig,
        on_result: Callable[[Observation], None],
        packet_sink: Callable[[float, bytes], None] | None = None,
        on_tick: Callable[[EngineStats, int], None] | None = None,
        early_stop=None,
    ):
        """``packet_sink(ts, ip_bytes)`` receives every captured packet of our
        flows, both directions, with its kernel timestamp (for ``-w FILE``)."""
        self.cfg = cfg
        self.on_result = on_result
        self.packet_sink = packet_sink
        self.on_tick = on_tick  # (stats, probes in flight), a few times a second
        # cronos.early.EarlyStopper: asked after each timed packet and at the
        # times it names; stops a probe once its verdict cannot change
        self.early_stop = early_stop
        self.stats = EngineStats()
        self._running: dict[tuple[str, int, str, int], _Running] = {}
        self._timers: list[tuple[float, int, tuple]] = []
        self._seq = itertools.count()
        self._tokens = 0.0
        self._last_refill = 0.0
        self._to_discard: list[tuple[str, int, int]] = []
        self._early_due: dict[tuple, float] = {}  # flows with a new timed packet

    # -- public ---------------------------------------------------------------
    def run(self, jobs: Iterable[Job], targets_hint: list[str] | None = None) -> EngineStats:
        self.stats.started = time.time()
        expr = bpf.flows_filter(targets_hint or [])
        self.stats.capture_filter = expr
        pending: Iterator[Job] = iter(jobs)
        self._routes = RouteTable(self.cfg.interface)
        self._sel = sel = selectors.DefaultSelector()
        sender = capture = None
        try:
            self._capture = capture = CaptureSet(expr)
            sender = RawSender(self.cfg.interface)
            with RstGuard() as guard:
                self._guard = guard
                try:
                    self._loop(pending, capture, sender, sel)
                finally:
                    self._abort_all(time.time())
                    self.stats.rst_dropped = guard.dropped() if guard.active else 0
        finally:
            if capture is not None:
                self.stats.kernel_drops = capture.kernel_drops()
                self.stats.copies = capture.copies.copies
                self.stats.interfaces = tuple(i or "any" for i in capture.interfaces)
                capture.close()
            sel.close()
            if sender is not None:
                sender.close()
            self._routes.close()
            self.stats.finished = time.time()
        return self.stats

    # -- loop -----------------------------------------------------------------
    def _loop(self, pending, capture, sender, sel) -> None:
        exhausted = False
        last_flush = last_tick = time.time()
        while True:
            interrupts.check()  # a signal Python could not raise where it came
            # replies first: a probe's ACK must leave as soon as its SYN-ACK is in,
            # since the server's RTO, hence the timing, includes our reaction
            self._drain(capture, sender)
            self._fire_timers(sender, time.time())
            self._early_checks()
            now = time.time()
            if not exhausted and len(self._running) < self.cfg.max_in_flight:
                exhausted = self._start_some(pending, sender, now)
            if exhausted and not self._running:
                return
            if now - last_flush > 1.0:  # batched: one nft call for many finished probes
                self._flush_discards()
                last_flush = now
            if self.on_tick is not None and now - last_tick > 0.25:
                self.stats.kernel_drops = self._capture.kernel_drops()
                self.on_tick(self.stats, len(self._running))
                last_tick = now
            timeout = self._next_wakeup(exhausted)
            if timeout > 0:
                sel.select(timeout)

    def _next_wakeup(self, exhausted: bool) -> float:
        now = time.time()
        nxt = 0.5
        if self._timers:
            nxt = min(nxt, self._timers[0][0] - now)
        if not exhausted and len(self._running) < self.cfg.max_in_flight:
            nxt = min(nxt, 1.0 / max(self.cfg.max_rate_pps, 1.0))
        return max(0.0, nxt)

    def _start_some(self, pending: Iterator[Job], sender: RawSender, now: float) -> bool:
        """Start as many probes as rate and concurrency allow; True when no job is left."""
        self._refill(now)
        batch: list[tuple[Job, _Running]] = []
        exhausted = False
        while (
            len(self._running) + len(batch) < self.cfg.max_in_flight
            and self._tokens >= 1.0
            and len(batch) < self.BATCH
        ):
            job = next(pending, None)
            if job is None:
                exhausted = True
                break
            batch.append((job, self._prepare(job)))
            self._tokens -= 1.0
        if batch:
            self._guard.add(r.fw_flow for _, r in batch)  # before the first SYN leaves
            for _job, run in batch:
                self._running[run.flow] = run
                self._send(sender, run.probe.start(time.time()))
                self._arm(run)
                self.stats.probes += 1
        return exhausted

    def _prepare(self, job: Job) -> _Running:
        route = self._routes.lookup(job.target)
        new = self._capture.ensure(route.ifname)  # listening before the first SYN leaves
        if new is not None:
            self._sel.register(new.fileno(), selectors.EVENT_READ)
        src_ip = route.src
        res = PortReservation(src_ip)
        cfg = ProbeConfig(
            target=job.target,
            port=job.port,
            src_ip=src_ip,
            src_port=res.port,
            isn=isn_for(self.cfg.key, src_ip, res.port, job.target, job.port),
            timeout_s=self.cfg.timeout_s,
            window_s=self.cfg.window_s,
            try_index=job.try_index,
            payload=self.cfg.payload,
            sack=self.cfg.sack,
        )
        probe = PROBES[job.method](cfg)
        flow = (src_ip, res.port, job.target, job.port)
        return _Running(probe, res, flow, (job.target, job.port, res.port))

    def _refill(self, now: float) -> None:
        rate = self.cfg.max_rate_pps
        if self._last_refill == 0.0:
            self._tokens = min(rate, 64.0)
        else:
            self._tokens = min(max(rate, 1.0), self._tokens + (now - self._last_refill) * rate)
        self._last_refill = now

    def _drain(self, capture: CaptureSet, sender: RawSender) -> None:
        for _ in range(10000):  # bounded: timers must still fire under a flood
            pkt = capture.recv()
            if pkt is None:
                return
            flow = peek_flow(pkt.data)
            if flow is None:
                continue
            run = self._running.get(flow)
            outgoing = run is not None
            if outgoing:  # our own segment: its capture time is the send time
                seg = own_segment(pkt.data)
            else:
                run = self._running.get((flow[2], flow[3], flow[0], flow[1]))
                if run is None:
                    continue  # not one of our flows: never parsed
                key = repeat_key(pkt.data)
                if key is not None and run.last_in is not None and run.last_in[0] == key:
                    # a copy of the last reply (a retransmission): same Segment
                    if not pkt.csum_not_ready and not tcp_checksum_ok(pkt.data):
                        self.stats.bad_checksum += 1
                        continue
                    seg = run.last_in[1]
                else:
                    seg = parse_ip(pkt.data, verify_checksum=not pkt.csum_not_ready)
                    if seg is None:
                        continue
                    if not seg.checksum_ok:
                        self.stats.bad_checksum += 1
                        continue
                    if not self._valid_reply(run, seg):
                        continue
                    if key is not None:
                        run.last_in = (key, seg)
                self.stats.packets_in += 1
                run.pkts += 1
                if run.pkts > self.FLOW_BUDGET:  # a flooding peer: stop parsing it
                    run.probe.stop_early(
                        pkt.ts, f"packet budget: more than {self.FLOW_BUDGET} packets, stopped"
                    )
                    self._finish(run)
                    continue
            if self.packet_sink is not None:
                self.packet_sink(pkt.ts, pkt.data)
            run.events += 1
            self._send(sender, run.probe.on_packet(pkt.ts, seg, outgoing))
            if not outgoing and self.early_stop is not None:
                self._early_due[run.flow] = pkt.ts  # after the drain: a match takes ms
            self._after_event(run)

    def _valid_reply(self, run: _Running, seg: Segment) -> bool:
        if seg.flags & (SYN | ACK) == SYN | ACK:
            return seg.ack == (run.probe.cfg.isn + 1) & 0xFFFFFFFF
        return True

    def _fire_timers(self, sender: RawSender, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            when, _, flow, *early = heapq.heappop(self._timers)
            run = self._running.get(flow)
            if run is None:
                continue
            if early:  # an early-stop recheck, at its own time (replay does the same)
                self._maybe_stop_early(run, when, force=True)
                if run.probe.done:
                    self._finish(run)
                continue
            if run.probe.deadline is None or run.probe.deadline > now:
                continue  # stale entry; a fresh one was pushed when the deadline moved
            run.events += 1
            self._send(sender, run.probe.on_timer(now))
            self._after_event(run)

    def _early_checks(self) -> None:
        due, self._early_due = self._early_due, {}
        for flow, ts in due.items():
            run = self._running.get(flow)
            if run is not None:
                self._maybe_stop_early(run, ts)
                if run.probe.done:
                    self._finish(run)

    def _maybe_stop_early(self, run: _Running, now: float, force: bool = False) -> None:
        probe = run.probe
        if probe.done or (not force and probe.timed_count == run.timed_seen):
            return
        run.timed_seen = probe.timed_count
        # a recheck with no packet nor timer since reuses the partial observation
        if run.partial is None or run.partial[0] != run.events:
            run.partial = (run.events, probe.result())
        verdict_s, recheck = early_step(self.early_stop, probe, now, run.partial[1])
        if verdict_s is not None:
            run.verdict_s = verdict_s
            self.stats.early_stops += 1
        elif recheck is not None:
            heapq.heappush(self._timers, (recheck, next(self._seq), run.flow, 1))

    def _after_event(self, run: _Running) -> None:
        if run.probe.done:
            self._finish(run)
        else:
            self._arm(run)

    def _arm(self, run: _Running) -> None:
        d = run.probe.deadline
        if d is not None:
            heapq.heappush(self._timers, (d, next(self._seq), run.flow))

    def _send(self, sender: RawSender, segs: list[Segment]) -> None:
        for s in segs:
            if sender.send(build_ip(s), s.dst):
                self.stats.packets_out += 1
            else:
                self.stats.send_errors += 1

    def _finish(self, run: _Running) -> None:
        self._running.pop(run.flow, None)
        run.reservation.release()
        self._to_discard.append(run.fw_flow)
        obs = run.probe.result()
        if run.verdict_s is not None:
            obs = replace(obs, verdict_s=round(run.verdict_s, 3))
        self.on_result(obs)

    def _flush_discards(self) -> None:
        if self._to_discard:
            self._guard.discard(self._to_discard)
            self._to_discard = []

    def _abort_all(self, now: float) -> None:
        """Interrupted (or done): report what every running probe measured."""
        for run in list(self._running.values()):
            run.probe.abort(now)
            self._finish(run)
        self._to_discard = []
