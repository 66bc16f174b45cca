"""The live engine: sockets, capture, firewall and rate around a ``ScanCore``.

All probes of a scan run concurrently in one thread. The engine owns every
socket and the firewall table and does only I/O: it reserves a source port
per measurement, captures both directions with kernel timestamps, sends what
the core returns, and wakes up at the core's next deadline. Everything that
decides (flows, ISN validation, probes, timers, budgets, early stop) is in
``cronos.scan.core``, which a capture replay drives the same way.
"""

from __future__ import annotations

import ipaddress
import selectors
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from .. import interrupts
from ..model import Observation
from ..packet import Segment, build_ip
from ..scan.core import CoreConfig, FlowKey, Job, ScanCore, isn_for
from . import bpf
from .capture import CaptureSet
from .firewall import RstGuard
from .rawsend import PortReservation, RawSender
from .route import RouteTable

__all__ = ["Engine", "EngineConfig", "EngineStats", "Job", "isn_for"]


@dataclass(frozen=True)
class EngineConfig:
    core: CoreConfig = field(default_factory=CoreConfig)
    max_in_flight: int = 1024  # probes listening at once
    max_rate_pps: float = 300.0  # packets we send per second
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
    icmp6_errors: int = 0  # ICMPv6 errors about our flows (noted in their measurement)
    copies: int = 0  # captured packets dropped as exact copies (bridge and port, ...)
    capture_filter: str = ""
    interfaces: tuple[str, ...] = ()  # where the capture listened


