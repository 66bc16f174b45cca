"""Delay, jitter and loss for lab links, in userspace on NFQUEUE (no sch_netem).

    target ns                         iptables -t mangle, chain cronos_<id>_imp
      veth ──► PREROUTING ─┐          (! -i lo, tcp)  -j NFQUEUE --queue-num Q
                           ├─► worker: python -m cronos.lab.impair --queue Q ...
      veth ◄── OUTPUT ─────┘          (! -o lo, tcp)  -j NFQUEUE --queue-num Q

The lab kernel has no ``nft queue`` (CONFIG_NFT_QUEUE is not set) but has the
xtables NFQUEUE target (through nft_compat), so the rules are iptables-nft
rules: they show in ``nft list ruleset`` under ``table ip mangle``.

``setup(ctx, ns, spec)`` spawns the worker in ``ns`` (it binds queue ``Q``
first), then installs the rules, so no packet is queued before someone
listens. A packet entering the namespace is held once in prerouting; a packet
the namespace sends is held once in output; a forwarded packet (router
namespace) only in prerouting. So a 50 ms delay makes a round trip through a
target namespace ~100 ms, and through a router namespace also ~100 ms.
The queue has no ``bypass`` flag: if the worker dies, traffic stops rather
than silently flowing unimpaired.

Worker, per packet (one ``random.Random`` per link, seeded from the lab's
seed and the link's role (``link_seed``): a seeded run draws the same losses
and delays in the same order, and links draw independently):

* lost with probability ``loss_pct/100`` → ``drop()`` at once;
* otherwise held ``delay`` ms plus a jitter drawn from ``dist``: ``uniform``
  in ``[-jitter, +jitter]`` (clipped at 0; the default), or one-sided queueing
  delay with mean ``jitter``: ``exp`` (exponential) or ``pareto`` (Lomax,
  alpha 2.5: heavy-tailed, as busy paths are), then ``accept()``-ed from the worker's
  own timer loop (``select`` on the queue fd + ``run(block=False)``; the verdict
  is given after the callback returned, which libnetfilter_queue allows);
* order is kept within each flow (one direction of one TCP connection): a
  packet is never released before the previous one of its flow, so with
  jitter a packet may wait longer than its draw; different flows and the two
  directions do not wait for each other. The *applied* delay recorded is the
  real hold time (verdict time - arrival in the worker), not the draw.

The worker writes its statistics (``count``, ``dropped``, ``loss_pct``
applied, applied delay ``p50/p99/mean/min/max`` in ms) to a JSON file every
0.5 s and at exit; :func:`stats` reads it back. The file is
``<tmp>/cronos-<id>-imp-<ns>[-<peer>].json``, removed at teardown: read it
before. ``stats(ctx_or_lab)`` returns every impairment of a lab.

Limitation: when the impaired namespace is the scanner's own (slirp and pytcp
targets, whose "link" is a TAP in the scanner namespace), traffic is matched
by the target address and the inbound half is delayed *after* AF_PACKET
capture (prerouting runs after the tap), so packet captures there see only
the outbound half; kernel sockets (connect RTT) see both.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import heapq
import ipaddress
import json
import math
import os
import random
import re
import select
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import DependencyError, LabError

DEFAULT_QUEUE = 4711
DISTRIBUTIONS = ("uniform", "exp", "pareto")
PARETO_ALPHA = 2.5
_READY_TIMEOUT_S = 10.0
_STATS_EVERY_S = 0.5
_QUEUE_TRIES = 16
_COPY_BYTES = 64  # IPv4 header (up to 60 bytes) + TCP ports


@dataclass(frozen=True)
class Impairment:
    """One direction's impairment, applied to each direction through a namespace."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    seed: int | None = None
    dist: str = "uniform"  # of the jitter: uniform (symmetric), exp or pareto (one-sided)

    def __post_init__(self) -> None:
        if self.dist not in DISTRIBUTIONS:
            raise LabError(f"unknown jitter distribution {self.dist!r}; valid: "
                           f"{', '.join(DISTRIBUTIONS)}")  # fmt: skip
        for name in ("delay_ms", "jitter_ms", "loss_pct"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise LabError(f"impairment {name} must be a finite number >= 0, not {value!r}")
        if self.loss_pct > 100:
            raise LabError(f"impairment loss_pct {self.loss_pct} is over 100")

    @property
    def is_null(self) -> bool:
        return self.delay_ms == 0 and self.jitter_ms == 0 and self.loss_pct == 0


@dataclass(frozen=True)
class ImpairStats:
    """What the worker actually applied (read back from its JSON file)."""

    ns: str
    spec: Impairment
    count: int  # packets seen
    dropped: int
    loss_pct: float  # dropped / count, in %
    delay_p50_ms: float
    delay_p99_ms: float
    delay_mean_ms: float
    delay_min_ms: float
    delay_max_ms: float
    path: str


@dataclass(frozen=True)
class ImpairHandle:
    ns: str
    chain: str  # iptables chain (mangle table) cronos_<id>_imp[_<peer hex>]
    queue: int
    stats_path: str
    spec: Impairment


_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s)?\s*$")
_PCT_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(%)?\s*$")
_TIME_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, None: 1.0}