class Engine:
    """Run jobs concurrently; ``on_result`` gets each Observation as it completes."""

    BATCH = 64  # probes started between two looks at the capture socket

    def __init__(
        self,
        cfg: EngineConfig,
        on_result: Callable[[Observation], None],
        packet_sink: Callable[[float, bytes], None] | None = None,
        on_tick: Callable[[EngineStats, int], None] | None = None,
        early_stop=None,
    ):
        """``packet_sink(ts, ip_bytes)`` receives every captured packet of our
        flows, both directions, with its kernel timestamp (for ``-w FILE``).
        ``early_stop``: a ``cronos.analysis.early.EarlyStopper``, or None (``--full``)."""
        self.cfg = cfg
        self.on_result = on_result
        self.packet_sink = packet_sink
        self.on_tick = on_tick  # (stats, probes in flight), a few times a second
        self.core = ScanCore(cfg.core, early_stop)
        self.stats = EngineStats()
        self._ports: dict[FlowKey, PortReservation] = {}
        self._tokens = 0.0
        self._last_refill = 0.0
        self._to_discard: list[tuple[str, int, int]] = []
        # an IPv6 target as the job gave it (a link-local one with its zone,
        # fe80::1%eth0), by the address the core and the capture see (fe80::1)
        self._as_given: dict[str, str] = {}

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
                    self.core.abort_all(time.time())
                    self._collect()
                    self._to_discard = []
                    self.stats.rst_dropped = guard.dropped() if guard.active else 0
        finally:
            self._sync_stats()
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
        core = self.core
        while True:
            interrupts.check()  # a signal Python could not raise where it came
            # replies first: a probe's ACK must leave as soon as its SYN-ACK is in,
            # since the server's RTO, hence the timing, includes our reaction
            self._drain(capture, sender)
            self._send(sender, core.expire(time.time()))
            self._collect()
            now = time.time()
            if not exhausted and len(core) < self.cfg.max_in_flight:
                exhausted = self._start_some(pending, sender, now)
            if exhausted and not len(core):
                return
            if now - last_flush > 1.0:  # batched: one nft call for many finished probes
                self._flush_discards()
                last_flush = now
            if self.on_tick is not None and now - last_tick > 0.25:
                self._sync_stats()
                self.stats.kernel_drops = self._capture.kernel_drops()
                self.on_tick(self.stats, len(core))
                last_tick = now
            timeout = self._next_wakeup(exhausted)
            if timeout > 0:
                sel.select(timeout)

    def _next_wakeup(self, exhausted: bool) -> float:
        now = time.time()
        nxt = 0.5
        deadline = self.core.next_deadline
        if deadline is not None:
            nxt = min(nxt, deadline - now)
        if not exhausted and len(self.core) < self.cfg.max_in_flight:
            nxt = min(nxt, 1.0 / max(self.cfg.max_rate_pps, 1.0))
        return max(0.0, nxt)

    def _start_some(self, pending: Iterator[Job], sender: RawSender, now: float) -> bool:
        """Start as many probes as rate and concurrency allow; True when no job is left."""
        self._refill(now)
        batch: list[tuple[Job, str, PortReservation]] = []
        exhausted = False
        while (
            len(self.core) + len(batch) < self.cfg.max_in_flight
            and self._tokens >= 1.0
            and len(batch) < self.BATCH
        ):
            job = next(pending, None)
            if job is None:
                exhausted = True
                break
            job = self._core_job(job)
            batch.append((job, *self._reserve(job)))
            self._tokens -= 1.0
        if batch:
            # before the first SYN leaves: our kernel's RSTs to these flows are dropped
            self._guard.add((job.target, job.port, res.port) for job, _, res in batch)
            for job, src, res in batch:
                self._ports[(src, res.port, job.target, job.port)] = res
                self._send(sender, self.core.start(job, time.time(), src, res.port))
        return exhausted

    def _core_job(self, job: Job) -> Job:
        """The job with its target as captured packets spell it (an IPv6
        address in inet_ntop's form, without a zone)."""
        if ":" not in job.target:
            return job
        base = job.target.partition("%")[0]
        canon = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, base))
        if canon == job.target:
            return job
        self._as_given[canon] = job.target
        return replace(job, target=canon)

    def _reserve(self, job: Job) -> tuple[str, PortReservation]:
        given = self._as_given.get(job.target, job.target)
        route = self._routes.lookup(given)
        new = self._capture.ensure(route.ifname)  # listening before the first SYN leaves
        if new is not None:
            self._sel.register(new.fileno(), selectors.EVENT_READ)
        bind = route.src
        if ":" in bind and ipaddress.IPv6Address(bind).is_link_local:  # binds with its zone
            bind = f"{bind}%{route.ifname}"
        return route.src, PortReservation(bind)

    def _refill(self, now: float) -> None:
        rate = self.cfg.max_rate_pps
        if self._last_refill == 0.0:
            self._tokens = min(rate, 64.0)
        else:
            self._tokens = min(max(rate, 1.0), self._tokens + (now - self._last_refill) * rate)
        self._last_refill = now

    def _drain(self, capture: CaptureSet, sender: RawSender) -> None:
        receive, sink = self.core.receive, self.packet_sink
        for _ in range(10000):  # bounded: timers must still fire under a flood
            pkt = capture.recv()
            if pkt is None:
                return
            out = receive(pkt.ts, pkt.data, csum_not_ready=pkt.csum_not_ready)
            if out is None:
                continue  # not ours, corrupt, or beyond its flow's budget
            if sink is not None:
                sink(pkt.ts, pkt.data)
            if out:
                self._send(sender, out)

    def _send(self, sender: RawSender, segs: list[Segment]) -> None:
        given = self._as_given
        for s in segs:
            if sender.send(build_ip(s), given.get(s.dst, s.dst) if given else s.dst):
                self.stats.packets_out += 1
            else:
                self.stats.send_errors += 1

    def _collect(self) -> None:
        """Finished probes: release their port, drop their firewall rule, report."""
        for done in self.core.results():
            src, sport, target, port = done.flow
            res = self._ports.pop(done.flow, None)
            if res is not None:
                res.release()
            self._to_discard.append((target, port, sport))
            obs = done.observation
            if obs.target in self._as_given:
                obs = replace(obs, target=self._as_given[obs.target])
            self.on_result(obs)

    def _sync_stats(self) -> None:
        c = self.core.stats
        st = self.stats
        st.probes, st.packets_in, st.bad_checksum = c.probes, c.packets_in, c.bad_checksum
        st.early_stops, st.icmp6_errors = c.early_stops, c.icmp

    def _flush_discards(self) -> None:
        if self._to_discard:
            self._guard.discard(self._to_discard)
            self._to_discard = []