def _parse_time_ms(text: str | float | int | None, what: str) -> float:
    if text is None or text == "":
        return 0.0
    if isinstance(text, int | float):
        return float(text)
    m = _TIME_RE.match(text)
    if not m:
        raise LabError(f"bad {what} {text!r}: expected e.g. 50ms, 0.2s, 500us (bare number = ms)")
    return float(m.group(1)) * _TIME_UNIT_MS[m.group(2)]


def _parse_pct(text: str | float | int | None) -> float:
    if text is None or text == "":
        return 0.0
    if isinstance(text, int | float):
        return float(text)
    m = _PCT_RE.match(text)
    if not m:
        raise LabError(f"bad loss {text!r}: expected a percentage, e.g. 5% or 0.5")
    return float(m.group(1))


def parse_impairment(
    delay: str | float | None = None,
    jitter: str | float | None = None,
    loss: str | float | None = None,
    seed: int | None = None,
    dist: str | None = None,
) -> Impairment:
    """``parse_impairment(delay="50ms", jitter="10ms", loss="5%", dist="pareto")``;
    ``LabError`` if bad."""
    return Impairment(
        _parse_time_ms(delay, "delay"),
        _parse_time_ms(jitter, "jitter"),
        _parse_pct(loss),
        seed,
        dist or "uniform",
    )


# -- lab side ---------------------------------------------------------------------


def stats_path(ctx, ns: str, peer: str | None = None) -> str:
    tail = f"-{peer}" if peer else ""
    return os.path.join(tempfile.gettempdir(), f"cronos-{ctx.id}-imp-{ns}{tail}.json")


def link_seed(seed: int, lab_id: str, path: str) -> int:
    """The seed of one link's worker: the lab's seed and the link's role (its
    namespace and peer with the per-run lab id taken out), so that a seeded
    run draws the same losses again, and different links draw their own. One
    seed for all made every target lose its k-th packet together (the same
    probes cross every link in the same order): losses no real path shares."""
    role = os.path.basename(path).replace(f"cronos-{lab_id}-", "")
    digest = hashlib.sha256(f"{seed}:{role}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _start_worker(ctx, ns: str, spec: Impairment, path: str, queue: int):
    """Spawn the worker on the first free queue from ``queue``; (proc, queue)."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH")]))
    for q in range(queue, queue + _QUEUE_TRIES):
        argv = [sys.executable, "-m", "cronos.lab.impair", "--queue", str(q), "--ns", ns,
                "--delay-ms", repr(spec.delay_ms), "--jitter-ms", repr(spec.jitter_ms),
                "--loss-pct", repr(spec.loss_pct), "--dist", spec.dist,
                "--stats", path]  # fmt: skip
        if spec.seed is not None:
            argv += ["--seed", str(link_seed(spec.seed, ctx.id, path))]
        proc = ctx.spawn(ns, argv, env=env)
        try:
            _wait_ready(path, proc)
            return proc, q
        except LabError:
            if proc.poll() is None:  # alive but silent: not a busy queue
                raise
            # exited: most likely the queue is bound by another worker in ns
    raise LabError(f"impairment worker could not bind queues {queue}..{q} in {ns}")


def _ipt_rules(chain: str, queue: int, peer: str | None) -> list[list[str]]:
    """iptables (nf_tables backend) rules, in order; the kernel has no nft ``queue``.

    CONFIG_NFT_QUEUE is not set on the lab kernel, but the xtables NFQUEUE
    target works through nft_compat, so the rules live in the ``mangle``
    table (``table ip mangle`` in ``nft list ruleset``) and all jump to one
    chain ``cronos_<id>_imp``.
    """
    src = ["-s", peer] if peer else []
    dst = ["-d", peer] if peer else []
    return [
        ["-t", "mangle", "-N", chain],
        ["-t", "mangle", "-A", chain, "-j", "NFQUEUE", "--queue-num", str(queue)],
        ["-t", "mangle", "-A", "PREROUTING", "!", "-i", "lo", "-p", "tcp", *src, "-j", chain],
        ["-t", "mangle", "-A", "OUTPUT", "!", "-o", "lo", "-p", "tcp", *dst, "-j", chain],
    ]


def _ipt_undo(rules: list[list[str]]) -> list[list[str]]:
    """The commands removing ``rules``: jumps first, then flush and delete the chain."""
    chain = rules[0][3]
    undo = [[*r[:2], "-D", *r[3:]] for r in reversed(rules[2:])]
    return undo + [["-t", "mangle", "-F", chain], ["-t", "mangle", "-X", chain]]


def _wait_ready(path: str, proc) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise LabError(f"impairment worker exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise LabError("impairment worker did not start")
        time.sleep(0.02)


def _last_target_ip(ctx) -> str:
    targets = getattr(getattr(ctx, "record", None), "targets", None) or []
    if not targets:
        raise LabError("impairing the scanner namespace needs a target address (peer=)")
    return targets[-1]["ip"]


def setup(ctx, ns: str, spec: Impairment, *, peer: str | None = None,
          queue: int = DEFAULT_QUEUE) -> ImpairHandle:  # fmt: skip
    """Impair every TCP packet through ``ns`` (both directions); removed at teardown.

    In the scanner namespace, only traffic to/from ``peer`` (default: the
    lab's last recorded target) is impaired.
    """
    try:
        import netfilterqueue  # noqa: F401  (the worker needs it; fail early, clearly)
    except ImportError as exc:
        raise DependencyError(
            "impairment needs PyPI NetfilterQueue (pip install NetfilterQueue; "
            "build deps: apt install libnetfilter-queue-dev python3-dev gcc)"
        ) from exc
    if not isinstance(spec, Impairment):
        raise LabError(f"impairment spec must be an Impairment, not {type(spec).__name__}")
    if peer is None and ns == getattr(ctx, "scanner_ns", None):
        peer = _last_target_ip(ctx)
    # one chain, queue and stats file per (namespace, peer): two impaired
    # targets may share the scanner namespace
    chain = f"cronos_{ctx.id}_imp"
    if peer:
        try:
            chain += "_" + ipaddress.IPv4Address(peer).packed.hex()
        except ValueError as exc:
            raise LabError(f"impairment peer {peer!r} is not an IPv4 address") from exc
    path = stats_path(ctx, ns, peer)
    if os.path.exists(path):
        os.unlink(path)  # readiness = the worker's first write
    ctx.track_file(path)  # removed at teardown, after the cleanups
    proc, queue = _start_worker(ctx, ns, spec, path, queue)
    rules = _ipt_rules(chain, queue, peer)

    def _remove() -> None:
        # rules first: no packet may be queued to a worker that is going away
        for cmd in _ipt_undo(rules):
            ctx.ns_exec(ns, "iptables", "-w", *cmd, check=False)
        if proc.poll() is None:
            proc.terminate()  # the worker releases what it holds and writes final stats
            try:
                proc.wait(timeout=3)
            except Exception:
                proc.kill()

    ctx.add_cleanup(_remove)  # before the rules exist: a failure half-way is undone too
    for cmd in rules:
        ctx.ns_exec(ns, "iptables", "-w", *cmd)
    return ImpairHandle(ns, chain, queue, path, spec)


def _read_stats(path: str) -> ImpairStats:
    try:
        with open(path) as fh:
            d = json.load(fh)
    except (OSError, ValueError) as exc:
        raise LabError(f"impairment stats {path}: {exc}") from exc
    return ImpairStats(d["ns"], Impairment(**d["spec"]), d["count"], d["dropped"], d["loss_pct"],
                       d["delay_p50_ms"], d["delay_p99_ms"], d["delay_mean_ms"],
                       d["delay_min_ms"], d["delay_max_ms"], path)  # fmt: skip


def stats(source) -> ImpairStats | list[ImpairStats]:
    """Applied impairment: from a stats file path / handle, or all of a lab's (ctx or Lab)."""
    if isinstance(source, ImpairHandle):
        return _read_stats(source.stats_path)
    if isinstance(source, str | os.PathLike):
        return _read_stats(os.fspath(source))
    pattern = os.path.join(tempfile.gettempdir(), f"cronos-{source.id}-imp-*.json")
    return [_read_stats(p) for p in sorted(glob.glob(pattern))]


# -- worker ------------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def flow_key(header: bytes) -> bytes:
    """(src, dst, sport, dport) of an IPv4 TCP packet, from its first bytes."""
    ihl = (header[0] & 0x0F) * 4 if header else 0
    return header[12:20] + header[ihl : ihl + 4]


class _Worker:
    """Holds packets for their delay; drops the lost ones; FIFO within each flow.

    Each direction of each TCP connection is its own FIFO: a packet never
    overtakes an earlier one of the same flow, but flows (and the two
    directions) do not wait for each other.
    """

    def __init__(self, spec: Impairment, ns: str, path: str):
        self.spec, self.ns, self.path = spec, ns, path
        self.rng = random.Random(spec.seed)
        self.held: list = []  # heap of (release_at, n, arrived_at, packet)
        self.flow_last: dict[bytes, float] = {}  # flow -> release time of its last packet
        self.applied_ms: list[float] = []
        self.count = self.dropped = 0

    def on_packet(self, pkt) -> None:
        now = time.monotonic()
        self.count += 1
        if self.spec.loss_pct and self.rng.random() * 100 < self.spec.loss_pct:
            self.dropped += 1
            pkt.drop()
            return
        hold_ms = max(0.0, self.spec.delay_ms + self._jitter())
        try:
            flow = flow_key(pkt.get_payload())
        except Exception:  # no header copied: one shared FIFO
            flow = b""
        release = max(now + hold_ms / 1000, self.flow_last.get(flow, 0.0))
        self.flow_last[flow] = release
        heapq.heappush(self.held, (release, self.count, now, pkt))
        if len(self.flow_last) > 4096:  # forget flows with nothing held
            self.flow_last = {k: v for k, v in self.flow_last.items() if v > now}

    def _jitter(self) -> float:
        j, dist = self.spec.jitter_ms, self.spec.dist
        if not j:
            return 0.0
        if dist == "exp":
            return self.rng.expovariate(1.0 / j)
        if dist == "pareto":  # Lomax with mean j
            a = PARETO_ALPHA
            return (a - 1) * j * ((1.0 - self.rng.random()) ** (-1.0 / a) - 1.0)
        return self.rng.uniform(-j, j)

    def _release(self) -> None:
        _, _, arrived, pkt = heapq.heappop(self.held)
        pkt.accept()
        self.applied_ms.append((time.monotonic() - arrived) * 1000)

    def release_due(self) -> None:
        now = time.monotonic()
        while self.held and self.held[0][0] <= now:
            self._release()

    def flush(self) -> None:
        while self.held:
            self._release()

    def timeout(self) -> float | None:
        return max(0.0, self.held[0][0] - time.monotonic()) if self.held else None

    def write_stats(self) -> None:
        d = sorted(self.applied_ms)
        out = {
            "ns": self.ns, "spec": asdict(self.spec), "count": self.count,
            "dropped": self.dropped,
            "loss_pct": 100.0 * self.dropped / self.count if self.count else 0.0,
            "delay_p50_ms": _percentile(d, 50), "delay_p99_ms": _percentile(d, 99),
            "delay_mean_ms": sum(d) / len(d) if d else 0.0,
            "delay_min_ms": d[0] if d else 0.0, "delay_max_ms": d[-1] if d else 0.0,
            "delay_distribution": self.spec.dist, "order": "fifo-per-flow",
        }  # fmt: skip
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(out, fh)
        os.replace(tmp, self.path)  # readers never see a half-written file


def _worker_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cronos.lab.impair")
    ap.add_argument("--queue", type=int, default=DEFAULT_QUEUE)
    ap.add_argument("--ns", default="")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--loss-pct", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--dist", choices=DISTRIBUTIONS, default="uniform")
    ap.add_argument("--stats", required=True)
    args = ap.parse_args(argv)
    from netfilterqueue import COPY_PACKET, NetfilterQueue

    spec = Impairment(args.delay_ms, args.jitter_ms, args.loss_pct, args.seed, args.dist)
    w = _Worker(spec, args.ns, args.stats)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    nfq = NetfilterQueue()
    # only the IP+TCP header prefix is copied: enough for the flow key
    nfq.bind(args.queue, w.on_packet, max_len=8192, mode=COPY_PACKET, range=_COPY_BYTES)
    fd = nfq.get_fd()
    w.write_stats()  # = ready
    next_stats = time.monotonic() + _STATS_EVERY_S
    try:
        while not stop:
            timeout = w.timeout()
            until_stats = max(0.0, next_stats - time.monotonic())
            timeout = until_stats if timeout is None else min(timeout, until_stats)
            try:
                readable, _, _ = select.select([fd], [], [], timeout)
            except InterruptedError:
                continue
            if readable:
                nfq.run(block=False)
            w.release_due()
            if time.monotonic() >= next_stats:
                w.write_stats()
                next_stats = time.monotonic() + _STATS_EVERY_S
    finally:
        w.flush()
        w.write_stats()
        nfq.unbind()
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
